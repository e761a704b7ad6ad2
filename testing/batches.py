"""Both batch APIs of the test teacher server: OpenAI's Files + Batches, Anthropic's Message Batches.

A batch's life is computed from the clock rather than driven by a background task, so it is
deterministic and costs nothing while nobody looks: `validating` for `batch_validating_s`, then
`in_progress` at `batch_request_s` per request, then `finalizing` for `batch_finalizing_s`, then
`completed` (Anthropic: `in_progress` then `ended`). A batch that would outlast `batch_expire_s`
expires with the requests it finished; a cancelled one keeps what it finished. Results are made
once, when the batch ends, by the same reply generator as the online endpoints.

Unkind where the real APIs are: OpenAI writes expired requests to the error file (code
`batch_expired`) and leaves cancelled ones out of both files; Anthropic's results come in no
particular order.
"""

from __future__ import annotations

from aiohttp import web

from .batch_anthropic import AnthropicBatches
from .batch_openai import OpenAIBatches

__all__ = ["BatchService"]


class BatchService(OpenAIBatches, AnthropicBatches):
    """Routes and state of both batch APIs, attached to one TeacherServer."""

    def routes(self, app: web.Application) -> None:
        r = app.router
        r.add_post("/v1/files", self.upload)
        r.add_get("/v1/files/{id}", self.file_info)
        r.add_get("/v1/files/{id}/content", self.file_content)
        r.add_delete("/v1/files/{id}", self.file_delete)
        r.add_post("/v1/batches", self.openai_create)
        r.add_get("/v1/batches", self.openai_list)
        r.add_get("/v1/batches/{id}", self.openai_retrieve)
        r.add_post("/v1/batches/{id}/cancel", self.openai_cancel)
        r.add_post("/v1/messages/batches", self.anthropic_create)
        r.add_get("/v1/messages/batches", self.anthropic_list)
        r.add_get("/v1/messages/batches/{id}", self.anthropic_retrieve)
        r.add_get("/v1/messages/batches/{id}/results", self.anthropic_results)
        r.add_post("/v1/messages/batches/{id}/cancel", self.anthropic_cancel)

    def reset(self) -> None:
        self.files.clear()
        self.contents.clear()
        self.batches.clear()
