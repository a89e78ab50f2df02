"""ppo.py: a toy reward that PPO must raise, the stage end to end on toy checkpoints (the first
minibatch's ratio 1 and approximate KL 0, the artefacts), kill-and-resume, and bad input."""

import json
import os
import subprocess
import sys
from contextlib import nullcontext
import random
from pathlib import Path

import pytest
import torch

import ppo
import reward
import rlhf
import training
from common import StageError
from model import GPT, GPTConfig, save_checkpoint
from textgen import english_doc
from tokenizer import Tokenizer


def toy_chat(out, seed=0, block=96):
    tok = Tokenizer.train([english_doc(i) for i in range(30)], 300)
    torch.manual_seed(seed)
    cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=block, n_layer=2, n_head=2, n_kv_head=2, n_embd=32)
    save_checkpoint(out, GPT(cfg).state_dict(), cfg, tok, kind="chat", script="sft.py", args={}, metrics={}, inputs={})
    return out


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """A toy chat checkpoint and a reward model trained on its answers."""
    root = tmp_path_factory.mktemp("ppo")
    toy_chat(root / "sft")
    reward.main(["--init", str(root / "sft"), "--out-dir", str(root / "reward"), "--general", "0", "--k", "2",
                 "--max-new-tokens", "6", "--threads", "1"])
    return root


def run_ppo(chain, out, *flags):
    ppo.main(["--init", str(chain / "sft"), "--reward-model", str(chain / "reward"), "--out-dir", str(out),
              "--general", "0", "--eval-prompts", "4", "--batch", "8", "--minibatch", "4", "--ppo-epochs", "2",
              "--max-new-tokens", "6", "--threads", "1", *map(str, flags)])


def test_ppo_raises_a_toy_reward_in_a_few_seconds():
    # the policy writes 6 tokens after token 0; the reward is the share of them that are 2
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=6, block_size=8, n_layer=1, n_head=2, n_kv_head=2, n_embd=16)
    policy, value = GPT(cfg), GPT(cfg, scalar_head=True)
    reference = GPT(cfg).requires_grad_(False)
    reference.load_state_dict(policy.state_dict())
    opts = [training.AdamW(training.param_groups(m, 0.0), 3e-3) for m in (policy, value)]

    class Args:
        ppo_epochs, minibatch, clip, value_clip, grad_clip = 2, 16, 0.2, 0.2, 1.0
    gen, rng, means = torch.Generator().manual_seed(0), random.Random(0), []
    for _ in range(25):
        with torch.no_grad():
            answers = policy.generate([[0]] * 32, 6, 1.0, generator=gen)
            idx, pos, tokens, mask = ppo.pad_answers([[0]] * 32, answers, 0)
            logp = ppo.logprobs_of(ppo.AnswerLogits(policy)(idx, pos), tokens)
            ref = ppo.logprobs_of(ppo.AnswerLogits(reference)(idx, pos), tokens)
            values = ppo.Values(value)(idx, pos)
            score = (tokens == 2).float().mean(1)
            rewards, _ = rlhf.token_rewards(score, logp, ref, mask, beta=0.01)
            adv, ret = rlhf.gae(rewards, values, mask, 1.0, 0.95)
        batch = {"idx": idx, "pos": pos, "tokens": tokens, "mask": mask, "logprobs": logp, "values": values,
                 "advantages": rlhf.whiten(adv, mask), "returns": ret}
        _, first = ppo.optimise(batch, ppo.AnswerLogits(policy), ppo.Values(value), opts, Args, rng, nullcontext())
        assert first["ratio"] == pytest.approx(1, abs=1e-5) and first["approx_kl"] == pytest.approx(0, abs=1e-9)
        means.append(score.mean().item())
    assert sum(means[:3]) / 3 < 0.3 and sum(means[-3:]) / 3 > 0.6, means


def test_the_stage_end_to_end_on_toy_checkpoints(chain, tmp_path):
    run_ppo(chain, tmp_path, "--iterations", 2)
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["kind"] == "chat" and meta["parent"]["sha256"] == json.loads((chain / "sft" / "meta.json").read_text())["model_sha256"]
    m = meta["metrics"]
    for key in ("gold", "skill", "refusal_harmful", "refusal_benign", "kl", "entropy", "distinct"):
        assert key in m["before"] and key in m["after"]
    # the SFT model's KL to itself is 0 exactly; the rollouts' and the loss's log-probabilities agree
    assert m["before"]["kl"]["mean"] == pytest.approx(0, abs=1e-6)
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert len(log) == 2 and all(abs(r["first_ratio"] - 1) < 1e-4 and r["first_approx_kl"] < 1e-8 for r in log)
    assert log[0]["kl"] == pytest.approx(0, abs=1e-5) and "alarms" not in log[0]
    for name in ("ppo.png", "scores.png", "kl.png", "policy.png", "value.png", "answers.png", "train_state.pt"):
        assert (tmp_path / name).exists(), name


