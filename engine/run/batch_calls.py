"""A batch's calls to its provider after submission (polls, the results' download): tried again
while a failure may pass, said once it persists, and the end of the run when it cannot pass; and
results that cannot be read counted as spent, never as free (QA: a cut-off output line raised out of
the follower; a revoked key was polled every 5 s for ever, saying nothing)."""

from __future__ import annotations

from typing import Any, Awaitable, Callable

import anyio

from ..api import UNREADABLE, BatchAPI
from ..errors import FailureKind, FatalRunError, TeacherError
from ..redact import one_line

RETRY_S = 5.0  # wait after a failed poll or results download before trying again
SAY_AFTER = 6  # failed tries in a row before a run warning says so (30 s)


async def from_provider(batch_id: str, what: str, call: Callable[[], Awaitable[Any]],
                        warn_once: Callable[[str, str], None]) -> Any:
    """`call()`, tried again while its failures may pass; FatalRunError when they cannot (the key
    revoked, the batch unknown): the batch stays with the provider, and a resume follows it."""
    tries = 0
    while True:
        try:
            return await call()
        except TeacherError as err:
            if not err.kind.retryable:
                raise FatalRunError(f"cannot {what} batch {batch_id}: {one_line(err.message, 200)}; it stays "
                                    "with the provider, and `generate --resume` follows it again") from err
            tries += 1
            if tries == SAY_AFTER:
                warn_once("batch_poll" if what == "poll" else "batch_results",
                          f"cannot {what} batch {batch_id} ({tries} tries: {one_line(err.message, 160)}); "
                          f"trying again every {RETRY_S:g}s")
            await anyio.sleep(RETRY_S)


async def read_results(api: BatchAPI, batch_id: str) -> dict[str, Any]:
    """The batch's results. Results that cannot be read at all (a provider plugin's bug, a format
    it does not know) are every request's, maybe billed: counted spent, never free."""
    try:
        return await api.results(batch_id)
    except TeacherError:
        raise
    except Exception as exc:
        return {UNREADABLE: TeacherError(FailureKind.MALFORMED, f"the batch's results could not be read: "
                                         f"{type(exc).__name__}: {one_line(str(exc), 200)}", maybe_billed=True)}
