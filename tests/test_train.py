"""model.py and train.py: the optimizer, clipping and schedule against references, the model's
invariants (KV cache = full forward), and the training loop end to end: overfitting, DDP =
gradient accumulation, kill-and-resume = uninterrupted, and bad input."""

import io
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import bpe
import kernels
import sample
import train
from common import StageError
from model import GPT, IGNORE_INDEX, GPTConfig, bits_per_byte, load_checkpoint, sample_next
from textgen import english_doc
from tokenizer import Tokenizer

ROOT = Path(__file__).resolve().parent.parent
MICRO = GPTConfig(vocab_size=64, block_size=32, n_layer=2, n_head=4, n_kv_head=2, n_embd=32)


# ----------------------------------------------------------------------------- the maths

def test_adamw_equals_torch_over_100_steps():
    torch.manual_seed(0)
    ours_model, ref_model = GPT(MICRO), GPT(MICRO)
    ref_model.load_state_dict(ours_model.state_dict())
    groups = train.param_groups(ours_model, 0.1)
    ref_groups = train.param_groups(ref_model, 0.1)
    ours = train.AdamW(groups, lr=1e-2, betas=(0.9, 0.95))
    ref = torch.optim.AdamW([{"params": p, "weight_decay": wd} for p, wd in ref_groups],
                            lr=1e-2, betas=(0.9, 0.95), eps=1e-8)
    x = torch.randint(0, 64, (4, 32))
    for step in range(100):
        lr = 1e-2 * (1 - step / 200)                  # a changing learning rate, as in training
        ours.lr = lr
        for g in ref.param_groups:
            g["lr"] = lr
        for model in (ours_model, ref_model):
            _, loss = model(x, torch.roll(x, -1, 1))
            loss.backward()
        ours.step()
        ref.step()
        ours.zero_grad()
        ref.zero_grad()
    for a, b in zip(ours_model.parameters(), ref_model.parameters()):
        assert torch.allclose(a, b, atol=1e-6, rtol=0)


def test_param_groups_decay_only_matrices():
    model = GPT(MICRO)
    (decay, _), (no_decay, _) = train.param_groups(model, 0.1)
    assert model.tok_emb.weight in no_decay                     # tied with the LM head
    assert all(p.dim() == 2 for p in decay) and all(p.dim() == 1 or p is model.tok_emb.weight for p in no_decay)
    assert len(decay) + len(no_decay) == len(list(model.parameters()))


def test_clipping_equals_torch():
    torch.manual_seed(1)
    a = [torch.randn(5, 3, requires_grad=True), torch.randn(7, requires_grad=True)]
    b = [t.detach().clone().requires_grad_() for t in a]
    for t, u in zip(a, b):
        t.grad = torch.randn_like(t) * 3
        u.grad = t.grad.clone()
    ours = train.clip_grad_norm(a, 1.0)
    ref = torch.nn.utils.clip_grad_norm_(b, 1.0)
    assert torch.allclose(ours, ref)
    for t, u in zip(a, b):
        assert torch.allclose(t.grad, u.grad, atol=1e-7)
    assert train.clip_grad_norm(a, 100.0) <= 1.0 + 1e-5          # already clipped: unchanged


def test_schedule_at_hand_checked_steps():
    lr = lambda s: train.lr_at(s, max_lr=1.0, warmup=10, max_steps=110, min_frac=0.1)  # noqa: E731
    assert lr(0) == pytest.approx(0.1) and lr(4) == pytest.approx(0.5) and lr(9) == pytest.approx(1.0)
    assert lr(10) == pytest.approx(1.0)                           # cosine starts at the peak
    assert lr(60) == pytest.approx(0.55)                          # half way: (1 + 0.1) / 2
    assert lr(110) == pytest.approx(0.1) and lr(500) == pytest.approx(0.1)


def test_batches_are_a_pure_function_of_seed_step_index():
    data = np.arange(1000, dtype=np.uint16)
    x, y = train.get_batch(data, 1, 5, 2, batch=4, block=8)
    x2, _ = train.get_batch(data, 1, 5, 2, batch=4, block=8)
    assert torch.equal(x, x2) and torch.equal(y, x + 1)
    assert not torch.equal(x, train.get_batch(data, 1, 5, 3, 4, 8)[0])
    assert not torch.equal(x, train.get_batch(data, 1, 6, 2, 4, 8)[0])


# ----------------------------------------------------------------------------- the model

def test_loss_ignores_masked_targets_and_hidden_states():
    torch.manual_seed(0)
    model = GPT(MICRO)
    x = torch.randint(0, 64, (2, 10))
    y = torch.randint(0, 64, (2, 10))
    y[:, :4] = IGNORE_INDEX
    logits, loss = model(x, y)
    keep = y != IGNORE_INDEX
    assert torch.allclose(loss, F.cross_entropy(logits[keep], y[keep]))
    assert model(x, return_hidden=True).shape == (2, 10, 32)


