"""chat.py: a conversation driven through standard input answers exactly as model.generate
does on the rendered history, /reset really forgets, a history too long for the context loses
its oldest exchange (the system message stays), a split UTF-8 character is never printed as
U+FFFD, and bad checkpoints and flags fail with one line."""

import io
import os
import random
import re
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

import chat
from common import StageError, run_main
from model import GPT, GPTConfig, load_checkpoint, save_checkpoint
from tokenizer import Tokenizer

ROOT = Path(__file__).resolve().parent.parent
BYTES = Tokenizer({bytes([i]): i for i in range(256)})     # no merges: one id per byte
HI = [{"role": "user", "content": "hi"}]


@contextmanager
def one_thread():
    """torch on one thread, as the chat subprocess (OMP_NUM_THREADS=1): the same sums, so the
    same greedy tokens, and no slow-down from threads fighting a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def trained_model():
    """A 2-layer model (block_size 64) that has learned to answer "hi" with "hello"."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=BYTES.vocab_size, block_size=64, n_layer=2, n_head=2, n_kv_head=2, n_embd=32))
    ids, mask = BYTES.render_chat(HI + [{"role": "assistant", "content": "hello"}])
    x = torch.tensor([ids[:-1]])
    y = torch.tensor([[t if m else -100 for t, m in zip(ids[1:], mask[1:])]])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(60):
        loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05
    return model


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """The trained model saved as a chat and as a base checkpoint: {kind: directory}."""
    with one_thread():
        model = trained_model()
    dirs = {kind: tmp_path_factory.mktemp(kind) for kind in ("chat", "base")}
    for kind, out_dir in dirs.items():
        save_checkpoint(out_dir, model.state_dict(), model.config, BYTES, kind=kind, script="sft.py",
                        args={}, metrics={}, inputs={})
    return dirs


@pytest.fixture
def ckpt(ckpts):
    return ckpts["chat"]


def greedy(ckpt_dir, messages, max_new_tokens):
    """The answer model.generate gives to the rendered conversation, as text, stop token dropped."""
    model, tok, _ = load_checkpoint(ckpt_dir)
    prompt = tok.render_prompt(messages)
    assert len(prompt) + max_new_tokens <= model.config.block_size      # nothing to trim here
    stops = {tok.special("<|end|>"), tok.special("<|endoftext|>")}
    with one_thread():
        out = model.eval().generate([prompt], max_new_tokens, temperature=0, stop_tokens=stops)[0]
    return tok.decode([t for t in out if t not in stops])


