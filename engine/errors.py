"""Every exception synthledger raises on purpose, under one root.

The CLI catches `SynthledgerError` and prints its message as one line (exit 2, no traceback), so an
error meant for a user derives from it and says what is wrong and where (key path, file and line,
run id). The tree, with where each is raised:

    SynthledgerError
    ├── ConfigError (ValueError)         a run/train config, override or plugin option is wrong (run/config)
    ├── SeedError (ValueError)           a seed file or row is unusable, named by file and line (seed sources)
    ├── JsonlError (ValueError)          a JSONL line is not a JSON object (output/jsonl)
    ├── ExportError (ValueError)         a dataset row cannot be exported (output/export)
    ├── PluginError                      a plugin failed to load, or two register one name (host)
    │   ├── UnknownPlugin                no plugin of that kind has that name (host)
    │   └── PluginFailed                 a plugin's code raised or broke its contract while used (plugin_faults)
    ├── ResumeRefused (RuntimeError)     a resume would mix two plans, or finds nothing to resume (run/runner)
    ├── RunNameTaken (ValueError)        a new run asks for a name another run has (run/runner)
    ├── StoreError (RuntimeError)        the store cannot be opened, read or extended (store/eventstore)
    │   ├── StoreMissing                 a command that does not create stores was pointed at none (store)
    │   ├── DamagedEvent (ValueError)    a stored payload cannot be decoded: the store was altered (store)
    │   ├── WriterFailed                 a run's commit was refused; nothing more may be sent (ledger/journal)
    │   └── RunAborted                   a run stopped because it could not record (run/abort)
    │       └── LeaseLost                another process took the run over while this one was frozen
    ├── HubError (RuntimeError)          the Hugging Face Hub is unreachable (offline) or refused (output/hub)
    ├── MissingExtra (ImportError)       an optional dependency a call needs is not installed (python_api)
    ├── TeacherError                     one failed attempt of a provider, classified by `FailureKind`
    ├── BudgetExhausted                  ctx.ask: the budget cannot cover another query of that role
    ├── QueryFailed                      ctx.ask: a query was abandoned (attempts exhausted, not retryable)
    ├── RunStopping                      the run is stopping on a signal; the item is not failed
    └── FatalRunError (RuntimeError)     no retry can fix it (bad credentials, a dead teacher): stop the run

Plugins' own user errors (MissingApiKey, TrainingError, HeldoutError, UnknownModel) derive from the
root too. The last four above are signals between the dispatcher, the runner and strategies: the
runner turns them into events and they never reach the CLI.

This module imports nothing from the package, so any module may import it.
"""

from __future__ import annotations

from enum import Enum
from typing import Any


class SynthledgerError(Exception):
    """The root: a problem synthledger recognised and can state in one line."""


class ConfigError(SynthledgerError, ValueError):
    """A config problem, with every offending key path in the message."""


class TeacherSetupError(SynthledgerError, ValueError):
    """A provider cannot be set up from its settings (a base_url it cannot use, a header it cannot
    send). Said as a problem of the config section that named the provider, not as a crash of the
    provider's code: no section prefix in the message, the run adds it."""


class SeedError(SynthledgerError, ValueError):
    """A seed file or row is unusable; the message names the file and line."""


class JsonlError(SynthledgerError, ValueError):
    """A line is not a JSON object; the message starts with "<file>, line <n>:"."""


class ExportError(SynthledgerError, ValueError):
    """A row cannot be exported; the message names the row."""


class PluginError(SynthledgerError):
    """A plugin failed to load, or two plugins register the same name."""


class UnknownPlugin(PluginError):
    """No plugin of that kind has that name; the message lists the known ones."""


class PluginFailed(PluginError):
    """A plugin's code raised, or returned what its contract does not allow, while a run or an
    experiment used it: the message names the plugin or item and where in its code it failed."""


class ResumeRefused(SynthledgerError, RuntimeError):
    """A resume would mix two plans, or there is no run to resume."""


class RunNameTaken(SynthledgerError, ValueError):
    """A new run asked for a name an existing run already has: `show NAME` would become ambiguous."""


class HubError(SynthledgerError, RuntimeError):
    """The hub could not be reached or refused; the message is one line naming the repo."""


class MissingExtra(SynthledgerError, ImportError):
    """An optional dependency a call needs is not installed; the message says which extra brings it."""


class BudgetExhausted(SynthledgerError):
    """Raised by ctx.ask when the budget cannot cover another query of that role."""


class QueryFailed(SynthledgerError):
    """Raised by ctx.ask when a query was abandoned (attempts exhausted, or a non-retryable error)."""


class RunStopping(SynthledgerError):
    """The run is being stopped (a signal): no new query may start. Not a failure of the item."""


class FatalRunError(SynthledgerError, RuntimeError):
    """Something no retry can fix (bad credentials, a teacher that never recovers): stop the run."""


class FailureKind(str, Enum):
    """How an attempt failed, as far as scheduling is concerned."""

    RATE_LIMITED = "rate_limited"
    SERVER_ERROR = "server_error"
    CONNECTION = "connection"
    TIMEOUT = "timeout"
    BAD_REQUEST = "bad_request"
    AUTH = "auth"
    MALFORMED = "malformed"
    EXPIRED = "expired"  # a batch ended (expired, cancelled) before this request ran: never billed
    BATCH_FAILED = "batch_failed"  # the provider refused the whole batch (validation): never run nor billed
    MODEL_NOT_FOUND = "model_not_found"  # the endpoint does not serve the configured model
    # More tokens in one request than the provider's per-minute limit admits at all (OpenAI's 429
    # "Request too large ... on tokens per min"): as sent it never succeeds, however long we wait.
    TOO_LARGE = "too_large"

    @property
    def retryable(self) -> bool:
        return self not in (FailureKind.BAD_REQUEST, FailureKind.AUTH, FailureKind.MODEL_NOT_FOUND,
                            FailureKind.TOO_LARGE)


class TeacherError(SynthledgerError):
    """A failed attempt, classified. `maybe_billed` is True when the request may have reached the
    model (timeout after send, connection dropped mid-response, unparseable 200 body): the ledger
    then keeps the attempt's worst case as spent. `retry_after_exact` says whether `retry_after`
    is the provider's exact wait (`retry-after-ms`) or a whole-second upper bound (`retry-after: 1`)."""

    def __init__(
        self,
        kind: FailureKind,
        message: str,
        *,
        maybe_billed: bool = False,
        retry_after: float | None = None,
        status: int | None = None,
        body_excerpt: str | None = None,
        rate_limits: Any = None,  # a scheduler.headers.RateLimitInfo (not imported: errors import nothing)
        retry_after_exact: bool = False,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.maybe_billed = maybe_billed
        self.retry_after = retry_after
        self.status = status
        self.body_excerpt = body_excerpt[:500] if body_excerpt else body_excerpt
        self.rate_limits = rate_limits
        self.retry_after_exact = retry_after_exact
        self.requeue_in: float | None = None  # set by the rate policy: when this request may try again

    def __repr__(self) -> str:
        return f"TeacherError({self.kind.value}, {self.message!r}, maybe_billed={self.maybe_billed})"
