"""What the two official-SDK teachers (OpenAI, Anthropic) share: how the client is set up, how a
call's errors are mapped, the batch API hook, and closing.

The SDK's own retries are off (`max_retries=0`): the engine retries, and only it knows what each
attempt may have cost. The pool has no limit of its own unless `max_connections` is set, so the engine's
concurrency, not the SDK's default pool, decides how many requests are out.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable, ClassVar

from synthledger.engine.api import ChatRequest, utf8_prompt_bound

from .errors import sdk_error
from .settings import TeacherSettings, as_settings, resolve_api_key


class SdkTeacher:
    provider: ClassVar[str]
    sdk: ClassVar[Any]  # the SDK module (openai, anthropic)
    client_class: ClassVar[str]  # its async client's name in that module
    error_base: ClassVar[type[Exception]]  # the root of the SDK's exceptions

    def __init__(self, settings: TeacherSettings) -> None:
        self.settings = settings
        sdk = self.sdk
        limits = type(sdk.DEFAULT_CONNECTION_LIMITS)(
            max_connections=settings.max_connections, max_keepalive_connections=settings.max_connections
        )
        self._client = getattr(sdk, self.client_class)(
            api_key=resolve_api_key(settings, local_placeholder=True),
            base_url=settings.base_url,
            timeout=settings.timeout_s,
            max_retries=0,
            default_headers=settings.headers() or None,
            http_client=sdk.DefaultAsyncHttpxClient(limits=limits),
        )
        self.batch_api = self._batch_api() if settings.batch else None

    def _batch_api(self) -> Any:
        """The provider's batch API over this client (imported only when `batch = true`)."""
        raise NotImplementedError

    @property
    def url(self) -> str:
        """The endpoint requests go to (the SDK's default when no base_url is set): named in errors."""
        return str(self._client.base_url).rstrip("/")

    def prompt_tokens_upper_bound(self, request: ChatRequest) -> int:
        return utf8_prompt_bound(request.messages)

    async def _call(self, create: Callable[..., Awaitable[Any]], /, **kwargs: Any) -> Any:
        """`create(**kwargs)` with the SDK's exceptions turned into classified TeacherErrors
        (naming `kwargs["model"]` where the provider refused the model)."""
        try:
            return await create(**kwargs)
        except self.error_base as exc:
            mapped = sdk_error(exc, self.sdk, kwargs.get("model", ""))
            if mapped is None:
                raise
            raise mapped from exc

    async def aclose(self) -> None:
        await self._client.close()

    @classmethod
    def factory(cls, settings: TeacherSettings | dict) -> Any:
        return cls(as_settings(settings))