def chat_in_process(argv, stdin, monkeypatch, capsys):
    """(exit status, stdout, stderr) of chat.py run in this process: a subprocess costs seconds
    of torch import, so only the first test pays for one."""
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = 0
    with one_thread():
        try:
            run_main(lambda: chat.main([str(a) for a in argv]))
        except SystemExit as e:
            code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def test_piped_conversation_streams_generate_answers_on_the_history_and_reset_forgets(ckpt):
    # bytes, not text=True: universal newlines would turn a generated "\r" into "\n"
    proc = subprocess.run([sys.executable, "chat.py", str(ckpt), "--temperature", "0", "--max-new-tokens", "12"],
                          input=b"hi\n\nhow are you\n/reset\n/help\nhi\n/quit\nnever read\n", cwd=ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    out = proc.stdout.decode()
    first = greedy(ckpt, HI, 12)
    assert first == "hello"                         # stopped at <|end|>, which is not printed
    second = greedy(ckpt, HI + [{"role": "assistant", "content": first},
                                {"role": "user", "content": "how are you"}], 12)
    # no "you> " prompt (stdin is no tty); after /reset, "hi" is a first turn again
    assert out == (f"assistant> {first}\nassistant> {second}\n{chat.RESET_NOTE}\n{chat.COMMANDS}\n"
                   f"assistant> {first}\n")


def test_fit_prompt_drops_oldest_exchanges_and_keeps_the_system_message():
    s = {"role": "system", "content": "ab"}                      # 1 + 2 + 1 tokens
    u1, a1 = {"role": "user", "content": "0123456789"}, {"role": "assistant", "content": "x" * 10}  # 12 each
    u2, a2 = {"role": "user", "content": "yy"}, {"role": "assistant", "content": "zz"}              # 4 each
    u3 = {"role": "user", "content": "q"}                                                           # 3
    history = [s, u1, a1, u2, a2, u3]
    assert len(BYTES.render_prompt(history)) == 1 + 4 + 12 + 12 + 4 + 4 + 3 + 1 == 41
    for block_size, kept, dropped, n in [(46, history, 0, 41), (45, [s, u2, a2, u3], 1, 17),
                                         (22, [s, u2, a2, u3], 1, 17), (21, [s, u3], 2, 9), (14, [s, u3], 2, 9)]:
        prompt, got, k = chat.fit_prompt(BYTES, history, block_size, max_new_tokens=5)
        assert (got, k, len(prompt)) == (kept, dropped, n)
        assert prompt == BYTES.render_prompt(kept)
    assert chat.fit_prompt(BYTES, history, 13, max_new_tokens=5)[0] is None      # u3 alone is 9 + 5 > 13
    assert chat.fit_prompt(BYTES, [u1, a1, u3], 10, max_new_tokens=5) == (BYTES.render_prompt([u3]), [u3], 1)


def test_long_history_is_trimmed_and_a_too_long_turn_skipped(ckpts, monkeypatch, capsys):
    base = ckpts["base"]
    flags = ("--temperature", "0", "--max-new-tokens", "20", "--system", "be brief")
    system = [{"role": "system", "content": "be brief"}]
    u1, u2 = "u" * 20, "w" * 20        # each prompt alone: 11 + 22 + 1 = 34 tokens; both: > 64 - 20
    rc, out, err = chat_in_process([base, *flags], f"{u1}\n{u2}\n{'v' * 40}\nhi\n", monkeypatch, capsys)
    assert rc == 0, err
    a1 = greedy(base, system + [{"role": "user", "content": u1}], 20)
    a2 = greedy(base, system + [{"role": "user", "content": u2}], 20)     # u1's exchange gone, the system kept
    pattern = (r"\(note: .* holds a base model, not trained to chat .*\)\n"
               rf"assistant> {re.escape(a1)}\n"
               r"\(dropped the oldest 1 exchange to fit the model's context of 64 tokens\)\n"
               rf"assistant> {re.escape(a2)}\n"
               r"\(that message is too long for the model's context of 64 tokens.*skipped\)\n"
               r"(\(dropped the oldest 1 exchange.*\)\n)?assistant> (?s:.*)\n")
    assert re.fullmatch(pattern, out), out


def test_stream_text_never_prints_a_split_character_as_a_replacement():
    assert list(chat.stream_text([b"a\xc3", b"\xa9b", b"\xe2\x82", b"\xac", b"\xf0", b"\x9f\x99", b"\x82!"])) == \
        ["a", "\u00e9b", "\u20ac", "\U0001f642!"]
    rng = random.Random(0)
    for _ in range(200):
        text = "".join(chr(rng.choice([rng.randrange(32, 127), rng.randrange(0xa0, 0xd7ff),
                                       rng.randrange(0x10000, 0x10ffff)])) for _ in range(rng.randrange(1, 12)))
        data = text.encode()
        cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randrange(0, 6)))) if len(data) > 1 else []
        pieces = [data[i:j] for i, j in zip([0] + cuts, cuts + [len(data)])]
        out = list(chat.stream_text(pieces))
        assert "".join(out) == text and all("\ufffd" not in t for t in out)
    # invalid bytes and a character cut at the end are U+FFFD, as in tok.decode
    assert "".join(chat.stream_text([b"\xff", b"x\xe2\x82"])) == b"\xffx\xe2\x82".decode(errors="replace")


def test_answer_stops_at_end_and_its_bytes_join_to_the_text():
    class Scripted:
        """A model whose stream yields fixed tokens, one per step, then keeps yielding <|end|>."""
        def stream(self, prompts, max_new_tokens, temperature, top_k, top_p, stop_tokens, generator):
            assert len(prompts) == 1 and BYTES.special("<|end|>") in stop_tokens
            yield from ([t] for t in BYTES.encode_ordinary("héllo €") + [BYTES.special("<|end|>")] * 3)

    pieces = list(chat.answer_bytes(Scripted(), BYTES, [0], None, max_new_tokens=20, temperature=0, top_k=0, top_p=1))
    assert len(pieces) == len("héllo €".encode())                    # one byte per token, <|end|> not yielded
    assert list(chat.stream_text(pieces)) == ["h", "é", "l", "l", "o", " ", "€"]


def test_missing_checkpoint_is_one_line_and_a_nonzero_exit(tmp_path, monkeypatch, capsys):
    rc, out, err = chat_in_process([tmp_path / "none"], "hi\n", monkeypatch, capsys)
    assert rc == 1 and out == ""
    assert err.count("\n") == 1 and err.startswith("error: no checkpoint at ") and "none" in err


@pytest.mark.parametrize("flags", [["--temperature", "-1"], ["--temperature", "nan"], ["--top-p", "0"],
                                   ["--top-p", "1.5"], ["--top-k", "-1"], ["--max-new-tokens", "0"]])
def test_bad_flags_exit_2(flags, capsys):
    with pytest.raises(SystemExit) as e:
        chat.parse_args(["out/sft", *flags])
    assert e.value.code == 2 and flags[0] in capsys.readouterr().err


def test_max_new_tokens_that_leave_no_room_are_refused(ckpt):
    with pytest.raises(StageError, match="leaves no room for a question in the model's context of 64 tokens"):
        chat.main([str(ckpt), "--max-new-tokens", "61"])       # the emptiest prompt is 4 tokens
