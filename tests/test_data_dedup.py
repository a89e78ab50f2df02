"""Deduplication: MinHash's estimates, LSH recall and precision, exact keys, boilerplate."""

import numpy as np
import pytest

from data import dedup


def test_normalize_for_dedup():
    assert dedup.normalize_for_dedup("Café, CAFÉ!\n  naïve -- “quoted”") == "cafe cafe naive quoted"


def keys(text):
    norm = dedup.normalize_for_dedup(text)
    return dedup.exact_key(norm), dedup.shingle_ids(norm)


def test_exact_key_ignores_case_accents_punctuation_and_layout():
    a = keys("The Café is open.\nCome in!")[0]
    assert a == keys("the cafe   is open come in")[0]
    assert a != keys("The Café is closed. Come in!")[0]


def test_shingles_are_stable_and_unique():
    ids = dedup.shingle_ids("one two three four five six one two three four five six", n=5)
    # 8 five-word windows, but windows 6 and 7 repeat windows 0 and 1.
    assert len(ids) == 6
    assert np.all(ids < dedup.MERSENNE_31)
    assert np.array_equal(ids, keys("One, two; three four five six one two three four five six")[1])
    assert len(dedup.shingle_ids("too short", n=5)) == 1
    assert len(dedup.shingle_ids("", n=5)) == 0


def test_minhash_estimates_jaccard_within_002_on_average():
    """256 hashes, fixed seed, 200 random pairs with similarities spread over [0, 1]."""
    rng = np.random.default_rng(0)
    hasher = dedup.MinHasher(num_perm=256, seed=1)
    errors = []
    for _ in range(200):
        universe = rng.choice(dedup.MERSENNE_31, size=600, replace=False).astype(np.uint64)
        shared = rng.integers(0, 301)
        a = universe[:300]
        b = np.concatenate([universe[:shared], universe[300:600 - shared]])
        exact = len(np.intersect1d(a, b)) / len(np.union1d(a, b))
        estimate = dedup.estimate_jaccard(hasher.signature(a), hasher.signature(b))
        errors.append(abs(estimate - exact))
    assert np.mean(errors) < 0.02
    assert np.max(errors) < 0.12            # ~4 standard errors at J = 0.5


def test_minhash_signature_blocks_do_not_change_the_result():
    x = np.arange(1, 50_000, 7, dtype=np.uint64)
    hasher = dedup.MinHasher(64, seed=3)
    assert np.array_equal(hasher.signature(x, block=100), hasher.signature(x, block=1 << 20))


def random_doc(rng, vocab, n_words):
    return " ".join(rng.choice(vocab, size=n_words))


def edit(rng, text, vocab, fraction=0.01):
    """An edited copy: ~1% of words replaced, one word inserted, a sentence appended."""
    words = text.split()
    for i in rng.choice(len(words), size=max(1, int(fraction * len(words))), replace=False):
        words[i] = str(rng.choice(vocab))
    words.insert(int(rng.integers(len(words))), "indeed")
    return " ".join(words) + " This copy was updated later."


def test_lsh_finds_planted_near_duplicates_and_merges_nothing_else():
    rng = np.random.default_rng(42)
    vocab = np.array([f"w{i}" for i in range(3000)])
    originals = [random_doc(rng, vocab, int(rng.integers(200, 600))) for _ in range(300)]
    copies = [edit(rng, originals[i], vocab) for i in range(0, 300, 3)]     # 100 copies
    hasher = dedup.MinHasher(128, seed=1)
    index = dedup.LSHIndex(num_perm=128, bands=16, threshold=0.8)
    for i, text in enumerate(originals):
        assert index.add(f"o{i}", hasher.signature(keys(text)[1])) is None, \
            "a distinct document was merged"
    found = 0
    for j, text in enumerate(copies):
        twin = index.add(f"c{j}", hasher.signature(keys(text)[1]))
        assert twin in (None, f"o{3 * j}"), "a copy was matched to the wrong original"
        found += twin == f"o{3 * j}"
    assert found / len(copies) >= 0.95


def test_lsh_rejects_bands_that_do_not_divide():
    with pytest.raises(ValueError):
        dedup.LSHIndex(num_perm=128, bands=10)
    assert dedup.lsh_threshold(16, 8) == pytest.approx((1 / 16) ** (1 / 8))


FOOTER = "This article is copyright the Example News Company, all rights reserved."


def count_lines(docs, kind="prose"):
    counts = {}
    for text in docs:
        for line in dedup.boilerplate_candidates(text, kind):
            counts[dedup.line_key(line)] = counts.get(dedup.line_key(line), 0) + 1
    return counts


def test_boilerplate_lines_removed_after_first_occurrence():
    docs = [f"Story number {i} is about a different thing entirely.\nExit.\n{FOOTER}" for i in range(6)]
    docs.append("A story that quotes a long line only once, which is not boilerplate at all.\nExit.")
    counts = count_lines(docs)
    seen = set()
    out = [dedup.remove_boilerplate(d, "prose", counts, seen) for d in docs]
    assert out[0] == (docs[0], 0)                        # the first occurrence stays
    for i in range(1, 6):
        assert out[i] == (f"Story number {i} is about a different thing entirely.\nExit.", 1)
    assert out[6] == (docs[6], 0)                        # "Exit." recurs by nature: too short


def test_boilerplate_below_min_docs_is_kept():
    docs = [f"Body {i}\n{FOOTER}" for i in range(4)]     # in 4 documents, the minimum is 5
    counts, seen = count_lines(docs), set()
    assert [dedup.remove_boilerplate(d, "prose", counts, seen)[1] for d in docs] == [0, 0, 0, 0]


def test_boilerplate_in_code_only_touches_comment_lines():
    licence = "# Licensed under the Example Licence, version 2.0 (the 'Licence')."
    code_line = "    raise ValueError('the argument must be a positive integer')"
    docs = [f"{licence}\ndef f{i}(x):\n{code_line}" for i in range(6)]
    counts, seen = count_lines(docs, "code"), set()
    out = [dedup.remove_boilerplate(d, "code", counts, seen) for d in docs]
    assert out[0] == (docs[0], 0)
    assert out[5] == (f"def f5(x):\n{code_line}", 1)
