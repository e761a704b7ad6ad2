import pytest

from synthledger.engine.output.diversity import distinct_ngram_ratio, diversity_stats


def test_distinct_bigrams():
    # "a b c" + "a b d": bigrams (a,b),(b,c),(a,b),(b,d) -> 3 distinct of 4
    assert distinct_ngram_ratio(["a b c", "A, b d"], n=2) == pytest.approx(0.75)
    assert distinct_ngram_ratio(["same text here"] * 4, n=2) == pytest.approx(0.25)
    assert distinct_ngram_ratio(["one two three four"], n=1) == 1.0


def test_ngrams_never_span_texts_and_empty_input_is_zero():
    assert distinct_ngram_ratio(["a", "b"], n=2) == 0.0
    assert distinct_ngram_ratio([], n=2) == 0.0
    with pytest.raises(ValueError):
        distinct_ngram_ratio(["a"], n=0)


def test_stats_show_repetition():
    varied = diversity_stats(["How many apples?", "Trains leave at noon.", "Compute the area of a circle."])
    repeated = diversity_stats(["How many apples?"] * 3)
    assert varied["unique_ratio"] == 1.0 and repeated["unique_ratio"] == pytest.approx(1 / 3)
    assert varied["distinct_2"] > repeated["distinct_2"]
    assert repeated["mean_words"] == 3.0 and repeated["count"] == 3
