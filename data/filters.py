"""The per-document cleaning rules, one small pure function each.

`data/prepare.py` applies them in this order, and records which rule removed each document:

    normalise -> strip markup -> language (prose) or code rules (code) -> Gopher quality
    -> Gopher repetition -> toxicity -> PII masking (prose)

A rule returns `None` when the document passes and a short reason (e.g. "42 words < 50") when
it does not. Rules that transform (normalise, strip markup, mask PII) return the new text.

References:
- Rae et al. 2021, "Scaling Language Models: Methods, Analysis & Insights from Training
  Gopher", Appendix A.1.1 and Table A1 (quality and repetition rules, thresholds).
- Raffel et al. 2020 (C4) for the bad-word list idea; Li et al. 2023 (StarCoder) and Kocetkov
  et al. 2022 (The Stack) for the code rules.
"""

import html
import re
import unicodedata

import numpy as np
import regex

# ----------------------------------------------------------------------------- normalisation

CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")   # C0/C1 controls but \t and \n


def normalize_text(text, kind="prose"):
    """Unicode NFC, Unix line endings, no control characters.

    NFC makes "é" one code point whatever the source wrote, so identical text is identical
    bytes (deduplication and the tokenizer depend on it). For prose we also strip trailing
    spaces and squeeze runs of blank lines; code keeps its layout, which can carry meaning.
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = CONTROL_CHARS.sub("", unicodedata.normalize("NFC", text))
    if kind == "prose":
        text = re.sub(r"[ \t]+\n", "\n", text)
        text = re.sub(r"\n{3,}", "\n\n", text)
        return text.strip()
    return text.strip("\n")


# ----------------------------------------------------------------------------- markup

WIKI_TAIL_SECTIONS = re.compile(
    r"^==+\s*(References|External links|See also|Further reading|Notes|Bibliography|"
    r"Sources|Footnotes)\s*==+\s*$.*", re.S | re.M | re.I)


def _remove_nested(text, open_, close):
    """Remove innermost `open_ ... close_` spans until none is left (templates nest)."""
    pattern = re.compile(re.escape(open_) + r"(?:(?!" + re.escape(open_) + r")(?!"
                         + re.escape(close) + r").)*" + re.escape(close), re.S)
    while True:
        text, n = pattern.subn("", text)
        if n == 0:
            return text


def strip_wiki_markup(text):
    """MediaWiki markup to plain text: the article's prose without templates, tables,
    references, files and categories; links become their visible label."""
    text = re.sub(r"<!--.*?-->", "", text, flags=re.S)
    text = re.sub(r"<ref[^>/]*/>", "", text)
    text = re.sub(r"<ref[^>]*>.*?</ref>", "", text, flags=re.S | re.I)
    text = WIKI_TAIL_SECTIONS.sub("", text)          # reference lists, link farms
    text = _remove_nested(text, "{{", "}}")          # templates, infoboxes
    text = _remove_nested(text, "{|", "|}")          # tables
    # [[File:...]], [[Category:...]], interlanguage [[de:...]]: their [[links]] nest one deep.
    text = re.sub(r"\[\[(?:File|Image|Category|[a-z]{2,3}(?:-[a-z]+)?):"
                  r"(?:[^\[\]]|\[\[[^\[\]]*\]\])*\]\]", "", text, flags=re.I)
    text = re.sub(r"\[\[(?:[^\[\]|]*\|)?([^\[\]]*)\]\]", r"\1", text)   # [[a|b]] -> b, [[a]] -> a
    text = re.sub(r"\[https?://[^\s\]]+\s*([^\]]*)\]", r"\1", text)     # [url label] -> label
    text = re.sub(r"'{2,}", "", text)                                   # ''italic'', '''bold'''
    text = re.sub(r"(?m)^=+\s*(.*?)\s*=+\s*$", r"\1", text)            # == Heading == -> Heading
    text = re.sub(r"(?m)^[*#:;]+\s*", "", text)                         # list and indent markers
    text = re.sub(r"__[A-Z]+__", "", text)                              # __NOTOC__ and friends
    text = re.sub(r"<[^>]+>", "", text)                                 # <br/>, <small>, ...
    text = html.unescape(text)
    text = re.sub(r"[ \t]+\n", "\n", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def strip_html(text):
    """HTML to plain text: scripts, styles and comments go, block tags become line breaks."""
    text = re.sub(r"<(script|style|noscript)\b.*?</\1\s*>", "", text, flags=re.S | re.I)
    text = re.sub(r"<!--.*?-->", "", text, flags=re.S)
    text = re.sub(r"<(br|/p|/div|/li|/h[1-6]|/tr|/title)\b[^>]*>", "\n", text, flags=re.I)
    text = re.sub(r"<[^>]+>", "", text)
    text = html.unescape(text)
    text = re.sub(r"[ \t]+", " ", text)
    text = re.sub(r" ?\n ?", "\n", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


# ----------------------------------------------------------------------------- language

# The most frequent function words of each language. English text has 30-50% of its words in
# its own list and few in the others; a document is English when English scores highest and
# above MIN_ENGLISH_SCORE. No model to download, and the reason is easy to read off.
STOP_WORDS = {
    "en": "the of and to a in is it that was for on are with as i his they be at one have this "
          "from or had by not but what all were we when your can there an which their if do "
          "will each about how up out them then she many some so these would other into has "
          "her him my you he me no its than who our been did".split(),
    "de": "der die und in den von zu das mit sich des auf für ist im dem nicht ein eine als "
          "auch es an werden aus er hat dass sie nach wird bei einer um am sind noch wie "
          "einem über einen so zum war haben nur oder aber vor zur bis mehr durch".split(),
    "fr": "le de la les et des en du un une est que pour qui dans par sur pas au plus se ne "
          "ce il sont avec son aux mais ou leur comme été nous elle sa ses cette vous je".split(),
    "es": "de la que el en y los se del las un por con no una su para es al lo como más "
          "pero sus le ya o fue este ha si porque esta son entre cuando muy sin sobre".split(),
    "it": "di e il la che è per un in del non una le si da i con sono della al lo gli come "
          "ma anche più questo dei nel alla ha delle ci se ne cui o".split(),
    "nl": "de en van het een is dat op te in zijn voor met die niet aan er om ook als dan "
          "bij of maar worden nog wordt door naar heeft hij uit zo kan tot dit wel".split(),
    "pt": "de a o que e do da em um para é com não uma os no se na por mais as dos como mas "
          "foi ao ele das tem à seu sua ou ser quando muito há nos já está eu também".split(),
}
STOP_WORD_SETS = {lang: frozenset(words) for lang, words in STOP_WORDS.items()}
MIN_ENGLISH_SCORE = 0.15
WORD_RE = regex.compile(r"\p{L}+")


def language_scores(text, max_words=5000):
    """Fraction of the (first `max_words`) words that are stop words of each language."""
    words = [w.lower() for w in WORD_RE.findall(text[:max_words * 12])][:max_words]
    if not words:
        return {lang: 0.0 for lang in STOP_WORD_SETS}
    return {lang: sum(w in s for w in words) / len(words) for lang, s in STOP_WORD_SETS.items()}


def check_english(text):
    """Keep English prose: English must be the best-scoring language and reach the minimum."""
    scores = language_scores(text)
    best = max(scores, key=scores.get)
    if best != "en":
        return f"looks like {best} ({scores[best]:.2f} vs en {scores['en']:.2f})"
    if scores["en"] < MIN_ENGLISH_SCORE:
        return f"English stop-word share {scores['en']:.2f} < {MIN_ENGLISH_SCORE}"
    return None


# ----------------------------------------------------------------------------- code

def check_code(text):
    """Rules for source code, in place of the prose rules (from The Stack and StarCoder).

    Code is not English prose: its quality signals are its lines. Very long lines mean
    minified or data files, a low share of alphanumerics means encoded blobs, and a
    "generated" banner means it was written by a program, not a person.
    """
    lines = text.split("\n")
    nonblank = [l for l in lines if l.strip()]
    if len(nonblank) < 5:
        return f"{len(nonblank)} non-blank lines < 5"
    if max(map(len, lines)) > 1000:
        return f"a line of {max(map(len, lines))} characters > 1000"
    mean = sum(map(len, lines)) / len(lines)
    if mean > 100:
        return f"mean line length {mean:.0f} > 100"
    alnum = sum(map(str.isalnum, text)) / len(text)
    if alnum < 0.25:
        return f"alphanumeric fraction {alnum:.2f} < 0.25"
    head = "\n".join(lines[:5]).lower()
    if re.search(r"auto-?generated|generated (by|from)|do not edit", head):
        return "generated file"
    return None


# ----------------------------------------------------------------------------- Gopher quality

STOP_WORDS_GOPHER = frozenset("the be to of and that have with".split())
BULLETS = ("•", "-", "*", "‣", "▪", "◦", "●", "·", "–")


def check_gopher_quality(text):
    """Gopher's quality rules (Rae et al. 2021, A.1.1), thresholds as published."""
    words = text.split()
    n = len(words)
    if not 50 <= n <= 100_000:
        return f"{n} words, outside 50-100,000"
    mean_len = sum(map(len, words)) / n
    if not 3 <= mean_len <= 10:
        return f"mean word length {mean_len:.1f}, outside 3-10"
    symbols = text.count("#") + text.count("...") + text.count("…")
    if symbols / n > 0.1:
        return f"symbol-to-word ratio {symbols / n:.2f} > 0.1"
    lines = [l.strip() for l in text.split("\n") if l.strip()]
    bullets = sum(l.startswith(BULLETS) for l in lines) / len(lines)
    if bullets > 0.9:
        return f"{bullets:.0%} of lines start with a bullet > 90%"
    ellipsis = sum(l.endswith(("...", "…")) for l in lines) / len(lines)
    if ellipsis > 0.3:
        return f"{ellipsis:.0%} of lines end in an ellipsis > 30%"
    alpha = sum(WORD_RE.search(w) is not None for w in words) / n
    if alpha < 0.8:
        return f"{alpha:.0%} of words have a letter < 80%"
    stops = len(STOP_WORDS_GOPHER.intersection(w.lower() for w in words))
    if stops < 2:
        return f"{stops} of Gopher's 8 stop words present < 2"
    return None


