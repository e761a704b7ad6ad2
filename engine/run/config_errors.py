"""Validation errors as a person reads them: one line per problem, its full key path, and the
closest known key for a misspelt one ("did you mean `max_tokens`?").

Pydantic says "extra inputs are not permitted" at a location; which keys *are* permitted there is
read back from the model's own fields, walking the location through nested sections, optional
sections and tables of sections (budget.roles.NAME)."""

from __future__ import annotations

import difflib
import re
import types
import typing
from typing import Any

from pydantic import BaseModel, ValidationError


def _unwrap(annotation: Any) -> list[Any]:
    """The model classes an annotation may hold (Optional[X], X | None, dict[str, X], list[X])."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return [m for a in typing.get_args(annotation) for m in _unwrap(a)]
    if origin in (dict, list):
        return _unwrap(typing.get_args(annotation)[-1])
    return [annotation] if isinstance(annotation, type) and issubclass(annotation, BaseModel) else []


def known_keys(model: type[BaseModel] | None, loc: tuple[Any, ...]) -> list[str]:
    """The key names the model (or a section of it) accepts under `loc`, the path of their parent."""
    models = [model] if model is not None else []
    for part in loc:
        inner = [m2 for m in models if isinstance(part, str) and part in m.model_fields
                 for m2 in _unwrap(m.model_fields[part].annotation)]
        if inner:
            models = inner
        # else: a dict key (budget.roles.NAME) or a list index; the value model is already in `models`
    return sorted({name for m in models for name in m.model_fields})


def suggestion(key: str, candidates: list[str] | set[str] | tuple[str, ...]) -> str:
    """` (did you mean `max_tokens`?)` when a known key is close to the unknown one, else ''."""
    close = difflib.get_close_matches(key, list(candidates), n=1, cutoff=0.75)
    return f" (did you mean `{close[0]}`?)" if close else ""


_SUBPATH = re.compile(r"^([A-Za-z_][\w\-]*(?:\.[\w\-]+)*): ")


def format_errors(exc: ValidationError, prefix: str = "", model: type[BaseModel] | None = None,
                  known: list[str] | None = None) -> str:
    """One indented line per error. A misspelt key is matched against `known`, else the fields of
    `model` at the key's place."""
    lines = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if p not in ("function-after",))
        path = ".".join(str(p) for p in loc)
        path = f"{prefix}{path}" if path else prefix.rstrip(".") or "(top level)"
        if err["type"] == "extra_forbidden":
            names = known if known is not None else known_keys(model, loc[:-1])
            lines.append(f"  {path}: unknown key{suggestion(str(loc[-1]), names) if loc else ''}")
        elif err["type"] == "missing":
            lines.append(f"  {path}: required key is missing")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            sub = _SUBPATH.match(msg)
            if sub and err["type"] == "value_error" and path != "(top level)":  # "section: key: why"
                path, msg = f"{path}.{sub.group(1)}", msg[sub.end():]
            lines.append(f"  {path}: {msg}")
    return "\n".join(lines)
