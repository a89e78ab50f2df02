"""sft.py and the chat layout it trains on: the mask (the answer and its <|end|>, nothing
else), turns as prefixes of the next, the masked loss against a hand sum, a step without a
supervised token, packing, the mixture, resume bit for bit, DDP = one process, and bad input.
The stage end to end, reading real files of the stages before it, is tests/test_chain.py."""

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import sft
import tasks
import training
from common import StageError
from model import GPT, IGNORE_INDEX, GPTConfig, load_checkpoint, save_checkpoint
from textgen import english_doc
from tokenizer import Tokenizer

ROOT = Path(__file__).resolve().parent.parent
MICRO = GPTConfig(vocab_size=64, block_size=32, n_layer=2, n_head=4, n_kv_head=2, n_embd=32)
TALK = [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "How are you?"}, {"role": "assistant", "content": "Fine, thanks."}]


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train([english_doc(i) for i in range(30)], 300)


@pytest.fixture(scope="module")
def parent(tok, tmp_path_factory):
    """A randomly initialised base checkpoint of the toy tokenizer, block 96: enough for
    every skill conversation."""
    out = tmp_path_factory.mktemp("parent")
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=96, n_layer=2, n_head=2, n_kv_head=2, n_embd=32)
    save_checkpoint(out, GPT(cfg).state_dict(), cfg, tok, kind="base", script="train.py", args={}, metrics={},
                    inputs={})
    return out


# ----------------------------------------------------------------------------- the layout and the loss

def test_the_mask_supervises_each_answer_and_its_end_only(tok):
    ids, mask = tok.render_chat(TALK)
    end = tok.special("<|end|>")
    assert 0 < sum(mask) < len(mask)
    assert [t for t, m in zip(ids, mask) if m] == (tok.encode_ordinary("Hello!") + [end] +
                                                   tok.encode_ordinary("Fine, thanks.") + [end])
    ends = [i for i, t in enumerate(ids) if t == end]
    assert [mask[i] for i in ends] == [0, 1, 0, 1]           # the user's <|end|> carries none


def test_each_turn_is_a_prefix_of_the_next_and_the_prompt_of_its_answer(tok):
    for k in range(1, len(TALK)):
        shorter, longer = tok.render_chat(TALK[:k])[0], tok.render_chat(TALK[:k + 1])[0]
        assert longer[:len(shorter)] == shorter
        if TALK[k]["role"] == "assistant":              # what generation sees is what training saw
            prompt = tok.render_prompt(TALK[:k])
            assert longer[:len(prompt)] == prompt


def test_the_masked_loss_equals_a_hand_summed_one():
    torch.manual_seed(0)
    model = GPT(MICRO)
    x = torch.randint(0, 64, (3, 32))
    y = torch.randint(0, 64, (3, 32))
    y[torch.rand(3, 32) < 0.6] = IGNORE_INDEX
    logp = torch.log_softmax(model(x).float(), -1)
    terms = [-logp[b, t, y[b, t]] for b in range(3) for t in range(32) if y[b, t] != IGNORE_INDEX]
    hand = sum(terms) / len(terms)
    assert model(x, y).item() == pytest.approx(hand.item(), rel=1e-5)
    assert model(x, y, supervised_only=True).item() == pytest.approx(hand.item(), rel=1e-5)
    # the step's loss over micro-batches of unequal supervision is the mean over all tokens
    rt = training.setup_runtime("cpu")
    opt = training.AdamW(training.param_groups(model, 0.0), 1e-3)
    n = int((y != IGNORE_INDEX).sum())
    loss, _ = sft.train_step(model, opt, x, y, n, 1, training.autocast("cpu"), 0.0, rt)
    assert loss == pytest.approx(hand.item(), rel=1e-5)


def test_a_step_without_a_supervised_token_gives_no_nan():
    torch.manual_seed(0)
    model = GPT(MICRO)
    x = torch.randint(0, 64, (2, 32))
    y = torch.full((2, 32), IGNORE_INDEX)
    loss = model(x, y)
    loss.backward()
    assert loss.item() == 0 and all(torch.isfinite(p.grad).all() for p in model.parameters())
    model.zero_grad()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rt = training.setup_runtime("cpu")
    opt = training.AdamW(training.param_groups(model, 0.0), 1e-3)
    loss, norm = sft.train_step(model, opt, x, y, 0, 1, training.autocast("cpu"), 1.0, rt)
    assert loss == 0 and norm.item() == 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def random_conversation(rng):
    turns = []
    for _ in range(rng.randint(1, 3)):
        turns += [{"role": "user", "content": " ".join(rng.choices(["how", "why", "the", "cat", "sat"], k=rng.randint(1, 8)))},
                  {"role": "assistant", "content": " ".join(rng.choices(["it", "was", "a", "dog", "mat"], k=rng.randint(1, 8)))}]
    return turns


