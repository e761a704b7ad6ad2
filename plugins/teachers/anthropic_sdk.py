"""The official `anthropic` SDK's client, for batch mode (`[teacher] batch = true`) only.

Online Messages calls go through `anthropic_http`, which never imports the SDK: importing it costs
seconds of start-up. The Message Batches API (create, list, poll, stream results) stays on the SDK,
set up as `SdkTeacher` sets up every SDK client (its retries off, the pool unbounded unless
`max_connections`, errors mapped by `errors.sdk_error`); this module is imported only when a run
asks for batch mode, and that import is what pulls in the SDK.
"""

from __future__ import annotations

import anthropic

from .anthropic_messages import _extract, message_params
from .sdk import SdkTeacher


class AnthropicSdk(SdkTeacher):
    """Holds the SDK client and the batch API over it; `AnthropicTeacher` owns and closes it."""

    provider = "anthropic"
    sdk = anthropic
    client_class = "AsyncAnthropic"
    error_base = anthropic.AnthropicError

    def _batch_api(self) -> object:
        from .anthropic_batch import AnthropicBatchAPI

        s = self.settings
        return AnthropicBatchAPI(self._client, s.batch_size, s.batch_wait_s, s.batch_poll_s,
                                 params=message_params, extract=_extract, max_bytes=s.batch_max_bytes)
