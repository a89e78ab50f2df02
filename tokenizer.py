"""The tokenizer library: byte-level BPE, the chat template, and the reader of bpe.py's shards.

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

Everything later stages need of the tokenizer lives here (bpe.py, stage 2, only trains it
and writes the shards): the split patterns and SPECIAL_TOKENS, fixed for the pipeline;
count_chunks and learn_bpe (training); byte_pair_merge and the Tokenizer, which owns each
contract once (encode_document: a document starts after <|endoftext|>; is_special;
token_byte_lengths, for bits per byte; render_chat / render_prompt, the only chat template;
save / load / sha256); load_token_dir and SHARDS_FORMAT, for reading bpe.py's shards.

In Python:
    from tokenizer import Tokenizer, load_token_dir
    tok = Tokenizer.train(texts, vocab_size=8192)       # or Tokenizer.load("out/tok/tokenizer.json")
    ids = tok.encode("hello <|endoftext|>", allowed_special="all"); tok.decode(ids)
    prompt = tok.encode_document("The king")             # [<|endoftext|>] + the text's ids
    ids, mask = tok.render_chat([{"role": "user", "content": "Hi"},
                                 {"role": "assistant", "content": "Hello!"}])
    lengths = torch.tensor(tok.token_byte_lengths(), dtype=torch.long)    # bits per byte
    tok, meta = load_token_dir("out/tok")                # checked against the shards

References: Sennrich et al. 2016 (BPE for NMT); Radford et al. 2019 (GPT-2, byte-level BPE);
tiktoken (patterns, the rank-based merge rule); minbpe (clarity).

Not included: sentencepiece-style unigram models, byte fallback for unknown characters (not
needed: every byte is a token), dropout/regularised BPE; torch (plain Python, regex, numpy).
"""

import base64
import hashlib
import heapq
import json
import tarfile
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import regex
from tqdm import tqdm

from common import StageError, atomic_open, cache_dir, fetch_pypi, fix_surrogates, json_field, read_json, require

# tiktoken's exact pre-tokenization patterns. GPT-4's (cl100k_base) splits numbers into groups
# of at most 3 digits and keeps a word's leading punctuation or space with it.
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
GPT4_PATTERN = r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
PATTERNS = {"gpt2": GPT2_PATTERN, "gpt4": GPT4_PATTERN}

# Fixed now, so that SFT, the reward model, PPO and evaluation never need a new tokenizer.
# They take the last ids of the vocabulary.
SPECIAL_TOKENS = ("<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>") + \
    tuple(f"<|reserved_{i}|>" for i in range(11))
FORMAT, VERSION = "llmpipe-bpe", 1                  # tokenizer.json
SHARDS_FORMAT, SHARDS_VERSION = "tokens", 1         # the meta.json beside train.bin / val.bin


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


NO_MERGE = 1 << 62                                      # the rank of a pair that is not a token


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


# The chat template's roles: each has its special token <|role|>.
ROLES = ("system", "user", "assistant")


def check_messages(messages):
    """`messages` if it is a non-empty list of {"role": one of ROLES, "content": str}."""
    if not messages:
        raise ValueError("a conversation needs at least one message")
    for m in messages:
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise ValueError(f"each message must be {{'role': one of {ROLES}, 'content': str}}, got {m!r}")
    return messages


