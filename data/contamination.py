"""Benchmark contamination: which texts share a 13-word sequence with a benchmark's items.

A training document that contains a benchmark item's words would let the model recite the
answer instead of earning it (GPT-3's test, Brown et al. 2020, App. C, with n = 13). Two
stages ask the question from opposite sides, with the same n-grams:
- data/prepare.py --decontaminate drops training documents that share an n-gram with any
  item (`benchmark_ngrams`, then `word_ngrams` per document);
- evaluate.py reports, per benchmark, the items that share one with the corpus' train split
  (`contamination`).

The n-grams are taken after dedup's normalisation (lower case, no accents, no punctuation),
so formatting differences do not hide an overlap. `benchmark_ngrams` reads the items through
benchmarks.load_task: stage 1's helper using the benchmark loader, an import that points
down (benchmarks.py imports nothing from data/).
"""

import benchmarks
from data.dedup import normalize_for_dedup

# The benchmarks --decontaminate accepts: those evaluate.py scores.
BENCHMARKS = tuple(benchmarks.TASKS)


def word_ngrams(text, n=13):
    """The set of n-word sequences of the text after dedup's normalisation (lower case, no
    accents, no punctuation), so formatting differences do not hide an overlap."""
    words = normalize_for_dedup(text).split()
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def contamination(train_texts, items, n=13):
    """Which benchmark items share at least one n-gram with the training texts (GPT-3's test,
    Brown et al. 2020, App. C, with n = 13).

    items: {item id: text}, an id being any sortable key (evaluate.py uses (benchmark, id)
    pairs). Items shorter than n words cannot be checked this way and are counted apart.
    Streams the training texts: memory holds the items' n-grams only.
    Returns {"items", "checked", "too_short", "contaminated", "fraction", "ids", "short_ids"}.
    """
    owners = {}
    short = []
    for item_id, text in items.items():
        grams = word_ngrams(text, n)
        if not grams:
            short.append(item_id)
        for g in grams:
            owners.setdefault(g, set()).add(item_id)
    hit = set()
    for text in train_texts:
        for g in word_ngrams(text, n) & owners.keys():
            hit |= owners[g]
    checked = len(items) - len(short)
    return {"items": len(items), "checked": checked, "too_short": len(short), "contaminated": len(hit),
            "fraction": len(hit) / checked if checked else 0.0, "ids": sorted(hit), "short_ids": short}


def benchmark_ngrams(names, truthfulqa_csv=None, n=13):
    """{hash of an n-gram: benchmark} over every item of the named benchmarks, for dropping
    contaminated training documents (data/prepare.py --decontaminate). Hashes, not the
    n-grams themselves: millions of 13-word tuples would take gigabytes. Unavailable
    benchmarks (TruthfulQA without its CSV) are skipped and named in the second value."""
    index, skipped = {}, []
    for name in names:
        try:
            items = benchmarks.load_task(name, truthfulqa_csv)
        except benchmarks.Unavailable as e:
            skipped.append(f"{name} ({e})")
            continue
        for item in items:
            for g in word_ngrams(item["text"], n):
                index[hash(g)] = name
    return index, skipped
