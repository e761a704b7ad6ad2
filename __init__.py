"""synthledger: budget-exact synthetic data generation with an append-only event ledger."""

__version__ = "0.1.0"
