"""The report card: evaluate.py's results.json turned into what a person reads.

evaluate.py scores; this module only presents, from results.json alone (so a report can be
redrawn from an old run's file), three things:

    report.md    one row per benchmark and metric, one column per checkpoint; each cell the
                 score, its 95% interval (1.96 standard errors), its centred value
                 (score - chance) / (1 - chance) and the prompt format it was scored in
                 ([H] the harness' plain text, [C] the chat layout); then the panel: every
                 checkpoint's answers to the same ten fixed prompts, side by side
    scores.png   the primary score of each benchmark per checkpoint with its interval, chance
                 marked; bits per byte in a panel of its own (another scale, lower is better)
    run names    how a checkpoint is shown: its path and what its meta.json says it holds

The panel is the guard against a metric that lies: a checkpoint whose benchmark scores rose
while its answers turned to gibberish (or to refusing everything) shows it in one glance. Its
cells are escaped for a markdown table (| and line breaks) and cut to PANEL_CHARS characters.

Reads:  results.json's dict (evaluate.py builds it, then calls write_report and plot_scores)
Writes: <out_dir>/report.md, scores.png (atomically, through common)
"""

import math
from pathlib import Path

import benchmarks
from common import atomic_open, save_figure
from gate import LOWER_IS_BETTER, SCORE_METRICS, Z95, display_name, format_score, format_with_interval, stderr_of

# the marker a report cell carries for the prompt format its score was made in
FORMAT_MARKS = {"harness": "[H]", "chat": "[C]"}
PANEL_CHARS = 120                     # a panel cell's text at most: a table row stays readable


def run_name(path, meta):
    """The name a report shows for a checkpoint: its path and what it holds, from its
    meta.json, e.g. "out/pretrain (base, step 160, model 9327318d)" (results.json keys stay
    the path, which `compare path#label` selects by)."""
    step, sha = (meta.get("metrics") or {}).get("step"), meta.get("model_sha256") or ""
    what = [meta.get("kind", "base"), *([f"step {step}"] if step is not None else []),
            *([f"model {sha[:8]}"] if sha else [])]
    return f"{path} ({', '.join(what)})"


def chance_of(ckpts, name):
    """A benchmark's chance level (the same for every checkpoint that scored it), or None."""
    return next((c["scores"][name].get("chance") for c in ckpts.values() if name in c["scores"]), None)


def score_cell(scores, metric):
    """One report cell: "0.300 +- 0.090 (+0.067) [C]", the score, its 95% interval, its
    centred value (higher-is-better scores with a chance level) and its format's marker
    (none in older results, which recorded no format: they were all the harness')."""
    value, chance = scores.get(metric), scores.get("chance")
    cell = format_with_interval(value, stderr_of(scores, metric))
    if value is not None and chance not in (None, 1) and metric not in LOWER_IS_BETTER:
        cell += f" ({benchmarks.centred(value, chance):+.3f})"
    mark = FORMAT_MARKS.get(scores.get("format"))
    return f"{cell} {mark}" if value is not None and mark else cell


def table_text(text, limit=PANEL_CHARS):
    """Text made safe for one markdown table cell: cut to `limit` characters (an ellipsis
    marks the cut), line breaks shown as a visible return sign, | and \\ escaped (cut first,
    so an escape is never cut in half). An empty answer says so: a blank cell reads as a bug."""
    if not text.strip():
        return "*(empty)*"
    text = text.replace("\r\n", "\n")
    if len(text) > limit:
        text = text[:limit - 1] + "\u2026"
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " \u21b5 ")


def panel_lines(results):
    """The Panel section: one row per prompt (its category and text), one column per
    checkpoint that answered (broken ones did not: they are named broken above); [] when no
    checkpoint has a panel (older results)."""
    prompts = results.get("panel") or []
    ckpts = {p: c for p, c in results["checkpoints"].items() if c.get("panel")}
    if not prompts or not ckpts:
        return []
    lines = ["", "## Panel", "",
             f"The same {len(prompts)} prompts, each asked as a user turn in the chat layout and answered greedily "
             "by every checkpoint (whatever its kind): what a user would see, beside the scores that claim to "
             f"measure it. Answers cut at {PANEL_CHARS} characters; \u21b5 marks a line break.", "",
             "| # | category | prompt | " + " | ".join(display_name(p, c) for p, c in ckpts.items()) + " |",
             "|---|---|---|" + "---|" * len(ckpts)]
    for i, q in enumerate(prompts):
        answers = [table_text(c["panel"][i]) if i < len(c["panel"]) else "-" for c in ckpts.values()]
        lines.append(f"| {i + 1} | {q['category']} | {table_text(q['prompt'])} | " + " | ".join(answers) + " |")
    return lines


