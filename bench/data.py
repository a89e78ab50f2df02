"""Benchmark of the data stage: cleaning throughput and deduplication time at 1, 5 and 20 MB.

The question is how the cost grows with the corpus: the per-document rules should cost the
same per MB at any size, and so should deduplication, because the LSH index answers each
query from a few buckets instead of comparing against every kept document. The peer is
datasketch's MinHash + MinHashLSH (the library most pipelines reach for), run on the same
documents with the same shingles, hashes, bands and threshold.

Run:
    pip install -r bench/requirements.txt
    python bench/data.py                   # 1, 5, 20 MB, median of 3 after a warm-up
    python bench/data.py --sizes 1 5 --repeats 5

Prints a table: our seconds and MB/s, the peer's, and the ratio peer / ours (> 1: we are
faster). The documents are a deterministic shuffle of the default sources (downloaded once).
"""

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from data import dedup, prepare, sources  # noqa: E402


def load_pool(max_bytes):
    """Raw documents from every default source, shuffled with a fixed seed."""
    docs = []
    for src in sources.SOURCES.values():
        docs += list(src.reader(src.fetch()))
    random.Random(0).shuffle(docs)
    pool, total = [], 0
    for d in docs:
        if total >= max_bytes:
            break
        pool.append(d)
        total += len(d["text"].encode())
    return pool


def prefix(pool, mb):
    out, total = [], 0
    for d in pool:
        if total >= mb * 1e6:
            break
        out.append(d)
        total += len(d["text"].encode())
    return out, total


def time_median(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def clean_all(docs):
    """The per-document rules in this process (what each worker of prepare.py does)."""
    return [r["doc"]["text"] for r in map(prepare.clean_document, docs) if not r["removed"]]


def exact_unique(texts):
    """(index, normalised text) of the first copy of each text: exact dedup, shared by both."""
    seen = set()
    for i, text in enumerate(texts):
        norm = dedup.normalize_for_dedup(text)
        key = dedup.exact_key(norm)
        if key not in seen:
            seen.add(key)
            yield i, norm


def ours_dedup(texts, num_perm, bands, threshold):
    """Exact keys, then MinHash signatures and the streaming LSH index, as prepare.py runs them."""
    hasher = dedup.MinHasher(num_perm, seed=1)
    index = dedup.LSHIndex(num_perm, bands, threshold)
    kept = 0
    for i, norm in exact_unique(texts):
        shingles = dedup.shingle_ids(norm)
        if len(shingles) and index.add(i, hasher.signature(shingles)) is None:
            kept += 1
    return kept


def peer_dedup(texts, num_perm, bands, threshold):
    """datasketch on the same normalised 5-word shingles, same bands and rows."""
    from datasketch import MinHash, MinHashLSH
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, params=(bands, num_perm // bands))
    kept, sigs = 0, {}
    for i, norm in exact_unique(texts):
        words = norm.split()
        if not words:
            continue
        n = min(5, len(words))
        grams = {" ".join(words[j:j + n]).encode() for j in range(len(words) - n + 1)}
        m = MinHash(num_perm=num_perm, seed=1)
        m.update_batch(list(grams))
        # MinHashLSH only finds candidates; check them as we do, by estimated Jaccard.
        if not any(m.jaccard(sigs[c]) >= threshold for c in lsh.query(m)):
            lsh.insert(i, m)
            sigs[i] = m
            kept += 1
    return kept


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=float, nargs="+", default=[1, 5, 20], help="corpus sizes in MB")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (median)")
    p.add_argument("--num-perm", type=int, default=128, help="MinHash hash functions")
    p.add_argument("--bands", type=int, default=16, help="LSH bands")
    p.add_argument("--jaccard", type=float, default=0.8, help="near-duplicate threshold")
    args = p.parse_args()
    try:
        import datasketch  # noqa: F401
    except ImportError:
        sys.exit("error: the peer is missing; run: pip install -r bench/requirements.txt")

    prepare.init_worker({"toxic_words": sources.load_toxic_words(), "max_toxicity": 10.0,
                         "num_perm": args.num_perm, "shingle_words": 5})
    pool = load_pool(max(args.sizes) * 1e6 * 1.01)
    warm, _ = prefix(pool, 0.2)
    clean_all(warm)                                            # warm-up: imports, caches
    ours_dedup([d["text"] for d in warm], args.num_perm, args.bands, args.jaccard)

    rows = []
    for mb in args.sizes:
        docs, nbytes = prefix(pool, mb)
        t_clean, texts = time_median(lambda: clean_all(docs), args.repeats)
        t_ours, kept_ours = time_median(lambda: ours_dedup(texts, args.num_perm, args.bands, args.jaccard),
                                        args.repeats)
        t_peer, kept_peer = time_median(lambda: peer_dedup(texts, args.num_perm, args.bands, args.jaccard),
                                        args.repeats)
        rows.append((nbytes / 1e6, len(docs), t_clean, t_ours, t_peer, kept_ours, kept_peer))
        print(f"... {nbytes / 1e6:.1f} MB done", file=sys.stderr)

    print(f"\nData stage, one process, median of {args.repeats} (MinHash {args.num_perm} hashes, "
          f"{args.bands} bands, J >= {args.jaccard})\n")
    print("| MB in | docs | clean s | clean MB/s | dedup s (ours) | dedup s (datasketch) | "
          "ratio peer/ours | kept ours / peer |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for mb, n, tc, to, tp, ko, kp in rows:
        print(f"| {mb:.1f} | {n:,} | {tc:.2f} | {mb / tc:.2f} | {to:.2f} | {tp:.2f} | {tp / to:.2f} | "
              f"{ko:,} / {kp:,} |")
    base = rows[0]
    print("\nGrowth against the smallest size (1.00 = exactly linear):")
    for mb, n, tc, to, tp, *_ in rows[1:]:
        scale = mb / base[0]
        print(f"  x{scale:.1f} data: cleaning x{tc / base[2]:.1f} ({tc / base[2] / scale:.2f} of linear), "
              f"dedup x{to / base[3]:.1f} ({to / base[3] / scale:.2f} of linear)")


if __name__ == "__main__":
    main()
