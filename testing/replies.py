"""What the test teacher server says: request parsing and deterministic reasoning-shaped replies.

Replies depend only on the request bytes and a per-server counter, so a run against the server is
reproducible, yet two samples of the same prompt differ (as they would at temperature > 0). Token
counts follow simple, documented rules that tests can recompute: prompt tokens are UTF-8 bytes // 4
(always below `engine.api.utf8_prompt_bound`), completion tokens are whitespace-separated words.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from hashlib import blake2b
from typing import Any

_WORD = re.compile(r"\S+")
DEFAULT_MAX_TOKENS = 4096


class RequestInvalid(ValueError):
    """The request body is not a valid call for the protocol; the server answers 400."""


@dataclass(slots=True)
class Parsed:
    model: str
    texts: list[str]  # every message content (and the system prompt), for token counting
    last_user: str
    max_tokens: int
    n: int
    stop: list[str]
    messages_sha: str


def normalize_question(text: str) -> str:
    return " ".join(text.lower().split())


def content_text(content: Any, where: str) -> str:
    """Message content as text: a string, or a list of `{type: text, text}` blocks/parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        out = []
        for i, block in enumerate(content):
            if not isinstance(block, dict) or not isinstance(block.get("text", ""), str):
                raise RequestInvalid(f"{where}[{i}]: expected a text block")
            out.append(block.get("text", ""))
        return "".join(out)
    if content is None:
        return ""
    raise RequestInvalid(f"{where}: content must be a string or a list of blocks")


