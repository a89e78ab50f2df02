"""The whole pipeline on toy sizes, each stage reading the files the stage before it wrote:
data/prepare.py -> bpe.py -> train.py -> sft.py -> reward.py -> ppo.py -> evaluate.py. Each stage's check is that it
moved its own metric the right way on held-out data; every later stage extends this chain
with itself (reward, PPO, ...), reading the files of the one before."""

import json

import bpe
import evaluate
import ppo
import reward
import sft
import train
from data import prepare
from model import load_checkpoint
from textgen import english_doc


def test_the_whole_chain_on_toy_sizes(tmp_path):
    # 1. data: a folder of the user's own text files, cleaned, deduplicated and split
    src = tmp_path / "in"
    src.mkdir()
    for i in range(60):
        (src / f"doc{i:02d}.txt").write_text(english_doc(i, 20))
    prepare.main(["--out-dir", str(tmp_path / "data"), "--sources", "none", "--input", str(src),
                  "--val-fraction", "0.1", "--workers", "1"])
    docs = [json.loads(line) for line in (tmp_path / "data" / "corpus.jsonl").read_text().splitlines()]
    assert len(docs) == 60 and {d["split"] for d in docs} == {"train", "val"}

    # 2. the tokenizer and the token shards
    bpe.main(["--data-dir", str(tmp_path / "data"), "--out-dir", str(tmp_path / "tok"), "--vocab-size", "320",
              "--workers", "1"])
    assert (tmp_path / "tok" / "train.bin").stat().st_size > 0

    # 3. pretraining: validation bits per byte fall
    train.main(["--data-dir", str(tmp_path / "tok"), "--out-dir", str(tmp_path / "pretrain"), "--preset", "tiny",
                "--block-size", "96", "--micro-batch", "4", "--batch-tokens", "384", "--max-steps", "40",
                "--eval-every", "20", "--eval-batches", "2", "--samples", "0", "--threads", "1", "--lr", "1e-2",
                "--warmup-steps", "4"])
    history = json.loads((tmp_path / "pretrain" / "meta.json").read_text())["metrics"]["val_history"]
    assert history[-1]["val_bpb"] < history[0]["val_bpb"]

    # 4. SFT on the task library's skills: the held-out answers become far more predictable,
    #    and the checkpoint names its parent
    sft.main(["--init", str(tmp_path / "pretrain"), "--out-dir", str(tmp_path / "sft"),
              "--mix", "compare=3,harmful=1,benign=1", "--max-steps", "60", "--batch-rows", "4", "--micro-batch", "4",
              "--lr", "1e-2", "--eval-prompts", "12", "--eval-conversations", "16", "--max-new-tokens", "16",
              "--eval-every", "20", "--threads", "1"])
    model, tok, meta = load_checkpoint(tmp_path / "sft", kind="chat")
    assert meta["parent"]["sha256"] == json.loads((tmp_path / "pretrain" / "meta.json").read_text())["model_sha256"]
    before, after = meta["metrics"]["before"], meta["metrics"]["after"]
    for skill, drop in (("compare", 0.2), ("harmful", 0.3), ("benign", 0.3)):      # a one-digit answer is the slowest
        assert after["bpb"][skill]["bpb"] < (1 - drop) * before["bpb"][skill]["bpb"], skill
    assert after["behaviour"]["greedy"]["end"]["rate"] > before["behaviour"]["greedy"]["end"]["rate"]

    # 5. the reward model, on the SFT model's answers ranked by the simulated rater: it ranks
    #    held-out pairs better than a coin
    reward.main(["--init", str(tmp_path / "sft"), "--out-dir", str(tmp_path / "reward"), "--general", "0", "--k", "2",
                 "--max-new-tokens", "16", "--threads", "1"])
    _, _, rmeta = load_checkpoint(tmp_path / "reward", kind="reward")
    assert rmeta["parent"]["sha256"] == meta["model_sha256"]
    assert rmeta["metrics"]["pair_accuracy"]["all"]["low"] > 0.5          # its interval's low end

    # 6. PPO against that reward model: the rollouts' reward-model score rises, the policy stays
    #    a chat checkpoint whose parent is the SFT model, and it is measured before and after
    ppo.main(["--init", str(tmp_path / "sft"), "--reward-model", str(tmp_path / "reward"), "--out-dir", str(tmp_path / "ppo"),
              "--general", "0", "--iterations", "8", "--batch", "16", "--minibatch", "8", "--max-new-tokens", "12",
              "--lr", "1e-3", "--value-lr", "1e-3", "--eval-prompts", "8", "--threads", "1"])
    _, _, pmeta = load_checkpoint(tmp_path / "ppo", kind="chat")
    assert pmeta["parent"]["sha256"] == meta["model_sha256"]
    log = [json.loads(line) for line in (tmp_path / "ppo" / "log.jsonl").read_text().splitlines()]
    first, last = sum(r["score"] for r in log[:2]) / 2, sum(r["score"] for r in log[-2:]) / 2
    assert last > first + 0.1, [r["score"] for r in log]
    assert pmeta["metrics"]["after"]["kl"]["mean"] > 0

    # 7. evaluation of the three checkpoints: held-out text, and the panel side by side
    evaluate.main(["--ckpt", str(tmp_path / "pretrain"), str(tmp_path / "sft"), str(tmp_path / "ppo"), "--tasks", "val",
                   "--data-dir", str(tmp_path / "tok"), "--corpus", "", "--out-dir", str(tmp_path / "eval"),
                   "--device", "cpu"])
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    ckpts = results["checkpoints"]
    assert set(ckpts) == {str(tmp_path / "pretrain"), str(tmp_path / "sft"), str(tmp_path / "ppo")}
    assert {c["kind"] for c in ckpts.values()} == {"base", "chat"}
    assert all(len(c["panel"]) == 10 for c in ckpts.values())
    report = (tmp_path / "eval" / "report.md").read_text()
    assert "Panel" in report and str(tmp_path / "sft") in report and str(tmp_path / "ppo") in report
