import collections
import itertools
import tracemalloc

import pytest
from pydantic import ValidationError

from synthledger.engine import host as plugins
from synthledger.engine.api import Seed
from synthledger.plugins.strategies import AnswerAugmentation, Mix, NewQuestion, QuestionRephrase
from synthledger.plugins.strategies.common import clean_question, parse_yes_no
from synthledger.plugins.tasks import GSM8KTask

TASK = GSM8KTask()


def make_seeds(n: int, answers: bool = True) -> list[Seed]:
    return [Seed(id=f"s{i}", question=f"Question number {i}?", answer=f"#### {i}" if answers else None) for i in range(n)]


def build(cls, seeds=None, random_seed=0, **options):
    return cls(cls.Options(**options), make_seeds(10) if seeds is None else seeds, TASK, random_seed)


def take(strategy, n):
    return list(itertools.islice(strategy.plan(), n))


def test_registered():
    for cls in (AnswerAugmentation, QuestionRephrase, NewQuestion, Mix):
        assert plugins.get("strategies", cls.name) is cls


@pytest.mark.parametrize("cls", [AnswerAugmentation, QuestionRephrase, NewQuestion])
def test_plans_are_deterministic_with_unique_keys(cls):
    a, b = take(build(cls, random_seed=5), 500), take(build(cls, random_seed=5), 500)
    assert a == b
    assert len({item.key for item in a}) == 500
    assert all(item.strategy == cls.name for item in a)
    assert take(build(cls, random_seed=6), 30) != a[:30]  # the random seed changes the plan


@pytest.mark.parametrize("cls, prefix", [(AnswerAugmentation, "aa"), (QuestionRephrase, "qr")])
def test_round_robin_spreads_evenly_and_remainders_go_first_in_order(cls, prefix):
    seeds = make_seeds(10)
    items = take(build(cls, seeds, random_seed=3), 25)
    counts = collections.Counter(item.seed.id for item in items)
    assert sorted(counts.values()) == [2] * 5 + [3] * 5
    first_round = [item.seed.id for item in items[:10]]
    assert sorted(first_round) == sorted(s.id for s in seeds)
    assert {sid for sid, c in counts.items() if c == 3} == set(first_round[:5])
    assert items[12].key == f"{prefix}:{items[12].seed.id}:1" and items[12].sample_index == 1
    assert first_round != [s.id for s in seeds]  # the order is shuffled, not file order


def test_per_seed_cap_makes_the_plan_finite():
    assert len(list(build(AnswerAugmentation, samples_per_seed=3).plan())) == 30
    assert len(list(build(QuestionRephrase, rephrases_per_seed=2).plan())) == 20


def test_empty_seed_set_gives_an_empty_plan():
    for cls in (AnswerAugmentation, QuestionRephrase, NewQuestion):
        assert take(build(cls, seeds=[]), 5) == []


@pytest.mark.parametrize(
    "cls, options",
    [
        (AnswerAugmentation, {}),
        (QuestionRephrase, {}),
        (NewQuestion, {}),
        (Mix, {"parts": [{"name": "answer_augmentation", "fraction": 0.5}, {"name": "new_question", "fraction": 0.5}]}),
    ],
)
def test_plans_are_lazy_whatever_the_budget(cls, options):
    # A 1M-query budget must not mean 1M planned items in memory: pulling items costs O(1) each,
    # and walking 20k of them (several MB if they were kept) stays within a small constant.
    strategy = build(cls, make_seeds(1000), **options)
    tracemalloc.start()
    try:
        plan = strategy.plan()
        assert len(list(itertools.islice(plan, 10))) == 10
        ten = tracemalloc.get_traced_memory()[1]
        for _ in itertools.islice(plan, 20_000):
            pass
        walked = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert ten < 200_000, ten
    assert walked < 400_000, walked


