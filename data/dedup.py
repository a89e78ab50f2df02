"""Deduplication: exact, near-duplicate (MinHash + LSH) and boilerplate lines.

Duplicated documents make a model memorise and waste compute; near-duplicates (the same
article with a changed date, a re-formatted copy) are most of them on the web (Lee et al.
2022, "Deduplicating Training Data Makes Language Models Better").

MinHash (Broder 1997): for a set S of shingles and a random hash h, P[min h(S) = min h(T)]
equals the Jaccard similarity J(S, T) = |S n T| / |S u T|. With k independent hashes the
fraction of equal minima estimates J with standard error sqrt(J(1-J)/k).

LSH banding (Leskovec, Rajaraman & Ullman, "Mining of Massive Datasets", ch. 3): cut the k
minima into b bands of r rows; two documents become candidates when all r rows of some band
agree, which happens with probability 1 - (1 - J^r)^b, an S-curve around (1/b)^(1/r). Only
candidates are compared, so the index answers in time independent of the corpus size, and its
memory (b keys and one signature per kept document) is what bounds the whole stage.
"""

import hashlib
import unicodedata
import zlib

import numpy as np
import regex

MERSENNE_31 = (1 << 31) - 1      # the prime modulus of our hash family; a*x+b fits in 64 bits
PUNCT_RE = regex.compile(r"[\p{P}\p{S}]+")
COMBINING_RE = regex.compile(r"\p{Mn}+")


def normalize_for_dedup(text):
    """Lower-case, strip accents (NFD, drop combining marks), drop punctuation, collapse spaces.

    Two copies that differ only in case, accents, quotes or layout become the same string.
    Both keys below are computed from this normalised text.
    """
    text = text.lower()
    if not text.isascii():                       # ASCII has no accents to strip
        text = COMBINING_RE.sub("", unicodedata.normalize("NFD", text))
    return " ".join(PUNCT_RE.sub(" ", text).split())


def exact_key(norm):
    """128-bit digest of the normalised text: equal keys mean exact duplicates."""
    return hashlib.blake2b(norm.encode(), digest_size=16).digest()


def shingle_ids(norm, n=5):
    """The set of word n-gram shingles of the normalised text, as unique ids in [0, 2^31 - 1).

    Words are hashed with crc32 (stable across processes and runs, unlike Python's `hash`),
    n-grams are combined as a polynomial mod 2^64, then reduced mod the Mersenne prime.
    A text shorter than n words is one shingle.
    """
    words = norm.split()
    if not words:
        return np.zeros(0, dtype=np.uint64)
    ids = np.array([zlib.crc32(w.encode()) for w in words], dtype=np.uint64)
    n = min(n, len(ids))
    grams = np.zeros(len(ids) - n + 1, dtype=np.uint64)
    for j in range(n):
        grams = grams * np.uint64(1_000_003) + ids[j:len(ids) - n + 1 + j]
    return np.unique(grams % np.uint64(MERSENNE_31))


class MinHasher:
    """k hash functions h_i(x) = (a_i x + b_i) mod p from a universal family, fixed by a seed."""

    def __init__(self, num_perm=128, seed=1):
        rng = np.random.default_rng(seed)
        self.num_perm = num_perm
        self.a = rng.integers(1, MERSENNE_31, size=(num_perm, 1), dtype=np.uint64)
        self.b = rng.integers(0, MERSENNE_31, size=(num_perm, 1), dtype=np.uint64)

    def signature(self, shingles, block=8192):
        """(num_perm,) uint32: the minimum of each hash over the shingles (blocks bound memory)."""
        sig = np.full(self.num_perm, MERSENNE_31, dtype=np.uint64)
        for start in range(0, len(shingles), block):
            x = shingles[start:start + block][None, :]                  # (1, block)
            hashed = (self.a * x + self.b) % np.uint64(MERSENNE_31)     # (num_perm, block)
            np.minimum(sig, hashed.min(axis=1), out=sig)
        return sig.astype(np.uint32)


def estimate_jaccard(sig_a, sig_b):
    return float(np.mean(sig_a == sig_b))


class LSHIndex:
    """Streaming near-duplicate detection: `add` a document, learn if it duplicates a kept one.

    The first document of a cluster is kept; a later one whose estimated Jaccard with a
    candidate reaches `threshold` is reported as its duplicate and not added.
    """

    def __init__(self, num_perm=128, bands=16, threshold=0.8):
        if num_perm % bands:
            raise ValueError(f"{bands} bands do not divide {num_perm} hashes evenly")
        self.rows = num_perm // bands
        self.bands = bands
        self.threshold = threshold
        self.tables = [dict() for _ in range(bands)]    # band key -> indices of kept documents
        self.keys, self.signatures = [], []

    def add(self, key, sig):
        """Return the key of the kept document that `sig` duplicates, or None (and keep it)."""
        band_keys = [sig[i * self.rows:(i + 1) * self.rows].tobytes() for i in range(self.bands)]
        candidates = {j for table, bk in zip(self.tables, band_keys) for j in table.get(bk, ())}
        for j in sorted(candidates):
            if estimate_jaccard(sig, self.signatures[j]) >= self.threshold:
                return self.keys[j]
        index = len(self.keys)
        self.keys.append(key)
        self.signatures.append(sig)
        for table, bk in zip(self.tables, band_keys):
            table.setdefault(bk, []).append(index)
        return None


def lsh_threshold(bands, rows):
    """The Jaccard similarity where the candidate probability S-curve is steepest, ~(1/b)^(1/r)."""
    return (1 / bands) ** (1 / rows)


# ----------------------------------------------------------------------------- boilerplate lines

def boilerplate_candidates(text, kind, min_chars=40):
    """Lines of a document that could be boilerplate: long ones (>= min_chars, stripped).

    Short lines recur by nature ("Exit.", "}", "return None") and are never candidates. In
    code only comment lines are: removing a code line would break the program.
    """
    out = set()
    for line in text.split("\n"):
        s = line.strip()
        if len(s) >= min_chars and (kind != "code" or s.startswith("#")):
            out.add(s)
    return out


def line_key(line):
    return hashlib.blake2b(line.encode(), digest_size=8).digest()


def remove_boilerplate(text, kind, counts, seen, min_chars=40, min_docs=5):
    """Drop the lines that appear in >= min_docs documents of this source, except their first
    occurrence (the first document that has a line keeps it). `counts` maps line key -> number
    of documents; `seen` is the set of keys already kept once, updated here.
    Returns (text, number of lines removed)."""
    kept, removed, first_seen = [], 0, set()
    for line in text.split("\n"):
        s = line.strip()
        if len(s) >= min_chars and (kind != "code" or s.startswith("#")):
            key = line_key(s)
            if counts.get(key, 0) >= min_docs:
                if key in seen:
                    removed += 1
                    continue
                first_seen.add(key)     # kept here; marked seen once this document is done
        kept.append(line)
    seen |= first_seen
    return "\n".join(kept), removed
