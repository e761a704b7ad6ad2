"""Turn a validated RunConfig into live parts: task, seeds, strategy, verifier and model endpoints.

Everything here may fail on bad input (unknown plugin, bad plugin options, a seed file with a
broken row, a missing API key); it all happens before the run's first event is written.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

from .. import host
from ..plugin_faults import GuardedCalls, failure, guarded
from pydantic import ValidationError

from .config import ConfigError, ModelSection, RunConfig, options_error, validate_plugin_options
from .config_errors import suggestion
from ..scheduler.endpoint import Endpoint
from .batching import BatchQueue
from .teacher_contract import checked_teacher
from ..ledger.ledger import BudgetSpec
from ..ledger.pricing import ModelPrice, price_for
from ..scheduler import AdaptiveConcurrency, CircuitBreaker, RateLimiter, RetryPolicy
from ..scheduler.shaper import SendShaper
from ..api import Seed, Strategy, Task, Verifier, draw_subset
from ..errors import PluginFailed, SynthledgerError

# Pace at 99.5% of a configured (or learned) limit. The limiter's catch-up allowance follows the
# safety (4 ms here), so a late release can never overfill a one-second window by itself; what
# remains - a send delayed on the wire or a provider's clock - costs one slot when it meets a 429
# (see scheduler/ratepolicy.py), not a paused second. Every 0.5% matters: with 2% of requests
# failing (each one a slot spent), 99.5% leaves 97.5% of the limit for successes, 99% only 97%.
PACING_SAFETY = 0.995
# Before any response is seen, concurrency is sized for this latency at the configured rate
# (Little's law); observed latencies raise it further as they come in.
ASSUMED_LATENCY_S = 4.0
# With `max_concurrency` unset: a known rate may keep up to PACED_CEILING requests in flight (6000
# RPM at 6 s of latency needs ~600), while success-driven growth with no rate known stops at
# PROBE_CAP. File descriptors kept free beside the sockets: the store, logs, a local model's files.
PACED_CEILING = 1024
PROBE_CAP = 64
FD_RESERVE = 256
# OpenAI and Anthropic both bill batch requests at half their online price.
BATCH_DISCOUNT = 0.5


@dataclass
class Parts:
    task: Task
    seeds: list[Seed]
    strategy: Strategy
    verifier: Verifier
    budget: BudgetSpec
    roles: tuple[str, ...]


def _plugin(kind: str, name: str, section: str) -> Any:
    try:
        return host.get(kind, name)
    except host.UnknownPlugin as exc:
        raise ConfigError(f"[{section}] {exc}") from None


def _options(cfg: RunConfig, plugin: Any, extras: dict[str, Any], section: str) -> Any:
    """A plugin's options from its section; an error names the config file, as core keys' do."""
    try:
        return validate_plugin_options(plugin.Options, extras, section)
    except ConfigError as exc:
        raise ConfigError(f"{cfg.source}: {exc}") from None


def _named(kind: str, name: str, what: str) -> str:
    return f"{host.get_host().describe(kind, name)} {what}"


def _loaded_seeds(source: Any, what: str) -> list[Seed]:
    """A seed source's seeds, checked: a source that returned something else, or gave two seeds one
    id, failed later inside the engine (a traceback, or the strategy blamed for repeated items)."""
    got = guarded(what, source.load)
    if isinstance(got, (str, bytes, dict)) or not hasattr(got, "__iter__"):
        raise PluginFailed(f"{what} returned {type(got).__name__}; expected a list of Seed")
    seeds = guarded(what, list, got)
    seen: set[str] = set()
    for i, seed in enumerate(seeds):
        if not isinstance(seed, Seed):
            raise PluginFailed(f"{what} returned a {type(seed).__name__} at position {i + 1}; expected a Seed")
        if seed.id in seen:
            raise PluginFailed(f"{what} gave two seeds the id {seed.id!r}; each seed needs its own id")
        seen.add(seed.id)
    return seeds


def build_parts(cfg: RunConfig) -> Parts:
    """The run's plugins, made; a plugin whose own code fails here is one line naming it (guarded)."""
    task = guarded(_named("tasks", cfg.task.name, "(making it)"), _plugin("tasks", cfg.task.name, "task"))
    if not host.get_host().is_builtin("tasks", cfg.task.name):
        task = GuardedCalls(task, host.get_host().describe("tasks", cfg.task.name))
    source_cls = _plugin("seed_sources", cfg.seeds.source, "seeds")
    extras = cfg.seeds.extras()
    if "size" in source_cls.Options.model_fields and cfg.seeds.size is not None:
        extras.setdefault("size", cfg.seeds.size)  # a generator (reasoning-gym) makes exactly |S| seeds
    source_opts = _options(cfg, source_cls, extras, "seeds")
    source = guarded(_named("seed_sources", cfg.seeds.source, "(making it)"), source_cls, source_opts,
                     base_dir=cfg.base_dir)
    loaded = _loaded_seeds(source, _named("seed_sources", cfg.seeds.source, "load()"))
    if cfg.seeds.size is not None and cfg.seeds.size > len(loaded):  # (it ran on all, recording the size asked)
        raise ConfigError(f"[seeds] size = {cfg.seeds.size}, but the {cfg.seeds.source} source has only "
                          f"{len(loaded)} seeds; lower size, or leave it out to use them all")
    seeds = draw_subset(loaded, cfg.seeds.size, cfg.run.seed)
    if not seeds:
        raise ConfigError("[seeds] the seed source produced no seeds")
    strat_cls = _plugin("strategies", cfg.strategy.name, "strategy")
    strat_opts = _options(cfg, strat_cls, cfg.strategy.extras(), "strategy")
    strategy = guarded(_named("strategies", cfg.strategy.name, "(making it)"), strat_cls, strat_opts, seeds, task,
                       cfg.run.seed)
    ver_cls = _plugin("verifiers", cfg.verifier.name, "verifier")
    ver_opts = _options(cfg, ver_cls, cfg.verifier.extras(), "verifier")
    verifier = guarded(_named("verifiers", cfg.verifier.name, "(making it)"), ver_cls, ver_opts, task)
    shares = (guarded(_named("strategies", cfg.strategy.name, "budget_fractions()"), strategy.budget_fractions)
              if hasattr(strategy, "budget_fractions") else None)
    roles = tuple(dict.fromkeys(("teacher", *strategy.roles, *verifier.roles)))
    _check_budget_roles(cfg, roles)
    return Parts(task, seeds, strategy, verifier, cfg.budget.spec(shares), roles)


