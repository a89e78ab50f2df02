"""The regression gate: is a candidate checkpoint's evaluation worse than a baseline's?

`evaluate.py compare BASELINE CANDIDATE --max-drop X` reads two results.json files and prints,
for every metric both scored on the same items, the two scores, their difference and the 95%
interval of that difference. It fails (one line, exit 1) naming every metric that got worse by
more than X (a score falling, bits per byte or loss rising), every metric the candidate lost
(not a number: a broken model), and every benchmark the baseline scored that the candidate did
not. Benchmarks scored on different items (another --limit or seed) or in different prompt
formats (evaluate.py --format: a base model in the harness' plain text, a chat model in its
chat layout) are named and left out: they are no evidence either way; the others are still
compared. A score dict's "format" is a string, not a metric: only SCORE_METRICS are compared.

The rule, and the noise. A score on n items has a standard error (results.json's
"{metric}_stderr"); the difference of two runs' scores has the interval
    d +- 1.96 * sqrt(se_baseline^2 + se_candidate^2),
the interval of two independent estimates. The two runs are scored on the same items, so the
paired interval (from per-item differences, which results.json does not keep) would be
narrower: this one is conservative, it calls more drops noise than a paired test would.
The gate stays conservative too: it fails on every drop beyond --max-drop, noise or not, but
says of each such drop whose interval holds 0 "within noise (+-x): evaluate with a larger
--limit to tell", and warns, before the verdict, when --max-drop is smaller than the noise of
a difference in this run (with --limit 200 an accuracy near 0.3 carries +-0.09): then a pass
is no evidence of "no regression" either. Results without stderrs (older files) compare as
before, without intervals.

Reads:  two results.json files written by evaluate.py (a directory means its results.json;
        `path#label` picks one checkpoint of several; the label is the checkpoint's path, its
        display name, e.g. "out/pretrain (base, step 160, model 9327318d)", is what is printed)
"""

import json
import math
from pathlib import Path

from common import StageError, require

# Metrics compared: higher is better, except bits per byte and loss.
SCORE_METRICS = ("acc", "acc_norm", "mc2", "exact_match", "exact_match_corrected", "pass@1", "pass@10",
                 "pass@100", "bpb", "loss")
LOWER_IS_BETTER = ("bpb", "loss")
Z95 = 1.96                     # a 95% interval of a normal estimate: +- 1.96 standard errors


def format_score(x):
    """A score or chance level in a report cell: three decimals, "-" when there is none."""
    return "-" if x is None else f"{x:.3f}"


def stderr_of(scores, metric):
    """The standard error stored beside a metric, or None (older results, or under two items)."""
    se = scores.get(f"{metric}_stderr")
    return se if isinstance(se, (int, float)) and math.isfinite(se) else None


def format_with_interval(value, se):
    """"0.300 +- 0.090": a score and its 95% interval's half-width (just the score without a
    standard error)."""
    return format_score(value) + ("" if value is None or se is None else f" \u00b1 {Z95 * se:.3f}")


def difference_interval(se_base, se_cand):
    """Half-width of the 95% interval of (candidate - baseline), two independent estimates:
    1.96 * sqrt(se_b^2 + se_c^2); None when either lacks a standard error."""
    if se_base is None or se_cand is None:
        return None
    return Z95 * math.hypot(se_base, se_cand)


def display_name(path, ckpt):
    """How a checkpoint of a results.json is shown: the name evaluate.py gave it (its run),
    or its path in older files."""
    return ckpt.get("name", path)


def load_results(spec):
    """(label, display name, scores, tasks) of one checkpoint in a results.json; `path#label`
    picks one of several checkpoints. The display name falls back to the label (older files)."""
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
    return label, display_name(label, ckpts[label]), ckpts[label]["scores"], results["tasks"]


def comparable(base, cand, base_tasks, cand_tasks):
    """(benchmarks both runs scored on the same items in the same prompt format, [why each
    other shared one cannot be compared]): a score on other items (another --limit or seed), or
    in another format (the format alone moves scores), is no evidence either way. Results that
    record no format (older files) were scored in the harness' format."""
    same, apart = [], []
    for name in sorted(base.keys() & cand.keys()):
        fmt_b, fmt_c = (s[name].get("format", "harness") for s in (base, cand))
        if base_tasks[name].get("items_sha256") != cand_tasks[name].get("items_sha256"):
            apart.append(f"{name} was scored on different items in the two runs (--limit or data differ)")
        elif fmt_b != fmt_c:
            apart.append(f"{name} was scored in the {fmt_b} format in the baseline and the {fmt_c} format in the "
                         "candidate")
        else:
            same.append(name)
    return same, apart