# ----------------------------------------------------------------------------- Gopher repetition

# (n, threshold) pairs of Gopher's Table A1.
TOP_NGRAM_MAX = ((2, 0.20), (3, 0.18), (4, 0.16))
DUP_NGRAM_MAX = ((5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10))


def duplicate_fraction(parts):
    """(fraction of parts that repeat an earlier part, fraction of characters in them)."""
    seen, dup, dup_chars = set(), 0, 0
    for p in parts:
        if p in seen:
            dup += 1
            dup_chars += len(p)
        seen.add(p)
    total_chars = sum(map(len, parts)) or 1
    return dup / max(len(parts), 1), dup_chars / total_chars


def ngram_ids(word_ids, n):
    """One 64-bit id per word n-gram: a polynomial hash of the n word ids, vectorised.

    word_ids (N,) uint64 -> (N - n + 1,) uint64; equal n-grams get equal ids (and distinct
    ones collide with probability ~2^-64, which no threshold here can notice).
    """
    ids = np.zeros(len(word_ids) - n + 1, dtype=np.uint64)
    for j in range(n):                               # overflow wraps mod 2^64: intended
        ids = ids * np.uint64(0x100000001B3) + word_ids[j:len(word_ids) - n + 1 + j]
    return ids


def repetition_stats(text):
    """Gopher's repetition measures, as a dict of name -> fraction.

    - dup_line_frac / dup_line_char_frac: lines (split on newlines) that repeat an earlier one.
    - dup_para_frac / dup_para_char_frac: the same for paragraphs (split on blank lines).
    - top_{n}gram: characters in the most frequent n-gram times its count / all word characters.
    - dup_{n}gram: characters of words covered by a repeated occurrence of any n-gram / all
      word characters. Overlapping n-grams count each word once, the first occurrence of an
      n-gram not at all (it is the original, not the repetition).
    """
    stats = {}
    lines = [l for l in text.split("\n") if l.strip()]
    paras = [p for p in re.split(r"\n{2,}", text) if p.strip()]
    stats["dup_line_frac"], stats["dup_line_char_frac"] = duplicate_fraction(lines)
    stats["dup_para_frac"], stats["dup_para_char_frac"] = duplicate_fraction(paras)

    words = text.split()
    vocab = {}
    word_ids = np.array([vocab.setdefault(w, len(vocab) + 1) for w in words], dtype=np.uint64)
    lengths = np.array([len(w) for w in words], dtype=np.int64)
    for n, _ in TOP_NGRAM_MAX:
        stats[f"top_{n}gram"] = top_ngram_fraction(word_ids, lengths, n)
    for n, _ in DUP_NGRAM_MAX:
        stats[f"dup_{n}gram"] = dup_ngram_fraction(word_ids, lengths, n)
    return stats