def test_new_question_examples_are_distinct_seeds_and_items_independent():
    strategy = build(NewQuestion, make_seeds(10), num_examples=3, random_seed=1)
    items = take(strategy, 200)
    ids = {s.id for s in strategy.seeds}
    for i, item in enumerate(items):
        examples = item.extra["examples"]
        assert len(examples) == 3 and len(set(examples)) == 3 and set(examples) <= ids
        assert item.key == f"nq:{i}" and item.sample_index == i and item.seed.id == examples[0]
    assert len({tuple(i.extra["examples"]) for i in items}) > 100  # draws vary between items
    few = take(build(NewQuestion, make_seeds(2), num_examples=3), 3)
    assert all(len(i.extra["examples"]) == 2 for i in few)


def test_item_costs_are_worst_case_per_role():
    aa = build(AnswerAugmentation)
    assert aa.item_cost(take(aa, 1)[0]) == {"teacher": 1}
    nq = build(NewQuestion)
    assert nq.item_cost(take(nq, 1)[0]) == {"augmenter": 2, "teacher": 1}
    nq = build(NewQuestion, check_well_posed=False)
    assert nq.item_cost(take(nq, 1)[0]) == {"augmenter": 1, "teacher": 1}
    qr = build(QuestionRephrase, reuse_seed_answer=True)
    assert qr.item_cost(take(qr, 1)[0]) == {"augmenter": 1}
    qr = build(QuestionRephrase, make_seeds(3, answers=False), reuse_seed_answer=True)
    assert qr.item_cost(take(qr, 1)[0]) == {"augmenter": 1, "teacher": 1}  # nothing to reuse
    assert build(QuestionRephrase).item_cost(take(qr, 1)[0]) == {"augmenter": 1, "teacher": 1}


def mix(parts, seeds=None, random_seed=0):
    return build(Mix, seeds, random_seed, parts=parts)


def test_mix_interleaves_in_proportion_in_every_prefix():
    strategy = mix([{"name": "answer_augmentation", "fraction": 0.3},
                    {"name": "new_question", "fraction": 0.7, "num_examples": 2}])
    items = take(strategy, 1000)
    counts = collections.Counter()
    for n, item in enumerate(items, 1):
        counts[item.strategy] += 1
        assert abs(counts["answer_augmentation"] - 0.3 * n) <= 1
        assert abs(counts["new_question"] - 0.7 * n) <= 1
    assert strategy.budget_fractions() == {"answer_augmentation": 0.3, "new_question": 0.7}
    assert set(strategy.roles) == {"teacher", "augmenter"}
    assert items == take(mix([{"name": "answer_augmentation", "fraction": 0.3},
                              {"name": "new_question", "fraction": 0.7, "num_examples": 2}]), 1000)
    nq_item = next(i for i in items if i.strategy == "new_question")
    assert len(nq_item.extra["examples"]) == 2  # the sub-options reached the part
    assert strategy.item_cost(nq_item) == {"augmenter": 2, "teacher": 1}


def test_mix_continues_when_a_finite_part_ends():
    strategy = mix([{"name": "answer_augmentation", "fraction": 0.5, "samples_per_seed": 1},
                    {"name": "question_rephrase", "fraction": 0.5}])
    items = take(strategy, 100)
    assert sum(i.strategy == "answer_augmentation" for i in items) == 10
    assert len(items) == 100


def test_mix_names_a_part_that_ended_and_resumes_a_spent_part_that_regains_room():
    # The engine hands an ended part's unspent share to the others (run/handover.py): a part it had
    # found spent must then go on from where it stopped, in the same walk of the plan.
    strategy = mix([{"name": "answer_augmentation", "fraction": 0.5, "samples_per_seed": 1},
                    {"name": "question_rephrase", "fraction": 0.5}], seeds=make_seeds(2))
    whole = take(strategy, 12)
    plan = strategy.plan()
    head = [next(plan) for _ in range(5)]  # aa, qr, aa, qr, then aa has ended: qr
    assert strategy.ended_parts() == {"answer_augmentation"}
    strategy.share_spent("question_rephrase")
    assert next(plan, None) is None  # every part ended or spent: the plan ends
    strategy.share_regained("question_rephrase")
    plan = strategy.plan()
    assert [next(plan) for _ in range(12)] == whole  # a new walk yields the same items
    assert head == whole[:5]
    plan = strategy.plan()
    walked = [next(plan) for _ in range(2)]  # aa, qr
    strategy.share_spent("question_rephrase")
    walked.append(next(plan))  # aa only
    strategy.share_regained("question_rephrase")
    walked += [next(plan) for _ in range(4)]
    rephrases = [item for item in walked if item.strategy == "question_rephrase"]
    assert rephrases == [item for item in whole if item.strategy == "question_rephrase"][:len(rephrases)]
    assert len(rephrases) == 5  # the same walk went on where it stopped, nothing skipped or repeated


