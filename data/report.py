"""The corpus report of data/prepare.py: what each rule removed, per source, with examples.

`Report` counts documents and bytes in and out while the stage runs; `to_dict()` is what
report.json holds, and `write_report_md` and `plot_report` turn that into report.md and
report.png.
"""

from collections import defaultdict

from common import atomic_open, save_figure


def removal_counts():
    """What one rule removed (overall, or from one source)."""
    return {"docs": 0, "bytes": 0}


def source_counts():
    """Everything the report counts for one source."""
    return {"docs_in": 0, "bytes_in": 0, "docs_out": 0, "bytes_out": 0, "invalid_utf8_replaced": 0,
            "removed": defaultdict(removal_counts), "pii_masked": defaultdict(int),
            "boilerplate_lines": 0, "cut_by_cap": 0}


def plain_dicts(value):
    """A copy of the nested counts with every defaultdict made a plain dict: a snapshot that
    reading cannot change (a defaultdict adds any key it is asked for)."""
    return {k: plain_dicts(v) for k, v in value.items()} if isinstance(value, dict) else value


def mb(nbytes):
    """Bytes as MB (10^6) with two decimals."""
    return f"{nbytes / 1e6:.2f}"


class Report:
    """Documents and bytes in and out, per source and per rule, with a few examples."""

    def __init__(self, rules):
        """rules: the rule names in the order they run, the order of the report's rows."""
        self.sources = defaultdict(source_counts)
        self.rules = {r: removal_counts() for r in rules}
        self.examples = defaultdict(list)

    def add_input(self, doc, nbytes, replaced):
        s = self.sources[doc["source"]]
        s["docs_in"] += 1
        s["bytes_in"] += nbytes
        s["invalid_utf8_replaced"] += replaced

    def remove(self, rule, doc, nbytes, detail):
        self.rules[rule]["docs"] += 1
        self.rules[rule]["bytes"] += nbytes
        removed = self.sources[doc["source"]]["removed"][rule]
        removed["docs"] += 1
        removed["bytes"] += nbytes
        # Up to two examples per rule and source, so every source's removals can be inspected.
        if sum(ex["source"] == doc["source"] for ex in self.examples[rule]) < 2:
            self.examples[rule].append({"id": doc["id"], "source": doc["source"],
                                        "reason": detail, "text": doc["text"][:300]})

    def to_dict(self):
        return {"sources": plain_dicts(self.sources), "rules": self.rules,
                "examples": dict(self.examples)}


def write_report_md(path, report, totals):
    """report.md: the totals, a table per source and per rule, and the examples."""
    lines = ["# Corpus report", "",
             f"{totals['docs']:,} documents, {mb(totals['bytes'])} MB kept (train "
             f"{mb(totals.get('train_bytes', 0))} MB, validation {mb(totals.get('val_bytes', 0))} MB)"
             f" in {totals['seconds']:.0f} s.", "",
             "## Per source", "",
             "| source | docs in | MB in | docs out | MB out | kept | invalid UTF-8 | PII masked |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, s in report["sources"].items():
        kept = s["bytes_out"] / s["bytes_in"] if s["bytes_in"] else 0
        pii = ", ".join(f"{k} {v}" for k, v in s["pii_masked"].items() if v) or "-"
        lines.append(f"| {name} | {s['docs_in']:,} | {mb(s['bytes_in'])} | {s['docs_out']:,} | "
                     f"{mb(s['bytes_out'])} | {kept:.0%} | {s['invalid_utf8_replaced']} | {pii} |")
    lines += ["", "## Per rule (in the order applied)", "",
              "| rule | docs removed | MB removed |", "|---|---:|---:|"]
    lines += [f"| {r} | {v['docs']:,} | {mb(v['bytes'])} |" for r, v in report["rules"].items()]
    lines += ["", "Boilerplate counts documents emptied by line removal; the lines themselves: "
              + ", ".join(f"{n} {s['boilerplate_lines']}" for n, s in report["sources"].items()) + ".",
              "", "## Examples of removed documents", ""]
    for rule, examples in report["examples"].items():
        lines.append(f"### {rule}")
        for ex in examples:
            snippet = ex["text"][:200].replace("```", "'''")
            lines += ["", f"`{ex['id']}`: {ex['reason']}", "", "```", snippet, "```"]
        lines.append("")
    with atomic_open(path) as f:
        f.write("\n".join(lines) + "\n")


def plot_report(path, report):
    """A stacked bar per source: MB kept, and MB removed by each rule."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["sources"])
    fig, ax = plt.subplots(figsize=(11, 0.5 * len(names) + 2))
    left = [0.0] * len(names)
    segments = [("kept", [report["sources"][n]["bytes_out"] / 1e6 for n in names])]
    for rule in report["rules"]:                       # in the order applied
        segments.append((rule, [report["sources"][n]["removed"].get(rule, {"bytes": 0})["bytes"] / 1e6
                                for n in names]))
    cut = [max(report["sources"][n]["bytes_in"] / 1e6 - sum(seg[1][i] for seg in segments), 0)
           for i, n in enumerate(names)]
    segments.append(("cap, markup and other edits", cut))
    for label, values in segments:
        if any(v > 0 for v in values):
            ax.barh(names, values, left=left, label=label)
            left = [a + b for a, b in zip(left, values)]
    ax.set_xlabel("MB (UTF-8)")
    ax.set_title("Corpus: what each rule removed, per source")
    ax.invert_yaxis()
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    save_figure(fig, path)
