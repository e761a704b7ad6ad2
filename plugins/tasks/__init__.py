"""Built-in answer formats. Registered as classes: the engine instantiates them with no arguments."""

from synthledger.engine.hookspecs import hookimpl

from .freeform import FreeformTask
from .multiple_choice import MultipleChoiceTask
from .numeric import GSM8KTask

__all__ = ["FreeformTask", "GSM8KTask", "MultipleChoiceTask"]


@hookimpl
def register_tasks(register):
    for task in (GSM8KTask, MultipleChoiceTask, FreeformTask):
        register(task.name, task)
