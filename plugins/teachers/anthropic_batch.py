"""Anthropic's Message Batches API as a teacher's batch mode (`[teacher] batch = true`).

A batch is created with all its requests at once (custom_id = our query id); when it has ended,
each request's result is `succeeded`, `errored`, `canceled` or `expired`, in no particular order.
Anthropic's batches carry no metadata, so a resumed run that did not live to record a batch's id
finds it by its creation time and request count: adopted when exactly one batch it does not know of
fits, its queries counted as spent when several do.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Callable

import anthropic

from synthledger.engine.api import BATCH_CLOCK_SKEW_S, UNREADABLE
from synthledger.engine.teacher import BatchView, ChatRequest, Completion, FailureKind, TeacherError

from .errors import one_line, sdk_error

# "A Message Batch is limited to either 100,000 Message requests or 256 MB in size"; a larger one is
# refused whole before it reaches the API: 413 request_too_large.
MAX_BYTES = 256_000_000
_ERRORS = {"invalid_request_error": (FailureKind.BAD_REQUEST, 400), "authentication_error": (FailureKind.AUTH, 401),
           "permission_error": (FailureKind.AUTH, 403), "not_found_error": (FailureKind.BAD_REQUEST, 404),
           "rate_limit_error": (FailureKind.RATE_LIMITED, 429), "overloaded_error": (FailureKind.SERVER_ERROR, 529)}


def result_of(result: Any, extract: Callable[[Any], Completion]) -> Completion | TeacherError:
    kind = result.type
    if kind == "succeeded":
        try:
            return extract(result.message)
        except (ValueError, TypeError, AttributeError) as exc:
            return TeacherError(FailureKind.MALFORMED, f"malformed batch result: {one_line(str(exc), 300)}",
                                maybe_billed=True)
    if kind in ("canceled", "expired"):
        return TeacherError(FailureKind.EXPIRED, f"the batch ended before this request ran ({kind})")
    inner = getattr(getattr(result, "error", None), "error", None)
    etype, message = getattr(inner, "type", "api_error"), getattr(inner, "message", "no message")
    fkind, status = _ERRORS.get(etype, (FailureKind.SERVER_ERROR, 500))
    return TeacherError(fkind, f"batch request errored: {etype}: {one_line(str(message))}", status=status)


class AnthropicBatchAPI:
    """`params` turns a ChatRequest into Messages API parameters and `extract` a message into a
    Completion - the online teacher's own, so both modes send and read exactly the same."""

    def __init__(self, client: anthropic.AsyncAnthropic, size: int, wait_s: float, poll_s: float, *,
                 params: Callable[[ChatRequest], dict[str, Any]], extract: Callable[[Any], Completion],
                 max_bytes: int | None = None) -> None:
        self._client = client
        self.size, self.wait_s, self.poll_s = size, wait_s, poll_s
        self._params, self._extract = params, extract
        self.max_bytes = max_bytes or MAX_BYTES

    def request_bytes(self, cid: str, request: ChatRequest) -> int:
        # The SDK writes the body: compact UTF-8 now, ASCII-escaped with spaces in older releases.
        # The escaped form is never the shorter, so it bounds both.
        return len(json.dumps({"custom_id": cid, "params": self._params(request)})) + 2

    async def _call(self, coro: Any) -> Any:
        try:
            return await coro
        except anthropic.AnthropicError as exc:
            mapped = sdk_error(exc, anthropic)
            if mapped is None:
                raise
            raise mapped from exc

    async def upload(self, key: str, requests: list[tuple[str, ChatRequest]]) -> str | None:
        return None  # the requests travel with `create`

    async def create(self, key: str, file_id: str | None, requests: list[tuple[str, ChatRequest]]) -> str:
        reqs = [{"custom_id": cid, "params": self._params(r)} for cid, r in requests]
        b = await self._call(self._client.messages.batches.create(requests=reqs))
        return b.id

    async def find(self, key: str, file_id: str | None, since: float, count: int) -> list[str]:
        """Message batches carry no metadata of ours: every batch created since `since` (less the
        clocks' skew) with `count` requests may be it. Listed newest first, page by page, until older."""
        fits: list[str] = []
        page = await self._call(self._client.messages.batches.list(limit=100))
        while True:
            for b in page.data:
                created = b.created_at.timestamp() if isinstance(b.created_at, datetime) else 0.0
                if created < since - BATCH_CLOCK_SKEW_S:
                    return fits
                total = sum(b.request_counts.model_dump().values()) if b.request_counts is not None else -1
                if total == count:
                    fits.append(b.id)
            if not page.has_next_page():
                return fits
            page = await self._call(page.get_next_page())

    async def poll(self, batch_id: str) -> BatchView:
        b = await self._call(self._client.messages.batches.retrieve(batch_id))
        counts = {k: int(v) for k, v in b.request_counts.model_dump().items()} if b.request_counts is not None else {}
        return BatchView(b.processing_status, b.processing_status == "ended", counts)

    async def results(self, batch_id: str) -> dict[str, Completion | TeacherError]:
        out: dict[str, Completion | TeacherError] = {}

        async def read() -> None:
            async for r in await self._client.messages.batches.results(batch_id):
                out[r.custom_id] = result_of(r.result, self._extract)

        try:
            await self._call(read())  # (the SDK's errors, while fetching or reading, mapped as any call's)
        except (ValueError, TypeError, AttributeError, KeyError) as exc:  # a line not as Anthropic writes it
            # (pydantic's ValidationError and a JSON decode error are ValueErrors): what is left
            # may have run and been billed, and cannot be read.
            out[UNREADABLE] = TeacherError(FailureKind.MALFORMED, "the batch's results could not be read past "
                                           f"{len(out)} of them: {type(exc).__name__}: {one_line(str(exc), 200)}",
                                           maybe_billed=True)
        except TeacherError:
            raise
        except Exception as exc:  # the transfer broke off (its HTTP library's errors): fetched again
            raise TeacherError(FailureKind.CONNECTION, f"the batch's results broke off ({type(exc).__name__}: "
                                                       f"{one_line(str(exc), 200)})") from exc
        return out

    async def cancel(self, batch_id: str) -> None:
        await self._call(self._client.messages.batches.cancel(batch_id))
