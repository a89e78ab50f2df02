"""Stage 2: a byte-level BPE tokenizer, trained on the corpus, and the token shards.

A model reads integers, not text. Byte pair encoding (Sennrich et al. 2016; byte-level as in
GPT-2) starts from the 256 byte values, so any string can be encoded, and repeatedly merges
the most frequent adjacent pair of tokens into a new token, so frequent words become single
tokens. Before counting, text is split into chunks by a regular expression (words, numbers,
punctuation, whitespace runs), and merges never cross a chunk boundary: " dog" and " dog."
share the token " dog".

    train:   chunks -> table of unique chunks and counts -> best pair -> merge it in the chunks
             that contain it (only those) -> update their pair counts -> repeat
    encode:  text -> chunks -> each chunk: its token if the whole chunk is one, else merge the
             adjacent pair of lowest rank, leftmost first, until none is in the vocabulary
             (exactly tiktoken's rule, so with GPT-2's ranks we produce GPT-2's ids)

Reads:  out/data/corpus.jsonl (the `train` split trains the tokenizer; both splits are encoded)
Writes: out/tok/tokenizer.json   the tokenizer (versioned, human-readable)
        out/tok/vocab.txt        one line per token: id, bytes, the pair it was merged from
        out/tok/train.bin, val.bin  documents shuffled with --seed, each followed by
                                 <|endoftext|>, as flat little-endian uint16 (uint32 >= 65,536)
        out/tok/meta.json        vocabulary, dtype, token counts, bytes per token, hashes

Run:
    python bpe.py                              # 8,192 tokens, trained on 4 MB sampled from the train split
    python bpe.py --vocab-size 16384 --train-mb 0 --pattern gpt2

In Python:
    tok = Tokenizer.train(texts, vocab_size=8192)
    ids = tok.encode("hello <|endoftext|>", allowed_special="all"); tok.decode(ids)
    ids, mask = tok.render_chat([{"role": "user", "content": "Hi"},
                                 {"role": "assistant", "content": "Hello!"}])

References: Sennrich et al. 2016 (BPE for NMT); Radford et al. 2019 (GPT-2, byte-level BPE);
tiktoken (patterns, the rank-based merge rule); minbpe (clarity).

Not included: sentencepiece-style unigram models, byte fallback for unknown characters (not
needed: every byte is a token), dropout/regularised BPE.
"""

import argparse
import base64
import hashlib
import heapq
import json
import multiprocessing
import os
import random
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import regex
from tqdm import tqdm

from common import StageError, atomic_open, fetch_pypi, hash_inputs, run_main, sha256_file, write_meta

# tiktoken's exact pre-tokenization patterns. GPT-4's (cl100k_base) splits numbers into groups
# of at most 3 digits and keeps a word's leading punctuation or space with it.
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
GPT4_PATTERN = r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
PATTERNS = {"gpt2": GPT2_PATTERN, "gpt4": GPT4_PATTERN}

# Fixed now, so that SFT, the reward model, PPO and evaluation never need a new tokenizer.
# They take the last ids of the vocabulary.
SPECIAL_TOKENS = ("<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>") + \
    tuple(f"<|reserved_{i}|>" for i in range(11))
FORMAT, VERSION = "llmpipe-bpe", 1


# ----------------------------------------------------------------------------- training

def count_chunks(texts, pattern, special_tokens=()):
    """The table training runs on: each unique chunk (as UTF-8 bytes) and how often it occurs.

    Special tokens split the text first and are dropped, so no merge can cross one.
    """
    pat = regex.compile(pattern)
    special = special_regex(special_tokens)
    counts = Counter()
    for text in texts:
        for part in (special.split(text)[::2] if special else [text]):     # odd parts: specials
            counts.update(pat.findall(part))
    out = Counter()
    for chunk, n in counts.items():
        out[chunk.encode("utf-8", "surrogatepass")] += n
    return out