def prompt_tokens(texts: list[str]) -> int:
    return max(1, sum(len(t.encode("utf-8")) for t in texts) // 4)


def _messages_sha(messages: Any, system: Any = None) -> str:
    import orjson

    h = blake2b(orjson.dumps(messages), digest_size=8)
    if system is not None:
        h.update(orjson.dumps(system))
    return h.hexdigest()


def _int_field(payload: dict, key: str, default: int | None, lo: int, hi: int) -> int:
    value = payload.get(key, default)
    if value is None:
        value = default
    if value is None:
        raise RequestInvalid(f"{key}: field required")
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise RequestInvalid(f"{key}: must be an integer in [{lo}, {hi}], got {value!r}")
    return value


def _stop_list(value: Any, key: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(s, str) for s in value):
        return value
    raise RequestInvalid(f"{key}: must be a string or a list of strings")


def _common(payload: Any) -> tuple[str, list]:
    if not isinstance(payload, dict):
        raise RequestInvalid("body must be a JSON object")
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        raise RequestInvalid("model: field required")
    if payload.get("stream"):
        raise RequestInvalid("stream: the test server answers non-streaming requests only")
    messages = payload.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestInvalid("messages: must be a non-empty list")
    return model, messages


def parse_openai(payload: Any) -> Parsed:
    model, messages = _common(payload)
    texts: list[str] = []
    last_user = ""
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise RequestInvalid(f"messages[{i}]: must be an object with a role")
        text = content_text(m.get("content"), f"messages[{i}].content")
        texts.append(text)
        if m["role"] == "user":
            last_user = text
    key = "max_completion_tokens" if payload.get("max_completion_tokens") is not None else "max_tokens"
    return Parsed(
        model=model,
        texts=texts,
        last_user=last_user,
        max_tokens=_int_field(payload, key, DEFAULT_MAX_TOKENS, 1, 1 << 20),
        n=_int_field(payload, "n", 1, 1, 128),
        stop=_stop_list(payload.get("stop"), "stop"),
        messages_sha=_messages_sha(messages),
    )


SAMPLING_REMOVED_VERSION = "2026-10-21"  # this API version refuses temperature/top_p/top_k


def parse_anthropic(payload: Any, version: str = SAMPLING_REMOVED_VERSION) -> Parsed:
    model, messages = _common(payload)
    if version >= SAMPLING_REMOVED_VERSION:
        for key in ("temperature", "top_p", "top_k"):
            if key in payload:
                raise RequestInvalid(f"{key}: Extra inputs are not permitted")
    system = payload.get("system")
    texts = [content_text(system, "system")] if system is not None else []
    last_user = ""
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("user", "assistant"):
            role = m.get("role") if isinstance(m, dict) else None
            raise RequestInvalid(f"messages[{i}].role: unexpected role {role!r} (use the system parameter)")
        text = content_text(m.get("content"), f"messages[{i}].content")
        texts.append(text)
        if m["role"] == "user":
            last_user = text
    return Parsed(
        model=model,
        texts=texts,
        last_user=last_user,
        max_tokens=_int_field(payload, "max_tokens", None, 1, 1 << 20),
        n=1,
        stop=_stop_list(payload.get("stop_sequences"), "stop_sequences"),
        messages_sha=_messages_sha(messages, system),
    )


class AnswerBook:
    """Known questions -> final answers; a reply to a known question ends with its answer."""

    def __init__(self, answers: dict[str, str] | None) -> None:
        self._exact = {normalize_question(q): str(a) for q, a in (answers or {}).items()}
        self._by_length = sorted(self._exact.items(), key=lambda kv: -len(kv[0]))
        self._cache: dict[str, str | None] = {}

    def __bool__(self) -> bool:
        return bool(self._exact)

    def lookup(self, user_text: str) -> str | None:
        norm = normalize_question(user_text)
        hit = self._exact.get(norm)
        if hit is not None:
            return hit
        if norm in self._cache:
            return self._cache[norm]
        found = next((a for q, a in self._by_length if q in norm), None)
        if len(self._cache) > 50_000:
            self._cache.clear()
        self._cache[norm] = found
        return found


def _wrong(answer: str) -> str:
    try:
        return str(int(answer) + 1)
    except ValueError:
        return answer + "0"


_NAMES = ("Ava", "Bilal", "Chen", "Dara", "Emeka", "Farah", "Goran", "Hana", "Ines", "Jonas", "Kemi", "Luca",
          "Mira", "Nikhil", "Oona", "Pavel", "Quinn", "Rosa", "Sami", "Tove", "Umar", "Vera", "Wen", "Yusuf")
_THINGS = ("marbles", "apples", "stamps", "pencils", "tickets", "shells", "coins", "stickers", "books", "cupcakes",
           "bricks", "seeds", "lanterns", "kites", "buttons", "candles", "postcards", "acorns")
_PLACES = ("at the market", "in the garden", "at school", "on the farm", "at the fair", "in the workshop",
           "at the library", "on the boat", "in the bakery", "at the station")
_ACTIONS = (("buys", "more"), ("gives away", "of them"), ("finds", "extra"), ("sells", "of them"),
            ("receives", "as a gift"), ("loses", "on the way home"))


def _question(x: int) -> str:
    """A varied word problem, so near-duplicate control sees distinct questions as real models write them."""
    name, other = _NAMES[x % len(_NAMES)], _NAMES[(x >> 5) % len(_NAMES)]
    thing, place = _THINGS[(x >> 10) % len(_THINGS)], _PLACES[(x >> 15) % len(_PLACES)]
    verb, tail = _ACTIONS[(x >> 20) % len(_ACTIONS)]
    a, b, c = 3 + (x >> 24) % 97, 2 + (x >> 31) % 48, 2 + (x >> 37) % 9
    return (f"{name} has {a} {thing} {place}. {name} {verb} {b} {tail}. {other} has {c} times as many "
            f"{thing} as {name} has now. How many {thing} does {other} have?"
            if (x >> 44) % 2 else
            f"{place.capitalize()}, {name} packs {a} {thing} into each of {c} boxes and {verb} {b} {tail}. "
            f"How many {thing} does {name} have in the end?")


def reply_text(digest: bytes, answer: str | None, wrong_rate: float, prompt: str = "") -> str:
    """What a cooperative model would say: a new or rewritten question when asked to write one, a
    verdict when asked to check or grade, else a short step-by-step answer ending in `#### <answer>`."""
    x = int.from_bytes(digest[:8], "little")
    low = prompt.lower()
    if low.startswith("repeat:"):  # lets tests make a model that copies its input (duplicates, echoes)
        return prompt[len("repeat:"):].strip()
    if "well-posed" in low:
        return "The question gives all the numbers needed.\nVerdict: " + ("NO" if x % 10 == 0 else "YES")
    if "score:" in low or "grade" in low:
        return f"The answer follows from the question.\nScore: {6 + x % 5}/10"
    if "new problem" in low or "new question" in low or "rewrite the following question" in low:
        return _question(x)
    a, b = 10 + x % 90, 10 + (x >> 8) % 90
    if answer is None:
        final = str((x >> 16) % 1000)
    elif wrong_rate > 0 and ((x >> 32) % 10_000) < wrong_rate * 10_000:
        final = _wrong(answer)
    else:
        final = answer
    steps = [
        f"Step 1: Read the question and note the quantities {a} and {b}.",
        f"Step 2: Combine them to get {a + b}.",
    ]
    if (x >> 48) % 3:
        steps.append(f"Step 3: Check {a + b} against what the question asks.")
    return "\n".join(steps) + f"\nThe answer is {final}.\n#### {final}"


def shape(text: str, max_tokens: int, stop: list[str]) -> tuple[str, int, str]:
    """Apply stop sequences and the word cap: (text, completion tokens, reason), where reason is
    "stop", "stop_sequence" or "length"; each protocol renames these in its own vocabulary."""
    reason = "stop"
    if stop:
        cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
        if cut >= 0:
            text, reason = text[:cut], "stop_sequence"
    words = text.split()
    if len(words) <= max_tokens:
        return text, len(words), reason
    for k, m in enumerate(_WORD.finditer(text), 1):
        if k == max_tokens:
            return text[: m.end()], max_tokens, "length"
    return text, len(words), reason  # unreachable
