"""Stage 2: train the byte-level BPE tokenizer on the corpus and write the token shards.

A model reads integers, not text. This stage learns the tokenizer every later stage uses
(256 byte tokens, merges learned on a seeded sample of the train split, the 16 special
tokens; the algorithm is in tokenizer.py) and encodes both splits of the corpus into flat
files of token ids, which pretraining and evaluation memory-map.

    1. train: Tokenizer.train to --vocab-size ids on --train-mb MB sampled (seeded) from the
       train split, every source; save tokenizer.json and vocab.txt
    2. encode each split, documents shuffled with --seed, each followed by <|endoftext|>
    3. meta.json last: its presence says the directory is complete

Reads:  out/data/corpus.jsonl (the `train` split trains the tokenizer; both splits are encoded)
Writes: out/tok/tokenizer.json   the tokenizer (versioned, human-readable)
        out/tok/vocab.txt        one line per token: id, bytes, the pair it was merged from
        out/tok/train.bin, val.bin  documents shuffled with --seed, each followed by
                                 <|endoftext|>, as flat little-endian uint16 (uint32 >= 65,536)
        out/tok/meta.json        vocabulary, dtype, token counts, bytes per token, hashes

Run:
    python bpe.py                              # 8,192 tokens from 4 MB of the train split, 15-20 s
    python bpe.py --vocab-size 16384 --train-mb 0 --pattern gpt2

Later stages read the output with `tokenizer.load_token_dir("out/tok")`, never by importing
this script.

References: Sennrich et al. 2016 (BPE for NMT); Radford et al. 2019 (GPT-2, byte-level BPE);
tiktoken (patterns, the rank-based merge rule); minbpe (clarity).

Not included: sentencepiece-style unigram models, byte fallback for unknown characters (not
needed: every byte is a token), dropout/regularised BPE; streaming a corpus larger than
memory (corpus.jsonl is read whole).
"""

import argparse
import json
import multiprocessing
import os
import random
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from common import (StageError, atomic_open, check_out_dir, hash_inputs, ignore_interrupts, json_field, json_type, read_json,
                    require, run_main, sha256_file, write_meta)
from tokenizer import PATTERNS, SHARDS_FORMAT, SHARDS_VERSION, SPECIAL_TOKENS, Tokenizer


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # files
    p.add_argument("--data-dir", default="out/data", help="directory with corpus.jsonl (data/prepare.py)")
    p.add_argument("--out-dir", default="out/tok", help="where the tokenizer and shards go")
    # the tokenizer
    p.add_argument("--vocab-size", type=int, default=8192,
                   help="ids in all: 256 bytes + merges + the 16 special tokens")
    p.add_argument("--pattern", choices=sorted(PATTERNS), default="gpt4",
                   help="pre-tokenization regex: GPT-4's cl100k_base or GPT-2's")
    p.add_argument("--train-mb", type=float, default=4,
                   help="MB of the train split that trains the tokenizer (all are encoded); 0 = all")
    # the shards
    p.add_argument("--seed", type=int, default=1337, help="shuffles the documents in the shards")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="encoding processes")
    args = p.parse_args(argv)

    least = 256 + len(SPECIAL_TOKENS)
    if args.vocab_size < least:
        p.error(f"--vocab-size {args.vocab_size} is below {least} (256 bytes + {len(SPECIAL_TOKENS)} "
                f"special tokens); give at least {least}")
    if not args.train_mb >= 0:           # a NaN fails every comparison, so it fails here too
        p.error("--train-mb must be a number >= 0 (0 = all)")
    if args.workers < 1:
        p.error("--workers must be >= 1")
    return args


def read_corpus(data_dir):
    """(inputs, {"train": [text, ...], "val": [...]}) of data/prepare.py's corpus, inputs being
    its hash_inputs record for meta.json (hashed once, for both uses). Beside a
    meta.json (data/prepare.py writes one last), the corpus must be the one it describes: a
    prepare run killed between the two renames would otherwise pair a new corpus with an old
    record. A corpus.jsonl of your own, without meta.json, is read as it is."""
    path = require(Path(data_dir) / "corpus.jsonl", "data/prepare.py", "corpus")
    inputs = hash_inputs({"corpus": path})
    meta_path = Path(data_dir) / "meta.json"
    if meta_path.exists():
        meta = read_json(meta_path, "data/prepare.py")
        expected = json_field(meta, "corpus_sha256", str, meta_path, "data/prepare.py", default=None)
        if expected and inputs["corpus"]["sha256"] != expected:
            raise StageError(f"{path} is not the corpus {meta_path} describes (data/prepare.py killed between "
                             f"writing them?); run data/prepare.py again")
    docs = {"train": [], "val": []}
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            split, text = read_corpus_line(line, f"{path}:{lineno}")
            docs[split].append(text)
    if not docs["train"]:
        raise StageError(f"{path} has no train documents; run data/prepare.py with more input")
    return inputs, docs