def tie_key(token):
    """Sort key that puts lexicographically *greater* byte strings first in a min-heap.

    b"ab" > b"a" > b"" in byte order; negating each byte and ending with 1 (above any negated
    byte) reverses that order exactly: (-97, -98, 1) < (-97, 1).
    """
    return tuple(-b for b in token) + (1,)


def learn_bpe(chunk_counts, n_tokens, progress=False):
    """Learn merges until the vocabulary holds `n_tokens` tokens (256 bytes included).

    chunk_counts: {chunk bytes: count}. Returns (tokens, merges): `tokens[i]` is the bytes of
    token i (so i is its rank) and `merges` the (left, right) id pair each token > 255 was made
    from. The best pair is the most frequent one; ties go to the lexicographically greatest
    pair, comparing (bytes(left), bytes(right)), which depends on nothing but the counts, so
    the same corpus always gives the same tokenizer.

    Each merge touches only the chunks that contain its pair (the `where` index) and changes
    only the counts of the pairs around it; a max-heap with lazy deletion finds the next best
    pair: stale entries (whose count has changed since they were pushed) are skipped.
    """
    words = [list(chunk) for chunk in chunk_counts]          # each chunk as a list of token ids
    freqs = list(chunk_counts.values())
    tokens = [bytes([i]) for i in range(256)]
    keys = [tie_key(t) for t in tokens]
    rank_of = {t: i for i, t in enumerate(tokens)}
    merges = []
    pair_counts = defaultdict(int)
    where = defaultdict(set)                                  # pair -> indices of words with it
    for i, (w, f) in enumerate(zip(words, freqs)):
        for pair in zip(w, w[1:]):
            pair_counts[pair] += f
            where[pair].add(i)
    heap = [(-c, keys[a], keys[b], (a, b)) for (a, b), c in pair_counts.items()]
    heapq.heapify(heap)
    bar = tqdm(total=n_tokens - 256, desc="merges", unit="merge", disable=not progress, mininterval=1)
    while len(tokens) < n_tokens and heap:
        neg, _, _, pair = heapq.heappop(heap)
        if pair_counts.get(pair, 0) != -neg:                  # stale entry
            continue
        # 1. the new token (a pair can rebuild bytes an earlier merge already made: reuse it)
        a, b = pair
        joined = tokens[a] + tokens[b]
        new = rank_of.get(joined)
        if new is None:
            new = len(tokens)
            tokens.append(joined)
            keys.append(tie_key(joined))
            rank_of[joined] = new
            merges.append(pair)
            bar.update(1)
        # 2. merge it in every word that contains it, collecting the pair-count changes
        delta = defaultdict(int)
        for i in where.pop(pair):
            w = words[i]
            merged = merge_pair(w, pair, new)
            if len(merged) == len(w):                         # stale index entry
                continue
            f = freqs[i]
            for p in zip(w, w[1:]):
                delta[p] -= f
            for p in zip(merged, merged[1:]):
                delta[p] += f
                if p[0] == new or p[1] == new:            # other pairs already list word i
                    where[p].add(i)
            words[i] = merged
        # 3. apply them; every changed count goes back on the heap
        del pair_counts[pair]
        for p, d in delta.items():
            if d == 0 or p == pair:
                continue
            c = pair_counts[p] + d
            if c > 0:
                pair_counts[p] = c
                heapq.heappush(heap, (-c, keys[p[0]], keys[p[1]], p))
            else:
                pair_counts.pop(p, None)
                where.pop(p, None)
    bar.close()
    return tokens, merges


def merge_pair(ids, pair, new):
    """Replace every non-overlapping occurrence of `pair` in `ids` (left to right) by `new`."""
    out, i, n = [], 0, len(ids)
    a, b = pair
    while i < n:
        if i + 1 < n and ids[i] == a and ids[i + 1] == b:
            out.append(new)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


# ----------------------------------------------------------------------------- the tokenizer

def special_regex(tokens):
    """Alternation of the special tokens, longest first (so overlapping ones match longest)."""
    if not tokens:
        return None
    return regex.compile("(" + "|".join(regex.escape(t) for t in sorted(tokens, key=len, reverse=True)) + ")")