def top_ngram_fraction(word_ids, lengths, n):
    """Characters in the most frequent n-gram times its count / all word characters."""
    if len(word_ids) < n:
        return 0.0
    _, first, counts = np.unique(ngram_ids(word_ids, n), return_index=True, return_counts=True)
    best = np.argmax(counts)
    if counts[best] < 2:
        return 0.0
    start = first[best]
    return float(lengths[start:start + n].sum() * counts[best]) / max(int(lengths.sum()), 1)


def dup_ngram_fraction(word_ids, lengths, n):
    """Characters of words inside a repeated (not first) occurrence of an n-gram / all word
    characters; a word covered by several overlapping repeats counts once."""
    if len(word_ids) < n:
        return 0.0
    ids = ngram_ids(word_ids, n)
    _, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
    repeat = np.flatnonzero(first[inverse] != np.arange(len(ids)))   # not a first occurrence
    # Mark words [i, i + n) for each repeated n-gram start i: +1 at i, -1 at i + n, and a
    # running sum > 0 means "covered".
    delta = np.zeros(len(word_ids) + 1, dtype=np.int64)
    np.add.at(delta, repeat, 1)
    np.add.at(delta, repeat + n, -1)
    covered = np.cumsum(delta[:-1]) > 0
    return float(lengths[covered].sum()) / max(int(lengths.sum()), 1)


