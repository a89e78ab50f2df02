"""reward.py: the simulated rater's rankings, the held-out figures, the stage end to end on a
toy chat checkpoint (artefacts, the normalisation, the rankings it writes), and bad input."""

import json

import pytest
import torch

import rankings
import reward
from common import StageError
from model import GPT, GPTConfig, load_checkpoint, save_checkpoint
from preferences import Scorer
from textgen import english_doc
from tokenizer import Tokenizer


@pytest.fixture(scope="module")
def chat_ckpt(tmp_path_factory):
    tok = Tokenizer.train([english_doc(i) for i in range(30)], 300)
    out = tmp_path_factory.mktemp("sft")
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=96, n_layer=2, n_head=2, n_kv_head=2, n_embd=32)
    save_checkpoint(out, GPT(cfg).state_dict(), cfg, tok, kind="chat", script="sft.py", args={}, metrics={}, inputs={})
    return out


def test_the_simulated_rater_ranks_by_gold_score_with_ties():
    prompt = {"id": "p", "text": "Which is larger, 3 or 8?", "category": "compare", "answer": "8", "split": "rm_train"}
    sample = {"prompt_id": "p", "messages": [{"role": "user", "content": prompt["text"]}], "category": "compare",
              "split": "rm_train", "answers": ["8", "3", "8", "3"], "ended": [True, True, True, False]}
    # gold 1.0, 0.5, 1.0, 0.25: the two right answers tie at the top
    (record,) = reward.simulated_rankings([sample], [prompt])
    assert record["ranks"] == [0, 1, 0, 2] and record["rater"] == "simulated"
    assert rankings.untied_pairs(record["ranks"]) == [(0, 1), (0, 3), (1, 3), (2, 1), (2, 3)]


def test_held_out_figures_worked_example():
    records = [{"ranks": [0, 1], "category": "compare"}, {"ranks": [1, 0], "category": "harmful"},
               {"ranks": [0, 0], "category": "benign"}]
    scores = [[2.0, 0.0], [1.0, 0.0], [5.0, 0.0]]        # right, wrong, tied (no pair)
    figures = reward.held_out_figures(records, scores, gold=[[1, 0], [0, 1], [1, 1]])
    acc = figures["pair_accuracy"]
    assert (acc["all"]["k"], acc["all"]["n"]) == (1, 2) and acc["compare"]["rate"] == 1 and acc["harmful"]["rate"] == 0
    assert "benign" not in acc
    # calibration: each pair counted from both sides, so the predictions are symmetric around 0.5
    assert sum(c["n"] for c in figures["calibration"]) == 4


def test_the_stage_end_to_end_on_a_toy_checkpoint(chat_ckpt, tmp_path):
    reward.main(["--init", str(chat_ckpt), "--out-dir", str(tmp_path), "--general", "0", "--k", "2",
                 "--max-new-tokens", "8", "--threads", "1"])
    model, tok, meta = load_checkpoint(tmp_path, kind="reward")
    assert meta["parent"]["sha256"] == json.loads((chat_ckpt / "meta.json").read_text())["model_sha256"]
    m = meta["metrics"]
    assert m["train_rankings"] > 200 and m["held_out_rankings"] > 50 and m["pair_accuracy"]["all"]["n"] > 0
    for name in ("samples.jsonl", "rankings.jsonl", "calibration.png", "pair_accuracy.png", "loss.png", "log.jsonl"):
        assert (tmp_path / name).exists()
    samples = {s["prompt_id"]: s for s in rankings.read_samples(tmp_path / "samples.jsonl")}
    ranked = rankings.read_rankings(tmp_path / "rankings.jsonl", samples)
    assert {r["split"] for r in ranked} == {"rm_train", "rm_eval"} and len(ranked) == len(samples)
    # normalised: the scores of the training answers have mean 0 and std 1
    train = [r for r in ranked if r["split"] == "rm_train"]
    s = torch.tensor(reward.scores_of(Scorer(model.eval()), tok, train, 96, "cpu")).flatten()
    assert s.mean().item() == pytest.approx(0, abs=1e-3) and s.std().item() == pytest.approx(1, abs=1e-2)
    # a person's file that says what the simulated rater said trains the same model, and its own
    # held-out rankings are the gold ones
    again = tmp_path / "again"
    reward.main(["--init", str(chat_ckpt), "--out-dir", str(again), "--general", "0", "--k", "2",
                 "--max-new-tokens", "8", "--threads", "1", "--rankings", str(tmp_path / "rankings.jsonl")])
    m2 = load_checkpoint(again, kind="reward")[2]["metrics"]
    assert m2["train_loss"] == m["train_loss"] and m2["pair_accuracy_own_rater"]["all"] == m["pair_accuracy"]["all"]