def byte_pair_merge(piece, ranks):
    """tiktoken's rule for one chunk: start from bytes, repeatedly merge the adjacent pair
    whose concatenation has the lowest rank (leftmost on ties) until no pair is a token.

    pair_ranks[i] is the rank of parts[i] + parts[i + 1] (NO_MERGE if it is not a token);
    after a merge at i only the two pairs around it change.
    """
    parts = [piece[i:i + 1] for i in range(len(piece))]
    pair_ranks = [ranks.get(a + b, NO_MERGE) for a, b in zip(parts, parts[1:])]
    while pair_ranks:
        best = min(pair_ranks)
        if best == NO_MERGE:
            break
        i = pair_ranks.index(best)                      # the leftmost of the lowest rank
        parts[i:i + 2] = [parts[i] + parts[i + 1]]
        del pair_ranks[i]
        if i < len(pair_ranks):
            pair_ranks[i] = ranks.get(parts[i] + parts[i + 1], NO_MERGE)
        if i > 0:
            pair_ranks[i - 1] = ranks.get(parts[i - 1] + parts[i], NO_MERGE)
    return [ranks[p] for p in parts]


NO_MERGE = 1 << 62


class Tokenizer:
    """Byte-level BPE: `ranks` maps each token's bytes to its id (its rank: lower merges first);
    special tokens take the ids after the last rank."""

    def __init__(self, ranks, pattern=GPT4_PATTERN, special_tokens=None, merges=None):
        self.ranks = dict(ranks)
        self.pattern = pattern
        self.pat = regex.compile(pattern)
        n = len(self.ranks)
        if sorted(self.ranks.values()) != list(range(n)):
            raise ValueError("token ranks must be 0..n-1 without gaps")
        if any(bytes([i]) not in self.ranks for i in range(256)):
            raise ValueError("every single byte must be a token")
        if special_tokens is None:
            special_tokens = {t: n + i for i, t in enumerate(SPECIAL_TOKENS)}
        self.special_tokens = dict(special_tokens)
        self.merges = merges                       # (left, right) per token >= 256, if known
        self.id_to_bytes = {i: t for t, i in self.ranks.items()}
        self.id_to_bytes.update({i: t.encode() for t, i in self.special_tokens.items()})
        self.special_re = special_regex(self.special_tokens)
        self.cache = {}

    @property
    def vocab_size(self):
        return max(self.id_to_bytes) + 1

    def special(self, token):
        """The id of a special token, e.g. tok.special("<|end|>")."""
        return self.special_tokens[token]

    # ---- training
    @classmethod
    def train(cls, texts, vocab_size, special_tokens=SPECIAL_TOKENS, pattern=GPT4_PATTERN,
              progress=False):
        """Learn a tokenizer of `vocab_size` ids (256 bytes + merges + special tokens)."""
        n_tokens = vocab_size - len(special_tokens)
        if n_tokens < 256:
            raise ValueError(f"vocab_size {vocab_size} is below 256 bytes + {len(special_tokens)} "
                             f"special tokens = {256 + len(special_tokens)}")
        counts = count_chunks(texts, pattern, special_tokens)
        if not counts:
            raise ValueError("the training texts are empty")
        tokens, merges = learn_bpe(counts, n_tokens, progress)
        if len(tokens) < n_tokens:
            raise ValueError(f"the training texts allow only {len(tokens)} tokens, fewer than "
                             f"the {n_tokens} asked for; give more text or a smaller vocab_size")
        ranks = {t: i for i, t in enumerate(tokens)}
        specials = {t: len(tokens) + i for i, t in enumerate(special_tokens)}
        return cls(ranks, pattern, specials, merges)

    # ---- encoding
    def encode_chunk(self, chunk):
        """Token ids of one pre-tokenized chunk (cached: chunks repeat a lot)."""
        ids = self.cache.get(chunk)
        if ids is None:
            piece = chunk.encode("utf-8")
            ids = [self.ranks[piece]] if piece in self.ranks else byte_pair_merge(piece, self.ranks)
            if len(self.cache) > 200_000:          # bound memory on endless streams
                self.cache.clear()
            self.cache[chunk] = ids
        return ids

    def encode_ordinary(self, text):
        """Encode text, treating special-token text as ordinary text."""
        text = fix_surrogates(text)
        out = []
        cache_get, extend = self.cache.get, out.extend
        for chunk in self.pat.findall(text):
            ids = cache_get(chunk)
            extend(ids if ids is not None else self.encode_chunk(chunk))
        return out

    def encode(self, text, allowed_special=frozenset(), disallowed_special="all"):
        """Encode text; as in tiktoken, special tokens are emitted only where allowed, and the
        text of a disallowed special token raises ValueError (it may be a prompt injection)."""
        specials = set(self.special_tokens)
        allowed = specials if allowed_special == "all" else set(allowed_special)
        disallowed = specials - allowed if disallowed_special == "all" else set(disallowed_special)
        if disallowed:
            match = special_regex(disallowed).search(text)
            if match:
                raise ValueError(f"the text contains the special token {match.group()!r}; pass "
                                 f"allowed_special to encode it as one, or disallowed_special=() "
                                 f"to encode it as text")
        if not allowed:
            return self.encode_ordinary(text)
        out = []
        for i, part in enumerate(special_regex(allowed).split(text)):
            if i % 2:                                 # odd parts are the separators: specials
                out.append(self.special_tokens[part])
            elif part:
                out.extend(self.encode_ordinary(part))
        return out

    def decode_bytes(self, ids):
        try:
            return b"".join(self.id_to_bytes[i] for i in ids)
        except KeyError as e:
            raise ValueError(f"token id {e.args[0]} is not in the vocabulary") from None

    def decode(self, ids):
        """Text of the ids; bytes that are not valid UTF-8 (a cut character) become U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    # ---- chat, the one template every later stage uses
    ROLES = ("system", "user", "assistant")

    def render_chat(self, messages):
        """Token ids of a conversation and a loss mask that is 1 only on what the assistant
        writes (its text and its closing <|end|>): the model learns to answer, not to ask.

        Layout: <|endoftext|> then, per message, <|role|> content <|end|>.
        """
        ids, mask = [self.special("<|endoftext|>")], [0]
        for m in check_messages(messages):
            body = self.encode_ordinary(m["content"]) + [self.special("<|end|>")]
            learn = int(m["role"] == "assistant")
            ids += [self.special(f"<|{m['role']}|>")] + body
            mask += [0] + [learn] * len(body)
        return ids, mask

    def render_prompt(self, messages):
        """Token ids of a conversation so far, ending with <|assistant|> so the model answers."""
        return self.render_chat(messages)[0] + [self.special("<|assistant|>")]

    # ---- files
    def to_dict(self):
        return {"format": FORMAT, "version": VERSION, "pattern": self.pattern,
                "special_tokens": self.special_tokens,
                "tokens": [escape_bytes(self.id_to_bytes[i]) for i in range(len(self.ranks))],
                "merges": self.merges}

    def save(self, path):
        """Write the tokenizer as JSON: each token's bytes with non-printable bytes escaped
        as \\xNN (readable: " the", "ing"), ranks in order, plus the merges if known."""
        with atomic_open(path) as f:
            json.dump(self.to_dict(), f, ensure_ascii=False, indent=0)
            f.write("\n")

    @classmethod
    def load(cls, path):
        """Read a file written by `save`, checking its format and version."""
        try:
            d = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise StageError(f"no tokenizer at {path}; run bpe.py first") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise StageError(f"{path} is not a tokenizer file (corrupt JSON: {e}); run bpe.py again") from None
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise StageError(f"{path} is not a {FORMAT} tokenizer file")
        if d.get("version") != VERSION:
            raise StageError(f"{path} is {FORMAT} version {d.get('version')}, this code reads "
                             f"version {VERSION}; run bpe.py again")
        try:
            ranks = {unescape_bytes(t): i for i, t in enumerate(d["tokens"])}
            merges = [tuple(m) for m in d["merges"]] if d.get("merges") else None
            return cls(ranks, d["pattern"], d["special_tokens"], merges)
        except (KeyError, TypeError, ValueError, regex.error) as e:
            raise StageError(f"{path} is a damaged tokenizer file ({e}); run bpe.py again") from None

    def save_tiktoken(self, path):
        """Export the ranks in tiktoken's format: one `base64(token bytes) rank` per line."""
        with atomic_open(path) as f:
            for token, rank in sorted(self.ranks.items(), key=lambda kv: kv[1]):
                f.write(f"{base64.b64encode(token).decode()} {rank}\n")

    @classmethod
    def from_tiktoken_file(cls, path, pattern=GPT2_PATTERN, special_tokens=None):
        """Load tiktoken-format ranks, e.g. GPT-2's (`gpt2_ranks_path()`), with
        special_tokens={"<|endoftext|>": 50256} for GPT-2."""
        ranks = {}
        for line in Path(path).read_text().splitlines():
            if line:
                token, rank = line.split()
                ranks[base64.b64decode(token)] = int(rank)
        return cls(ranks, pattern, special_tokens or {})

    def vocab_listing(self):
        """One line per token: id, its bytes (escaped) and, for merged tokens, its parts."""
        lines = []
        for i in range(self.vocab_size):
            text = escape_bytes(self.id_to_bytes[i])
            if self.merges and 256 <= i < 256 + len(self.merges):
                a, b = self.merges[i - 256]
                text += f"    <- [{escape_bytes(self.id_to_bytes[a])}] + [{escape_bytes(self.id_to_bytes[b])}]"
            elif i >= len(self.ranks):
                text += "    (special)"
            lines.append(f"{i}\t{text}")
        return "\n".join(lines) + "\n"

    def sha256(self):
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()