def _check_budget_roles(cfg: RunConfig, roles: tuple[str, ...]) -> None:
    """A budget that names no role of the run limits nothing: `[budget.roles.teachr]` alone left the
    run unlimited, and `counted_roles = ["teachr"]` counted no query (1,058 paid against queries = 20).
    A role some other plugin asks (an experiment's base config serves every strategy) is let through."""
    named = [(f"budget.roles.{r}", r) for r in cfg.budget.roles] + [("budget.counted_roles", r)
                                                                     for r in cfg.budget.counted_roles or []]
    strangers = [(where, role) for where, role in named if role not in roles]
    known = set(roles)
    if strangers:  # (every plugin's roles are looked at only when the budget names one this run lacks)
        for kind in ("strategies", "verifiers"):
            known |= {r for name in host.get_host().names(kind) for r in getattr(host.get(kind, name), "roles", ())}
    for where, role in strangers:
        if role not in known:
            raise ConfigError(f"{cfg.source}: {where}: no role is called {role!r}{suggestion(role, roles)}; "
                              f"this run's roles are {', '.join(roles)}")
    counted, totals = cfg.budget.counted_roles, not cfg.budget.limits().is_empty()
    if totals and counted is not None and not set(counted) & set(roles):
        raise ConfigError(f"{cfg.source}: budget.counted_roles: none of this run's roles ({', '.join(roles)}) "
                          "is counted, so the budget's totals would limit nothing")
    if not totals and not cfg.budget.roles:
        raise ConfigError(f"{cfg.source}: budget: no limit is set; add one, e.g. [budget] queries = 100 (or usd, "
                          "input_tokens, output_tokens): nothing else would end the run")
    if not totals and not set(cfg.budget.roles) & set(roles):
        raise ConfigError(f"{cfg.source}: budget: its only limits are for roles this run does not have "
                          f"({', '.join(cfg.budget.roles)}; this run's: {', '.join(roles)}), so nothing would limit it")