def read_corpus_line(line, where):
    """(split, text) of one corpus line (bytes), or the line that says what is wrong with it:
    a corpus is UTF-8 JSON Lines of {id, text, source, kind, licence, split} (CONVENTIONS.md)."""
    again = "run data/prepare.py again, which writes valid records"
    try:
        record = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise StageError(f"{where} is not UTF-8 (byte 0x{line[e.start]:02x} at column {e.start + 1}); "
                         f"{again}") from None
    except json.JSONDecodeError as e:
        raise StageError(f"{where} is not JSON ({e.msg} at column {e.colno}); {again}") from None
    if not isinstance(record, dict):
        raise StageError(f"{where} is not a JSON object but {json_type(record)}; {again}")
    split, text = record.get("split"), record.get("text")
    if split not in ("train", "val"):
        raise StageError(f'{where} has split {json.dumps(split)}; use "train" or "val" ({again})')
    if not isinstance(text, str):
        raise StageError(f'{where}: "text" is {json_type(text)}, not a string; {again}')
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise StageError(f"{where} holds a lone surrogate ({text[e.start]!r} at character {e.start}), which "
                         f"is no UTF-8 text; run data/prepare.py on the file (it replaces them)") from None
    return split, text


# ----------------------------------------------------------------------------- the shards

_TOKENIZER = None


def _init_encoder(tokenizer):
    global _TOKENIZER
    _TOKENIZER = tokenizer


def _init_worker(tokenizer):
    ignore_interrupts()                  # Ctrl-C: one line from the parent, not one per worker
    _init_encoder(tokenizer)


def _encode_doc(text):
    """One document's ids followed by <|endoftext|>, as a uint32 array (workers).

    The eot goes after the document, while Tokenizer.encode_document puts it before: it is
    the same contract seen from the reader. In the flat stream d1 eot d2 eot ... every
    document after the first starts right after an eot, as an encode_document prompt does.
    (Changing this layout would shift every token of the shards, and pretraining must
    reproduce bit for bit.)"""
    ids = _TOKENIZER.encode_ordinary(text)
    ids.append(_TOKENIZER.special("<|endoftext|>"))
    return np.array(ids, dtype=np.uint32)


def write_shard(path, texts, tokenizer, dtype, workers, desc):
    """Encode `texts` in order (in `workers` processes) into one flat token file, atomically.
    Returns (tokens, UTF-8 bytes of text)."""
    n_tokens = n_bytes = 0
    pool = multiprocessing.Pool(workers, _init_worker, (tokenizer,)) if workers > 1 else None
    if pool is None:
        _init_encoder(tokenizer)
    try:
        with atomic_open(path, "wb") as f:
            results = pool.imap(_encode_doc, texts, chunksize=16) if pool else map(_encode_doc, texts)
            for text, ids in tqdm(zip(texts, results), total=len(texts), desc=desc, unit="doc",
                                  mininterval=1):
                f.write(ids.astype(dtype).tobytes())
                n_tokens += len(ids)
                n_bytes += len(text.encode())
    finally:
        if pool:
            pool.terminate()
    return n_tokens, n_bytes


# ----------------------------------------------------------------------------- main

def main(argv=None):
    args = parse_args(argv)
    t0 = time.time()
    out = check_out_dir(args.out_dir, sweep=False)
    if out.resolve() == Path(args.data_dir).resolve():
        raise StageError(f"--out-dir {out} is --data-dir: both stages write a meta.json there; "
                         f"give another directory")
    inputs, docs = read_corpus(args.data_dir)

    # 1. train on a seeded sample of the train split (every source, not just the first)
    texts, size = [], 0
    for text in random.Random(args.seed).sample(docs["train"], len(docs["train"])):
        if args.train_mb and size >= args.train_mb * 1e6:
            break
        texts.append(text)
        size += len(text.encode())
    print(f"training a {args.vocab_size:,}-token BPE on {size / 1e6:.1f} MB ({len(texts):,} documents)")
    try:
        tok = Tokenizer.train(texts, args.vocab_size, SPECIAL_TOKENS, PATTERNS[args.pattern], progress=True)
    except ValueError as e:                    # a vocabulary too small or too large for the text
        raise StageError(str(e)) from None
    t_train = time.time() - t0
    out.mkdir(parents=True, exist_ok=True)
    tok.save(out / "tokenizer.json")
    with atomic_open(out / "vocab.txt") as f:
        f.write(tok.vocab_listing())

    # 2. encode both splits, documents shuffled, each followed by <|endoftext|>
    dtype = np.uint16 if tok.vocab_size <= 65536 else np.uint32
    metrics = {"train_seconds": round(t_train, 1), "train_text_bytes": size}
    for split, seed in (("train", args.seed), ("val", args.seed + 1)):
        order = docs[split][:]
        random.Random(seed).shuffle(order)
        n_tok, n_bytes = write_shard(out / f"{split}.bin", order, tok, dtype, args.workers, f"encode {split}")
        metrics.update({f"{split}_tokens": n_tok, f"{split}_bytes": n_bytes,
                        f"{split}_bytes_per_token": round(n_bytes / max(n_tok, 1), 3)})

    # 3. meta.json last: tokenizer.load_token_dir checks the shards against it
    metrics["seconds"] = round(time.time() - t0, 1)
    write_meta(out, SHARDS_FORMAT, SHARDS_VERSION, "bpe.py", vars(args), metrics,
               inputs=inputs,
               config={"vocab_size": tok.vocab_size, "pattern": tok.pattern},
               dtype=np.dtype(dtype).name,
               tokenizer={"sha256": tok.sha256(), "file_sha256": sha256_file(out / "tokenizer.json"),
                          "vocab_size": tok.vocab_size, "special_tokens": tok.special_tokens})
    print(f"tokens: train {metrics['train_tokens']:,}, val {metrics['val_tokens']:,} "
          f"({metrics['train_bytes_per_token']} bytes/token) -> {out} in {metrics['seconds']} s")


if __name__ == "__main__":
    run_main(main)