def check_messages(messages):
    if not messages:
        raise ValueError("a conversation needs at least one message")
    for m in messages:
        if not isinstance(m, dict) or m.get("role") not in Tokenizer.ROLES or not isinstance(m.get("content"), str):
            raise ValueError(f"each message must be {{'role': one of {Tokenizer.ROLES}, 'content': str}}, got {m!r}")
    return messages


def fix_surrogates(text):
    """Lone surrogates cannot be UTF-8: like tiktoken, replace them with U+FFFD."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def escape_bytes(token):
    """Printable ASCII as itself (backslash doubled), every other byte as \\xNN: reversible."""
    return "".join(chr(b) if 32 <= b < 127 and b != 92 else ("\\\\" if b == 92 else f"\\x{b:02x}")
                   for b in token)


def unescape_bytes(text):
    out, i = bytearray(), 0
    while i < len(text):
        if text[i] == "\\":
            if text[i + 1] == "\\":
                out.append(92)
                i += 2
            else:
                out.append(int(text[i + 2:i + 4], 16))
                i += 4
        else:
            out.append(ord(text[i]))
            i += 1
    return bytes(out)


def gpt2_ranks_path():
    """GPT-2's 50,256 ranks in tiktoken's format, from the openai-whisper sdist (cached)."""
    import tarfile
    from common import cache_dir
    target = cache_dir() / "gpt2.tiktoken"
    if not target.exists():
        archive = fetch_pypi("openai-whisper", "20250625", "sdist")
        with tarfile.open(archive) as tar:
            data = tar.extractfile("openai_whisper-20250625/whisper/assets/gpt2.tiktoken").read()
        with atomic_open(target, "wb") as f:
            f.write(data)
    return target


# ----------------------------------------------------------------------------- the shards

_TOKENIZER = None


def _init_encoder(tokenizer):
    global _TOKENIZER
    _TOKENIZER = tokenizer


def _encode_doc(text):
    """One document's ids followed by <|endoftext|>, as a uint32 array (workers)."""
    ids = _TOKENIZER.encode_ordinary(text)
    ids.append(_TOKENIZER.special("<|endoftext|>"))
    return np.array(ids, dtype=np.uint32)