def repeated_seeds(seeds: list[Seed]) -> list[str]:
    """A line for the user when seeds repeat a question: each copy is a seed of its own, asked the
    same queries, so their answers (free after the first) repeat in the data, as the seeds chose."""
    seen: dict[str, str] = {}
    repeats = []
    for seed in seeds:
        text = " ".join(seed.question.split())
        if text in seen:
            repeats.append((seen[text], seed.id))
        else:
            seen[text] = seed.id
    if not repeats:
        return []
    first, again = repeats[0]
    return [f"seeds: {len(repeats)} seed(s) repeat an earlier seed's question (e.g. seed {again} repeats seed {first}); "
            "each copy is its own seed, so its rows repeat in the data: remove the copies to avoid that"]


# Providers that run in-process and never send a key.
KEYLESS_PROVIDERS = frozenset({"local"})


def check_api_key_env(section: ModelSection, where: str) -> None:
    """A named `api_key_env` that is unset is a mistake worth one line before the run starts: without
    this check a local server that wants a key answers a bare 401 naming no variable, many
    queries later. (A provider's own default variable is checked by the provider, which knows
    whether a local base_url can do without it.)"""
    var = section.api_key_env
    if var is None or section.provider in KEYLESS_PROVIDERS:
        return
    if not os.environ.get(var, "").strip():
        raise ConfigError(f"[{where}] api_key_env names {var}, which is not set in the environment "
                          f"(export {var}=..., or remove api_key_env if the server needs no key)")


def _section_key(section: ModelSection) -> str:
    return section.model_dump_json()


def build_endpoints(cfg: RunConfig, roles: tuple[str, ...]) -> dict[str, Endpoint]:
    """One endpoint per distinct model section; roles that share a section share its rate limits."""
    overrides = {m: ModelPrice(p.input_per_mtok, p.output_per_mtok, p.cached_input_per_mtok, "config [pricing]")
                 for m, p in cfg.pricing.items()}
    by_section: dict[str, Endpoint] = {}
    out: dict[str, Endpoint] = {}
    lim = cfg.limits
    for role in roles:
        section = cfg.model_for(role)
        key = _section_key(section)
        if key not in by_section:
            factory = _plugin("teachers", section.provider, role if role in ("teacher", "augmenter") else "teacher")
            where = "augmenter" if role == "augmenter" and cfg.augmenter is not None else "teacher"
            check_api_key_env(section, where)
            who = host.get_host().describe("teachers", section.provider)
            try:
                teacher = checked_teacher(factory(section.model_dump(exclude_none=True)), who)
            except ValidationError as exc:  # the provider's own settings model: report full key paths
                # Suggest from the section's own keys and those the provider says it takes.
                known = sorted(set(ModelSection.model_fields) | set(getattr(factory, "settings_fields", ())))
                raise ConfigError(f"{cfg.source}: {options_error(exc, where, known=known)}") from None
            except (ConfigError, PluginFailed):
                raise
            except SynthledgerError as exc:  # e.g. a local model that does not exist: say which section
                raise ConfigError(f"[{where}] {exc}") from None
            except Exception as exc:  # the plugin's own code
                raise PluginFailed(failure(f"{who} factory", exc)) from exc
            price = price_for(section.model, section.provider, overrides, section.base_url)
            batch_api = getattr(teacher, "batch_api", None)
            if price is not None and batch_api is not None:
                price = price.scaled(BATCH_DISCOUNT, "batch discount")
            if price is None and cfg.budget.usd is not None:
                raise ConfigError(f"[budget] usd is set but model {section.model!r} has no known price "
                                  f"(not in genai-prices for provider {section.provider!r}); "
                                  f"add [pricing.\"{section.model}\"] input_per_mtok/output_per_mtok")
            params: dict[str, Any] = {"max_tokens": section.max_tokens, "temperature": section.temperature}
            if section.top_p is not None:
                params["top_p"] = section.top_p
            by_section[key] = Endpoint(
                teacher=teacher, model=section.model, params=params,
                limiter=RateLimiter(lim.requests_per_minute, lim.tokens_per_minute, safety=PACING_SAFETY,
                                    input_tokens_per_minute=lim.input_tokens_per_minute,
                                    output_tokens_per_minute=lim.output_tokens_per_minute),
                concurrency=_concurrency(cfg, section.extras().get("max_connections")),
                breaker=CircuitBreaker(lim.breaker_threshold, lim.breaker_cooldown_s, cooldown_factor=2.0),
                retry=RetryPolicy(max_attempts=lim.max_attempts, base_s=lim.backoff_base_s,
                                  max_s=max(lim.backoff_max_s, lim.backoff_base_s)),
                price=price, timeout_s=section.timeout_s, section=where, who=who,
                shaper=(SendShaper(lim.requests_per_minute, PACING_SAFETY)
                        if lim.requests_per_minute is not None else None),
                batch=BatchQueue(batch_api) if batch_api is not None else None,
            )
        out[role] = by_section[key]
    return out


