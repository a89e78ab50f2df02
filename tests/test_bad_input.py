"""What users do to the data and tokenizer stages and to the loaders (issue 12): records with
lone surrogates or fields of the wrong type, corpora that are not UTF-8 JSON Lines, damaged
meta.json files, a truncated archive in the download cache, a full disk, and flags at their
edges. Each must end in one clear line (`error: ...`, naming the file and line where there is
one, and what to do), a non-zero exit, and no half-written output.

In-process (main(argv) under run_main) on tiny inputs, to stay fast; nothing here downloads.
"""

import errno
import json
import os
import sys
import zipfile

import numpy as np
import pytest

import bpe
import common
import model
from common import StageError, atomic_open, run_main
from data import prepare
from textgen import english_doc
from tokenizer import SHARDS_FORMAT, SHARDS_VERSION, Tokenizer, load_token_dir


def run_stage(main, argv, capsys):
    """(exit status, last line of stderr) of `main(argv)` run as its script runs it. Any
    exception other than SystemExit (a traceback for the user) fails the test."""
    with pytest.raises(SystemExit) as exit_:
        run_main(lambda: main([str(a) for a in argv]))
    lines = capsys.readouterr().err.strip().splitlines()
    return exit_.value.code, lines[-1] if lines else ""


def leftovers(folder):
    """Hidden temporaries a failed write would leave behind."""
    return sorted(p.name for p in folder.rglob(".*")) if folder.exists() else []


def write_jsonl(path, lines):
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


# ----------------------------------------------------------------------------- data/prepare.py

def prepare_argv(out, *inputs, workers=1):
    return ["--sources", "none", "--max-toxicity", 0, "--workers", workers, "--out-dir", out,
            "--input", *inputs]


def test_lone_surrogate_is_replaced_and_counted(tmp_path, capsys):
    """JSON can spell a lone surrogate ("\\ud800", half of a UTF-16 pair cut in two); it is
    not Unicode text and cannot be written as UTF-8. It used to kill the run from a pool
    worker (UnicodeEncodeError). Like an invalid byte in any user file, it becomes U+FFFD and
    is counted in the report: one cut emoji must not stop a crawl of millions of records."""
    docs = [{"text": english_doc(i)} for i in range(3)]
    cut = json.dumps({"text": english_doc(9) + " X", "source": "web X"}).replace(" X", " \\ud83d")
    path = write_jsonl(tmp_path / "cut.jsonl", docs + [cut])
    prepare.main([str(a) for a in prepare_argv(tmp_path / "out", path, workers=2)])
    raw = (tmp_path / "out" / "corpus.jsonl").read_bytes()
    records = [json.loads(line) for line in raw.decode("utf-8").splitlines()]     # strict UTF-8
    assert sum(r["text"].endswith(" \ufffd") for r in records) == 1
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["sources"]["web \ufffd"]["invalid_utf8_replaced"] == 2


@pytest.mark.parametrize("field, value, message", [
    ("source", 5, '"source" is int, not a string'),
    ("source", ["a"], '"source" is list, not a string'),
    ("source", None, '"source" is null, not a string'),
    ("source", " ", '"source" is empty'),
    ("licence", {}, '"licence" is object, not a string'),
    ("id", [1], '"id" is list, not a string or a number'),
    ("kind", ["x"], '"kind" is ["x"]; use "prose" or "code"'),
])
def test_fields_of_the_wrong_type(tmp_path, capsys, field, value, message):
    """A user record whose source, licence, id or kind is not a string: a TypeError traceback
    (source), or a corpus record breaking its contract (licence, id), before."""
    path = write_jsonl(tmp_path / "bad.jsonl", [{"text": english_doc(1)}, {"text": english_doc(2), field: value}])
    status, line = run_stage(prepare.main, prepare_argv(tmp_path / "out", path), capsys)
    assert status == 1 and line.startswith(f"error: {path}:2: ") and message in line, line
    assert not (tmp_path / "out" / "corpus.jsonl").exists() and not leftovers(tmp_path / "out")


