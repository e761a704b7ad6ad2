"""Built-in teacher providers: openai, anthropic, openai-compatible, local.

Every factory imports its module only when called, so loading the plugin host never pulls in the
SDKs (or torch, for `local`) that a given run does not use.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

from synthledger.engine.hookspecs import hookimpl

from .settings import MissingApiKey, TeacherSettings

__all__ = ["MissingApiKey", "TeacherSettings", "register_teachers", "lazy_local_factory"]


def _lazy(module: str) -> Callable[[Any], Any]:
    def factory(settings: Any) -> Any:
        mod = importlib.import_module(f"{__name__}.{module}")
        build = getattr(mod, "factory", None) or mod.create
        return build(settings)

    factory.__name__ = f"{module}_factory"
    factory.__qualname__ = factory.__name__
    factory.__doc__ = f"Build a teacher from `{__name__}.{module}` (imported on first use)."
    return factory


openai_factory = _lazy("openai_sdk")
anthropic_factory = _lazy("anthropic_http")  # (the SDK only in batch mode: anthropic_sdk)
openai_compatible_factory = _lazy("openai_compatible")
lazy_local_factory = _lazy("local")
# The keys the HTTP providers take, so a misspelt one gets a "did you mean" without importing an SDK.
for _f in (openai_factory, anthropic_factory, openai_compatible_factory):
    _f.settings_fields = tuple(TeacherSettings.model_fields)  # type: ignore[attr-defined]


@hookimpl
def register_teachers(register: Callable[[str, Any], None]) -> None:
    register("openai", openai_factory)
    register("anthropic", anthropic_factory)
    register("openai-compatible", openai_compatible_factory)
    register("local", lazy_local_factory)