def _concurrency(cfg: RunConfig, connections: int | None = None) -> AdaptiveConcurrency:
    """Where concurrency starts: what a configured rate needs (Little's law, at an assumed latency
    until one is observed); with no limit known, a slow start that probes the provider.

    A `max_concurrency` the user set bounds all of it. Unset, a known rate (configured, or learned
    from the provider's headers later) may take what its latency needs, up to `concurrency_ceiling()`,
    while growth with no rate known stops at PROBE_CAP. A section's `max_connections` (the client's
    pool) bounds it too: a request past the pool waited for a connection inside the teacher's call,
    under its timeout, and timed out counted as maybe billed though it never left (QA: 9 of 12)."""
    lim = cfg.limits
    if lim.max_concurrency is not None:
        top, cap = lim.max_concurrency, None
    else:
        top, cap = concurrency_ceiling(), PROBE_CAP
    if isinstance(connections, int) and connections >= 1:
        top = min(top, connections)
    if lim.initial_concurrency:
        return AdaptiveConcurrency(initial=min(lim.initial_concurrency, top), maximum=top, growth_cap=cap)
    if lim.requests_per_minute is not None:
        need = math.ceil(lim.requests_per_minute / 60.0 * ASSUMED_LATENCY_S * 1.5) + 2
        return AdaptiveConcurrency(initial=min(need, top), maximum=top, growth_cap=cap)
    if any(v is not None for v in (lim.tokens_per_minute, lim.input_tokens_per_minute, lim.output_tokens_per_minute)):
        return AdaptiveConcurrency(initial=min(top, PROBE_CAP), maximum=top, growth_cap=cap)
    return AdaptiveConcurrency(initial=min(4, top), maximum=top, slow_start=True, growth_cap=cap)


def concurrency_ceiling() -> int:
    """PACED_CEILING, or less where this process may not open that many sockets (each request in
    flight holds one, and the store and logs need a few): the soft file limit is raised toward
    the hard one first, as servers do, since a default soft limit of 1024 is common."""
    try:
        import resource
    except ImportError:  # Windows: no such limit to read
        return PACED_CEILING
    want = PACED_CEILING + FD_RESERVE
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < want:
        target = want if hard == resource.RLIM_INFINITY else min(want, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY:
        return PACED_CEILING
    return max(1, min(PACED_CEILING, soft - FD_RESERVE))