@pytest.mark.parametrize("flags, message", [
    (["--max-mb", "nan"], "--max-mb must be a number >= 0"),
    (["--max-toxicity", "nan"], "--max-toxicity must be a number >= 0"),
    (["--max-toxicity", "-1"], "--max-toxicity must be a number >= 0"),
    (["--bands", "0"], "--bands must be >= 1"),
    (["--num-perm", "0"], "--num-perm must be in [1, 4096]"),
    (["--num-perm", "-16", "--bands", "4"], "--num-perm must be in [1, 4096]"),
    (["--num-perm", "10000000", "--bands", "10"], "--num-perm must be in [1, 4096]"),
    (["--mix", "user=nan"], "--mix weight of user must be a finite number >= 0"),
    (["--mix", "user=inf"], "--mix weight of user must be a finite number >= 0"),
    (["--boilerplate-docs", "1"], "--boilerplate-docs must be >= 2"),
    (["--boilerplate-chars", "0"], "--boilerplate-chars must be >= 1"),
    (["--workers", "100000"], "--workers 100000 is more than"),
    (["--val-fraction", "1"], "--val-fraction must be in [0, 1)"),
])
def test_prepare_flags_at_their_edges(tmp_path, capsys, flags, message):
    """Before: ZeroDivisionError (--bands 0, --num-perm 0), ValueError (negative --num-perm),
    or silent success with a rule quietly off (NaN thresholds and weights)."""
    path = write_jsonl(tmp_path / "a.jsonl", [{"text": english_doc(1)}])
    status, line = run_stage(prepare.main, prepare_argv(tmp_path / "out", path) + flags, capsys)
    assert status == 2 and message in line, line
    assert not (tmp_path / "out").exists()


def test_prepare_out_dir_that_is_a_file(tmp_path, capsys):
    (tmp_path / "taken").write_text("mine")
    path = write_jsonl(tmp_path / "a.jsonl", [{"text": english_doc(1)}])
    status, line = run_stage(prepare.main, prepare_argv(tmp_path / "taken", path), capsys)
    assert status == 1 and line == f"error: --out-dir {tmp_path / 'taken'} is a file; give a directory", line
    assert (tmp_path / "taken").read_text() == "mine"


# ----------------------------------------------------------------------------- bpe.py

def corpus_record(text, split="train"):
    return json.dumps({"id": "d", "text": text, "source": "s", "kind": "prose", "licence": "x", "split": split})


@pytest.mark.parametrize("bad, message", [
    (b'{"id": "d", "text": "caf\xff", "split": "train"}', "is not UTF-8 (byte 0xff at column 25)"),
    (corpus_record(5).encode(), '"text" is int, not a string'),
    (corpus_record(None).encode(), '"text" is null, not a string'),
    (b"hello", "is not JSON"),
    (b"[1, 2]", "is not a JSON object"),
    (corpus_record("a", split="test").encode(), 'has split "test"; use "train" or "val"'),
    (corpus_record("a X").replace(" X", " \\udc80").encode(), "holds a lone surrogate"),
], ids=["bytes", "int-text", "null-text", "not-json", "list", "split", "surrogate"])
def test_corpus_lines_bpe_refuses(tmp_path, bad, message):
    """Before: UnicodeDecodeError, AttributeError or UnicodeEncodeError tracebacks (bytes,
    non-string text, surrogates), or a message naming the line but not what is wrong."""
    good = corpus_record(english_doc(1)) + "\n" + corpus_record(english_doc(2), "val") + "\n"
    (tmp_path / "corpus.jsonl").write_bytes(good.encode() + bad + b"\n")
    with pytest.raises(StageError) as e:
        bpe.read_corpus(tmp_path)
    assert str(e.value).startswith(f"{tmp_path / 'corpus.jsonl'}:3") and message in str(e.value), e.value
    assert "data/prepare.py" in str(e.value)


@pytest.mark.parametrize("meta", ["{not json", "[1]", '{"corpus_sha256": 5}', "\xff\xfe"])
def test_damaged_corpus_meta(tmp_path, meta):
    (tmp_path / "corpus.jsonl").write_text(corpus_record(english_doc(1)) + "\n")
    (tmp_path / "meta.json").write_bytes(meta.encode("latin-1"))
    with pytest.raises(StageError, match=r"meta.json is damaged \(.*\); run data/prepare.py again"):
        bpe.read_corpus(tmp_path)


@pytest.mark.parametrize("flags, message", [
    (["--vocab-size", "0"], "--vocab-size 0 is below 272"),
    (["--vocab-size", "256"], "--vocab-size 256 is below 272"),
    (["--train-mb", "-1"], "--train-mb must be a number >= 0"),
    (["--train-mb", "nan"], "--train-mb must be a number >= 0"),
    (["--workers", "0"], "--workers must be >= 1"),
])
def test_bpe_flags_at_their_edges(tmp_path, capsys, flags, message):
    """Before: --train-mb -1 said "the training texts are empty", NaN trained on everything,
    --workers 0 or -3 ran silently, --vocab-size 0 named no flag."""
    status, line = run_stage(bpe.main, ["--data-dir", tmp_path, "--out-dir", tmp_path / "tok"] + flags, capsys)
    assert status == 2 and message in line, line


