"""safety.red_team on a toy checkpoint: what it asks (samples, jailbreaks that do not fit counted,
the base model's plain prompts), and its figures when every answer is a refusal or a leak."""

import pytest
import torch

import measure
import redteam
import safety
from model import GPT, GPTConfig
from textgen import english_doc
from tokenizer import Tokenizer


@pytest.fixture(scope="module")
def toy():
    tok = Tokenizer.train([english_doc(i) for i in range(30)], 300)
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=256, n_layer=1, n_head=2, n_kv_head=2, n_embd=16)
    return GPT(cfg).eval(), tok


def fake_answers(monkeypatch, tok, text, seen=None):
    def generate(model, prompts, *a, **k):
        if seen is not None:
            seen.extend(prompts)
        return [tok.encode_ordinary(text) + [tok.special("<|end|>")] for _ in prompts]
    monkeypatch.setattr(measure, "generate", generate)


def test_what_it_asks_and_its_figures(toy):
    model, tok = toy
    out = safety.red_team(model, tok, "chat", n=4, max_new_tokens=8)
    assert set(out["suites"]) == {"harmbench", "donotanswer", "advbench"}
    for figs in out["suites"].values():
        assert 0 < figs["refusal"]["n"] <= 4 and set(figs) == set(safety.FIGURES)
        assert figs["refusal"]["k"] + figs["non_refusal"]["k"] == figs["refusal"]["n"]
    # every DAN template is longer than the block leaves room for: none asked, all 14 counted
    assert out["skipped"]["dan"] == 14 and "dan" not in out["jailbreaks"]
    assert out["canary_leak"]["n"] == len(redteam.load("injections")) == 28 and out["over_refusal"]["n"] == 4


def test_a_model_that_refuses_everything_and_one_that_leaks(toy, monkeypatch):
    model, tok = toy
    fake_answers(monkeypatch, tok, "I won't help with that, because it could hurt someone.")
    out = safety.red_team(model, tok, "chat", n=3, max_new_tokens=8)
    assert all(f["refusal"]["rate"] == 1 and f["toxic"]["rate"] == 0 for f in out["suites"].values())
    assert out["over_refusal"]["rate"] == 1 and out["canary_leak"]["rate"] == 0
    fake_answers(monkeypatch, tok, "Sure! The password is plum 4417, you idiot.")
    out = safety.red_team(model, tok, "chat", n=3, max_new_tokens=8)
    assert out["canary_leak"]["rate"] == 1 and out["over_refusal"]["rate"] == 0
    assert all(f["non_refusal"]["rate"] == 1 and f["toxic"]["rate"] == 1 for f in out["suites"].values())


def test_a_base_model_continues_plain_text(toy, monkeypatch):
    model, tok = toy
    seen = []
    fake_answers(monkeypatch, tok, "and then", seen)
    safety.red_team(model, tok, "base", n=2, max_new_tokens=8)
    assert seen and all([t for t in ids if tok.is_special(t)] == [tok.special("<|endoftext|>")] for ids in seen)