def write_shard(path, texts, tokenizer, dtype, workers, desc):
    """Encode `texts` in order (in `workers` processes) into one flat token file, atomically.
    Returns (tokens, UTF-8 bytes of text)."""
    n_tokens = n_bytes = 0
    pool = multiprocessing.Pool(workers, _init_encoder, (tokenizer,)) if workers > 1 else None
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


def load_token_dir(tok_dir):
    """(tokenizer, meta) of a bpe.py output directory, checking that the shards were made by
    this very tokenizer: later stages call this before reading train.bin / val.bin."""
    tok_dir = Path(tok_dir)
    meta_path = tok_dir / "meta.json"
    if not meta_path.exists():
        raise StageError(f"no {meta_path}; run bpe.py first")
    meta = json.loads(meta_path.read_text())
    tokenizer = Tokenizer.load(tok_dir / "tokenizer.json")
    if tokenizer.sha256() != meta["tokenizer"]["sha256"]:
        raise StageError(f"{tok_dir}/tokenizer.json does not match the tokenizer that made the "
                         f"shards (sha256 differs); run bpe.py again")
    for split in ("train", "val"):
        path = tok_dir / f"{split}.bin"
        expected = meta["metrics"][f"{split}_tokens"] * np.dtype(meta["dtype"]).itemsize
        if not path.exists() or path.stat().st_size != expected:
            raise StageError(f"{path} is missing or truncated; run bpe.py again")
    return tokenizer, meta


