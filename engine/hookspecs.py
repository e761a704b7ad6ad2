"""Hook specifications: every extension point of synthledger, one hook per kind of plugin.

Each hook receives a `register(name, factory)` callback. A plugin calls it once per thing it
provides; the host records which distribution it came from. Built-ins use these same hooks.
"""

import pluggy

hookspec = pluggy.HookspecMarker("synthledger")
hookimpl = pluggy.HookimplMarker("synthledger")


@hookspec
def register_teachers(register):
    """Register teacher providers: register("openai", factory(config) -> Teacher)."""


@hookspec
def register_strategies(register):
    """Register generation strategies: register("answer_augmentation", StrategyClass)."""


@hookspec
def register_verifiers(register):
    """Register sample verifiers: register("final_answer", VerifierClass)."""


@hookspec
def register_seed_sources(register):
    """Register seed loaders: register("jsonl", SeedSourceClass)."""


@hookspec
def register_tasks(register):
    """Register answer formats (how answers are asked for, extracted and compared)."""


@hookspec
def register_trainers(register):
    """Register student trainers: register("lora_sft", TrainerClass)."""


@hookspec
def register_evaluators(register):
    """Register evaluators: register("accuracy", EvaluatorClass)."""
