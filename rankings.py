"""Rankings: the one file format in which every rater of stage 5 says which answers are better,
and the readers, writers and importers around it.

The SFT model answers each prompt K times (reward.py writes these *samples*); a rater orders
the K answers (a *ranking*); the reward model learns, from every pair of differently ranked
answers, to score the better one higher (Bradley-Terry: P(a beats b) = sigmoid(r(a) - r(b)),
so the loss of one pair is -log sigmoid(r_winner - r_loser)). Three kinds of rater write the
same format, so reward.py reads one thing whoever ranked:

    simulated       reward.py's rater, from the task library's checkers (rater "simulated")
    a person        rate.py in the terminal (rater "human:NAME")
    an import       someone else's preferences: pairs of our own or Anthropic's HH-RLHF
                    (import_preferences; rater "import:FILENAME")

Samples file (written by reward.py, read by rate.py), JSON Lines, one line per prompt:

    {"prompt_id": str, "messages": [{"role": "user"|"system"|"assistant", "content": str}, ...],
     "category": str, "split": str, "answers": [str, ...], "ended": [bool, ...]}

    messages  the conversation before the answer (for the task library, one user turn)
    answers   K >= 2 answers to it; ended[i] says whether answer i stopped by itself (<|end|>)
              rather than at the token limit

Rankings file, JSON Lines, one line per ranked prompt:

    {"prompt_id": str, "messages": [...], "answers": [str, ...], "ranks": [int, ...],
     "rater": str, "time": str, "category": str, "split": str}

    ranks     one int >= 0 per answer; lower is better and equal ranks are ties: [1, 0, 2, 0]
              says answers 1 and 3 are tied best, then answer 0, then answer 2. All tied is
              allowed (a rater who sees no difference) and yields no pair to learn from.
    rater     "simulated", "human:NAME" or "import:FILENAME"
    time      when it was ranked, ISO-8601 in UTC ("2025-01-31T12:00:00Z")
    category  optional ("" = unknown); split optional (an import has none)

A rankings file may hold one prompt more than once (two raters, or a person and the
simulated rater): each line is one rater's judgement. A prompt's ranking carries its
messages and answers, so a rankings file is complete without its samples file; given the
samples (read_rankings(path, samples)), each ranking is checked to rank exactly the
answers sampled for its prompt.

Appending (append_ranking) writes one whole line per ranking and fsyncs it, so a rater stopped
halfway loses nothing already ranked. A kill in the middle of a write can leave the last line
cut short (no newline, not JSON): readers ignore it with a warning, and resume_rankings
rewrites the file without it before rate.py appends again. Every other write is atomic
(common.atomic_open: a temporary file, then a rename).

References: Bradley and Terry 1952 (paired comparisons); Christiano et al. 2017 and Stiennon
et al. 2020 (reward models from human comparisons); Ouyang et al. 2022 (InstructGPT: K answers
ranked per prompt, all K(K-1)/2 pairs trained on together); Bai et al. 2022 (HH-RLHF, the
transcript format import_preferences reads).

Not included: rater agreement statistics, rankings with more than one answer missing, weights
per pair (InstructGPT's margin), fetching HH-RLHF (give its downloaded .jsonl or .jsonl.gz).
"""

import datetime
import gzip
import hashlib
import json
import os
import re
import sys
from pathlib import Path

from common import StageError, atomic_open
from tokenizer import ROLES
RANKING_FIELDS = ("prompt_id", "messages", "answers", "ranks", "rater", "time")
SAMPLE_FIELDS = ("prompt_id", "messages", "category", "split", "answers", "ended")
HH_ASSISTANT = "\n\nAssistant:"                      # where an HH-RLHF transcript's answer starts


# ----------------------------------------------------------------------------- pairs

def untied_pairs(ranks):
    """[(winner, loser), ...]: every pair of answer indices whose ranks differ, the better
    (lower rank) first; ties give no pair. With K answers and no ties that is K(K-1)/2 pairs,
    the comparisons a Bradley-Terry loss trains on; ranks [1, 0, 2, 0] give
    [(0, 2), (1, 0), (1, 2), (3, 0), (3, 2)]."""
    return [(i, j) for i in range(len(ranks)) for j in range(len(ranks)) if ranks[i] < ranks[j]]


# ----------------------------------------------------------------------------- checks