def test_packing_never_lets_a_masked_token_carry_loss(tok):
    rng = random.Random(0)
    width = 60
    convs = [sft.fit_to_block(*tok.render_chat(random_conversation(rng)), tok.special("<|end|>"), width) for _ in range(200)]
    draws = iter([("s", ids, mask) for ids, mask in convs if ids])
    x, y, used = sft.pack(draws, 6, width, tok.special("<|endoftext|>"))
    assert x.shape == y.shape == (6, width - 1)
    # row by row, the supervised targets are exactly the assistants' tokens of the conversations
    # placed in it, in order: no prompt or padding token carries loss
    for r in range(6):
        supervised = [t for t in y[r].tolist() if t != IGNORE_INDEX]
        assert supervised == [t for row, _, ids, mask in used if row == r for t, m in zip(ids, mask) if m]
        placed = [t for row, _, ids, _ in used if row == r for t in ids]
        assert x[r, :len(placed) - 1].tolist() == placed[:-1]        # whole, in order, from the row's start
        assert all(t == tok.special("<|endoftext|>") for t in x[r, len(placed):].tolist())   # then padding
    assert len(used) < 200 and sum(len(ids) for _, _, ids, _ in used) > 0.9 * 6 * width    # first fit: rows nearly full


def test_a_conversation_longer_than_the_block_is_cut_after_its_last_answer_that_fits(tok):
    ids, mask = tok.render_chat(TALK)
    end = tok.special("<|end|>")
    first_answer_end = ids.index(end, ids.index(tok.special("<|assistant|>"))) + 1
    assert sft.fit_to_block(ids, mask, end, len(ids)) == (ids, mask)
    assert sft.fit_to_block(ids, mask, end, len(ids) - 1) == (ids[:first_answer_end], mask[:first_answer_end])
    assert sft.fit_to_block(ids, mask, end, first_answer_end - 1) is None


def test_draws_follow_the_mix_and_are_a_pure_function_of_seed_and_step():
    train = {"a": [([1], [0])], "b": [([2], [0])], "c": []}
    take = lambda seed, step: [s for s, _, _ in (next(g) for g in [sft.draws_of(train, {"a": 3, "b": 1, "c": 5}, seed, step)] * 4000)]
    drawn = take(1, 7)
    assert drawn == take(1, 7) and drawn != take(1, 8)
    assert drawn.count("a") / len(drawn) == pytest.approx(0.75, abs=0.03) and "c" not in drawn   # an empty source is skipped


# ----------------------------------------------------------------------------- the stage

def run_sft(parent, out, *args):
    sft.main(["--init", str(parent), "--out-dir", str(out), "--mix", "compare=1,harmful=1,benign=1",
              "--batch-rows", "2", "--micro-batch", "1", "--eval-prompts", "4", "--eval-conversations", "4",
              "--max-new-tokens", "8", "--threads", "1", "--eval-every", "0", *map(str, args)])


def weights(out):
    return torch.load(Path(out) / "model.pt", weights_only=True)["model"]


def test_kill_and_resume_gives_identical_weights(parent, tmp_path):
    run_sft(parent, tmp_path / "straight", "--max-steps", 6)
    run_sft(parent, tmp_path / "resumed", "--max-steps", 6, "--stop-after", 3)
    assert json.loads((tmp_path / "resumed" / "meta.json").read_text())["metrics"]["after"] is None
    run_sft(parent, tmp_path / "resumed", "--max-steps", 6, "--resume")
    a, b = weights(tmp_path / "straight"), weights(tmp_path / "resumed")
    assert all(torch.equal(a[k], b[k]) for k in a)
    meta = json.loads((tmp_path / "resumed" / "meta.json").read_text())
    straight = json.loads((tmp_path / "straight" / "meta.json").read_text())
    assert meta["metrics"]["drawn"] == straight["metrics"]["drawn"] and meta["metrics"]["before"] == straight["metrics"]["before"]
    with pytest.raises(StageError, match=r"other flags \(--lr 0.005 then, 0.0001 now\)"):
        run_sft(parent, tmp_path / "resumed", "--max-steps", 6, "--resume", "--lr", 1e-4)
    with pytest.raises(StageError, match="is already at step 6; nothing to do"):
        run_sft(parent, tmp_path / "resumed", "--max-steps", 6, "--resume")


def test_two_process_ddp_equals_one_process(parent, tmp_path):
    flags = ["--init", str(parent), "--mix", "compare=1,harmful=1,benign=1", "--batch-rows", "2", "--micro-batch", "1",
             "--eval-prompts", "2", "--eval-conversations", "2", "--max-new-tokens", "4", "--eval-every", "0",
             "--max-steps", "3"]
    sft.main([*flags, "--out-dir", str(tmp_path / "one"), "--threads", "1"])
    env = dict(os.environ, OMP_NUM_THREADS="1")
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          str(ROOT / "sft.py"), "--out-dir", str(tmp_path / "two"), *flags],
                         capture_output=True, text=True, env=env, timeout=300)
    assert two.returncode == 0, two.stderr
    a, b = weights(tmp_path / "one"), weights(tmp_path / "two")
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


# ----------------------------------------------------------------------------- bad input

def write_lines(path, lines):
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