def write_report(out_dir, results):
    """report.md: one row per benchmark and metric, one column per checkpoint; then the panel."""
    ckpts = results["checkpoints"]
    lines = ["# Evaluation report", "",
             f"{len(ckpts)} checkpoint(s); items per benchmark: {results['args']['limit'] or 'all'} "
             f"(seeded sample {results['args']['limit_seed']}). Each cell: score \u00b1 its 95% interval "
             "(1.96 standard errors: the noise of drawing these n items) (centred score, "
             "(score - chance) / (1 - chance)) and the prompt format: [H] the harness' plain text (a document "
             "the answer continues), [C] the chat layout (the prompt as a user turn, the answer as the "
             "assistant's). Validation bits per byte are always plain text, and HumanEval always the "
             "harness' (it completes a function body, not a turn). Contamination: items sharing a 13-word "
             "sequence with the corpus' train split.", "",
             "| benchmark | metric | n | chance | " + " | ".join(display_name(p, c) for p, c in ckpts.items())
             + " | contaminated |",
             "|---|---|---|---|" + "---|" * len(ckpts) + "---|"]
    for name, task in results["tasks"].items():
        if "unavailable" in task:
            lines.append(f"| {name} | - | - | - | " + " | ".join("unavailable" for _ in ckpts) + " | - |")
            continue
        cont = task.get("contamination")
        cont_cell = f"{cont['contaminated']:,} of {cont['checked']:,}" if cont else "-"
        metrics = [m for m in SCORE_METRICS if any(m in c["scores"].get(name, {}) for c in ckpts.values())]
        for m in metrics:
            cells = [score_cell(c["scores"].get(name, {}), m) for c in ckpts.values()]
            lines.append(f"| {name} | {m} | {task.get('n', 0):,} of {task.get('n_total', 0):,} | "
                         f"{format_score(chance_of(ckpts, name))} | " + " | ".join(cells) + f" | {cont_cell} |")
    lines += [""] + [f"{name}: unavailable, {task['unavailable']}." for name, task in results["tasks"].items()
                     if "unavailable" in task]
    lines += [f"{display_name(p, c)}: broken, {c['broken']}; not scored." for p, c in ckpts.items() if "broken" in c]
    if "val" in results["tasks"]:
        lines.append("val: the interval of bits per byte and loss is over the split's documents (ratio estimator).")
    lines += panel_lines(results)
    with atomic_open(Path(out_dir) / "report.md") as f:
        f.write("\n".join(lines) + "\n")


def bar(scores, metric):
    """(height, 95% half-width, text) of one bar: a missing score is an empty bar marked "n/a",
    a zero one is marked "0" (both would otherwise be invisible)."""
    value = scores.get(metric) if scores else None
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return 0.0, 0.0, "n/a"
    se = stderr_of(scores, metric)
    return float(value), Z95 * se if se is not None else 0.0, "0" if value == 0 else ""


def bar_values(results):
    """What scores.png draws: (benchmarks with their primary metric, {display name: [bar per
    benchmark]}, {display name: bar of bits per byte}), unavailable benchmarks and broken
    checkpoints included, as "n/a" bars."""
    tasks, ckpts = results["tasks"], results["checkpoints"]
    names = [(n, t.get("primary") or benchmarks.TASKS[n].metrics[0]) for n, t in tasks.items() if n != "val"]
    scores = {display_name(p, c): [bar(c["scores"].get(n), m) for n, m in names] for p, c in ckpts.items()}
    bpb = {display_name(p, c): bar(c["scores"].get("val"), "bpb") for p, c in ckpts.items()}
    return names, scores, bpb


def plot_scores(path, results):
    """Primary score of each benchmark per checkpoint with its 95% interval, chance marked with
    a black tick; bits per byte in a panel of its own (another scale, lower is better)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names, scores, bpb = bar_values(results)
    fig, (ax, ax_bpb) = plt.subplots(1, 2, figsize=(max(6, 1.1 * len(names) + 2) + 2, 4),
                                     gridspec_kw={"width_ratios": [max(len(names), 1), 1.5]})
    width = 0.8 / max(len(scores), 1)
    for j, (label, bars) in enumerate(scores.items()):
        xs = [i + (j - (len(scores) - 1) / 2) * width for i in range(len(names))]
        heights, errs, texts = zip(*bars) if bars else ((), (), ())
        drawn = ax.bar(xs, heights, width, yerr=errs, capsize=2, label=label)
        for x, text in zip(xs, texts):
            if text:                                     # "0" or "n/a": a bar too low to see
                ax.text(x, 0.01, text, ha="center", va="bottom", fontsize=7, rotation=90,
                        color=drawn.patches[0].get_facecolor())
    for i, (n, _) in enumerate(names):
        chance = chance_of(results["checkpoints"], n)
        if chance is not None:
            ax.plot([i - 0.45, i + 0.45], [chance, chance], color="black", linewidth=2)
    ax.set_xticks(range(len(names)), [f"{n}\n{m}" for n, m in names], fontsize=8)
    ax.set_ylabel("score \u00b1 95% interval (black: chance)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    for j, (height, err, text) in enumerate(bpb.values()):        # the same colours, in legend order
        drawn = ax_bpb.bar([j], [height], 0.8, yerr=[err], capsize=3)
        ax_bpb.text(j, 0, text, ha="center", va="bottom", fontsize=8, color=drawn.patches[0].get_facecolor())
    ax_bpb.set_xticks(range(len(bpb)), [str(j + 1) for j in range(len(bpb))], fontsize=8)
    ax_bpb.set_xlabel("checkpoint (legend order)", fontsize=8)
    ax_bpb.set_ylabel("validation bits per byte (lower is better)")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
