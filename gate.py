"""The regression gate: is a candidate checkpoint's evaluation worse than a baseline's?

`evaluate.py compare BASELINE CANDIDATE --max-drop X` reads two results.json files and fails
(one line, exit 1) naming every metric that got worse by more than X (a score falling, bits
per byte or loss rising), every metric the candidate lost (not a number: a broken model), and
every benchmark the baseline scored that the candidate did not. Benchmarks scored on different
items (another --limit or seed) are named and left out: they are no evidence either way.

Reads:  two results.json files written by evaluate.py (a directory means its results.json;
        `path#label` picks one checkpoint of several)
"""

import json
import math
from pathlib import Path

from common import StageError, require

# Metrics compared: higher is better, except bits per byte and loss.
SCORE_METRICS = ("acc", "acc_norm", "mc2", "exact_match", "pass@1", "pass@10", "pass@100", "bpb", "loss")
LOWER_IS_BETTER = ("bpb", "loss")


def format_score(x):
    """A score or chance level in a report cell: three decimals, "-" when there is none."""
    return "-" if x is None else f"{x:.3f}"


def load_results(spec):
    """(label, scores, tasks) of one checkpoint in a results.json; `path#label` picks one of
    several checkpoints."""
    path, _, label = spec.partition("#")
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    require(path, "evaluate.py", what="results")
    try:
        results = json.loads(path.read_text())
        ckpts = results["checkpoints"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise StageError(f"{path} is not an evaluate.py results.json") from None
    if not label:
        if len(ckpts) != 1:
            raise StageError(f"{path} holds {len(ckpts)} checkpoints ({', '.join(ckpts)}); pick one with {path}#LABEL")
        label = next(iter(ckpts))
    if label not in ckpts:
        raise StageError(f"{path} has no checkpoint {label!r}; it has {', '.join(ckpts)}")
    return label, ckpts[label]["scores"], results["tasks"]


def comparable(base, cand, base_tasks, cand_tasks):
    """(benchmarks both runs scored on the same items, [why each other shared one cannot be
    compared]): a score on other items (another --limit or seed) is no evidence either way."""
    same, apart = [], []
    for name in sorted(base.keys() & cand.keys()):
        if base_tasks[name].get("items_sha256") != cand_tasks[name].get("items_sha256"):
            apart.append(f"{name} was scored on different items in the two runs (--limit or data differ)")
        else:
            same.append(name)
    return same, apart


def regressions(base, cand, names, max_drop):
    """[(benchmark, metric, baseline, candidate)] for every metric of `names` that got worse by
    more than max_drop (higher-is-better scores dropping, bits per byte or loss rising), that
    the candidate lost (None: not a number, e.g. the NaN of a broken model), and for every
    benchmark the baseline scored that the candidate did not (metric "-")."""
    out = [(name, "-", None, None) for name in sorted(base.keys() - cand.keys())]
    for name in names:
        for m in SCORE_METRICS:
            b, c = base[name].get(m), cand[name].get(m)
            if b is None or not math.isfinite(b):
                continue
            if c is None or not math.isfinite(c):
                out.append((name, m, b, None))
                continue
            worse = (c - b) if m in LOWER_IS_BETTER else (b - c)
            if worse > max_drop:
                out.append((name, m, b, c))
    return sorted(out, key=lambda r: (r[0], r[1]))


def describe_regression(name, metric, base, cand):
    if metric == "-":
        return f"{name} missing from the candidate"
    return f"{name} {metric} {base:.4f} -> {'not a number' if cand is None else f'{cand:.4f}'}"


def compare(baseline, candidate, max_drop):
    """`evaluate.py compare`: the comparable metrics side by side; fail naming each that
    regressed, each benchmark the candidate lost, and say which could not be compared."""
    b_label, base, b_tasks = load_results(baseline)
    c_label, cand, c_tasks = load_results(candidate)
    names, apart = comparable(base, cand, b_tasks, c_tasks)
    for why in apart:
        print(f"not compared: {why}")
    bad = regressions(base, cand, names, max_drop)
    if not names and not bad:
        raise StageError("nothing to compare: " + ("; ".join(apart) + "; evaluate both with the same --limit "
                         "and --limit-seed" if apart else "the two results share no benchmark"))
    for name in names:
        for m in SCORE_METRICS:
            if m in base[name] and m in cand[name]:
                b, c = base[name][m], cand[name][m]
                print(f"{name:16s} {m:12s} {format_score(b):>8s} -> {format_score(c):>8s}")
    if bad:
        raise StageError(f"{c_label} regressed beyond {max_drop} against {b_label}: " +
                         ", ".join(describe_regression(*r) for r in bad) +
                         "".join(f"; not compared: {why}" for why in apart))
    print(f"ok: no metric of {c_label} is worse than {b_label} by more than {max_drop}")
