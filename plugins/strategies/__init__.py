"""Built-in generation strategies: the research's three families and a mix of them."""

from synthledger.engine.hookspecs import hookimpl

from .answer_augmentation import AnswerAugmentation
from .mix import Mix
from .new_question import NewQuestion
from .question_rephrase import QuestionRephrase

__all__ = ["AnswerAugmentation", "Mix", "NewQuestion", "QuestionRephrase"]


@hookimpl
def register_strategies(register):
    for strategy in (AnswerAugmentation, QuestionRephrase, NewQuestion, Mix):
        register(strategy.name, strategy)
