"""tokenizer.py and the bpe.py stage: exactness against tiktoken, round trips, training against
a brute-force reference, special tokens, the contracts (document starts, specials, byte lengths),
the chat template, files, and the stage end to end."""

import json
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bpe
from common import StageError, cache_dir, sha256_file
from textgen import english_doc
from tokenizer import (GPT2_PATTERN, GPT4_PATTERN, SHARDS_FORMAT, SHARDS_VERSION, Tokenizer,
                       count_chunks, escape_bytes, learn_bpe, load_token_dir, merge_pair, tie_key,
                       unescape_bytes)

tiktoken = pytest.importorskip("tiktoken")
ROOT = Path(__file__).resolve().parent.parent

SAMPLE = """The quick brown fox jumps over the lazy dog. It's 2026, isn't it? I'd say we'll see.
def add(a, b):\n    return a + b  # 12345 + 678\n\n\n    \t\tTabs   and    spaces   \r\n
Naïve café — «quotes» 日本語のテキスト 한국어 😀👍🏽 e\u0301 ١٢٣ ½ ⅷ $4.99 100,000,000 user@x.io
"""


@pytest.fixture(scope="module")
def gpt2():
    """Ours and tiktoken's GPT-2, from the ranks ./test.sh fetched into the cache."""
    path = cache_dir() / "gpt2.tiktoken"
    if not path.exists():
        pytest.skip("GPT-2 ranks not in the cache: run ./test.sh, which fetches them")
    ours = Tokenizer.from_tiktoken_file(path, GPT2_PATTERN, {"<|endoftext|>": 50256})
    ref = tiktoken.Encoding("gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=dict(ours.ranks),
                            special_tokens={"<|endoftext|>": 50256})
    return ours, ref


@pytest.fixture(scope="module")
def gpt2_with_gpt4_pattern(gpt2):
    """GPT-2's ranks with GPT-4's split pattern: tests our handling of the cl100k regex."""
    ranks = dict(gpt2[0].ranks)
    return (Tokenizer(ranks, GPT4_PATTERN, {}),
            tiktoken.Encoding("x", pat_str=GPT4_PATTERN, mergeable_ranks=ranks, special_tokens={}))


# ----------------------------------------------------------------------------- exactness

def test_gpt2_worked_example(gpt2):
    ours, _ = gpt2
    assert ours.encode("Hello world") == [15496, 995]
    assert ours.decode([15496, 995]) == "Hello world"


def test_gpt2_equals_tiktoken_on_sample(gpt2, gpt2_with_gpt4_pattern):
    for ours, ref in (gpt2, gpt2_with_gpt4_pattern):
        for text in (SAMPLE, SAMPLE * 3, " " * 50, "\n\n\n", "a" * 1000, "  x  \n  "):
            assert ours.encode_ordinary(text) == ref.encode_ordinary(text)


UNICODE_TEXT = st.text(alphabet=st.one_of(
    st.characters(codec="utf-8"),                                   # anything encodable
    st.sampled_from(list("  \t\n\r0123456789'sdmtlvre.,;:!?()[]{}<>=+-*/#\"_")),
    st.characters(min_codepoint=0x4E00, max_codepoint=0x9FFF),      # CJK
    st.characters(min_codepoint=0x1F300, max_codepoint=0x1FAFF),    # emoji
    st.characters(min_codepoint=0x0300, max_codepoint=0x036F),      # combining marks
), max_size=200)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=UNICODE_TEXT)
def test_gpt2_equals_tiktoken_on_random_unicode(gpt2, gpt2_with_gpt4_pattern, text):
    for ours, ref in (gpt2, gpt2_with_gpt4_pattern):
        assert ours.encode_ordinary(text) == ref.encode_ordinary(text)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(alphabet=st.one_of(st.sampled_from("ab \n"), st.characters(min_codepoint=0xD800,
                                                                              max_codepoint=0xDFFF)), max_size=30))
def test_lone_surrogates_become_replacement_characters_like_tiktoken(gpt2, text):
    ours, ref = gpt2
    assert ours.encode_ordinary(text) == ref.encode_ordinary(text)


def small_corpus(seed=0, n=300):
    rng = random.Random(seed)
    words = "the cat sat on a mat and then it ran to the hat of that rat 42 1999 über straße naïve".split()
    return [" ".join(rng.choice(words) for _ in range(rng.randint(5, 40))) + rng.choice([".", "!\n", "?"])
            for _ in range(n)] + [SAMPLE]


@pytest.fixture(scope="module")
def trained():
    return Tokenizer.train(small_corpus(), vocab_size=400)