@pytest.mark.parametrize("line, message", [
    ('{"text": "not a chat"}', "not a conversation"),
    ({"messages": [{"role": "robot", "content": "hi"}, {"role": "assistant", "content": "x"}]}, "unknown role 'robot'"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  "}]}, "an assistant turn is empty"),
    ("{not json", "is not JSON"),
])
def test_a_bad_data_line_is_refused_and_nothing_is_written(parent, tmp_path, line, message):
    data = write_lines(tmp_path / "mine.jsonl", [{"messages": TALK}, line])
    with pytest.raises(StageError, match=f"^{data}:2") as e:
        run_sft(parent, tmp_path / "out", "--data", data, "--mix", "user=1", "--benchmarks", "humaneval")
    assert message in str(e.value)
    assert not (tmp_path / "out").exists()


def test_bad_input_is_one_line_on_stderr_and_exit_1(parent, tmp_path):
    data = write_lines(tmp_path / "mine.jsonl", [{"messages": TALK}, '{"text": "not a chat"}'])
    proc = subprocess.run([sys.executable, str(ROOT / "sft.py"), "--init", str(parent), "--out-dir", str(tmp_path / "out"),
                           "--data", str(data), "--mix", "user=1"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [f"error: {data}:2: not a conversation: give "
                                                '{"messages": [{"role": ..., "content": ...}, ...]}']
    assert not (tmp_path / "out").exists()


def test_data_with_nothing_left_after_filtering_is_refused(parent, tmp_path):
    long = " ".join(["a very long answer"] * 200)
    data = write_lines(tmp_path / "mine.jsonl", [{"messages": [{"role": "user", "content": f"q{i}"},
                                                               {"role": "assistant", "content": long}]} for i in range(20)])
    with pytest.raises(StageError, match=r"nothing left to train on after filtering: of its 20 conversations \d+ are .*, 0 share 13 words .*, \d+ have a first answer beyond the 97-token block"):
        run_sft(parent, tmp_path / "out", "--data", data, "--mix", "user=1", "--benchmarks", "humaneval")
    assert not (tmp_path / "out").exists()


def test_a_parent_whose_tokenizer_lacks_the_chat_layout_is_refused(tmp_path):
    plain = Tokenizer.train([english_doc(i) for i in range(10)], 280, special_tokens=("<|endoftext|>",))
    cfg = GPTConfig(vocab_size=plain.vocab_size, block_size=32, n_layer=1, n_head=2, n_kv_head=2, n_embd=16)
    save_checkpoint(tmp_path / "base", GPT(cfg).state_dict(), cfg, plain, kind="base", script="train.py", args={},
                    metrics={}, inputs={})
    with pytest.raises(StageError, match=r"tokenizer has no <\|user\|>, <\|assistant\|>, <\|end\|>: SFT needs the chat"):
        run_sft(tmp_path / "base", tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flags, message", [
    (["--split", "sft_eval"], "split 'sft_eval' is not a training split"),
    (["--split", "final_eval"], "split 'final_eval' is not a training split"),
    (["--mix", "user=1"], "--mix names user but no --data file is given"),
    (["--mix", "compare=0"], "every weight is 0"),
    (["--mix", "wiki=1"], "unknown source 'wiki'"),
    (["--benchmarks", "mmlu,nope"], "--benchmarks: unknown nope"),
    (["--max-steps", "0"], "--max-steps must be >= 1"),
])
def test_flags_at_their_edges_are_usage_errors(capsys, flags, message):
    with pytest.raises(SystemExit) as e:
        sft.parse_args(flags)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_a_stage_refuses_to_train_on_an_evaluation_split():
    splits = {p["id"]: p["split"] for p in tasks.prompt_pool()}
    assert set(splits.values()) == set(tasks.SPLITS)
    for split in set(tasks.SPLITS) - set(tasks.TRAIN_SPLITS):
        with pytest.raises(StageError, match="evaluation splits are held out"):
            tasks.require_train_split(split)


def test_the_chat_checkpoint_names_its_parent_and_its_split(parent, tmp_path):
    run_sft(parent, tmp_path / "out", "--max-steps", 2)
    model, tok, meta = load_checkpoint(tmp_path / "out", kind="chat")
    assert meta["parent"]["sha256"] == json.loads((parent / "meta.json").read_text())["model_sha256"]
    trained = meta["metrics"]["trained_split"]
    assert trained["split"] == "sft_train" and trained["prompts_sha256"] == tasks.write_prompts(tmp_path / "p.jsonl")
    assert meta["inputs"]["prompts.jsonl"]["sha256"] == trained["prompts_sha256"]
    mixture = meta["metrics"]["mixture"]
    assert set(mixture) == {"compare", "harmful", "benign"}
    assert sum(m["drawn"]["conversations"] for m in mixture.values()) == meta["metrics"]["drawn"]["conversations"] > 0
    assert 0 < meta["metrics"]["supervised_share"] < 1
    for name in ("sft.png", "loss.png", "log.jsonl", "prompts.jsonl", "train_state.pt"):
        assert (tmp_path / "out" / name).exists()
