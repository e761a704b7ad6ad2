"""Verifier decisions. Only logic that needs no budget runs here; verifiers that query the teacher
are exercised end to end through the real engine and test server."""

import random
from typing import Any

import pytest
from pydantic import ValidationError

from synthledger.engine import host as plugins
from synthledger.engine.api import Sample, Seed
from synthledger.plugins.tasks import FreeformTask, GSM8KTask
from synthledger.plugins.verifiers import FinalAnswer, LLMJudge, NoVerification, SelfConsistency
from synthledger.plugins.verifiers.llm_judge import parse_judgement
from synthledger.plugins.verifiers.self_consistency import vote

GSM = GSM8KTask()


class NoQueriesContext:
    """A context for free verifiers: any model query is a test failure."""

    task = GSM
    seeds: list[Seed] = []

    async def ask(self, role: str, messages: list, **kwargs: Any) -> str:
        raise AssertionError(f"a free verifier asked the {role}")

    def check_new_question(self, question: str) -> str | None:
        return None

    def reject(self, reason: str, **details: Any) -> None:
        raise AssertionError("verifiers return verdicts, they do not reject")

    def rng(self, *salt: Any) -> random.Random:
        return random.Random(str(salt))


def sample(answer: str, reference: str | None = "72") -> Sample:
    return Sample(question="Q?", answer=answer, seed_id="s1", strategy="answer_augmentation", reference=reference)


def test_registered():
    for cls in (NoVerification, FinalAnswer, SelfConsistency, LLMJudge):
        assert plugins.get("verifiers", cls.name) is cls


async def test_none_accepts_everything():
    verdict = await NoVerification(NoVerification.Options(), GSM).verify(sample("anything"), NoQueriesContext())
    assert verdict.accepted


async def test_final_answer_compares_with_the_reference():
    verifier = FinalAnswer(FinalAnswer.Options(), GSM)
    ctx = NoQueriesContext()
    ok = await verifier.verify(sample("36 * 2 = 72\n#### 72.00"), ctx)
    assert ok.accepted and "matches" in ok.reason
    wrong = await verifier.verify(sample("#### 70"), ctx)
    assert not wrong.accepted and wrong.reason == "final answer 70 differs from reference 72"
    assert wrong.details == {"final": "70", "reference": "72"}
    none = await verifier.verify(sample("I am not sure."), ctx)
    assert not none.accepted and none.reason == "no final answer found"
    # A reference given as full seed answer text is reduced to its final answer too.
    assert (await verifier.verify(sample("#### 72", reference="so 72\n#### 72"), ctx)).accepted


async def test_final_answer_without_reference_follows_the_option():
    ctx = NoQueriesContext()
    accept = await FinalAnswer(FinalAnswer.Options(), GSM).verify(sample("#### 5", None), ctx)
    assert accept.accepted and accept.reason == "no reference"
    reject = await FinalAnswer(FinalAnswer.Options(on_missing_reference="reject"), GSM).verify(sample("#### 5", None), ctx)
    assert not reject.accepted
    free = await FinalAnswer(FinalAnswer.Options(), FreeformTask()).verify(sample("text", "text"), ctx)
    assert free.accepted and free.reason == "task has no ground truth"
    with pytest.raises(ValidationError):
        FinalAnswer.Options(on_missing_reference="maybe")


async def test_self_consistency_spends_nothing_on_an_answer_without_a_final():
    verifier = SelfConsistency(SelfConsistency.Options(k=4), GSM)
    assert verifier.item_cost() == {"teacher": 4}
    verdict = await verifier.verify(sample("no number"), NoQueriesContext())
    assert not verdict.accepted and verdict.reason == "sample has no final answer"


def test_vote_majority_including_own_answer():
    accepted = vote("42", ["42", "42.0", "41", "42"], GSM, 0.6)
    assert accepted.accepted and accepted.details["share"] == 0.8
    disagree = vote("41", ["42", "42", "42", "41"], GSM, 0.6)
    assert not disagree.accepted and "disagrees with majority 42" in disagree.reason
    weak = vote("42", ["42", "41", "40", None], GSM, 0.6)
    assert not weak.accepted and "2/5" in weak.reason
    tie = vote("42", ["42", "41", "41"], GSM, 0.5)
    assert tie.accepted  # ties go to the sample's own group
    nones = vote("42", [None, None, None, None], GSM, 0.6)
    assert not nones.accepted and nones.details["votes"] == {"42": 1}


@pytest.mark.parametrize(
    "reply, score",
    [
        ("Reasoning is fine.\nScore: 8/10", 0.8),
        ("Score: 7", 0.7),
        ("Score: **9 out of 10**", 0.9),
        ("Verdict: PASS", 1.0),
        ("The answer has 3 errors in 2 steps. FAIL", 0.0),
        ("I would give it 4/5.", 0.8),
        ("It scored 3 points on step 2. Score: 6/10", 0.6),
        ("Looks good to me.", None),
    ],
)
def test_parse_judgement(reply, score):
    assert parse_judgement(reply, 10) == (pytest.approx(score) if score is not None else None)


def test_llm_judge_options():
    judge = LLMJudge(LLMJudge.Options(role="augmenter"), GSM)
    assert judge.roles == ("augmenter",) and judge.item_cost() == {"augmenter": 1}
    with pytest.raises(ValidationError, match="judge_template: missing required placeholder {answer}"):
        LLMJudge.Options(judge_template="Grade {question}")