def check_gopher_repetition(text):
    """Gopher's repetition rules (Table A1): repeated lines, paragraphs and n-grams."""
    s = repetition_stats(text)
    limits = [("dup_line_frac", 0.30), ("dup_para_frac", 0.30),
              ("dup_line_char_frac", 0.20), ("dup_para_char_frac", 0.20)]
    limits += [(f"top_{n}gram", t) for n, t in TOP_NGRAM_MAX]
    limits += [(f"dup_{n}gram", t) for n, t in DUP_NGRAM_MAX]
    for name, limit in limits:
        if s[name] > limit:
            return f"{name} {s[name]:.2f} > {limit}"
    return None


# ----------------------------------------------------------------------------- toxicity

# C4 dropped every page containing any word of its list, which also drops Shakespeare,
# medicine and news about crime. We score density instead: listed words per 1,000 words, with
# short documents scored as if they had MIN_WORDS_FOR_DENSITY words, so that one incidental
# word in a 100-word passage scores 3.3 and not 10. A page built around such words scores
# tens to hundreds. The threshold of 10 (three listed words in a 300-word passage) keeps every
# book, speech and Wikipedia article of the default corpus. What it still removes there is
# 0.4% of the documents, mostly passages about sexual health and sexual crime: the known bias
# of word lists (Dodge et al. 2021, "Documenting Large Webtext Corpora"), visible in the
# report's examples. Raise --max-toxicity to keep them; a classifier would do better.
MAX_TOXICITY = 10.0
MIN_WORDS_FOR_DENSITY = 300


