"""Usage a provider reports beyond what the request could possibly use is a provider fault.

The budget reserves each attempt's worst case (prompt bound, `max_tokens` x n) and settles it to
the usage the provider reports, since that is what it will bill. A report above the worst case is
not a cost estimate gone wrong but a provider (or gateway) that miscounts or overbills: settling it
silently would push spend past the budget one reply at a time. So it is recorded as a fault, the
answer is still settled at what was reported, and the run stops with that reason, for a person to
look at before any more is spent.
"""

from __future__ import annotations

from ..api import Usage
from ..errors import FatalRunError
from ..ledger.events import Cost, ProviderFault
from ..ledger.ledger import Amount


def usage_fault(usage: Usage, worst: Amount) -> str | None:
    """Why `usage` is impossible for a request whose worst case is `worst`, or None if it is not."""
    problems = []
    if usage.output_tokens > worst.output_tokens:
        problems.append(f"{usage.output_tokens} completion tokens for a request capped at {worst.output_tokens} "
                        "(max_tokens x n)")
    if usage.input_tokens > worst.input_tokens:
        problems.append(f"{usage.input_tokens} prompt tokens for a prompt whose UTF-8 size bounds it at "
                        f"{worst.input_tokens}")
    if not problems:
        return None
    return "usage above the request's cap: " + "; ".join(problems)


def fault_event(qid: str, attempt: int, usage: Usage, worst: Amount, usd: float) -> ProviderFault | None:
    """The provider_fault event for an impossible report, or None when the usage is possible."""
    message = usage_fault(usage, worst)
    if message is None:
        return None
    return ProviderFault(query_id=qid, attempt=attempt, kind="usage_above_cap", message=message,
                         reported=Cost(queries=worst.queries, input_tokens=usage.input_tokens,
                                       output_tokens=usage.output_tokens, usd=usd),
                         cap=Cost(**worst.as_dict()))


def fault_error(provider: str, model: str, fault: ProviderFault) -> FatalRunError:
    return FatalRunError(f"provider fault: {provider} model {model} reported {fault.message}; stopping the run "
                         "(`audit` shows it; `generate --resume` continues)")
