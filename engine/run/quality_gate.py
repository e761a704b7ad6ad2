"""The engine's own checks on every sample, before any verifier: is the answer whole, and is it new?

Two failures cost money silently and no verifier catches them. An answer the teacher cut off at
`max_tokens` (finish reason "length") reads as complete in an export, yet teaches the student to
stop mid-sentence. A teacher that ignores `temperature` (greedy decoding on a self-hosted server)
answers the same question with the same text every time, so more answers per seed buy exact copies.
Both are rejected here by default (`[quality]` keeps them), with a kind `show` can count, and the
gate says once, while the run goes on, when the first answers show a teacher ignoring sampling or
disagreeing with the seeds' reference answers, when many of the first replies were cut off, or when
the augmenter keeps writing questions it wrote before (a greedy augmenter rephrases a seed the same
way every time), or when the verifier's votes copy the answer they check (a greedy teacher votes for
its own answer every time, so self-consistency accepts everything and checks nothing): each of those
is paid for and thrown away, or bought for nothing, so the user should hear it while the budget is
still there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from hashlib import blake2b
from typing import Any, Callable, Iterable

from ..api import Sample, Task
from ..ledger.events import ItemDone, RunWarning, SampleProposed, SampleRejected

# The first answers decide the warnings: enough to see a pattern, early enough to act on it.
WINDOW = 50
MIN_REPEATS = 4  # repeat answers (a question answered before) needed to judge sampling
MIN_REFERENCED = 8  # answers with a seed reference needed to judge agreement
DUPLICATE_SHARE = 0.5  # this share of exact copies among repeat answers = sampling is ignored
LOW_AGREEMENT = 0.5  # below this share of agreement with the references, say so
MIN_REPLIES = 10  # replies of one role needed to judge how many are cut off
MIN_QUESTIONS = 10  # new questions needed to judge how many repeat earlier ones
REPEATED_QUESTIONS = 0.25  # from this share of new questions that are exact copies on, say so
MIN_VOTES = 8  # verifier votes needed to judge how many copy the answer or another vote
HIGH_TRUNCATION = 0.1  # from this share of cut-off replies on, say so (the live warning's and `show`'s)
GATE_EVENTS = (SampleProposed.TYPE, SampleRejected.TYPE, ItemDone.TYPE, RunWarning.TYPE)  # what `load` reads


def high_truncation(cut: int, replies: int) -> bool:
    """So many replies were cut off at max_tokens that a person should raise it."""
    return replies > 0 and cut >= HIGH_TRUNCATION * replies


def low_agreement(agreeing: int, referenced: int) -> bool:
    """Enough answers had a seed reference to judge, and too few of them agreed with it: the one
    test behind the live warning, `show`'s and the experiment table's."""
    return referenced >= MIN_REFERENCED and agreeing < LOW_AGREEMENT * referenced


@dataclass(frozen=True)
class Reply:
    """One query a sample was built from, and why the teacher stopped writing its reply."""

    query_id: str
    role: str
    purpose: str
    finish_reason: str | None
    text: str = ""


@dataclass
class Problem:
    kind: str
    reason: str
    details: dict[str, Any] = field(default_factory=dict)


def truncated(reply: Reply) -> Problem:
    """A sample rejected because `reply` was cut off at max_tokens (by the gate, or as soon as the
    reply came back: see context.CutOff)."""
    return Problem("truncated", f"truncated: the {reply.role}'s {reply.purpose} reply was cut off at max_tokens",
                   {"query_id": reply.query_id, "role": reply.role, "purpose": reply.purpose})


def filtered(reply: Reply) -> Problem:
    """A sample rejected because the provider's safety system stopped `reply` part way (OpenAI's
    finish_reason "content_filter", Anthropic's stop_reason "refusal")."""
    return Problem("filtered", f"filtered: the {reply.role}'s {reply.purpose} reply was stopped by the provider's "
                               "content filter (or a refusal) part way",
                   {"query_id": reply.query_id, "role": reply.role, "purpose": reply.purpose})


def answer_reply(replies: list[Reply]) -> Reply | None:
    """The reply the sample's answer came from: the last one asked for an answer (else the last
    teacher reply, else none: the answer is not a model's, e.g. a seed's own)."""
    for pick in (lambda r: r.purpose == "answer", lambda r: r.role == "teacher"):
        found = [r for r in replies if pick(r)]
        if found:
            return found[-1]
    return None


def answer_query_id(query_ids: list[str], roles: dict[str, str]) -> str | None:
    """The same, from a recorded proposal: its last teacher query."""
    found = [q for q in query_ids if roles.get(q) == "teacher"]
    return found[-1] if found else None


def _norm(text: str) -> str:
    return " ".join(text.split())


def _digest(*parts: str) -> bytes:
    return blake2b("\0".join(_norm(p) for p in parts).encode("utf-8"), digest_size=16).digest()


