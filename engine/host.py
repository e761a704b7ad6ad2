"""The plugin host: loads every `synthledger` entry point and collects what the plugins register.

Built-in plugins are entry points of the `synthledger` distribution itself, so they load through
exactly the path a third-party package uses. `SYNTHLEDGER_PLUGINS` (comma-separated entry-point or
distribution names; `synthledger` selects the built-ins) restricts what loads.
"""

from __future__ import annotations

import functools
import importlib
import os
import re
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Callable

import pluggy

from . import hookspecs
from .errors import ConfigError, PluginError, UnknownPlugin
from .plugin_faults import failure

GROUP = "synthledger"
ENV_VAR = "SYNTHLEDGER_PLUGINS"
# The kinds of plugin are the hooks of hookspecs.py (`register_<kind>`), in the order written there.
KINDS = tuple(name.removeprefix("register_") for name in vars(hookspecs) if name.startswith("register_"))


@functools.lru_cache(maxsize=1)
def builtin_modules() -> dict[str, str]:
    """The built-in plugins (entry-point name -> module) exactly as pyproject.toml declares them.

    Read from the file only to run from a source checkout that was never pip-installed; an
    installed synthledger has them as entry points, and an installed wheel has no pyproject."""
    from .run.configfile import read_toml

    try:
        data = read_toml(Path(__file__).resolve().parents[1] / "pyproject.toml")
    except ConfigError:
        return {}
    return dict(data.get("project", {}).get("entry-points", {}).get(GROUP, {}))


def singular(kind: str) -> str:
    """How messages name one plugin of a kind: "strategies" -> "strategy", "seed_sources" -> "seed source"."""
    word = kind.replace("_", " ")
    return word[:-3] + "y" if word.endswith("ies") else word[:-1]


def _normalize(name: str) -> str:
    """Distribution names compare the way pip compares them: `Synthledger_Echo` is `synthledger-echo`."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _check_allowed(allowed: set[str], eps: list[Any]) -> None:
    """A typo in SYNTHLEDGER_PLUGINS would silently drop a plugin: say so, in the user's spelling,
    beside the names as installed (they match ignoring case, `-`, `_` and `.`)."""
    names = {"synthledger", *builtin_modules(), *(ep.name for ep in eps),
             *(ep.dist.name for ep in eps if ep.dist is not None)}
    known = {_normalize(n) for n in names}
    unknown = sorted(a for a in allowed if _normalize(a) not in known)
    if unknown:
        raise PluginError(f"{ENV_VAR} names {', '.join(map(repr, unknown))}, which is no installed "
                          f"plugin or distribution (installed: {', '.join(sorted(names, key=str.lower))})")


@dataclass(frozen=True)
class Registration:
    kind: str
    name: str
    factory: Any
    plugin: str
    distribution: str
    version: str


def _name_and_version(dist: Any, seen: dict[int, tuple[str, str]]) -> tuple[str, str]:
    """A distribution's name and version, its metadata read once: `dist.name` and `dist.version`
    each parse the whole METADATA file (README included) with the email parser, per entry point,
    which was a tenth of `generate`'s start-up."""
    if dist is None:
        return "unknown", "?"
    if id(dist) not in seen:
        meta = dist.metadata
        seen[id(dist)] = (meta["Name"], meta["Version"])
    return seen[id(dist)]


# Kinds whose registered factory is a class with an `Options` model (what their config section holds).
WITH_OPTIONS = ("seed_sources", "strategies", "verifiers", "trainers", "evaluators")


def _check_registration(kind: str, name: Any, factory: Any, where: str) -> None:
    """What `register(name, factory)` was given, checked as it is given: a non-string name crashed
    `plugins`, an empty one was listed blank, and a factory that is no plugin class was a traceback
    from the run that first used it."""
    if type(name) is not str or not name.strip() or name != name.strip():
        raise PluginError(f"{where} registered the name {name!r}; a name is a non-empty string without "
                          "surrounding spaces")
    if kind in WITH_OPTIONS:
        options = getattr(factory, "Options", None)
        if not isinstance(factory, type) or not (isinstance(options, type) and hasattr(options, "model_fields")):
            raise PluginError(f"{where} registered {name!r} as {factory!r}, which is not a {singular(kind)} class "
                              "with an Options model (subclass the base class in synthledger.engine.api)")
    elif not callable(factory):
        raise PluginError(f"{where} registered {name!r} as {factory!r}, which cannot be called to make a "
                          f"{singular(kind)}")


