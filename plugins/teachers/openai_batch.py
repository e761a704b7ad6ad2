"""OpenAI's Files + Batch API as a teacher's batch mode (`[teacher] batch = true`).

A batch is one uploaded JSONL file of chat-completion requests (custom_id = our query id), then a
batch over it. Its output file holds the answered requests, its error file the failed ones and,
after an expiry, the ones that never ran (`batch_expired`); cancelled requests are in neither.
Our batch key goes into the batch's metadata, and the input file's id is recorded before the batch
is created, so a resumed run can find a batch whose creation it did not live to record.
"""

from __future__ import annotations

import re
from typing import Any

import openai
import orjson

from synthledger.engine.api import BATCH_CLOCK_SKEW_S, UNREADABLE
from synthledger.engine.teacher import BatchView, ChatRequest, Completion, FailureKind, TeacherError

from .errors import error_message, one_line, sdk_error, status_error
from .openai_compatible import completion_from_openai

ENDPOINT = "/v1/chat/completions"
ENDED = frozenset({"completed", "failed", "expired", "cancelled"})
# "The file can contain up to 50,000 requests, and can be up to 200 MB in size"; a larger upload is
# refused whole: 400 "File is too large."
MAX_BYTES = 200_000_000
# token_limit_exceeded: "Enqueued token limit reached for gpt-4o-mini in organization org-...
# Limit: 2,000,000 enqueued tokens. Please try again once some in_progress batches have been completed."
_ENQUEUED_LIMIT = re.compile(r"Limit: ([\d,]+) enqueued tokens")
_CUSTOM_ID = re.compile(rb'"custom_id"\s*:\s*"([^"\\]+)"')


def request_body(request: ChatRequest) -> dict[str, Any]:
    body: dict[str, Any] = {"model": request.model, "messages": list(request.messages),
                            "max_completion_tokens": request.max_tokens, "temperature": request.temperature}
    if request.n != 1:
        body["n"] = request.n
    if request.top_p is not None:
        body["top_p"] = request.top_p
    if request.seed is not None:
        body["seed"] = request.seed
    if request.stop:
        body["stop"] = list(request.stop)
    return body


def result_of(line: dict[str, Any]) -> Completion | TeacherError:
    """One line of an output or error file as a completion or a classified error."""
    err = line.get("error")
    if err:
        said = one_line(str(err.get("message")))
        if err.get("code") == "batch_expired":
            return TeacherError(FailureKind.EXPIRED, f"batch expired before this request ran: {said}")
        return TeacherError(FailureKind.SERVER_ERROR, f"batch request failed: {err.get('code')}: {said}")
    response = line.get("response") or {}
    status, body = response.get("status_code"), response.get("body")
    if status != 200:
        return status_error(int(status or 500), error_message(body, "no message"), None, orjson.dumps(body).decode())
    try:
        return completion_from_openai(body)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        return TeacherError(FailureKind.MALFORMED,
                            f"malformed batch result: {type(exc).__name__}: {one_line(str(exc), 300)}",
                            maybe_billed=True)


def read_line(raw: bytes) -> tuple[str, Completion | TeacherError]:
    """(custom id, outcome) of one line of an output or error file. A line that is not what OpenAI
    writes (cut off by a gateway or a broken transfer) ran and may be billed: a MALFORMED error
    under its custom id if that can still be read, else under UNREADABLE (every request the
    results do not name)."""
    try:
        line = orjson.loads(raw)
        return str(line["custom_id"]), result_of(line)
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
        found = _CUSTOM_ID.search(raw)
        err = TeacherError(FailureKind.MALFORMED, f"a batch result could not be read ({type(exc).__name__}): "
                                                  f"{one_line(raw.decode(errors='replace'), 120)}", maybe_billed=True)
        return (found[1].decode() if found else UNREADABLE), err


def request_line(cid: str, request: ChatRequest) -> bytes:
    """One line of the batch's input file."""
    return orjson.dumps({"custom_id": cid, "method": "POST", "url": ENDPOINT, "body": request_body(request)}) + b"\n"


class OpenAIBatchAPI:
    def __init__(self, client: openai.AsyncOpenAI, size: int, wait_s: float, poll_s: float,
                 max_bytes: int | None = None) -> None:
        self._client = client
        self.size, self.wait_s, self.poll_s = size, wait_s, poll_s
        self.max_bytes = max_bytes or MAX_BYTES

    def request_bytes(self, cid: str, request: ChatRequest) -> int:
        return len(request_line(cid, request))

    async def _call(self, coro: Any) -> Any:
        try:
            return await coro
        except openai.OpenAIError as exc:
            mapped = sdk_error(exc, openai)
            if mapped is None:
                raise
            raise mapped from exc

    async def upload(self, key: str, requests: list[tuple[str, ChatRequest]]) -> str | None:
        data = b"".join(request_line(cid, r) for cid, r in requests)
        f = await self._call(self._client.files.create(file=(f"{key}.jsonl", data), purpose="batch"))
        return f.id

    async def create(self, key: str, file_id: str | None, requests: list[tuple[str, ChatRequest]]) -> str:
        b = await self._call(self._client.batches.create(input_file_id=file_id, endpoint=ENDPOINT,
                                                         completion_window="24h", metadata={"synthledger": key}))
        return b.id

    async def find(self, key: str, file_id: str | None, since: float, count: int) -> list[str]:
        """Our key is in the batch's metadata: an exact match. Listed newest first, page by page, until
        batches older than `since` (less the clocks' skew): one page missed it behind 100 newer ones."""
        page = await self._call(self._client.batches.list(limit=100))
        while True:
            for b in page.data:
                if (b.metadata or {}).get("synthledger") == key or (file_id is not None and b.input_file_id == file_id):
                    return [b.id]
                if b.created_at < since - BATCH_CLOCK_SKEW_S:
                    return []
            if not page.has_next_page():
                return []
            page = await self._call(page.get_next_page())

    async def poll(self, batch_id: str) -> BatchView:
        b = await self._call(self._client.batches.retrieve(batch_id))
        rc = b.request_counts
        counts = {"total": rc.total, "completed": rc.completed, "failed": rc.failed} if rc is not None else {}
        message, over, limit = "", False, None
        if b.errors is not None and b.errors.data:
            message = "; ".join(f"{e.code}: {e.message}" for e in b.errors.data[:3])
            over = any(e.code == "token_limit_exceeded" for e in b.errors.data)
            said = _ENQUEUED_LIMIT.search(message)
            limit = int(said[1].replace(",", "")) if over and said else None
        return BatchView(b.status, b.status in ENDED, counts, message, over, limit)

    async def results(self, batch_id: str) -> dict[str, Completion | TeacherError]:
        b = await self._call(self._client.batches.retrieve(batch_id))
        out: dict[str, Completion | TeacherError] = {}
        for file_id in (b.output_file_id, b.error_file_id):
            if not file_id:
                continue
            content = await self._call(self._client.files.content(file_id))
            for raw in content.content.splitlines():
                if raw.strip():
                    cid, result = read_line(raw)
                    out[cid] = result
        return out

    async def cancel(self, batch_id: str) -> None:
        await self._call(self._client.batches.cancel(batch_id))
