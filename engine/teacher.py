"""Moved: the provider contract is in `synthledger.engine.api`, header parsing in
`synthledger.engine.scheduler.headers`, `TeacherError`/`FailureKind` in `synthledger.engine.errors`.
This path keeps working for teachers written against it."""

from .api import (BatchAPI, BatchView, ChatRequest, Completion, FailureKind, RateLimitInfo, Teacher,  # noqa: F401
                  TeacherError, Usage,
                  parse_reset, parse_retry_after, rate_limits_from_headers, utf8_prompt_bound)
