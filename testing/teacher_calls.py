"""One question through a real teacher plugin, for tests of what lies between it and its server
(proxies, TLS, headers): the plugin built as a run builds it, asked once, closed."""

from __future__ import annotations

from synthledger.engine.api import ChatRequest
from synthledger.plugins.teachers.openai_compatible import OpenAICompatibleTeacher
from synthledger.plugins.teachers.settings import TeacherSettings


async def ask_once(base_url: str) -> str:
    """The text an `openai-compatible` teacher at `base_url` answers one short question with."""
    teacher = OpenAICompatibleTeacher(TeacherSettings(provider="openai-compatible", model="test-teacher",
                                                      base_url=base_url))
    try:
        out = await teacher.complete(ChatRequest(model="test-teacher", messages=({"role": "user", "content": "q"},),
                                                 max_tokens=8))
    finally:
        await teacher.aclose()
    return out.texts[0] if out.texts else ""
