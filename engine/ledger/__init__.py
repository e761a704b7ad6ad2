"""The event log and its folds: the event vocabulary, the budget ledger, replay, audit, prices, and
the journal that appends a run's events."""