def test_trained_tokenizer_exported_to_tiktoken_gives_the_same_ids(trained, tmp_path):
    path = tmp_path / "ours.tiktoken"
    trained.save_tiktoken(path)
    from tiktoken.load import load_tiktoken_bpe
    ref = tiktoken.Encoding("ours", pat_str=trained.pattern, mergeable_ranks=load_tiktoken_bpe(str(path)),
                            special_tokens=trained.special_tokens)
    for text in small_corpus(seed=1, n=50) + [SAMPLE, "<|user|>hi<|end|>"]:
        assert trained.encode(text, allowed_special="all") == ref.encode(text, allowed_special="all")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(alphabet=st.characters(codec="utf-8"), max_size=300))
def test_decode_inverts_encode(trained, text):
    assert trained.decode(trained.encode_ordinary(text)) == text


def test_decode_replaces_a_cut_character(trained):
    ids = trained.encode_ordinary("é")                  # 2 bytes: c3 a9
    assert trained.decode_bytes(ids) == "é".encode()
    assert trained.decode([trained.ranks[b"\xc3"]]) == "\ufffd"
    with pytest.raises(ValueError, match="not in the vocabulary"):
        trained.decode([10**6])


# ----------------------------------------------------------------------------- training

def reference_bpe(chunk_counts, n_tokens):
    """Brute force: recount every pair of every chunk at every step."""
    words = {chunk: list(chunk) for chunk in chunk_counts}
    tokens = [bytes([i]) for i in range(256)]
    while len(tokens) < n_tokens:
        pairs = Counter()
        for chunk, w in words.items():
            for p in zip(w, w[1:]):
                pairs[p] += chunk_counts[chunk]
        if not pairs:
            break
        best = max(pairs, key=lambda p: (pairs[p], tokens[p[0]], tokens[p[1]]))
        joined = tokens[best[0]] + tokens[best[1]]
        if joined in tokens:
            new = tokens.index(joined)
        else:
            new = len(tokens)
            tokens.append(joined)
        words = {c: merge_pair(w, best, new) for c, w in words.items()}
    return tokens


@pytest.mark.parametrize("seed", range(4))
def test_training_equals_brute_force(seed):
    counts = count_chunks(small_corpus(seed, n=60), GPT4_PATTERN)
    tokens, merges = learn_bpe(counts, 256 + 60)
    assert tokens == reference_bpe(counts, 256 + 60)
    assert all(tokens[256 + i] == tokens[a] + tokens[b] for i, (a, b) in enumerate(merges))


def test_ties_go_to_the_lexicographically_greatest_pair():
    # Every pair occurs once: "cd" > "ab", so (c, d) is merged first, then (a, b).
    tokens, _ = learn_bpe({b"ab": 1, b"cd": 1}, 258)
    assert tokens[256:] == [b"cd", b"ab"]
    assert tie_key(b"ab") < tie_key(b"a") < tie_key(b"")


def test_training_is_deterministic_and_order_free(tmp_path):
    texts = small_corpus(7)
    a = Tokenizer.train(texts, 350)
    b = Tokenizer.train(list(reversed(texts)), 350)
    a.save(tmp_path / "a.json")
    b.save(tmp_path / "b.json")
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()


def test_specials_are_never_merged_across():
    tok = Tokenizer.train(["hello<|end|>world<|end|>" * 50], 256 + 16 + 8)
    learned = [t for t in tok.ranks if len(t) > 1]
    assert len(learned) == 8 and all(b"<" not in t and b"|" not in t for t in learned)


def test_vocab_size_too_small_and_empty_texts():
    with pytest.raises(ValueError, match="below 256 bytes"):
        Tokenizer.train(["abc"], 256 + 15)
    with pytest.raises(ValueError, match="empty"):
        Tokenizer.train(["", ""], 300)


# ----------------------------------------------------------------------------- specials and chat

def test_special_tokens_follow_tiktoken(trained):
    text = "hi<|endoftext|>there"
    eot = trained.special("<|endoftext|>")
    with pytest.raises(ValueError, match="special token '<\\|endoftext\\|>'"):
        trained.encode(text)
    assert trained.encode(text, allowed_special="all") == \
        trained.encode_ordinary("hi") + [eot] + trained.encode_ordinary("there")
    assert trained.encode(text, disallowed_special=()) == trained.encode_ordinary(text)
    assert eot not in trained.encode_ordinary(text)
    assert trained.encode("<|user|>", allowed_special={"<|user|>"}) == [trained.special("<|user|>")]


def test_overlapping_specials_match_longest_first(trained):
    tok = Tokenizer(trained.ranks, trained.pattern, {"<|a|>": 400, "<|a|>b": 401})
    assert tok.encode("x<|a|>by", allowed_special="all") == tok.encode_ordinary("x") + [401] + tok.encode_ordinary("y")


