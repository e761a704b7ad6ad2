"""Whether a failed attempt is tried again, and after how long (a mixin of the Dispatcher).

A failure that says the run is set up wrong (a model the endpoint does not serve, nothing
listening, a request no token limit admits, rejected credentials, no quota) stops the run at the
first; a few replies in a row that are not chat completions, or requests in a row refused as bad
requests, stop it too; one that no retry can mend fails its query; the rest wait - for their next
paced slot after a 429 our pacing explains, else for the retry policy's backoff - and go again.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

import anyio

from ..errors import FailureKind, FatalRunError, QueryFailed, RunStopping, TeacherError
from ..redact import one_line
from .misconfig import endpoint_url, misconfiguration
from .samples import Member

if TYPE_CHECKING:
    from ..scheduler.endpoint import Endpoint


class Retrier:
    """Needs `rng`, `stopping` and `_abandon` (the Dispatcher and its Sender half provide them)."""

    rng: random.Random
    stopping: bool

    if TYPE_CHECKING:  # (a stub here would shadow the Sender's own in the Dispatcher's MRO)
        def _abandon(self, qid: str, holding: bool, reason: str) -> None: ...

    async def _after_failure(self, ep: "Endpoint", role: str, members: list[Member], err: TeacherError,
                             counted: int, max_tokens: int | None = None) -> None:
        """Raise if this failure ends the query (its members abandoned); else wait before the retry.
        `max_tokens`: the request's, which a plugin may have set apart from the config's."""
        attempt = members[0].attempt
        said = one_line(err.message, 300)  # a provider's words, from any plugin, as one line

        def give_up(reason: str, exc: type[Exception], message: str) -> None:
            for m in members:
                self._abandon(m.qid, m.holding and not err.maybe_billed, reason)
            raise exc(message) from err

        configured = ep.params.get("max_tokens")
        stop = misconfiguration(err, role=role, section=ep.section, model=ep.model, url=endpoint_url(ep.teacher),
                                answered=ep.answered, asked_max_tokens=max_tokens if max_tokens != configured else None)
        if stop is not None:  # a wrong model or base_url fails every query alike: stop at the first
            give_up(stop, FatalRunError, stop)
        if err.kind is FailureKind.AUTH:
            give_up(f"authentication failed: {said}", FatalRunError,
                    f"the {role} rejected our credentials: {said}")
        if err.kind is FailureKind.RATE_LIMITED and "insufficient_quota" in (err.body_excerpt or ""):
            give_up(f"no quota left: {said}", FatalRunError,
                    f"the {role} account has no quota left: {said}")
        if err.kind is FailureKind.MALFORMED and ep.malformed_in_a_row >= ep.max_malformed_in_a_row:
            # Like a dead teacher, but each of these may have been billed: stop, don't pay for more.
            came = one_line(err.body_excerpt, 80, keep_tags=True)
            give_up(f"malformed after {attempt} attempt(s): {said}", FatalRunError,
                    f"the {role}'s replies are not valid chat completions ({ep.malformed_in_a_row} in a row, "
                    f"none valid in between; the last: {said}; "
                    + (f"it began: {came}" if came else "its body was empty") + "); stopping")
        if err.kind is FailureKind.BAD_REQUEST and ep.bad_requests_in_a_row >= ep.max_bad_requests_in_a_row:
            # Not retryable, and every request meets it: failing the items one by one mends nothing.
            give_up(f"{err.kind.value} after {attempt} attempt(s): {said}", FatalRunError,
                    f"the {role} refuses our requests as invalid ({ep.bad_requests_in_a_row} in a row, none "
                    f"answered in between; {said}); stopping")
        limited = err.kind is FailureKind.RATE_LIMITED
        retry = (attempt < ep.rate_limited_cap()) if limited else ep.retry.should_retry(err.kind, counted)
        if not retry:
            reason = f"{err.kind.value} after {attempt} attempt(s): {said}"
            if ep.breaker.exhausted:
                give_up(reason, FatalRunError, f"the {role} keeps failing ({reason}); stopping")
            give_up(reason, QueryFailed, reason)
        if limited and err.requeue_in is not None:
            wait = err.requeue_in  # one lost slot: this request alone waits, for its next slot
        else:
            # A 429 with no slot to wait for (no limit known, no usable retry-after) backs off by the
            # attempts this query has made, or a provider that says nothing but 429 gets a storm.
            wait = ep.retry.delay(attempt if limited else max(1, counted), err.retry_after, self.rng)
        if wait > 0:
            await anyio.sleep(wait)
        if ep.breaker.exhausted:
            give_up(f"{err.kind.value}: teacher unavailable", FatalRunError,
                    f"the {role} did not recover after {ep.breaker.opened_count - 1} pauses "
                    f"({err.kind.value}: {said}); stopping")
        if self.stopping:
            give_up("the run stopped before a retry", RunStopping, "the run is stopping")