# ----------------------------------------------------------------------------- main

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default="out/data", help="directory with corpus.jsonl (data/prepare.py)")
    p.add_argument("--out-dir", default="out/tok", help="where the tokenizer and shards go")
    p.add_argument("--vocab-size", type=int, default=8192,
                   help="ids in all: 256 bytes + merges + the 16 special tokens")
    p.add_argument("--pattern", choices=sorted(PATTERNS), default="gpt4",
                   help="pre-tokenization regex: GPT-4's cl100k_base or GPT-2's")
    p.add_argument("--train-mb", type=float, default=4,
                   help="MB of the train split that trains the tokenizer (all are encoded); 0 = all")
    p.add_argument("--seed", type=int, default=1337, help="shuffles the documents in the shards")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="encoding processes")
    return p.parse_args(argv)


def read_corpus(data_dir):
    path = Path(data_dir) / "corpus.jsonl"
    if not path.exists():
        raise StageError(f"no corpus at {path}; run data/prepare.py first")
    docs = {"train": [], "val": []}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            try:
                d = json.loads(line)
                docs[d["split"]].append(d["text"])
            except (json.JSONDecodeError, KeyError, TypeError):
                raise StageError(f"{path}:{lineno} is not a corpus record; run data/prepare.py again") from None
    if not docs["train"]:
        raise StageError(f"{path} has no train documents; run data/prepare.py with more input")
    return path, docs


def main(argv=None):
    args = parse_args(argv)
    t0 = time.time()
    out = Path(args.out_dir)
    corpus_path, docs = read_corpus(args.data_dir)
    if args.vocab_size < 256 + len(SPECIAL_TOKENS):
        raise StageError(f"--vocab-size {args.vocab_size} is below 256 bytes + {len(SPECIAL_TOKENS)} "
                         f"special tokens = {256 + len(SPECIAL_TOKENS)}")

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
    except ValueError as e:
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
    metrics["seconds"] = round(time.time() - t0, 1)
    write_meta(out, "tokens", 1, "bpe.py", vars(args), metrics,
               inputs=hash_inputs({"corpus": corpus_path}),
               config={"vocab_size": tok.vocab_size, "pattern": tok.pattern},
               dtype=np.dtype(dtype).name,
               tokenizer={"sha256": tok.sha256(), "file_sha256": sha256_file(out / "tokenizer.json"),
                          "vocab_size": tok.vocab_size, "special_tokens": tok.special_tokens})
    print(f"tokens: train {metrics['train_tokens']:,}, val {metrics['val_tokens']:,} "
          f"({metrics['train_bytes_per_token']} bytes/token) -> {out} in {metrics['seconds']} s")


if __name__ == "__main__":
    run_main(main)