@pytest.mark.parametrize(
    "parts, message",
    [
        ([{"name": "answer_augmentation", "fraction": 0.3}, {"name": "new_question", "fraction": 0.6}],
         "fractions must sum to 1, got 0.9"),
        ([{"name": "nope", "fraction": 1.0}], "parts[0] (nope)"),
        ([{"name": "answer_augmentation", "fraction": 0.5}, {"name": "answer_augmentation", "fraction": 0.5}],
         "listed twice"),
        ([{"name": "mix", "fraction": 1.0}], "cannot contain a mix"),
        ([{"name": "new_question", "fraction": 1.0, "num_exampels": 2}], "parts[0] (new_question): num_exampels"),
        ([{"name": "answer_augmentation", "fraction": 1.0, "answer_template": "{q}"}],
         "parts[0] (answer_augmentation): answer_template: unknown placeholder {q}"),
    ],
)
def test_mix_config_errors(parts, message):
    with pytest.raises(ValidationError) as err:
        Mix.Options(parts=parts)
    assert message in str(err.value)


@pytest.mark.parametrize(
    "cls, option, template, message",
    [
        (AnswerAugmentation, "answer_template", "Solve: {question} {reasoning}", "unknown placeholder {reasoning}"),
        (AnswerAugmentation, "answer_template", "Solve this. {instruction}", "missing required placeholder {question}"),
        (AnswerAugmentation, "answer_template", "Solve {} please", "placeholder {} is not a plain name"),
        (QuestionRephrase, "rephrase_template", "Reword: {question}\n{instruction}", "unknown placeholder {instruction}"),
        (NewQuestion, "new_question_template", "Write a new question.", "missing required placeholder {examples}"),
        (NewQuestion, "check_template", "Is it ok? {q}", "unknown placeholder {q}"),
    ],
)
def test_template_errors_are_validation_errors_naming_option_and_variable(cls, option, template, message):
    with pytest.raises(ValidationError) as err:
        cls.Options(**{option: template})
    assert option in str(err.value)
    assert message in str(err.value)


def test_valid_templates_and_literal_braces_are_accepted():
    options = AnswerAugmentation.Options(answer_template='Reply as JSON {{"a": 1}}. {question}\n{instruction}')
    assert options.answer_template.format(question="Q", instruction="I") == 'Reply as JSON {"a": 1}. Q\nI'


def test_answer_augmentation_temperature_must_be_positive():
    with pytest.raises(ValidationError, match="temperature"):
        AnswerAugmentation.Options(temperature=0)


@pytest.mark.parametrize(
    "reply, expected",
    [
        ("How many apples are left?", "How many apples are left?"),
        ("Rephrased question: How many apples are left?", "How many apples are left?"),
        ('"How many apples are left?"', "How many apples are left?"),
        ("Sure! Here is the rephrased question:\n\n\u201cHow many apples are left?\u201d", "How many apples are left?"),
        ("**New problem:** Sam has 3 pens.\nHow many?", "Sam has 3 pens.\nHow many?"),
        ("```\nQuestion: What is 5 + 5?\n```", "What is 5 + 5?"),
        ("   ", ""),
    ],
)
def test_clean_question(reply, expected):
    assert clean_question(reply) == expected


@pytest.mark.parametrize(
    "reply, expected",
    [
        ("YES", True),
        ("no, it lacks the price", False),
        ("The question gives all numbers.\nVerdict: YES", True),
        ("Is it solvable? Yes it looks so... but no unit is given.\nVerdict: **NO**", False),
        ("It is fine, I think. YES", True),
        ("I cannot tell.", None),
    ],
)
def test_parse_yes_no(reply, expected):
    assert parse_yes_no(reply) is expected