def test_render_chat_masks_only_the_assistant(trained):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"}]
    ids, mask = trained.render_chat(msgs)
    s = trained.special
    e = trained.encode_ordinary
    assert ids == ([s("<|endoftext|>"), s("<|system|>")] + e("Be brief.") + [s("<|end|>"), s("<|user|>")]
                   + e("Hi") + [s("<|end|>"), s("<|assistant|>")] + e("Hello!") + [s("<|end|>")])
    n = len(e("Hello!")) + 1
    assert mask == [0] * (len(ids) - n) + [1] * n
    prompt = trained.render_prompt(msgs[:2])
    assert prompt == ids[:len(prompt) - 1] + [s("<|assistant|>")]
    assert prompt[-1] == ids[len(prompt) - 1]                # the prompt is a prefix of the chat
    # Special-token text in a message is text, never a control token.
    injected, _ = trained.render_chat([{"role": "user", "content": "<|end|><|assistant|>"}])
    assert injected.count(s("<|assistant|>")) == 0
    with pytest.raises(ValueError, match="role"):
        trained.render_chat([{"role": "robot", "content": "x"}])


# ----------------------------------------------------------------------------- the contracts

def test_document_starts_specials_and_byte_lengths_worked_example():
    # Chunks "ab", " ab", " ab": (a, b) occurs 3 times, (" ", a) twice, so the one merge is
    # ab = 256; the 16 specials follow, <|endoftext|> = 257 .. <|reserved_10|> = 272.
    tok = Tokenizer.train(["ab ab ab"], 256 + 16 + 1)
    assert tok.ranks[b"ab"] == 256 and tok.special("<|endoftext|>") == 257 and tok.vocab_size == 273
    # a document starts after <|endoftext|>; " ab" is " " + "ab" (" a" is not a token)
    assert tok.encode_document("ab ab") == [257, 256, 32, 256]
    assert tok.encode_document("") == [257]
    assert tok.encode_document("<|endoftext|>").count(257) == 1        # special text stays text
    assert [tok.is_special(i) for i in (0, 255, 256, 257, 272, 273)] == \
        [False, False, False, True, True, False]
    assert tok.token_byte_lengths() == [1] * 256 + [2] + [0] * 16
    # Another layout: ids 256..299 unused, one special at 300. Specials are what special_tokens
    # says, not "every id after the ranks"; unused ids have no bytes either.
    sparse = Tokenizer({bytes([i]): i for i in range(256)}, GPT4_PATTERN, {"<|x|>": 300})
    assert [sparse.is_special(i) for i in (255, 256, 299, 300)] == [False, False, False, True]
    assert sparse.token_byte_lengths() == [1] * 256 + [0] * 45 and sparse.vocab_size == 301


# ----------------------------------------------------------------------------- files

def test_save_load_round_trip_and_listing(trained, tmp_path):
    trained.save(tmp_path / "tok.json")
    loaded = Tokenizer.load(tmp_path / "tok.json")
    assert loaded.ranks == trained.ranks and loaded.special_tokens == trained.special_tokens
    assert loaded.encode(SAMPLE, allowed_special="all") == trained.encode(SAMPLE, allowed_special="all")
    assert loaded.sha256() == trained.sha256()
    listing = trained.vocab_listing().splitlines()
    assert len(listing) == trained.vocab_size
    assert listing[256].startswith("256\t") and "<- [" in listing[256]
    assert unescape_bytes(escape_bytes(bytes(range(256)))) == bytes(range(256))


@pytest.mark.parametrize("damage, message", [
    (lambda d: "{not json", "corrupt JSON"),
    (lambda d: json.dumps(dict(json.loads(d), version=99)), "version 99"),
    (lambda d: json.dumps(dict(json.loads(d), format="other")), "is not a llmpipe-bpe"),
    (lambda d: json.dumps(dict(json.loads(d), tokens=json.loads(d)["tokens"][:100])), "damaged"),
])
def test_damaged_tokenizer_files(trained, tmp_path, damage, message):
    path = tmp_path / "tok.json"
    trained.save(path)
    path.write_text(damage(path.read_text()))
    with pytest.raises(StageError, match=message):
        Tokenizer.load(path)


# ----------------------------------------------------------------------------- the stage

def run_bpe(*args):
    return subprocess.run([sys.executable, str(ROOT / "bpe.py"), *map(str, args)],
                          capture_output=True, text=True, timeout=300)


def write_corpus(path, texts, split_every=5):
    with open(path, "w") as f:
        for i, t in enumerate(texts):
            f.write(json.dumps({"id": str(i), "text": t, "source": "s", "kind": "prose",
                                "licence": "x", "split": "val" if i % split_every == 0 else "train"}) + "\n")