@pytest.mark.parametrize("which", ["file", "data-dir"])
def test_bpe_out_dir(tmp_path, capsys, which):
    """An --out-dir that is a file failed with FileExistsError after the whole training; one
    that is --data-dir silently replaced the corpus' meta.json with the tokenizer's."""
    (tmp_path / "corpus.jsonl").write_text(corpus_record(english_doc(1)) + "\n")
    out = tmp_path / "corpus.jsonl" if which == "file" else tmp_path
    status, line = run_stage(bpe.main, ["--data-dir", tmp_path, "--out-dir", out, "--vocab-size", 300], capsys)
    assert status == 1 and "--out-dir" in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.jsonl"]


# ----------------------------------------------------------------------------- the loaders

@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train([english_doc(i, 5) for i in range(5)], 300)


def token_dir(path, tok):
    path.mkdir()
    tok.save(path / "tokenizer.json")
    for split in ("train", "val"):
        np.zeros(4, dtype=np.uint16).tofile(path / f"{split}.bin")
    meta = {"format": SHARDS_FORMAT, "version": SHARDS_VERSION, "dtype": "uint16",
            "tokenizer": {"sha256": tok.sha256()}, "metrics": {"train_tokens": 4, "val_tokens": 4}}
    (path / "meta.json").write_text(json.dumps(meta))
    return meta


@pytest.mark.parametrize("damage, message", [
    (lambda m: "{not json", r"is damaged \(not JSON: .*line 1"),
    (lambda m: "[]", r"is damaged \(JSON list, not an object\)"),
    (lambda m: json.dumps({**m, "tokenizer": "abc"}), r"is damaged \(no tokenizer.sha256\)"),
    (lambda m: json.dumps({**m, "metrics": {}}), r"is damaged \(no metrics.train_tokens\)"),
    (lambda m: json.dumps({**m, "dtype": "float99"}), r"is damaged \(dtype 'float99'"),
])
def test_damaged_token_meta(tmp_path, tok, damage, message):
    """Before: JSONDecodeError, AttributeError, KeyError or TypeError tracebacks in train.py."""
    meta = token_dir(tmp_path / "tok", tok)
    load_token_dir(tmp_path / "tok")
    (tmp_path / "tok" / "meta.json").write_text(damage(meta))
    with pytest.raises(StageError, match=message + r".*; run bpe.py again"):
        load_token_dir(tmp_path / "tok")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tok):
    path = tmp_path_factory.mktemp("ckpt") / "base"
    cfg = model.GPTConfig(vocab_size=tok.vocab_size, block_size=8, n_layer=1, n_head=2, n_kv_head=2, n_embd=16)
    model.save_checkpoint(path, model.GPT(cfg).state_dict(), cfg, tok, kind="base", script="test",
                          args={}, metrics={}, inputs={})
    return path, (path / "meta.json").read_text()


@pytest.mark.parametrize("damage, message", [
    (lambda m: "{not json", r"meta.json is damaged \(not JSON: .*\); run train.py"),
    (lambda m: b"\xff", r"meta.json is damaged \(not UTF-8"),
    (lambda m: json.dumps({**m, "kind": "robot"}), r"meta.json is damaged \(kind 'robot'.*\); run train.py"),
    (lambda m: json.dumps({**m, "kind": ["base"]}), r"meta.json is damaged \(kind \['base'\]"),
    (lambda m: json.dumps({**m, "tokenizer": "abc"}), r"meta.json is damaged \(tokenizer is string, not an object"),
    (lambda m: json.dumps({**m, "model_sha256": 5}), r"meta.json is damaged \(model_sha256 is int, not a string"),
])
def test_damaged_checkpoint_meta(tmp_path, checkpoint, damage, message):
    """read_meta and load_checkpoint (sample.py, evaluate.py). Before: AttributeError,
    KeyError or TypeError tracebacks for the wrong shapes."""
    src, text = checkpoint
    ckpt = tmp_path / "base"
    ckpt.mkdir()
    for p in src.iterdir():
        (ckpt / p.name).write_bytes(p.read_bytes())
    model.load_checkpoint(ckpt)
    data = damage(json.loads(text))
    (ckpt / "meta.json").write_bytes(data if isinstance(data, bytes) else data.encode())
    with pytest.raises(StageError, match=message):
        model.load_checkpoint(ckpt)


# ----------------------------------------------------------------------------- the download cache

