"""Built-in seed sources.

Seeds keep their full answer text in `Seed.answer` (for GSM8K "... #### 72"). The final answer is
not extracted here, because a seed source does not know the task: strategies derive a sample's
reference with `task.extract(seed.answer)` (see plugins/strategies/common.py).
"""

from synthledger.engine.hookspecs import hookimpl

from .csv_source import CsvSeedSource
from .hf import HFSeedSource
from .jsonl import JsonlSeedSource
from .reasoning_gym_source import ReasoningGymSeedSource

__all__ = ["CsvSeedSource", "HFSeedSource", "JsonlSeedSource", "ReasoningGymSeedSource"]


@hookimpl
def register_seed_sources(register):
    for source in (JsonlSeedSource, CsvSeedSource, HFSeedSource, ReasoningGymSeedSource):
        register(source.name, source)