class Tokenizer:
    """Byte-level BPE: `ranks` maps each token's bytes to its id (its rank: lower merges first);
    special tokens take the ids after the last rank."""

    def __init__(self, ranks, pattern=GPT4_PATTERN, special_tokens=None, merges=None):
        self.ranks = dict(ranks)
        self.pattern = pattern                     # the split regex, as text (saved)
        self.compiled_pattern = regex.compile(pattern)
        n = len(self.ranks)
        if sorted(self.ranks.values()) != list(range(n)):
            raise ValueError("token ranks must be 0..n-1 without gaps")
        if any(bytes([i]) not in self.ranks for i in range(256)):
            raise ValueError("every single byte must be a token")
        if special_tokens is None:
            special_tokens = {t: n + i for i, t in enumerate(SPECIAL_TOKENS)}
        self.special_tokens = dict(special_tokens)
        self.special_ids = frozenset(self.special_tokens.values())
        self.merges = merges                       # (left, right) per token >= 256, if known
        self.id_to_bytes = {i: t for t, i in self.ranks.items()}
        self.id_to_bytes.update({i: t.encode() for t, i in self.special_tokens.items()})
        self.cache = {}

    @property
    def vocab_size(self):
        return max(self.id_to_bytes) + 1

    def special(self, token):
        """The id of a special token, e.g. tok.special("<|end|>")."""
        return self.special_tokens[token]

    def is_special(self, token_id):
        """True for the id of a special token (a control token, not text)."""
        return token_id in self.special_ids

    def token_byte_lengths(self):
        """UTF-8 bytes of each id, 0 for special tokens (they are not text): what bits per
        byte divides by. A list of vocab_size ints; torch.tensor(...) it where needed."""
        lengths = [0] * self.vocab_size
        for token, rank in self.ranks.items():
            lengths[rank] = len(token)
        return lengths

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
        out = []
        for chunk in self.compiled_pattern.findall(fix_surrogates(text)):
            out.extend(self.encode_chunk(chunk))
        return out

    def encode_document(self, text):
        """Ids of `text` as the start of a document: <|endoftext|>, then the text (special-token
        text as text). In the shards every document follows an <|endoftext|>, so this is
        where the model has learned that a document begins: prompts for sampling and
        evaluation start here."""
        return [self.special("<|endoftext|>")] + self.encode_ordinary(text)

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
            d = json.loads(require(path, "bpe.py", "tokenizer").read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise StageError(f"{path} is not a tokenizer file (corrupt JSON: {e}); run bpe.py again") from None
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise StageError(f"{path} is not a {FORMAT} tokenizer file")
        if d.get("version") != VERSION:
            raise StageError(f"{path} is {FORMAT} version {d.get('version')}, this code reads "
                             f"version {VERSION}; run bpe.py again")
        try:
            ranks = {unescape_bytes(t): i for i, t in enumerate(d["tokens"])}
            merges = [tuple(m) for m in d["merges"]] if d.get("merges") is not None else None
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
            elif self.is_special(i):
                text += "    (special)"
            lines.append(f"{i}\t{text}")
        return "\n".join(lines) + "\n"

    def sha256(self):
        """The tokenizer's identity, which meta.json files record: the hash of `to_dict()`
        (ranks, pattern, specials, merges), so two equal tokenizers hash alike."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()


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
    target = cache_dir() / "gpt2.tiktoken"
    if not target.exists():
        archive = fetch_pypi("openai-whisper", "20250625", "sdist")
        with tarfile.open(archive) as tar:
            data = tar.extractfile("openai_whisper-20250625/whisper/assets/gpt2.tiktoken").read()
        with atomic_open(target, "wb") as f:
            f.write(data)
    return target


# ----------------------------------------------------------------------------- the shards

def load_token_dir(tok_dir):
    """(tokenizer, meta) of a bpe.py output directory, checking that the shards were made by
    this very tokenizer: later stages call this before reading train.bin / val.bin (flat ids,
    each document followed by <|endoftext|>, as meta["dtype"])."""
    tok_dir = Path(tok_dir)
    meta_path = tok_dir / "meta.json"
    meta = read_json(meta_path, "bpe.py")
    if (meta.get("format"), meta.get("version")) != (SHARDS_FORMAT, SHARDS_VERSION):
        raise StageError(f"{meta_path} is format {meta.get('format')!r} version {meta.get('version')!r}; "
                         f"this code reads bpe.py's shards, {SHARDS_FORMAT!r} version {SHARDS_VERSION}; "
                         f"run bpe.py again")
    # what this function and the stages after it read of meta.json, checked before use
    tok_sha256 = json_field(meta, "tokenizer.sha256", str, meta_path, "bpe.py")
    counts = {split: json_field(meta, f"metrics.{split}_tokens", int, meta_path, "bpe.py")
              for split in ("train", "val")}
    if meta.get("dtype") not in ("uint16", "uint32"):
        raise StageError(f"{meta_path} is damaged (dtype {meta.get('dtype')!r} is not uint16 or uint32); "
                         f"run bpe.py again")
    tokenizer = Tokenizer.load(tok_dir / "tokenizer.json")
    if tokenizer.sha256() != tok_sha256:
        raise StageError(f"{tok_dir}/tokenizer.json does not match the tokenizer that made the "
                         f"shards (sha256 differs); run bpe.py again")
    for split in ("train", "val"):
        path = tok_dir / f"{split}.bin"
        expected = counts[split] * np.dtype(meta["dtype"]).itemsize
        if not path.exists() or path.stat().st_size != expected:
            raise StageError(f"{path} is missing or truncated; run bpe.py again")
    return tokenizer, meta