def fake_download(tmp_path, monkeypatch):
    """An offline stand-in for pip: `cmd` writes a small wheel into the folder it runs in."""
    monkeypatch.setenv("LLMPIPE_CACHE", str(tmp_path / "cache"))
    wheel = tmp_path / "carrier-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("carrier/data.txt", "x" * 5000)
    cmd = [sys.executable, "-c", f"import shutil; shutil.copy({str(wheel)!r}, '.')"]
    folder = common.cache_dir() / "pypi" / "carrier-1.0-wheel"
    return lambda: common._download(folder, "carrier==1.0", "a fake index", cmd), folder


def test_a_truncated_archive_in_the_cache_is_downloaded_again(tmp_path, monkeypatch, capsys):
    """Before: the cached file was trusted, so a truncated one raised zipfile.BadZipFile deep
    in a reader. Now its sha256, recorded at download, is checked on use."""
    fetch, folder = fake_download(tmp_path, monkeypatch)
    path = fetch()
    whole = path.read_bytes()
    assert (folder / ".sha256").exists() and fetch() == path
    path.write_bytes(whole[:-100])                                   # truncated on disk
    assert fetch() == path and path.read_bytes() == whole
    assert f"the cached download {path} is damaged (sha256 differs" in capsys.readouterr().err
    # A cache folder written before hashes were recorded: the archive is read through once.
    (folder / ".sha256").unlink()
    path.write_bytes(whole[:-100])
    assert fetch() == path and path.read_bytes() == whole and (folder / ".sha256").exists()
    assert "is damaged (not a whole zip archive" in capsys.readouterr().err
    # No network to fetch it again: the line says which folder to delete.
    path.write_bytes(whole[:-100])
    monkeypatch.setattr(common.subprocess, "run", lambda *a, **k: common.subprocess.CompletedProcess(a, 1, "", "offline"))
    with pytest.raises(StageError, match="could not download carrier==1.0 from a fake index"):
        fetch()
    assert not folder.exists()


# ----------------------------------------------------------------------------- a full disk

def enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_disk_full_in_atomic_open(tmp_path):
    with pytest.raises(StageError) as e:
        with atomic_open(tmp_path / "big.bin", "wb") as f:
            f.write(b"x" * 3_000_000)
            enospc()
    assert str(e.value).startswith(f"disk full writing {tmp_path / 'big.bin'}: ")
    assert " MB free (the file had reached 3.0 MB); free some space" in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_disk_full_in_the_stages(tmp_path, capsys, monkeypatch):
    """bpe.py's shards (the write fails at fsync, as on many file systems) and
    data/prepare.py's work files: one line each, nothing half-written. Before: OSError
    tracebacks."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "corpus.jsonl").write_text(
        "".join(corpus_record(english_doc(i, 5), "val" if i % 3 == 0 else "train") + "\n" for i in range(6)))
    monkeypatch.setattr(common.os, "fsync", enospc)
    status, line = run_stage(bpe.main, ["--data-dir", tmp_path / "data", "--out-dir", tmp_path / "tok",
                                        "--vocab-size", 300, "--workers", 1], capsys)
    assert status == 1 and line.startswith(f"error: disk full writing {tmp_path / 'tok'}"), line
    assert not leftovers(tmp_path / "tok") and not (tmp_path / "tok" / "meta.json").exists()
    monkeypatch.undo()

    monkeypatch.setattr(prepare, "clean_and_deduplicate", enospc)
    path = write_jsonl(tmp_path / "a.jsonl", [{"text": english_doc(1)}])
    status, line = run_stage(prepare.main, prepare_argv(tmp_path / "out", path), capsys)
    assert status == 1 and line.startswith(f"error: disk full writing {tmp_path / 'out'}"), line
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_disk_full_on_a_real_tmpfs(tmp_path, capsys):
    """The same, for real: bpe.py writing its shards onto a 64 kB file system."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "corpus.jsonl").write_text(
        "".join(corpus_record(english_doc(i, 40)) + "\n" for i in range(30)))
    small = tmp_path / "small"
    small.mkdir()
    if os.system(f"mount -t tmpfs -o size=64k tmpfs {small} 2>/dev/null"):
        pytest.skip("cannot mount a tmpfs here")
    try:
        status, line = run_stage(bpe.main, ["--data-dir", tmp_path / "data", "--out-dir", small / "tok",
                                            "--vocab-size", 300, "--workers", 1], capsys)
        assert status == 1 and line.startswith(f"error: disk full writing {small / 'tok'}"), line
        assert not leftovers(small) and not (small / "tok" / "meta.json").exists()
    finally:
        os.system(f"umount {small}")
