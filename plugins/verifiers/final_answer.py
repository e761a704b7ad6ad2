"""Verifiers that cost nothing: accept everything, or compare the final answer with the seed's.

The research found ground-truth filtering no better than spending the same money on more data,
but when the check is free (the task has ground truth) there is nothing to trade off.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from synthledger.engine.api import Context, PluginOptions, Sample, Seed, Verdict, Verifier


class NoVerification(Verifier):
    name: ClassVar[str] = "none"

    async def verify(self, sample: Sample, ctx: Context) -> Verdict:
        return Verdict(True, "not verified")


class FinalAnswer(Verifier):
    name: ClassVar[str] = "final_answer"

    class Options(PluginOptions):
        # New questions have no reference; accepting keeps them (the research: they still help).
        on_missing_reference: Literal["accept", "reject"] = "accept"

    options: Options

    def start_warnings(self, seeds: list[Seed]) -> list[str]:
        fate = ("accepted unchecked (verifier.on_missing_reference = \"reject\" drops them)"
                if self.options.on_missing_reference == "accept" else "rejected")
        if not self.task.has_ground_truth:
            return [f"final_answer verification: task {self.task.name!r} has no ground truth; every sample is {fate}"]
        missing = sum(1 for s in seeds if s.answer is None or self.task.extract(s.answer) is None)
        if not missing:
            return []
        return [f"final_answer verification: {missing} of {len(seeds)} seeds have no reference answer; "
                f"samples from them are {fate}"]

    async def verify(self, sample: Sample, ctx: Context) -> Verdict:
        if not self.task.has_ground_truth or sample.reference is None:
            why = "task has no ground truth" if not self.task.has_ground_truth else "no reference"
            # `unchecked` marks the verdict as not a check at all: `show` counts these.
            return Verdict(self.options.on_missing_reference == "accept", why, {"unchecked": why})
        final = self.task.extract(sample.answer)
        reference = self.task.extract(sample.reference) or sample.reference
        details = {"final": final, "reference": reference}
        if final is None:
            return Verdict(False, "no final answer found", details)
        if self.task.equivalent(final, reference):
            return Verdict(True, f"final answer {final} matches reference", details)
        return Verdict(False, f"final answer {final} differs from reference {reference}", details)