class PluginHost:
    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(GROUP)
        self.pm.add_hookspecs(hookspecs)
        self._plugin_dist: dict[str, tuple[str, str]] = {}
        self._registry: dict[str, dict[str, Registration]] | None = None

    def load_entry_points(self, allowed: set[str] | None = None) -> None:
        found_builtin = False
        eps = list(entry_points(group=GROUP))
        if allowed is not None:
            _check_allowed(allowed, eps)
            allowed = {_normalize(a) for a in allowed}
        named: dict[int, tuple[str, str]] = {}
        for ep in eps:
            dist, version = _name_and_version(ep.dist, named)
            if dist == "synthledger":
                found_builtin = True
            if allowed is not None and _normalize(ep.name) not in allowed and _normalize(dist) not in allowed:
                continue
            if self.pm.has_plugin(ep.name):
                continue
            try:
                module = ep.load()
            except Exception as exc:  # a broken third-party plugin must not take the CLI down silently
                raise PluginError(f"plugin {ep.name!r} from {dist} failed to load: {exc} (uninstall it, or load only "
                                  f"the others with {ENV_VAR}, e.g. {ENV_VAR}=synthledger)") from exc
            try:
                self.add(module, ep.name, dist, version)
            except pluggy.PluginValidationError as exc:  # a hook with the wrong name or arguments
                raise PluginError(f"plugin {ep.name!r} from {dist} has a malformed hook: {exc}") from exc
        self._check_hook_names()
        if not found_builtin:
            # Running from a source checkout that was never pip-installed: same modules, same hooks.
            from .. import __version__

            for name, modname in builtin_modules().items():
                if allowed is not None and _normalize(name) not in allowed and "synthledger" not in allowed:
                    continue
                if not self.pm.has_plugin(name):
                    self.add(importlib.import_module(modname), name, "synthledger", __version__)

    def _check_hook_names(self) -> None:
        """A hook implementation no spec declares (`register_strategys`) would never be called: the
        plugin's strategy would simply not exist, with nothing said."""
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            name = self.pm.get_name(exc.plugin) or "?"
            dist = self._plugin_dist.get(name, ("local", "?"))[0]
            raise PluginError(f"plugin {name!r} from {dist} implements a hook synthledger does not have: {exc} "
                              f"(the hooks are {', '.join(f'register_{k}' for k in KINDS)})") from exc

    def add(self, module: Any, name: str, distribution: str = "local", version: str = "?") -> None:
        self.pm.register(module, name=name)
        self._plugin_dist[name] = (distribution, version)
        self._registry = None

    def _collect(self) -> dict[str, dict[str, Registration]]:
        if self._registry is not None:
            return self._registry
        registry: dict[str, dict[str, Registration]] = {k: {} for k in KINDS}
        for kind in KINDS:
            hook = getattr(self.pm.hook, f"register_{kind}")
            for impl in hook.get_hookimpls():
                plugin_name = self.pm.get_name(impl.plugin) or "?"
                dist, version = self._plugin_dist.get(plugin_name, ("local", "?"))

                def register(name: str, factory: Any, _kind: str = kind, _p: str = plugin_name,
                             _d: str = dist, _v: str = version) -> None:
                    _check_registration(_kind, name, factory, f"plugin {_p!r} ({_d}) register_{_kind}")
                    prior = registry[_kind].get(name)
                    if prior is not None and prior.plugin != _p:  # never let one plugin shadow another
                        raise PluginError(
                            f"{singular(_kind)} {name!r} is registered by both {prior.plugin} "
                            f"({prior.distribution}) and {_p} ({_d}); uninstall one, or choose with {ENV_VAR}")
                    registry[_kind][name] = Registration(_kind, name, factory, _p, _d, _v)

                try:
                    impl.function(register=register)
                except PluginError:
                    raise
                except Exception as exc:  # its own bug, not the user's: name it, and where
                    raise PluginError(failure(f"plugin {plugin_name!r} ({dist}) register_{kind}", exc)) from exc
        self._registry = registry
        return registry

    def get(self, kind: str, name: str) -> Any:
        entries = self._collect()[kind]
        if name not in entries:
            known = ", ".join(sorted(entries)) or "none"
            raise UnknownPlugin(f"no {singular(kind)} named {name!r} (known: {known})")
        return entries[name].factory

    def describe(self, kind: str, name: str) -> str:
        """How a one-line error names a plugin: "strategy 'socratic' (plugin my_pkg from my-pkg 0.1)"."""
        reg = self._collect()[kind].get(name)
        if reg is None or reg.distribution == "synthledger":
            return f"{singular(kind)} {name!r}"
        return f"{singular(kind)} {name!r} (plugin {reg.plugin} from {reg.distribution} {reg.version})"

    def is_builtin(self, kind: str, name: str) -> bool:
        reg = self._collect()[kind].get(name)
        return reg is None or reg.distribution == "synthledger"

    def names(self, kind: str) -> list[str]:
        return sorted(self._collect()[kind])

    def registrations(self) -> list[Registration]:
        return [r for kind in KINDS for r in self._collect()[kind].values()]


_host: PluginHost | None = None


def get_host() -> PluginHost:
    """The process-wide host, loaded on first use from entry points (honouring SYNTHLEDGER_PLUGINS)."""
    global _host
    if _host is None:
        host = PluginHost()
        raw = os.environ.get(ENV_VAR)
        # Set but empty (`SYNTHLEDGER_PLUGINS=`) restricts nothing, as if unset: loading no plugin
        # at all, built-ins included, is never what that means.
        allowed = {p.strip() for p in raw.split(",") if p.strip()} if raw and raw.strip() else None
        host.load_entry_points(allowed)
        _host = host
    return _host


def reset_host() -> None:
    global _host
    _host = None


def get(kind: str, name: str) -> Any:
    return get_host().get(kind, name)


Factory = Callable[..., Any]
