"""Built-in verifiers: none, final_answer (free), self_consistency and llm_judge (cost queries)."""

from synthledger.engine.hookspecs import hookimpl

from .final_answer import FinalAnswer, NoVerification
from .llm_judge import LLMJudge
from .self_consistency import SelfConsistency

__all__ = ["FinalAnswer", "LLMJudge", "NoVerification", "SelfConsistency"]


@hookimpl
def register_verifiers(register):
    for verifier in (NoVerification, FinalAnswer, SelfConsistency, LLMJudge):
        register(verifier.name, verifier)
