"""Benchmark of tokenizer.py against tiktoken (encoding, decoding) and HF tokenizers (training).

Everything runs on the same 10 MB: a fixed shuffle of the train split of out/data/corpus.jsonl
(run data/prepare.py first). Each figure is the median of --repeats runs after a warm-up on
other text; ratios are peer time / our time in the same run (1.0 = as fast, higher = faster).

    training     Tokenizer.train to 16,384 ids vs HF tokenizers' BpeTrainer, one thread each,
                 same split pattern (GPT-4's) and special tokens              target >= 0.5
    encoding     encode_ordinary with GPT-2's ranks vs tiktoken's, one thread; our chunk cache
                 is emptied before every run                                   target >= 0.3
    regex only   the pre-tokenization split alone (the ceiling for one Python process)
    2 processes  our encoding in 2 processes vs tiktoken's one thread          target >= 0.5
    decoding     decode of the same ids vs tiktoken                            target >= 0.3

Run:
    pip install -r bench/requirements.txt
    python bench/bpe.py                   # the table
    python bench/bpe.py --exact           # also: GPT-2 ids equal tiktoken's on the whole corpus
"""

import os

os.environ.setdefault("RAYON_NUM_THREADS", "1")        # HF tokenizers on one thread, set before import
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse  # noqa: E402
import json  # noqa: E402
import multiprocessing  # noqa: E402
import random  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tokenizer import GPT2_PATTERN, GPT4_PATTERN, SPECIAL_TOKENS, Tokenizer, gpt2_ranks_path  # noqa: E402


def read_corpus(corpus):
    """(train-split texts in a fixed shuffled order, every text of the corpus)."""
    docs = [json.loads(line) for line in open(corpus, encoding="utf-8")]
    train = [d["text"] for d in docs if d["split"] == "train"]
    random.Random(0).shuffle(train)
    return train, [d["text"] for d in docs]


def take(texts, mb, skip_mb=0.0):
    """The texts that make up `mb` MB after the first `skip_mb` MB."""
    out, total = [], 0
    for t in texts:
        total += len(t.encode())
        if skip_mb * 1e6 < total <= (skip_mb + mb) * 1e6:
            out.append(t)
    return out


def median_time(fn, repeats, before=None):
    times, result = [], None
    for _ in range(repeats):
        if before:
            before()
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def hf_train(texts, vocab_size):
    from tokenizers import Regex, models, pre_tokenizers, trainers
    from tokenizers import Tokenizer as HFTokenizer
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(GPT4_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    return tok


_ENC = None


def _encode_part(texts):
    return [_ENC.encode_ordinary(t) for t in texts]


def encode_parallel(pool, texts, workers):
    parts = [texts[i::workers] for i in range(workers)]
    return pool.map(_encode_part, parts)


def main():
    global _ENC
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--corpus", default="out/data/corpus.jsonl", help="data/prepare.py output")
    p.add_argument("--mb", type=float, default=10, help="MB of text for every measurement")
    p.add_argument("--vocab-size", type=int, default=16384, help="training target")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per figure (median)")
    p.add_argument("--exact", action="store_true", help="check GPT-2 ids against tiktoken on the whole corpus")
    args = p.parse_args()
    try:
        import tiktoken
        import tokenizers  # noqa: F401
    except ImportError:
        sys.exit("error: a peer is missing; run: pip install -r requirements-dev.txt -r bench/requirements.txt")
    if not Path(args.corpus).exists():
        sys.exit(f"error: no {args.corpus}; run data/prepare.py first")

    train, everything = read_corpus(args.corpus)
    texts, warm = take(train, args.mb), take(train, 0.5, skip_mb=args.mb)
    mb = sum(len(t.encode()) for t in texts) / 1e6
    gpt2 = Tokenizer.from_tiktoken_file(gpt2_ranks_path(), GPT2_PATTERN, {"<|endoftext|>": 50256})
    ref = tiktoken.Encoding("gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=dict(gpt2.ranks),
                            special_tokens={"<|endoftext|>": 50256})
    rows = []

    # training
    Tokenizer.train(warm, 1024)
    hf_train(warm, 1024)
    t_ours, _ = median_time(lambda: Tokenizer.train(texts, args.vocab_size), args.repeats)
    t_hf, _ = median_time(lambda: hf_train(texts, args.vocab_size), args.repeats)
    rows.append(("training to %d ids" % args.vocab_size, t_ours, t_hf, 0.5))

    # encoding, one thread (our cache emptied before each run: no credit for having seen the text)
    for t in warm:
        gpt2.encode_ordinary(t)
        ref.encode_ordinary(t)
    t_ours, ids = median_time(lambda: [gpt2.encode_ordinary(t) for t in texts], args.repeats,
                              before=gpt2.cache.clear)
    t_tik, ref_ids = median_time(lambda: [ref.encode_ordinary(t) for t in texts], args.repeats)
    assert ids == ref_ids, "encodings differ from tiktoken's"
    rows.append(("encoding, 1 process", t_ours, t_tik, 0.3))
    t_re, _ = median_time(lambda: [gpt2.compiled_pattern.findall(t) for t in texts], args.repeats)
    rows.append(("  regex split alone", t_re, t_tik, None))

    # encoding, 2 processes (each with its own cache, emptied: the pool is new each run)
    _ENC = gpt2
    gpt2.cache.clear()
    times = []
    for _ in range(args.repeats):
        with multiprocessing.Pool(2) as pool:
            pool.map(_encode_part, [warm[:1]] * 2)                    # processes started
            t0 = time.perf_counter()
            encode_parallel(pool, texts, 2)
            times.append(time.perf_counter() - t0)
    rows.append(("encoding, 2 processes", statistics.median(times), t_tik, 0.5))

    # decoding
    t_ours, out = median_time(lambda: [gpt2.decode(i) for i in ids], args.repeats)
    t_tik, _ = median_time(lambda: [ref.decode(i) for i in ids], args.repeats)
    assert out == [ref.decode(i) for i in ids]
    rows.append(("decoding", t_ours, t_tik, 0.3))

    print(f"\ntokenizer.py vs peers on the same {mb:.1f} MB, median of {args.repeats} "
          f"(peer: HF tokenizers {tokenizers.__version__} for training, tiktoken {tiktoken.__version__} after)\n")
    print("| measure | ours s | ours MB/s | peer s | ratio peer/ours | target |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, ours, peer, target in rows:
        print(f"| {name} | {ours:.2f} | {mb / ours:.2f} | {peer:.2f} | {peer / ours:.2f} | "
              f"{'>= %.1f' % target if target else '-'} |")

    if args.exact:
        gpt2.cache.clear()
        total = len(everything)
        bad = sum(gpt2.encode_ordinary(t) != ref.encode_ordinary(t) for t in everything)
        size = sum(len(t.encode()) for t in everything) / 1e6
        print(f"\nexactness: GPT-2 ids equal tiktoken's on {total - bad:,} of {total:,} documents "
              f"({size:.1f} MB, the whole corpus)")
        if bad:
            sys.exit(1)


if __name__ == "__main__":
    main()
