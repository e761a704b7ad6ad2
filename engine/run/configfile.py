"""Reading config files: one TOML reader and one validator for every kind of config (a run, a
training job, an experiment grid and the files it names), so each fails the same way: one line
naming the file (missing, a folder, not TOML) or every bad key path with a "did you mean"."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from ..errors import ConfigError
from .config_errors import format_errors

__all__ = ["read_toml", "tomllib", "validate_config"]

M = TypeVar("M", bound=BaseModel)


def read_toml(path: str | Path, what: str = "config file") -> dict[str, Any]:
    """The file's tables; `what` names the kind of file in the error ("train config ... does not exist")."""
    path = Path(path)
    try:
        # utf-8-sig: a byte-order mark (Windows editors write one) was "Invalid statement (at line 1, column 1)".
        return tomllib.loads(path.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"{what} {path} is a directory, not a TOML file") from None
    except PermissionError:
        raise ConfigError(f"{what} {path} cannot be read: permission denied") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); "
                          "save the file as UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


# A config is hashed and stored as JSON, whose integers our encoder keeps to 64 bits: a larger one
# (`queries = 99999999999999999999999`) failed the run's start with a traceback.
MAX_INT = 2**63 - 1


def oversized_numbers(data: Any, path: str = "") -> list[str]:
    """Key paths whose value is an integer beyond 64 bits."""
    if isinstance(data, dict):
        return [p for k, v in data.items() for p in oversized_numbers(v, f"{path}.{k}" if path else str(k))]
    if isinstance(data, list):
        return [p for i, v in enumerate(data) for p in oversized_numbers(v, f"{path}[{i}]")]
    return [path] if isinstance(data, int) and abs(data) > MAX_INT else []


def validate_config(model: type[M], data: dict[str, Any], source: str) -> M:
    """`data` as a `model`, or one ConfigError listing every bad key path under `source`."""
    huge = oversized_numbers(data)
    if huge:
        raise ConfigError(f"{source}: invalid config\n" + "\n".join(
            f"{p}: too large a number (at most {MAX_INT:,})" for p in huge))
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: invalid config\n{format_errors(exc, model=model)}") from None
