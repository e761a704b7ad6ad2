"""Free-form answers: nothing to check against, so the whole reply is the answer."""

from __future__ import annotations

import re
from typing import ClassVar

from synthledger.engine.api import Task

_WS = re.compile(r"\s+")


def normalise(text: str) -> str:
    return _WS.sub(" ", text).strip().casefold().rstrip(".!")


class FreeformTask(Task):
    name: ClassVar[str] = "freeform"
    instruction: ClassVar[str] = "Answer clearly and completely."

    @property
    def has_ground_truth(self) -> bool:
        return False

    def extract(self, text: str) -> str | None:
        stripped = (text or "").strip()
        return stripped or None

    def equivalent(self, a: str | None, b: str | None) -> bool:
        if a is None or b is None:
            return False
        return normalise(a) == normalise(b)