class QualityGate:
    """One per run session. `warn(kind, message)` is called at most once per kind per run."""

    def __init__(self, task: Task, *, keep_truncated: bool = False, keep_duplicates: bool = False,
                 warn: Callable[[str, str], None] | None = None) -> None:
        self.task = task
        self.keep_truncated = keep_truncated
        self.keep_duplicates = keep_duplicates
        self._warn = warn or (lambda kind, message: None)
        # (question, answer) -> (item key, answer query id, seed id) of its first sample
        self._answers: dict[bytes, tuple[str, str | None, str | None]] = {}
        self._questions: set[bytes] = set()
        self.warned: set[str] = set()
        self.answers = self.repeats = self.copies = 0
        self.referenced = self.agreeing = 0
        self.replies = 0
        self.cut_by_role: dict[str, list[int]] = {}  # role -> [cut off, replies] among the first WINDOW
        self.cut_votes: dict[str, int] = {}  # role -> of its cut-off replies, the verifier's votes
        self.questions = self.repeated_questions = 0
        self.votes = self.copied_votes = 0

    # ---- state from earlier sessions of the run ------------------------------------------
    def load(self, events: Iterable[Any]) -> None:
        """Remember the answers of finished items and the warnings already given (a resume)."""
        pending: dict[str, list[tuple[str, bytes, bytes, str | None, str | None]]] = {}  # item -> undecided proposals
        for ev in events:
            p = ev.payload
            if ev.type == SampleProposed.TYPE:
                pending.setdefault(p["item"], []).append(
                    (p["sample_id"], _digest(p["question"], p["answer"]), _digest(p["question"]),
                     answer_query_id(p.get("query_ids") or [], p.get("roles") or {}), p.get("seed_id")))
            elif ev.type == SampleRejected.TYPE and p.get("stage") == "quality" and p.get("sample_id"):
                left = [x for x in pending.get(p["item"], []) if x[0] != p["sample_id"]]
                pending[p["item"]] = left  # never entered the index
            elif ev.type == ItemDone.TYPE:
                for _, both, question, qid, seed_id in pending.pop(p["item"], []):
                    self._answers.setdefault(both, (p["item"], qid, seed_id))
                    self._questions.add(question)
            elif ev.type == RunWarning.TYPE:
                self.warned.add(p["kind"])

    # ---- the check -------------------------------------------------------------------------
    def check(self, item_key: str, sample: Sample, replies: list[Reply]) -> Problem | None:
        """None to go on to the verifier, else why the sample is rejected."""
        stopped = [r for r in replies if r.finish_reason == "content_filter"]
        if stopped:  # (kept by no option: what a safety filter left of an answer is no answer)
            return filtered(stopped[-1])
        cut = [r for r in replies if r.finish_reason == "length"]
        if cut and not self.keep_truncated:
            return truncated(cut[-1])
        answer = answer_reply(replies)
        if not cut and answer is not None:  # a seed's own answer (no teacher reply) agrees only with itself
            self._observe_agreement(sample)
        question = _digest(sample.question)
        both = _digest(sample.question, sample.answer)
        qid = answer.query_id if answer is not None else None
        repeat = question in self._questions
        first = self._answers.get(both)
        # A copy is a second *paid* answer with the same text. The same query asked again (two seeds
        # with one question) is answered from the store for free: its rows are the seeds' choice.
        elsewhere = first is not None and first[0] != item_key
        copy = elsewhere and first[1] != qid
        # The same query's answer again is free. For two seeds with one question the rows are the
        # seed set's; for one seed (or no seed) it is one answer exported twice: an augmenter that
        # wrote the same question again with [dedupe] off.
        again = elsewhere and first[1] == qid and first[2] == sample.seed_id
        self._observe_sampling(repeat, copy)
        self._questions.add(question)
        if (copy or again) and not self.keep_duplicates:
            return Problem("duplicate", f"duplicate: the same answer to the same question as item {first[0]}",
                           {"first_item": first[0]})
        self._answers.setdefault(both, (item_key, qid, sample.seed_id))
        return None

    # ---- warnings --------------------------------------------------------------------------
    def _observe_sampling(self, repeat: bool, copy: bool) -> None:
        if self.answers >= WINDOW:
            return
        self.answers += 1
        self.repeats += repeat
        self.copies += repeat and copy
        if self.answers == WINDOW:
            self._judge_sampling()

    def _observe_agreement(self, sample: Sample) -> None:
        if sample.reference is None or not self.task.has_ground_truth or self.referenced >= WINDOW:
            return
        self.referenced += 1
        self.agreeing += bool(self.task.equivalent(self.task.extract(sample.answer), sample.reference))
        if self.referenced == WINDOW:
            self._judge_agreement()

    def observe_replies(self, replies: Iterable[Reply]) -> None:
        """An item is done: count its replies (the verifier's too) toward the cut-off warning, and
        its votes toward the copied-votes one. A reply cut off is rejected before any check, so
        this is not part of `check`."""
        replies = list(replies)
        self._observe_votes(replies)
        if self.replies >= WINDOW:
            return
        for r in replies:
            if self.replies >= WINDOW:
                break
            self.replies += 1
            counts = self.cut_by_role.setdefault(r.role, [0, 0])
            counts[0] += r.finish_reason == "length"
            counts[1] += 1
            if r.finish_reason == "length" and r.purpose == "verify":
                self.cut_votes[r.role] = self.cut_votes.get(r.role, 0) + 1
        if self.replies >= WINDOW:
            self._judge_truncation()

    def _observe_votes(self, replies: list[Reply]) -> None:
        """A vote ("verify" reply) that is the text of the answer it checks, or of a vote before
        it on the same item, is a copy: at temperature > 0 a reasoning reply is never written twice."""
        if self.votes >= WINDOW:
            return
        votes = [r.text for r in replies if r.purpose == "verify"]
        if not votes:
            return
        answer = answer_reply(replies)
        seen = {_norm(answer.text)} if answer is not None and answer.purpose == "answer" else set()
        for text in votes[: WINDOW - self.votes]:
            vote = _norm(text)
            self.copied_votes += vote in seen
            seen.add(vote)
            self.votes += 1
        if self.votes >= WINDOW:
            self._judge_votes()

    def observe_question(self, duplicate_reason: str | None) -> None:
        """A new question was checked against the ones before it (`[dedupe]`): count the exact copies."""
        if self.questions >= WINDOW:
            return
        self.questions += 1
        self.repeated_questions += bool(duplicate_reason and duplicate_reason.startswith("exact duplicate"))
        if self.questions == WINDOW:
            self._judge_questions()

    def finish(self) -> None:
        """End of a session: judge what the window holds, for runs shorter than the window."""
        self._judge_sampling()
        self._judge_agreement()
        self._judge_truncation()
        self._judge_questions()
        self._judge_votes()

    def _judge_sampling(self) -> None:
        if self.repeats < MIN_REPEATS or self.copies < DUPLICATE_SHARE * self.repeats:
            return
        self._say("sampling_ignored",
                  f"the teacher seems to ignore sampling: {self.copies} of {self.repeats} repeat answers to the same "
                  "question were exact copies of an earlier one (rejected as duplicates, but paid for). Check that "
                  "the server honours temperature (greedy decoding gives one answer per prompt), or spend the budget "
                  "on new questions (strategy question_rephrase or new_question) instead of more answers per seed")

    def _judge_agreement(self) -> None:
        n = self.referenced
        if not low_agreement(self.agreeing, n):
            return
        self._say("low_agreement",
                  f"the teacher's final answers agree with the seeds' reference answers in only {self.agreeing} of "
                  f"{n} samples ({self.agreeing / n:.0%}): check the seeds' answers and [task] name, the answer "
                  "template and max_tokens; much of this data may be wrong")

    def _judge_truncation(self) -> None:
        worst = [(role, cut, n) for role, (cut, n) in sorted(self.cut_by_role.items())
                 if n >= MIN_REPLIES and high_truncation(cut, n)]
        if not worst:
            return
        said = "; ".join(f"{cut} of the first {n} {role} replies" for role, cut, n in worst)
        roles = " and ".join(f"the {role}" for role, cut, _ in worst if cut > self.cut_votes.get(role, 0))
        votes = sum(self.cut_votes.get(role, 0) for role, _, _ in worst)
        fate = ("kept cut off ([quality] keep_truncated)" if self.keep_truncated else "rejected")
        # (QA: votes cut off at the verifier's own max_tokens were told as the teacher's setting)
        advice = (f"Raise max_tokens for {roles} in the config" if roles else "")
        if votes:
            advice += ("; " if advice else "") + (f"{votes} of them were the verifier's votes, each counted as no "
                                                  "answer: raise [verifier] max_tokens")
        self._say("truncated_replies",
                  f"{said} were cut off at max_tokens: each is paid for, then {fate if roles else 'of no use'}. "
                  f"{advice}; the run goes on as configured")

    def _judge_questions(self) -> None:
        self._say_copies("questions_repeated", self.repeated_questions, self.questions, MIN_QUESTIONS,
                         REPEATED_QUESTIONS,
                         "new questions were exact copies of a question written before (rejected as duplicates, but "
                         "the augmenter was paid for each). Check that the model writing questions ([augmenter], else "
                         "[teacher]) honours temperature: greedy decoding writes the same question for the same "
                         "prompt. With few seeds, more answers per seed (strategy answer_augmentation) may spend the "
                         "budget better")

    def _judge_votes(self) -> None:
        self._say_copies("votes_copied", self.copied_votes, self.votes, MIN_VOTES, DUPLICATE_SHARE,
                         "verifier votes were exact copies of the answer they check or of another vote: the teacher "
                         "seems to ignore sampling, so each vote is paid for and agrees by construction "
                         "(self-consistency then accepts everything). Check that the server honours temperature, or "
                         "drop the [verifier] and spend its queries on more samples")

    def _say_copies(self, kind: str, copies: int, n: int, minimum: int, share: float, what: str) -> None:
        """Warn `kind` when at least `minimum` were seen and `share` of them or more were copies."""
        if n >= minimum and copies >= share * n:
            self._say(kind, f"{copies} of the first {n} {what}")

    def _say(self, kind: str, message: str) -> None:
        if kind in self.warned:
            return
        self.warned.add(kind)
        self._warn(kind, message)