def test_cached_generation_equals_full_forward():
    torch.manual_seed(0)
    model = GPT(MICRO).eval()
    prompts = [[1, 2, 3, 4, 5, 6], [7, 8], [9]]
    out = model.generate(prompts, 12, temperature=0)
    for p, o in zip(prompts, out):
        seq = list(p)
        for _ in range(12):
            logits, _ = model(torch.tensor([seq]))
            seq.append(int(logits[0, -1].argmax()))
        assert seq[len(p):] == o
    stop = out[0][2]
    stopped = model.generate([prompts[0]], 12, temperature=0, stop_tokens={stop})
    assert stopped[0] == out[0][:out[0].index(stop) + 1]          # the stop token is kept


def test_sampling_filters():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    g = torch.Generator().manual_seed(0)
    assert {int(sample_next(logits, 1.0, top_k=2, generator=g)) for _ in range(200)} == {2, 3}
    # probabilities ~ 0.03, 0.09, 0.24, 0.64: top_p 0.7 keeps the two largest
    assert {int(sample_next(logits, 1.0, top_p=0.7, generator=g)) for _ in range(200)} == {2, 3}
    assert int(sample_next(logits, 0)) == 3


def test_bits_per_byte_worked_example():
    V = 8
    logits = torch.zeros(1, 3, V)                               # uniform: ln 8 nats per token
    targets = torch.tensor([[1, 2, 7]])
    lengths = torch.tensor([1, 2, 3, 1, 1, 1, 1, 0])            # token 7 is special: 0 bytes
    nats, nbytes = bits_per_byte(logits, targets, lengths)
    assert nbytes == 5 and nats == pytest.approx(2 * math.log(8))
    assert nats / (math.log(2) * nbytes) == pytest.approx(2 * 3 / 5)   # 3 bits per token, 5 bytes


def test_overfits_a_tiny_batch():
    torch.manual_seed(0)
    model = GPT(MICRO)
    opt = train.AdamW(train.param_groups(model, 0.0), lr=3e-3)
    x = torch.randint(0, 64, (2, 32))
    y = torch.roll(x, -1, 1)
    for _ in range(150):
        _, loss = model(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert loss.item() < 0.1


# ----------------------------------------------------------------------------- the loop

@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    """Token shards of a small English corpus, made by bpe.py in this process."""
    root = tmp_path_factory.mktemp("data")
    with open(root / "corpus.jsonl", "w") as f:
        for i in range(80):
            f.write(json.dumps({"id": str(i), "text": english_doc(i, 20), "source": "s", "kind": "prose",
                                "licence": "x", "split": "val" if i % 10 == 0 else "train"}) + "\n")
    bpe.main(["--data-dir", str(root), "--out-dir", str(root / "tok"), "--vocab-size", "300", "--workers", "1"])
    return root / "tok"


COMMON = ["--preset", "tiny", "--block-size", "32", "--micro-batch", "4", "--eval-batches", "2",
          "--samples", "0", "--threads", "1", "--lr", "3e-3", "--warmup-steps", "2"]


def run_train(tok_dir, out, *args, nproc=1, wait=True):
    cmd = [sys.executable, str(ROOT / "train.py"), "--data-dir", str(tok_dir), "--out-dir", str(out),
           *COMMON, *map(str, args)]
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *cmd[1:]]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if not wait:
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


def weights(out):
    return torch.load(Path(out) / "model.pt", weights_only=True)["model"]


