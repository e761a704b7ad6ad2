"""Moved to `synthledger.engine.api` (what plugin authors import); this path keeps working."""

from .api import (BudgetExhausted, Context, PlanItem, PluginOptions, QueryFailed, Sample, Seed,  # noqa: F401
                  SeedError, SeedSource, Strategy, Task, Verdict, Verifier, draw_subset)
