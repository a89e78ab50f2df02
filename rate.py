"""Rank sampled answers in the terminal: the person as the reward model's rater.

reward.py samples K answers to each prompt from the SFT model; this script shows them to a
person, one prompt at a time, and appends each ranking to a rankings file in the format every
rater writes (rankings.py), rater "human:NAME". reward.py then trains on it as it trains on the
simulated rater's rankings, or on both.

For each prompt not yet ranked in --out it prints the progress ("prompt 3 of 40"), the
conversation and the K answers numbered 1..K, and reads one line:

    2 1=3 4     a ranking: answer numbers best first, "=" between tied answers (2 is best,
                1 and 3 tie, 4 is worst); every answer exactly once
    u           undo: take the last ranking of this session out of the file, show it again
    s           skip this prompt (nothing written; a later run shows it again)
    q           quit (or end of input); everything ranked so far stays

A bad line is answered with one line saying what is wrong, and the prompt is asked again.
Each ranking is appended and fsynced as soon as it is typed, so stopping at any moment (q,
Ctrl-D, Ctrl-C, a kill) loses nothing already ranked; running again resumes with the
prompts not yet in --out (a last line cut short by a kill is dropped with a warning).

Reads:  SAMPLES.jsonl (reward.py's samples, rankings.py's format); --out if it exists; lines on stdin
Writes: --out, one ranking per line (appended; rewritten atomically on undo)

Run:
    python rate.py out/reward/samples.jsonl --out out/reward/rankings_human.jsonl --name ada
    printf '1 2\\n2=1\\nq\\n' | python rate.py samples.jsonl --out rankings.jsonl   # scripted

Not included: rating several prompts in one screen, editing a ranking other than the last,
free-text comments, more than one person per file at the same time.
"""

import argparse
import getpass
import re
import sys

from common import StageError, run_main
from rankings import append_ranking, ranking, read_samples, resume_rankings, undo_ranking

HELP = ('rank: answer numbers best first, "=" joins ties (e.g. "2 1=3 4"); '
        "u = undo the last ranking, s = skip, q = quit")
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")     # all but tab and newline


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("samples", help="samples file written by reward.py (JSON Lines)")
    p.add_argument("--out", required=True, help="rankings file to append to; prompts already in it are skipped")
    p.add_argument("--name", default=None, help="the rater's name, recorded as human:NAME (default: the login name)")
    args = p.parse_args(argv)
    if args.name is None:
        try:
            args.name = getpass.getuser()
        except (KeyError, OSError):          # no login name in a bare container
            args.name = "anonymous"
    if not args.name.strip() or CONTROL.search(args.name):
        p.error("--name must be a non-empty name on one line")
    return args


def parse_ranking(line, k):
    """(ranks, None) for a ranking line over answers 1..k, or (None, what is wrong). Groups
    are separated by spaces and tied answers joined by "="; "2 1=3 4" gives ranks
    [1, 0, 1, 2] (answer 2 has rank 0, answers 1 and 3 rank 1, answer 4 rank 2)."""
    ranks = [None] * k
    groups = re.sub(r"\s*=\s*", "=", line.strip()).split()
    for rank, group in enumerate(groups):
        for item in group.split("="):
            if not item.isdecimal():
                return None, f"{item or '='!r} is not an answer number (1 to {k})"
            number = int(item)
            if not 1 <= number <= k:
                return None, f"there is no answer {number}: the answers are 1 to {k}"
            if ranks[number - 1] is not None:
                return None, f"answer {number} appears twice: rank each answer once"
            ranks[number - 1] = rank
    missing = [str(i + 1) for i, r in enumerate(ranks) if r is None]
    if missing:
        return None, f"answer{'s' * (len(missing) > 1)} {', '.join(missing)} missing: rank every answer once"
    return ranks, None


def format_ranking(ranks):
    """The ranking line of these ranks, the one parse_ranking reads back: [1, 0, 1, 2] ->
    "2 1=3 4"."""
    return " ".join("=".join(str(i + 1) for i, r in enumerate(ranks) if r == level) for level in sorted(set(ranks)))


def shown(text):
    """Text safe to print to a terminal: control characters (an answer may hold escape
    sequences that would repaint the screen) as \\xNN, continuation lines indented."""
    text = CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
    return text.replace("\n", "\n    ") if text else "(empty)"


def show(sample, position, total):
    """Print one prompt: its place, the conversation, then the answers numbered from 1."""
    print(f"\n=== prompt {position} of {total}" + (f" ({sample['category']})" if sample["category"] else "") + " ===")
    for m in sample["messages"]:
        print(f"{m['role']}: {shown(m['content'])}")
    for i, (answer, ended) in enumerate(zip(sample["answers"], sample["ended"]), 1):
        print(f"--- answer {i}{'' if ended else ' (cut at the token limit)'}:\n    {shown(answer)}")


def read_command(k, interactive):
    """("rank", ranks), ("s" | "u" | "q", None) from the next lines of stdin: a bad ranking
    is answered with one line and the next line read. k = None when every prompt is ranked:
    then only undo is left, and any other line quits."""
    while True:
        if interactive:
            print("rank> ", end="", flush=True)
        line = sys.stdin.readline()
        command = line.strip().lower()
        if not line or command == "q":                # "" is the end of input
            return "q", None
        if command in ("s", "u"):
            return command, None
        if command in ("?", "h", "help"):
            print(HELP)
            continue
        if k is None:
            return "q", None
        ranks, problem = parse_ranking(line, k)
        if not problem:
            return "rank", ranks
        print(f"({problem})")


def main(argv=None):
    args = parse_args(argv)
    samples = read_samples(args.samples)
    rater = f"human:{args.name}"
    # 1. resume: the prompts already ranked in --out (by anyone) are not asked again
    done = {r["prompt_id"] for r in resume_rankings(args.out)}
    todo = [(i, s) for i, s in enumerate(samples, 1) if s["prompt_id"] not in done]
    print(f"{len(samples) - len(todo)} of {len(samples)} prompts already ranked in {args.out}; "
          f"{len(todo)} to rank\n{HELP}")
    interactive = sys.stdin.isatty()
    ranked = []                           # indices into todo ranked in this session, for undo
    at = 0
    while True:
        # 2. show the next prompt (or, past the last, offer undo) and read a ranking or command
        if at < len(todo):
            position, sample = todo[at]
            show(sample, position, len(samples))
        elif ranked:
            print("\n(every prompt is done: u = undo the last ranking, q or end of input = quit)")
        else:
            break
        command, ranks = read_command(len(sample["answers"]) if at < len(todo) else None, interactive)
        # 3. act: a ranking is appended (and fsynced) at once; undo rewrites the file without it
        if command == "q" or (command == "s" and at == len(todo)):
            break
        if command == "s":
            print("(skipped)")
            at += 1
        elif command == "u" and not ranked:
            print("(nothing ranked in this session to undo)")
        elif command == "u":
            at = ranked.pop()
            if undo_ranking(args.out, todo[at][1]["prompt_id"]) is None:
                raise StageError(f"the ranking of prompt {todo[at][1]['prompt_id']} is no longer in "
                                 f"{args.out}: was the file changed meanwhile?")
            print(f"(undone: prompt {todo[at][0]} of {len(samples)} again)")
        else:
            append_ranking(args.out, ranking(sample, ranks, rater))
            print(f"(ranked {format_ranking(ranks)})")
            ranked.append(at)
            at += 1
    print(f"\nranked {len(ranked)} prompt{'s' * (len(ranked) != 1)} in this session; "
          f"the rankings are in {args.out}")


if __name__ == "__main__":
    run_main(main)
