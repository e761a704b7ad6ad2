"""synthledger: budget-exact synthetic data generation with an append-only event ledger.

The Python API (see the README's "Python API" section):

    import synthledger
    result = synthledger.generate("run.toml")          # or await synthledger.agenerate(...)
    store = synthledger.open_store()
    store.runs(); store.events(result.run_id); store.audit(result.run_id)
    ds = store.dataset(result.run_id)                  # a datasets.Dataset (needs `datasets`)

Importing the package is cheap: these names load the engine on first use, and nothing here
imports torch.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "generate", "agenerate", "open_store", "load_config", "Store", "RunResult", "MissingExtra"]

_API = {"generate", "agenerate", "open_store", "load_config", "Store", "MissingExtra"}


def __getattr__(name: str) -> "object":
    """Lazy access to the Python API (PEP 562), so `import synthledger` stays a few milliseconds."""
    if name in _API:
        from .engine import python_api

        return getattr(python_api, name)
    if name == "RunResult":
        from .engine.run.runner import RunResult

        return RunResult
    raise AttributeError(f"module 'synthledger' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
