"""What makes a row a chat row a trainer can learn from (the OpenAI/TRL `messages` format).

Checked where a dataset file is read, before a training run is recorded and a student loaded, and
again by the trainer for rows it is handed directly: one definition, so a file the command accepts
is never refused minutes later for a reason it could have named at once, with its line."""

from __future__ import annotations

from typing import Any

ROLES = ("system", "user", "assistant")


def messages_problem(row: Any) -> str | None:
    """What is wrong with `row` as a chat row, by key path (None when nothing is)."""
    if not isinstance(row, dict) or "messages" not in row:
        return "expected an object with a 'messages' list (the OpenAI/TRL chat format)"
    messages = row["messages"]
    if not isinstance(messages, list) or not messages:
        return "'messages' must be a non-empty list"
    for j, message in enumerate(messages):
        if not isinstance(message, dict):
            return f"messages[{j}] must be an object with 'role' and 'content'"
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            return f"messages[{j}].role must be one of {', '.join(ROLES)}, got {role!r}"
        if not isinstance(content, str):
            return f"messages[{j}].content must be a string, got {type(content).__name__}"
    if not any(m["role"] == "assistant" for m in messages):
        return "no assistant message, so there is nothing to learn from it"
    return None