def differences(base, cand, names):
    """[(benchmark, metric, baseline, candidate, candidate - baseline, 95% half-width or None)]
    for every metric of `names` both runs hold as finite numbers."""
    out = []
    for name in names:
        for m in SCORE_METRICS:
            b, c = base[name].get(m), cand[name].get(m)
            if isinstance(b, (int, float)) and isinstance(c, (int, float)) and math.isfinite(b) and math.isfinite(c):
                out.append((name, m, b, c, c - b,
                            difference_interval(stderr_of(base[name], m), stderr_of(cand[name], m))))
    return out


def regressions(base, cand, names, max_drop):
    """[(benchmark, metric, baseline, candidate, 95% half-width of the difference or None)] for
    every metric of `names` that got worse by more than max_drop (higher-is-better scores
    dropping, bits per byte or loss rising), that the candidate lost (None: not a number, e.g.
    the NaN of a broken model), and for every benchmark the baseline scored that the candidate
    did not (metric "-")."""
    out = [(name, "-", None, None, None) for name in sorted(base.keys() - cand.keys())]
    for name in names:
        for m in SCORE_METRICS:
            b, c = base[name].get(m), cand[name].get(m)
            if b is None or not math.isfinite(b):
                continue
            if c is None or not math.isfinite(c):
                out.append((name, m, b, None, None))
                continue
            worse = (c - b) if m in LOWER_IS_BETTER else (b - c)
            if worse > max_drop:
                out.append((name, m, b, c, difference_interval(stderr_of(base[name], m), stderr_of(cand[name], m))))
    return sorted(out, key=lambda r: (r[0], r[1]))


def within_noise(diff, half_width):
    """Whether the 95% interval of a difference holds 0: the drop cannot be told from the
    noise of drawing these items."""
    return half_width is not None and abs(diff) <= half_width


def describe_regression(name, metric, base, cand, half_width=None):
    if metric == "-":
        return f"{name} missing from the candidate"
    if cand is None:
        return f"{name} {metric} {base:.4f} -> not a number"
    line = f"{name} {metric} {base:.4f} -> {cand:.4f}"
    if within_noise(cand - base, half_width):
        line += f" (within noise (\u00b1{half_width:.4f}): evaluate with a larger --limit to tell)"
    return line


def describe_difference(name, metric, base, cand, diff, half_width):
    """One line of compare's table: both scores, the difference and its 95% interval."""
    line = f"{name:16s} {metric:22s} {format_score(base):>8s} -> {format_score(cand):>8s}  {diff:+.4f}"
    if half_width is None:
        return line + " (no interval: results without standard errors)"
    return line + f" \u00b1 {half_width:.4f}" + (" within noise" if within_noise(diff, half_width) else "")


def noisier_than(diffs, max_drop):
    """The compared metrics whose difference's 95% interval is wider than --max-drop: on them
    the gate's verdict, pass or fail, is no evidence."""
    return [(name, m, hw) for name, m, _, _, _, hw in diffs if hw is not None and hw > max_drop]


def compare(baseline, candidate, max_drop):
    """`evaluate.py compare`: the comparable metrics side by side with the interval of each
    difference; fail naming each that regressed (and whether within noise), each benchmark the
    candidate lost, and say which could not be compared."""
    _, b_name, base, b_tasks = load_results(baseline)
    _, c_name, cand, c_tasks = load_results(candidate)
    names, apart = comparable(base, cand, b_tasks, c_tasks)
    for why in apart:
        print(f"not compared: {why}")
    bad = regressions(base, cand, names, max_drop)
    if not names and not bad:
        raise StageError("nothing to compare: " + ("; ".join(apart) + "; evaluate both with the same --limit, "
                         "--limit-seed and --format" if apart else "the two results share no benchmark"))
    print(f"baseline {b_name} -> candidate {c_name}; difference and its 95% interval (independent "
          "estimates: conservative for runs on the same items)")
    diffs = differences(base, cand, names)
    for row in diffs:
        print(describe_difference(*row))
    noisy = noisier_than(diffs, max_drop)
    if noisy:
        print(f"warning: --max-drop {max_drop} is smaller than the noise of " +
              ", ".join(f"{name} {m} (\u00b1{hw:.4f})" for name, m, hw in noisy) +
              ": there a pass or a fail is no evidence; evaluate with a larger --limit")
    if bad:
        raise StageError(f"{c_name} regressed beyond {max_drop} against {b_name}: " +
                         ", ".join(describe_regression(*r) for r in bad) +
                         "".join(f"; not compared: {why}" for why in apart))
    print(f"ok: no metric of {c_name} is worse than {b_name} by more than {max_drop}")
