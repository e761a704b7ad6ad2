"""What a teacher plugin hands the engine, checked where it is handed over.

A teacher's answer goes straight into `query_settled`, and from there into every fold, export and
resume: a text that is not a string (a third-party `complete()` returning numbers) was stored as it
was, which broke the log's schema for good (`audit` failed, and a resume replayed the bad text from
the store). And what its own code raises is a bug in it, not a provider's failure: taken for a
server error, it was retried until the budget was spent, each attempt charged as maybe billed. So
the contract is checked here, once, and a breach stops the run in one line that names the teacher.
"""

from __future__ import annotations

from typing import Any

from ..api import Completion, RateLimitInfo, Teacher, Usage
from ..errors import PluginFailed
from ..plugin_faults import failure


def checked_teacher(made: Any, who: str) -> Teacher:
    """What a teacher factory returned, if it is a teacher."""
    if not isinstance(made, Teacher):
        raise PluginFailed(f"{who} returned {type(made).__name__} from its factory; expected a teacher "
                           "(provider, complete(), prompt_tokens_upper_bound(), aclose())")
    return made


def prompt_bound(teacher: Teacher, request: Any, who: str) -> int:
    """`prompt_tokens_upper_bound(request)`: the budget reserves it, so it must be a count."""
    try:
        bound = teacher.prompt_tokens_upper_bound(request)
    except Exception as exc:
        raise PluginFailed(failure(f"{who} prompt_tokens_upper_bound()", exc)) from exc
    if type(bound) is not int or bound < 0:
        raise PluginFailed(f"{who} returned {bound!r} from prompt_tokens_upper_bound(); expected a whole number "
                           "of tokens, 0 or more")
    return bound


def raised(who: str, exc: BaseException) -> PluginFailed:
    """A teacher's `complete()` raised what is not a TeacherError."""
    return PluginFailed(failure(f"{who} complete()", exc) + " (a teacher reports a provider's failures as "
                        "TeacherError; anything else stops the run)")


def checked_completion(got: Any, who: str) -> Completion:
    """What `complete()` returned, if the ledger can record it as it is."""
    if not isinstance(got, Completion):
        raise PluginFailed(f"{who} returned {type(got).__name__} from complete(); expected a Completion")
    problem = _problem(got)
    if problem is not None:
        raise PluginFailed(f"{who} returned a Completion from complete() whose {problem}")
    return got


def _problem(c: Completion) -> str | None:
    if not isinstance(c.texts, list):
        return f"texts is {type(c.texts).__name__}; expected a list of str"
    for i, text in enumerate(c.texts):
        if type(text) is not str:
            return f"texts[{i}] is {type(text).__name__}; expected str"
    if not isinstance(c.usage, Usage):
        return f"usage is {type(c.usage).__name__}; expected a Usage"
    for name in ("input_tokens", "output_tokens", "cached_input_tokens"):
        value = getattr(c.usage, name)
        if type(value) is not int or value < 0:
            return f"usage.{name} is {value!r}; expected a whole number, 0 or more"
    if not isinstance(c.finish_reasons, list):
        return f"finish_reasons is {type(c.finish_reasons).__name__}; expected a list"
    for i, reason in enumerate(c.finish_reasons):
        if reason is not None and type(reason) is not str:
            return f"finish_reasons[{i}] is {type(reason).__name__}; expected str or None"
    if c.rate_limits is not None and not isinstance(c.rate_limits, RateLimitInfo):
        return f"rate_limits is {type(c.rate_limits).__name__}; expected a RateLimitInfo or None"
    if c.raw_model is not None and type(c.raw_model) is not str:
        return f"raw_model is {type(c.raw_model).__name__}; expected str or None"
    return None