def now_utc():
    """The time now as the format stores it: ISO-8601, UTC, whole seconds."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def prompt_id_of(messages):
    """A prompt's id from its text: the first 16 hex digits of the sha256 of the user's text
    for a single user turn, else of the conversation as canonical JSON. The same prompt gets
    the same id in every import, so resuming and merging find it."""
    if len(messages) == 1 and messages[0]["role"] == "user":
        text = messages[0]["content"]
    else:
        text = json.dumps(messages, ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def check_messages(messages):
    """The problem with a conversation, or None: a non-empty list of {"role", "content"} with
    a known role and text content."""
    if not isinstance(messages, list) or not messages:
        return 'messages is not a conversation: give [{"role": ..., "content": ...}, ...]'
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("content"), str):
            return f'a message is not {{"role", "content": text}}: {json.dumps(m)[:80]}'
        if m.get("role") not in ROLES:
            return f"unknown role {m.get('role')!r}; use one of {', '.join(ROLES)}"
    return None


def _check_common(record, fields):
    """The problems a ranking and a sample share: an object, with its fields, an id, a
    conversation and at least two answers, each a string."""
    if not isinstance(record, dict):
        return "not an object"
    missing = [f for f in fields if f not in record]
    if missing:
        return f"no {', '.join(missing)}"
    if not isinstance(record["prompt_id"], str) or not record["prompt_id"]:
        return "prompt_id is not a non-empty string"
    problem = check_messages(record["messages"])
    if problem:
        return problem
    answers = record["answers"]
    if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
        return "answers is not a list of strings"
    if len(answers) < 2:
        return f"{len(answers)} answer{'s' * (len(answers) != 1)}: a ranking needs at least 2"
    for field in ("category", "split"):
        if field in record and not isinstance(record[field], str):
            return f"{field} is not a string"
    return None


def check_ranking(record):
    """The problem with one ranking record, or None (see the module docstring's format)."""
    problem = _check_common(record, RANKING_FIELDS)
    if problem:
        return problem
    ranks = record["ranks"]
    # a bool is an int to Python, but true/false is no rank
    if not isinstance(ranks, list) or not all(isinstance(r, int) and not isinstance(r, bool) for r in ranks):
        return "ranks is not a list of integers"
    if any(r < 0 for r in ranks):
        return f"ranks {ranks} holds a negative rank: ranks are integers >= 0, lower is better"
    if len(ranks) != len(record["answers"]):
        return f"{len(ranks)} ranks for {len(record['answers'])} answers: give one rank per answer"
    rater = record["rater"]
    if not isinstance(rater, str) or not (rater == "simulated" or re.fullmatch(r"(human|import):\S.*", rater)):
        return f'rater {rater!r} is not "simulated", "human:NAME" or "import:FILENAME"'
    try:
        datetime.datetime.fromisoformat(record["time"])
    except (TypeError, ValueError):
        return f"time {record['time']!r} is not an ISO-8601 time"
    return None


def check_sample(record):
    """The problem with one samples record, or None: K >= 2 answers, one `ended` flag each."""
    problem = _check_common(record, SAMPLE_FIELDS)
    if problem:
        return problem
    ended = record["ended"]
    if not isinstance(ended, list) or not all(isinstance(e, bool) for e in ended):
        return "ended is not a list of true/false"
    if len(ended) != len(record["answers"]):
        return f"{len(ended)} ended flags for {len(record['answers'])} answers"
    return None


# ----------------------------------------------------------------------------- reading

def _open_text(path):
    """A JSON Lines file for reading; gzip-compressed if its name ends in .gz (HH-RLHF ships
    its splits as .jsonl.gz)."""
    if str(path).endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def _json_lines(path, what, hint, cut_ok=False):
    """([(line number, parsed value), ...] for the non-blank lines of `path`, the number of
    a last line cut short or None). A bad line is one StageError line with file:line; with
    `cut_ok`, a last line without its newline that is not JSON (what a kill during an append
    leaves) is skipped with a warning instead: it was never a whole ranking."""
    values, cut = [], None
    try:
        with _open_text(path) as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    values.append((n, json.loads(line)))
                except json.JSONDecodeError as e:
                    if cut_ok and not line.endswith("\n"):       # only the last line can lack it
                        print(f"warning: {path}:{n} is cut short (a write stopped halfway); ignored it",
                              file=sys.stderr)
                        cut = n
                        break
                    raise StageError(f"{path}:{n} is not JSON ({e.msg}); give one {what} per line") from None
    except UnicodeDecodeError as e:
        raise StageError(f"{path} is not UTF-8 ({e.reason} at byte {e.start} of a line); save it as UTF-8") from None
    except (OSError, EOFError) as e:        # unreadable, or (gzip) a damaged or cut archive
        raise StageError(f"cannot read {path} ({getattr(e, 'strerror', None) or e}); {hint}") from None
    return values, cut


def _read_rankings(path, samples=None):
    """(rankings, the cut last line's number or None): read_rankings' work, without its
    refusal of a missing or empty file."""
    records = []
    lines, cut = _json_lines(path, "ranking", "give a rankings file (rankings.py's format)", cut_ok=True)
    for n, record in lines:
        problem = check_ranking(record)
        if problem:
            raise StageError(f"{path}:{n}: {problem}")
        if samples is not None:
            sample = samples.get(record["prompt_id"])
            if sample is None:
                raise StageError(f"{path}:{n}: prompt_id {record['prompt_id']} is not in the samples; "
                                 f"rank the samples file these rankings were made from")
            if record["answers"] != sample["answers"]:
                raise StageError(f"{path}:{n}: not a ranking of its answers: prompt_id {record['prompt_id']}'s "
                                 f"answers differ from the samples'; rank the samples again")
        records.append(record)
    return records, cut


def read_rankings(path, samples=None):
    """Every ranking in a rankings file, each checked (check_ranking); a bad one stops the
    stage with one line naming file:line. With `samples` ({prompt_id: sample record}), a
    ranking of a prompt not in them, or of answers other than that prompt's samples, is
    refused too: it was made from another samples file."""
    if not Path(path).is_file():
        raise StageError(f"no rankings file at {path}; run rate.py or reward.py's simulated rater first")
    records, _ = _read_rankings(path, samples)
    if not records:
        raise StageError(f"{path} holds no ranking")
    return records


def read_samples(path):
    """The samples, in file order, each checked (check_sample); a bad one, or a prompt_id
    that appears twice, stops the stage with one line naming file:line."""
    if not Path(path).is_file():
        raise StageError(f"no samples file at {path}; run reward.py's sampling first")
    records, seen = [], {}
    for n, record in _json_lines(path, "sample", "run reward.py's sampling again")[0]:
        problem = check_sample(record)
        if problem:
            raise StageError(f"{path}:{n}: {problem}")
        if record["prompt_id"] in seen:
            raise StageError(f"{path}:{n}: prompt_id {record['prompt_id']} is already on line "
                             f"{seen[record['prompt_id']]}")
        seen[record["prompt_id"]] = n
        records.append(record)
    if not records:
        raise StageError(f"{path} holds no samples; run reward.py's sampling again")
    return records


# ----------------------------------------------------------------------------- writing

def ranking(sample, ranks, rater, time=None):
    """The ranking record of `sample` (a samples record, or any dict with prompt_id, messages,
    answers and optionally category and split) with these ranks, by this rater, at `time`
    (default now)."""
    record = {"prompt_id": sample["prompt_id"], "messages": sample["messages"], "answers": sample["answers"],
              "ranks": list(ranks), "rater": rater, "time": time or now_utc(),
              "category": sample.get("category", "")}
    if "split" in sample:
        record["split"] = sample["split"]
    return record


def _line(record):
    """One record as its line; an invalid record is a bug in the caller, never written. Text
    is written as itself, unless it holds a lone surrogate (JSON can spell "\\ud83d", UTF-8
    cannot hold it): then the line is escaped ASCII, which reads back the same."""
    problem = check_ranking(record)
    if problem:
        raise ValueError(f"not a ranking record ({problem}): {json.dumps(record)[:120]}")
    line = json.dumps(record, ensure_ascii=False) + "\n"
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:
        line = json.dumps(record) + "\n"
    return line


def write_rankings(path, records):
    """Write `records` (any iterable) as a rankings file, atomically: if a record is invalid
    or the run is stopped before the end, the old file (or none) stays."""
    with atomic_open(path) as f:
        for record in records:
            f.write(_line(record))


def append_ranking(path, record):
    """Append one ranking as one whole line and fsync it: a rater stopped at any moment keeps
    every ranking appended before. (A last line without its newline, hand-written, gets one
    first, so the two never run together.)"""
    line = _line(record)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as f:
        if f.tell() > 0:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                line = "\n" + line
        f.write(line.encode("utf-8"))
        f.flush()
        os.fsync(f.fileno())


def resume_rankings(path):
    """The rankings already in `path` ([] if there is no file yet), for a rater that goes on
    appending to it. A last line cut short by a kill is ignored with a warning, and the file
    is rewritten without it (atomically), so the next append starts on a line of its own."""
    if not Path(path).exists():
        return []
    records, cut = _read_rankings(path)
    if cut is not None:
        write_rankings(path, records)
    return records


def undo_ranking(path, prompt_id):
    """Remove the last ranking of `prompt_id` from `path`, rewriting the file atomically.
    Returns the removed record (None if there was none)."""
    records, _ = _read_rankings(path)
    last = max((i for i, r in enumerate(records) if r["prompt_id"] == prompt_id), default=None)
    if last is None:
        return None
    removed = records.pop(last)
    write_rankings(path, records)
    return removed


# ----------------------------------------------------------------------------- importers

def parse_hh_transcript(text):
    """An HH-RLHF transcript prefix ("\\n\\nHuman: ...\\n\\nAssistant: ...\\n\\nHuman: ...") as
    messages (Human -> user, Assistant -> assistant, each text stripped), or None if it does
    not start with a Human turn."""
    pieces = re.split(r"\n\n(Human|Assistant):", text)
    if pieces[0].strip() or len(pieces) < 3 or pieces[1] != "Human":
        return None
    roles = {"Human": "user", "Assistant": "assistant"}
    return [{"role": roles[who], "content": said.strip()} for who, said in zip(pieces[1::2], pieces[2::2])]


def _preference(record):
    """(messages, chosen answer, rejected answer) from one line of either form, or a problem
    string: {"prompt", "chosen", "rejected"} (has "prompt"), else HH-RLHF's transcripts."""
    forms = 'give {"prompt", "chosen", "rejected"} or HH-RLHF\'s {"chosen", "rejected"} transcripts'
    if not isinstance(record, dict):
        return f"not an object; {forms}"
    fields = ("prompt", "chosen", "rejected") if "prompt" in record else ("chosen", "rejected")
    for field in fields:
        if field not in record:
            return f'no "{field}"; {forms}'
        if not isinstance(record[field], str):
            return f'"{field}" is not a string'
    if "prompt" in record:
        return [{"role": "user", "content": record["prompt"]}], record["chosen"], record["rejected"]
    # HH-RLHF: both transcripts share the conversation up to the last "\n\nAssistant:"
    (chosen_prefix, sep_c, chosen), (rejected_prefix, sep_r, rejected) = (
        record[f].rpartition(HH_ASSISTANT) for f in ("chosen", "rejected"))
    if not (sep_c and sep_r):
        return 'a transcript has no "\\n\\nAssistant:" turn to rank'
    if chosen_prefix != rejected_prefix:
        return "chosen and rejected differ before their last assistant turn: not two answers to one conversation"
    messages = parse_hh_transcript(chosen_prefix)
    if messages is None:
        return 'the transcript does not start with "\\n\\nHuman:"'
    return messages, chosen.strip(), rejected.strip()


def import_preferences(path):
    """Ranking records from a file of preferred/rejected pairs, one JSON object a line, each
    line in either form:

        {"prompt": str, "chosen": str, "rejected": str}    our own pairs: one user turn
        {"chosen": transcript, "rejected": transcript}      Anthropic's HH-RLHF

    Each becomes answers [chosen, rejected] with ranks [0, 1] (equal texts, which HH-RLHF
    holds a few of, are tied: [0, 0]), rater "import:<file name>", the time now, and the
    prompt_id of its conversation (prompt_id_of). A bad line stops with one file:line line."""
    if not Path(path).is_file():
        raise StageError(f"no preferences file at {path}; give a JSON Lines file of chosen/rejected pairs")
    rater, time = f"import:{Path(path).name}", now_utc()
    out = []
    for n, record in _json_lines(path, "pair", "give the file again")[0]:
        got = _preference(record)
        if isinstance(got, str):
            raise StageError(f"{path}:{n}: {got}")
        messages, chosen, rejected = got
        sample = {"prompt_id": prompt_id_of(messages), "messages": messages, "answers": [chosen, rejected]}
        out.append(ranking(sample, [0, int(chosen != rejected)], rater, time))
    if not out:
        raise StageError(f"{path} holds no pairs")
    return out


import_pairs = import_preferences       # the name for our own {"prompt", "chosen", "rejected"} form