def test_training_lowers_validation_loss_and_writes_a_checkpoint(tok_dir, tmp_path, capsys):
    proc = run_train(tok_dir, tmp_path, "--max-steps", 30, "--batch-tokens", 256, "--eval-every", 10)
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((tmp_path / "meta.json").read_text())
    history = meta["metrics"]["val_history"]
    assert [h["step"] for h in history] == [10, 20, 30]
    assert history[-1]["val_bpb"] < history[0]["val_bpb"] and history[-1]["val_loss"] < math.log(300)
    assert meta["format"] == "checkpoint" and meta["tokenizer"]["vocab_size"] == 300
    model, tok, _ = load_checkpoint(tmp_path)
    assert model.config.block_size == 32 and tok.vocab_size == 300
    log = [json.loads(l) for l in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert {"step", "loss", "lr", "grad_norm", "tokens_per_s", "mfu"} <= set(log[0])
    assert (tmp_path / "loss.png").exists() and (tmp_path / "lr.png").exists()
    # sample.py reads it
    sample.main([str(tmp_path), "--prompt", "The", "--max-new-tokens", "5", "--num-samples", "2"])
    assert capsys.readouterr().out.count("--- sample") == 2
    # a tokenizer that is not the model's: refused
    Tokenizer.train([english_doc(i) for i in range(200, 230)], 320).save(tmp_path / "tokenizer.json")
    with pytest.raises(StageError, match="do not belong together"):
        load_checkpoint(tmp_path)


def test_two_process_ddp_equals_one_process_accumulation(tok_dir, tmp_path):
    """Two micro-batches per step: two gloo processes of one each, or one process of two."""
    args = ("--max-steps", 4, "--batch-tokens", 256, "--eval-every", 0)
    single = run_train(tok_dir, tmp_path / "one", *args)
    assert single.returncode == 0, single.stderr
    ddp = run_train(tok_dir, tmp_path / "two", *args, nproc=2)
    assert ddp.returncode == 0, ddp.stderr
    a, b = weights(tmp_path / "one"), weights(tmp_path / "two")
    assert all(torch.equal(a[k], b[k]) for k in a)                     # bitwise


def test_kill_and_resume_gives_identical_weights(tok_dir, tmp_path):
    args = ("--max-steps", 24, "--batch-tokens", 256, "--eval-every", 0, "--ckpt-every", 3)
    full = run_train(tok_dir, tmp_path / "full", *args)
    assert full.returncode == 0, full.stderr
    out = tmp_path / "killed"
    proc = run_train(tok_dir, out, *args, wait=False)
    deadline = time.time() + 120
    while not (out / "train_state.pt").exists() and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    state = torch.load(out / "train_state.pt", weights_only=True)
    assert 0 < state["step"] < 24
    resumed = run_train(tok_dir, out, *args, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    a, b = weights(tmp_path / "full"), weights(out)
    assert all(torch.equal(a[k], b[k]) for k in a)


def error_line(proc):
    return proc.stderr.strip().splitlines()[-1]


def train_main(tok_dir, out, *args):
    """train.main in this process (no interpreter start-up), for the checks that raise early."""
    train.main(["--data-dir", str(tok_dir), "--out-dir", str(out), *COMMON, *map(str, args)])


def test_bad_input(tok_dir, tmp_path):
    # As a command: one line, exit 1.
    proc = run_train(tmp_path / "nothing", tmp_path / "o", "--max-steps", 1)
    assert proc.returncode == 1 and error_line(proc).startswith("error:") and "run bpe.py first" in error_line(proc)
    with pytest.raises(StageError, match="not a whole number of micro-batches"):
        train_main(tok_dir, tmp_path / "o", "--max-steps", 1, "--batch-tokens", 100)
    with pytest.raises(StageError, match="not more than the block size"):
        train_main(tok_dir, tmp_path / "o", "--max-steps", 1, "--block-size", 100000)
    # a checkpoint, then: truncated, and from another tokenizer
    out = tmp_path / "ck"
    train_main(tok_dir, out, "--max-steps", 2, "--batch-tokens", 128, "--eval-every", 0)
    state = (out / "train_state.pt").read_bytes()
    (out / "train_state.pt").write_bytes(state[: len(state) // 2])
    with pytest.raises(StageError, match="not a readable training state"):
        train_main(tok_dir, out, "--max-steps", 4, "--batch-tokens", 128, "--resume")
    (out / "model.pt").write_bytes((out / "model.pt").read_bytes()[:1000])
    with pytest.raises(StageError, match="not a readable checkpoint"):
        load_checkpoint(out)
    state_dict = torch.load(io.BytesIO(state), weights_only=True)
    state_dict["tokenizer_sha256"] = "0" * 64
    torch.save(state_dict, out / "train_state.pt")
    with pytest.raises(StageError, match="another tokenizer"):
        train_main(tok_dir, out, "--max-steps", 4, "--batch-tokens", 128, "--resume")


def test_non_finite_loss_stops_with_a_clear_message(tok_dir, tmp_path):
    with pytest.raises(StageError, match="the loss became .* lower --lr"):
        train_main(tok_dir, tmp_path, "--max-steps", 30, "--batch-tokens", 128, "--eval-every", 0,
                   "--lr", 1e6, "--grad-clip", 0, "--warmup-steps", 1)


def test_triton_kernels_train_like_the_torch_twins(tok_dir, tmp_path):
    """Two training steps with --kernels triton (interpreted on the CPU) and --kernels torch."""
    # Few rows (2 x 16 tokens): the interpreter runs each Triton program in Python.
    args = ("--max-steps", 2, "--block-size", 16, "--micro-batch", 2, "--batch-tokens", 32,
            "--eval-every", 0, "--eval-batches", 1)
    try:
        train_main(tok_dir, tmp_path / "torch", *args, "--kernels", "torch")
        train_main(tok_dir, tmp_path / "triton", *args, "--kernels", "triton")
    finally:
        kernels.set_backend("auto")
    logs = [[(r["loss"], r["grad_norm"]) for r in map(json.loads, (tmp_path / kb / "log.jsonl").read_text().splitlines())
             if "loss" in r] for kb in ("torch", "triton")]
    assert logs[0] == logs[1]                                           # to the 5 decimals logged
    # Adam divides by sqrt(v): where a gradient is ~0, rounding differences of 1e-7 in it move
    # a weight by up to ~lr, so the weights agree to 1e-4, not to the bit.
    a, b = weights(tmp_path / "torch"), weights(tmp_path / "triton")
    assert all(torch.allclose(a[k], b[k], atol=1e-4) for k in a)