def weights(out):
    return torch.load(Path(out) / "model.pt", weights_only=True)["model"]


def test_kill_and_resume_gives_identical_weights(chain, tmp_path):
    run_ppo(chain, tmp_path / "straight", "--iterations", 3, "--target-kl", 1.0, "--horizon", 10)
    run_ppo(chain, tmp_path / "resumed", "--iterations", 3, "--target-kl", 1.0, "--horizon", 10, "--stop-after", 1)
    assert json.loads((tmp_path / "resumed" / "meta.json").read_text())["metrics"]["after"] is None
    run_ppo(chain, tmp_path / "resumed", "--iterations", 3, "--target-kl", 1.0, "--horizon", 10, "--resume")
    a, b = weights(tmp_path / "straight"), weights(tmp_path / "resumed")
    assert all(torch.equal(a[k], b[k]) for k in a)
    m1, m2 = (json.loads((tmp_path / d / "meta.json").read_text())["metrics"] for d in ("straight", "resumed"))
    assert m1["beta"] == m2["beta"] != 0.2 and m1["after"] == m2["after"]     # the adaptive beta moved, and resumed
    with pytest.raises(StageError, match="other flags"):
        run_ppo(chain, tmp_path / "resumed", "--iterations", 3, "--target-kl", 2.0, "--horizon", 10, "--resume")


def test_bad_checkpoints_and_prompts_too_long_are_one_line(chain, tmp_path):
    # a reward model trained on another policy (another trunk, its scores normalised on other answers)
    toy_chat(tmp_path / "other", seed=1)
    with pytest.raises(StageError, match="was not trained on"):
        ppo.main(["--init", str(tmp_path / "other"), "--reward-model", str(chain / "reward"), "--out-dir", str(tmp_path / "a")])
    # a reward model of another tokenizer
    tok = Tokenizer.train([english_doc(i) for i in range(30, 60)], 280)
    cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=96, n_layer=2, n_head=2, n_kv_head=2, n_embd=32)
    save_checkpoint(tmp_path / "rm", GPT(cfg, scalar_head=True).state_dict(), cfg, tok, kind="reward", script="reward.py",
                    args={}, metrics={}, inputs={})
    with pytest.raises(StageError, match="another tokenizer"):
        ppo.main(["--init", str(chain / "sft"), "--reward-model", str(tmp_path / "rm"), "--out-dir", str(tmp_path / "b")])
    # a policy that is not a chat checkpoint
    base = tmp_path / "base"
    (base).mkdir()
    for name in ("model.pt", "tokenizer.json"):
        (base / name).write_bytes((chain / "sft" / name).read_bytes())
    meta = json.loads((chain / "sft" / "meta.json").read_text())
    (base / "meta.json").write_text(json.dumps({**meta, "kind": "base"}))
    with pytest.raises(StageError, match="base"):
        ppo.main(["--init", str(base), "--reward-model", str(chain / "reward"), "--out-dir", str(tmp_path / "c")])
    # prompts that, with the answer's room, do not fit the block
    with pytest.raises(StageError, match="exceeds the block of 96"):
        run_ppo(chain, tmp_path / "d", "--max-new-tokens", 90)
    assert not any((tmp_path / d).exists() for d in "abcd")


def test_two_processes_split_the_rollouts(chain, tmp_path):
    flags = ["--init", str(chain / "sft"), "--reward-model", str(chain / "reward"), "--out-dir", str(tmp_path),
             "--general", "0", "--eval-prompts", "2", "--batch", "8", "--minibatch", "4", "--ppo-epochs", "1",
             "--max-new-tokens", "4", "--iterations", "2"]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          str(Path(ppo.__file__)), *flags], capture_output=True, text=True,
                         env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=300)
    assert two.returncode == 0, two.stderr
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert len(log) == 2 and all(abs(r["first_ratio"] - 1) < 1e-4 for r in log)
