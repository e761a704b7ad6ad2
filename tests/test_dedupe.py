import random

from synthledger.engine.run.dedupe import NearDuplicateIndex, choose_banding, jaccard, normalise, shingles


def words(rng: random.Random, n: int) -> list[str]:
    vocab = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 9))) for _ in range(3000)]
    return [" ".join(rng.choice(vocab) for _ in range(rng.randint(25, 40))) for _ in range(n)]


def test_normalise_ignores_case_punctuation_and_spacing():
    assert normalise("  How MANY apples,\n does   Tom have?! ") == "how many apples does tom have"


def test_exact_duplicate_after_normalisation():
    index = NearDuplicateIndex()
    index.add("How many apples does Tom have?", "seed s12")
    assert index.check("how many   apples, does tom have") == "exact duplicate of seed s12"


def test_near_duplicate_names_the_match_and_the_similarity():
    index = NearDuplicateIndex()
    base = "Tom has 12 apples and buys 7 more at the market on Monday. How many apples does Tom have now?"
    index.add("A completely different question about trains leaving stations at noon.", "q-000001")
    index.add(base, "q-000031")
    reason = index.check(base.replace("Monday", "Friday"))
    assert reason is not None and reason.startswith("near duplicate (jaccard 0.")
    assert reason.endswith("of q-000031")
    assert index.check("What is the capital of France, and when was it founded?") is None


def test_threshold_decides_with_exact_jaccard():
    a = "the quick brown fox jumps over the lazy dog near the river bank today"
    b = "the quick brown fox jumps over the lazy cat near the river bank today"
    sim = jaccard(shingles(normalise(a), 5), shingles(normalise(b), 5))
    assert 0.6 < sim < 0.95
    loose, strict = NearDuplicateIndex(threshold=sim - 0.01), NearDuplicateIndex(threshold=sim + 0.01)
    for index in (loose, strict):
        index.add(a, "x")
    assert loose.check(b) is not None
    assert strict.check(b) is None


def test_check_does_not_add_but_check_and_add_does():
    index = NearDuplicateIndex()
    assert index.check("some question text here") is None
    assert len(index) == 0
    assert index.check_and_add("some question text here", "q1") is None
    assert index.check_and_add("Some question text here!", "q2") == "exact duplicate of q1"
    assert len(index) == 1


def test_empty_text_is_never_new():
    assert NearDuplicateIndex().check("?!  ") == "empty after normalisation"


def test_banding_keeps_recall_at_the_threshold():
    bands, rows, min_hits = choose_banding(64, 0.8)
    assert bands * rows == 64
    p = 0.8 ** rows
    miss = sum(__import__("math").comb(bands, k) * p**k * (1 - p) ** (bands - k) for k in range(min_hits))
    assert miss < 0.01


def test_lsh_finds_nearly_all_pairs_above_threshold():
    rng = random.Random(1)
    texts = words(rng, 400)
    index = NearDuplicateIndex(threshold=0.8)
    for i, t in enumerate(texts):
        index.add(t, f"q{i}")
    found = total = 0
    for t in texts:
        w = t.split()
        w[rng.randrange(len(w))] = "zzzz"  # one word changed: jaccard ~0.85-0.95
        variant = " ".join(w)
        if jaccard(shingles(normalise(t), 5), shingles(normalise(variant), 5)) >= 0.82:
            total += 1
            found += index.check(variant) is not None
    assert total > 300
    assert found / total >= 0.99


def test_deterministic_across_instances():
    texts = words(random.Random(2), 200)
    probes = [t[:-12] + " extra words" for t in texts[:50]]
    results = []
    for _ in range(2):
        index = NearDuplicateIndex(seed=7)
        for i, t in enumerate(texts):
            index.add(t, f"q{i}")
        results.append([index.check(p) for p in probes])
    assert results[0] == results[1]


def test_a_check_compares_a_handful_of_candidates_however_large_the_index(monkeypatch):
    """The index confirms band collisions only: the exact similarity checks per probe do not grow
    with the index (a scan would make one per entry). Speed at 100,000 entries: benchmarks/dedupe.py."""
    from synthledger.engine.run import dedupe

    compared = 0
    real = dedupe.jaccard

    def counted(a, b):
        nonlocal compared
        compared += 1
        return real(a, b)

    monkeypatch.setattr(dedupe, "jaccard", counted)
    texts = words(random.Random(3), 5_000)
    index = NearDuplicateIndex()

    def checks_for(probes: list[str]) -> int:
        nonlocal compared
        compared = 0
        assert all(index.check(p) is not None for p in probes)
        return compared

    for i, t in enumerate(texts[:500]):
        index.add(t, f"q{i}")
    near = [t + " again" for t in texts[:100]]  # each is a near duplicate of one entry
    small = checks_for(near)
    for i, t in enumerate(texts[500:], 500):
        index.add(t, f"q{i}")
    large = checks_for(near)
    assert len(index) == 5_000
    assert 100 <= small <= 200 and large <= small + 20, (small, large)
