"""The base of every event class: a strict pydantic model that knows its own type string.

`SomeEvent.TYPE` is what code compares `ev.type` with and passes as a type filter, so an event
type is spelled once, in its class's `type` field."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict


class EventBase(BaseModel):
    # Validators are built on an event type's first use: a run uses a handful of the ~35 types,
    # and building them all at import was a twentieth of a second of every command's start-up.
    model_config = ConfigDict(extra="forbid", defer_build=True)
    TYPE: ClassVar[str]

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        field = cls.model_fields.get("type")
        if field is not None:
            cls.TYPE = field.default
