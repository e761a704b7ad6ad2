"""Built-in evaluators. Registration is torch-free; the model loads only when evaluating."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, ClassVar

from synthledger.engine.hookspecs import hookimpl
from synthledger.engine.api import Task

from .heldout import HeldoutError, load_heldout
from .options import AccuracyOptions

__all__ = ["AccuracyEvaluator", "AccuracyOptions", "HeldoutError", "load_heldout"]

OnEvent = Callable[[str, dict[str, Any]], None]


class AccuracyEvaluator:
    """`accuracy`: the share of held-out questions whose extracted answer matches the gold one."""

    name: ClassVar[str] = "accuracy"
    Options: ClassVar[type[AccuracyOptions]] = AccuracyOptions

    def __init__(self, options: AccuracyOptions | dict[str, Any] | None = None) -> None:
        self.options = options if isinstance(options, AccuracyOptions) else AccuracyOptions.model_validate(options or {})

    def heldout(self, exclude_questions: set[str] | None = None, base_dir: str | Path = ".") -> list[dict[str, str]]:
        return load_heldout(self.options.heldout, self.options.limit, exclude_questions,
                            on_overlap=self.options.on_overlap, base_dir=base_dir)

    def evaluate(self, model_or_adapter: str, examples: list[dict[str, str]], task: Task, out_path: Path | str,
                 on_event: OnEvent | None = None, progress: bool = True) -> dict[str, Any]:
        from .accuracy import evaluate

        return evaluate(model_or_adapter, examples, task, self.options, out_path, on_event, progress)

    def run(self, model_or_adapter: str, task: Task, out_path: Path | str, on_event: OnEvent | None = None,
            exclude_questions: set[str] | None = None, progress: bool = True,
            base_dir: str | Path = ".") -> dict[str, Any]:
        """Load the configured held-out set (checked against `exclude_questions`) and evaluate on it."""
        examples = self.heldout(exclude_questions, base_dir)
        result = self.evaluate(model_or_adapter, examples, task, out_path, on_event, progress)
        return result


@hookimpl
def register_evaluators(register):
    register(AccuracyEvaluator.name, AccuracyEvaluator)