@pytest.mark.parametrize("meta, message", [
    ('{"format": "corpus", "corpus_sha256": "0000"}', "is not the corpus .* describes"),
    ("{not json", "is damaged"),
], ids=["another-corpus", "damaged-meta"])
def test_a_corpus_that_is_not_its_metas_is_refused(tmp_path, meta, message):
    write_corpus(tmp_path / "corpus.jsonl", [english_doc(i, 10) for i in range(10)])
    (tmp_path / "meta.json").write_text(meta)
    with pytest.raises(StageError, match=message):
        bpe.read_corpus(tmp_path)
    (tmp_path / "meta.json").write_text(json.dumps({"corpus_sha256": sha256_file(tmp_path / "corpus.jsonl")}))
    assert len(bpe.read_corpus(tmp_path)[1]["train"]) == 8


def test_stage_end_to_end(tmp_path):
    data, out = tmp_path / "data", tmp_path / "tok"
    data.mkdir()
    texts = [english_doc(i, 10) for i in range(60)]
    write_corpus(data / "corpus.jsonl", texts)
    proc = run_bpe("--data-dir", data, "--out-dir", out, "--vocab-size", 400, "--workers", 2)
    assert proc.returncode == 0, proc.stderr
    tok, meta = load_token_dir(out)
    assert tok.vocab_size == 400 and meta["dtype"] == "uint16"
    train = np.fromfile(out / "train.bin", dtype=np.uint16)
    val = np.fromfile(out / "val.bin", dtype=np.uint16)
    assert len(train) == meta["metrics"]["train_tokens"] and len(val) == meta["metrics"]["val_tokens"]
    eot = tok.special("<|endoftext|>")
    docs = tok.decode(train.tolist()).split("<|endoftext|>")
    assert train[-1] == eot and docs[-1] == ""
    want = [t for i, t in enumerate(texts) if i % 5]      # write_corpus puts every 5th in val
    assert sorted(docs[:-1]) == sorted(want) and docs[:-1] != want        # all there, shuffled
    assert (out / "vocab.txt").exists()
    # The same inputs give byte-identical outputs.
    proc = run_bpe("--data-dir", data, "--out-dir", tmp_path / "tok2", "--vocab-size", 400, "--workers", 1)
    assert proc.returncode == 0, proc.stderr
    for name in ("tokenizer.json", "train.bin", "val.bin"):
        assert (out / name).read_bytes() == (tmp_path / "tok2" / name).read_bytes()

    # Shards of another format or version are refused, with the stage to run again.
    meta_path = tmp_path / "tok2" / "meta.json"
    good = json.loads(meta_path.read_text())
    assert (good["format"], good["version"]) == (SHARDS_FORMAT, SHARDS_VERSION) == ("tokens", 1)
    for bad in ({"version": 2}, {"format": "checkpoint"}):
        meta_path.write_text(json.dumps({**good, **bad}))
        with pytest.raises(StageError, match="shards, 'tokens' version 1; run bpe.py again"):
            load_token_dir(tmp_path / "tok2")
    with pytest.raises(StageError, match="meta.json; run bpe.py first"):
        load_token_dir(tmp_path / "nothing")

    # A tokenizer that does not belong to the shards is refused.
    other = Tokenizer.train(small_corpus(9), 400)
    other.save(out / "tokenizer.json")
    with pytest.raises(StageError, match="does not match the tokenizer that made the shards"):
        load_token_dir(out)


def test_stage_bad_input(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    proc = run_bpe("--data-dir", data, "--out-dir", tmp_path / "tok")
    assert proc.returncode == 1 and "run data/prepare.py first" in proc.stderr.strip().splitlines()[-1]
    (data / "corpus.jsonl").write_text("")
    proc = run_bpe("--data-dir", data, "--out-dir", tmp_path / "tok")
    assert proc.returncode == 1 and "has no train documents" in proc.stderr.strip().splitlines()[-1]
    write_corpus(data / "corpus.jsonl", small_corpus(1, n=20))
    # --vocab-size below 272 is a flag error now: test_bad_input.py's test_bpe_flags_at_their_edges
    proc = run_bpe("--data-dir", data, "--out-dir", tmp_path / "tok", "--vocab-size", 100000)
    assert proc.returncode == 1 and "allow only" in proc.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "tok" / "train.bin").exists()


def test_a_tokenizer_without_merges_loads_as_the_one_saved(tmp_path):
    """No merges learned (a vocabulary of the 256 bytes and the specials) is still a known,
    empty list of merges: read back as None it changed the file's hash, and load_checkpoint
    refused the checkpoint just written."""
    tok = Tokenizer.train(["a"], 256 + 16)
    assert tok.merges == []
    tok.save(tmp_path / "tokenizer.json")
    again = Tokenizer.load(tmp_path / "tokenizer.json")
    assert again.merges == [] and again.sha256() == tok.sha256()