def test_imported_preferences_train_and_a_share_is_held_out(chat_ckpt, tmp_path):
    # our own pairs form: the answer that says "yes" is preferred; 40 pairs, 10% held out
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": f"question {i}?", "chosen": "yes", "rejected": f"no {i}"}) + "\n"
                             for i in range(40)))
    out = tmp_path / "out"
    reward.main(["--init", str(chat_ckpt), "--out-dir", str(out), "--general", "0", "--k", "2",
                 "--max-new-tokens", "4", "--threads", "1", "--preferences", str(pairs)])
    _, _, meta = load_checkpoint(out, kind="reward")
    m = meta["metrics"]
    assert m["rater"] == ["import:pairs.jsonl"] and m["train_rankings"] == 36
    assert m["pair_accuracy_own_rater"]["all"]["n"] == 4 and m["pair_accuracy"]["all"]["n"] > 0   # and the gold held-out
    assert "rankings" in meta["inputs"]


def _ran_then(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_bad_rankings_and_preferences_are_one_line_and_nothing_written(chat_ckpt, tmp_path):
    base = ["--init", str(chat_ckpt), "--general", "0", "--k", "2", "--max-new-tokens", "4", "--threads", "1"]
    # a prompt missing from the samples
    other = {"prompt_id": "nope", "messages": [{"role": "user", "content": "x"}], "answers": ["a", "b"],
             "ranks": [0, 1], "rater": "human:ada", "time": "2026-12-01T00:00:00Z"}
    with pytest.raises(StageError, match=r"mine.jsonl:1: prompt_id nope is not in the samples"):
        reward.main(base + ["--out-dir", str(tmp_path / "a"), "--rankings", str(_ran_then(tmp_path / "mine.jsonl", [other]))])
    # a ranking of other answers than the prompt's samples (rate.py's file of another run)
    reward.main(base + ["--out-dir", str(tmp_path / "run")])
    first = rankings.read_rankings(tmp_path / "run" / "rankings.jsonl")[0]
    first = {**first, "answers": [a + " (edited)" for a in first["answers"]]}
    with pytest.raises(StageError, match=r"edited.jsonl:1: not a ranking of its answers"):
        reward.main(base + ["--out-dir", str(tmp_path / "b"), "--rankings", str(_ran_then(tmp_path / "edited.jsonl", [first]))])
    # an imported line without "chosen": refused before the model samples anything
    lines = [{"prompt": "q", "chosen": "a", "rejected": "b"}, {"prompt": "q", "rejected": "b"}]
    with pytest.raises(StageError, match=r'pairs.jsonl:2: no "chosen"'):
        reward.main(base + ["--out-dir", str(tmp_path / "c"), "--preferences", str(_ran_then(tmp_path / "pairs.jsonl", lines))])
    # rankings that are all ties teach nothing
    tied = [{**r, "ranks": [0] * len(r["ranks"])} for r in rankings.read_rankings(tmp_path / "run" / "rankings.jsonl")]
    with pytest.raises(StageError, match="not one untied pair"):
        reward.main(base + ["--out-dir", str(tmp_path / "d"), "--rankings", str(_ran_then(tmp_path / "tied.jsonl", tied))])
    assert not any((tmp_path / d).exists() for d in "abcd")


@pytest.mark.parametrize("flags, message", [(["--k", "1"], "--k must be >= 2"), (["--lr", "0"], "--lr must be"),
                                            (["--general", "-1"], "--general must be >= 0"),
                                            (["--preferences-held-out", "1"], "must be in [0, 1)"),
                                            (["--rankings", "a", "--preferences", "b"], "not both")])
def test_flags_at_their_edges_are_usage_errors(capsys, flags, message):
    with pytest.raises(SystemExit) as e:
        reward.parse_args(flags)
    assert e.value.code == 2 and message in capsys.readouterr().err