TOKEN_RE = re.compile(r"\w+")


def compile_word_list(words):
    """Split the list into single words (a set lookup per token) and phrases ("two words",
    "g-spot", matched on the token sequence), plus terms without word characters (emoji).

    A set lookup per token is ~20x faster than one regex with 400 alternatives, and it
    matches whole words only by construction: "assert" never counts as "ass".
    """
    singles, phrases, symbols = set(), set(), set()
    for w in words:
        tokens = TOKEN_RE.findall(w.lower())
        if len(tokens) == 1 and tokens[0] == w.lower():
            singles.add(tokens[0])
        elif tokens:
            phrases.add(tuple(tokens))
        else:
            symbols.add(w)
    by_first = {}                       # first token -> the phrases starting with it
    for p in sorted(phrases):
        by_first.setdefault(p[0], []).append(p)
    return frozenset(singles), by_first, sorted(symbols)


def count_listed(text, word_list):
    """How many times listed terms occur in `text`, as whole words, case-insensitively."""
    singles, by_first, symbols = word_list
    tokens = TOKEN_RE.findall(text.lower())
    n = sum(t in singles for t in tokens)
    if by_first.keys().isdisjoint(tokens):      # the common case: no phrase can start here
        tokens = ()
    for i, t in enumerate(tokens):
        for phrase in by_first.get(t, ()):
            n += tuple(tokens[i:i + len(phrase)]) == phrase
    return n + sum(text.count(sym) for sym in symbols)


def toxicity_score(text, word_list):
    """Listed words per 1,000 words (at least MIN_WORDS_FOR_DENSITY words in the denominator)."""
    n_words = len(text.split())
    return 1000 * count_listed(text, word_list) / max(n_words, MIN_WORDS_FOR_DENSITY)


def check_toxicity(text, word_list, max_score=MAX_TOXICITY):
    score = toxicity_score(text, word_list)
    return f"{score:.1f} listed words per 1,000 > {max_score}" if score > max_score else None


# ----------------------------------------------------------------------------- PII

EMAIL_RE = re.compile(r"(?<![\w.+-])[\w.+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
# A North American number: 10 digits as 2831823829, (283)-182-3829, (283) 182 3829,
# 283-182-3829 or 283.182.3829, optionally after "+1" or "1 ". The look-arounds refuse a match that is
# part of a longer run of digits (an ID, a serial number, a large amount).
PHONE_RE = re.compile(r"(?<![\d\w+])(?:\+1[ .-]?|1[ .-])?(?:\(\d{3}\)[ .-]?|\d{3}[ .-]?)\d{3}[ .-]?\d{4}(?![\d\w])")
OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
# Four dotted octets, not part of a longer dotted number such as a version "1.2.3.4.5".
IPV4_RE = re.compile(rf"(?<![\d.]){OCTET}(?:\.{OCTET}){{3}}(?!\d|\.\d)")

PII_PATTERNS = (("email", EMAIL_RE, "|||EMAIL_ADDRESS|||"),
                ("phone", PHONE_RE, "|||PHONE_NUMBER|||"),
                ("ip", IPV4_RE, "|||IP_ADDRESS|||"))


def mask_pii(text):
    """Replace e-mail addresses, phone numbers and IPv4 addresses; return (text, counts).

    E-mails go first, so the digits inside an address are not mistaken for a phone number.
    """
    counts = {}
    for name, pattern, mask in PII_PATTERNS:
        text, counts[name] = pattern.subn(mask, text)
    return text, counts
