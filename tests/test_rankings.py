"""rankings.py and rate.py: the pairs a ranking trains on, one clear file:line for each bad
record, the importers (our pairs and HH-RLHF's transcripts) on worked examples, and the
terminal rater driven by scripted keystrokes: ties, a bad line, undo, skip, quit, resume, a
line cut short by a kill, and atomic writes that leave the old file whole."""

import gzip
import hashlib
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

import rankings
import rate
from common import StageError, run_main
from rankings import (append_ranking, check_ranking, import_pairs, import_preferences, prompt_id_of,
                      read_rankings, read_samples, resume_rankings, untied_pairs, write_rankings)

ROOT = Path(__file__).resolve().parent.parent
TIME = "2025-01-31T12:00:00Z"


def sample(pid, answers, category="compare", ended=None):
    return {"prompt_id": pid, "messages": [{"role": "user", "content": f"question {pid}?"}],
            "category": category, "split": "rm_train", "answers": answers,
            "ended": ended or [True] * len(answers)}


def good_ranking(pid="p1", answers=("a", "b"), ranks=(0, 1)):
    return rankings.ranking(sample(pid, list(answers)), ranks, "human:ada", TIME)


def write_lines(path, lines):
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def one_line_error(call, *args):
    """The StageError message of call(*args), checked to be one line."""
    with pytest.raises(StageError) as e:
        call(*args)
    message = str(e.value)
    assert "\n" not in message
    return message


# ----------------------------------------------------------------------------- pairs and records

def test_untied_pairs_worked_example():
    # ranks [1, 0, 2, 0]: answers 1 and 3 tie for best, then 0, then 2
    assert untied_pairs([1, 0, 2, 0]) == [(0, 2), (1, 0), (1, 2), (3, 0), (3, 2)]
    assert untied_pairs([0, 1, 2]) == [(0, 1), (0, 2), (1, 2)]      # no ties: K(K-1)/2 pairs
    assert untied_pairs([2, 2]) == []                                # all tied: nothing to learn
    assert untied_pairs([0, 1]) == [(0, 1)] and untied_pairs([1, 0]) == [(1, 0)]


def test_a_good_ranking_and_an_all_tied_one_pass_the_check():
    assert check_ranking(good_ranking()) is None
    tied = good_ranking(answers=("a", "b", "c"), ranks=(0, 0, 0))
    assert check_ranking(tied) is None and untied_pairs(tied["ranks"]) == []
    assert check_ranking({**good_ranking(), "rater": "simulated"}) is None
    assert check_ranking({**good_ranking(), "time": rankings.now_utc()}) is None


BAD_RECORDS = [
    ("{not json", "is not JSON"),
    ([1, 2], "not an object"),
    ({k: v for k, v in good_ranking().items() if k != "ranks"}, "no ranks"),
    ({**good_ranking(), "ranks": [0, 1, 2]}, "3 ranks for 2 answers"),
    ({**good_ranking(), "ranks": [0, -1]}, "negative rank"),
    ({**good_ranking(), "ranks": [0, 1.5]}, "not a list of integers"),
    ({**good_ranking(), "ranks": [0, "1"]}, "not a list of integers"),
    ({**good_ranking(), "ranks": [True, False]}, "not a list of integers"),
    ({**good_ranking(), "answers": ["only"], "ranks": [0]}, "1 answer: a ranking needs at least 2"),
    ({**good_ranking(), "answers": ["a", 2]}, "answers is not a list of strings"),
    ({**good_ranking(), "messages": [{"role": "robot", "content": "x"}]}, "unknown role 'robot'"),
    ({**good_ranking(), "messages": []}, "messages is not a conversation"),
    ({**good_ranking(), "rater": "bob"}, "rater 'bob' is not"),
    ({**good_ranking(), "time": "yesterday"}, "not an ISO-8601 time"),
    ({**good_ranking(), "prompt_id": 7}, "prompt_id is not a non-empty string"),
    ({**good_ranking(), "category": None}, "category is not a string"),
]


@pytest.mark.parametrize("line,expected", BAD_RECORDS, ids=[e for _, e in BAD_RECORDS])
def test_a_bad_ranking_is_one_line_with_file_and_line(tmp_path, line, expected):
    path = write_lines(tmp_path / "r.jsonl", [good_ranking(), line, good_ranking("p2")])
    message = one_line_error(read_rankings, path)
    assert message.startswith(f"{path}:2") and expected in message, message


def test_read_rankings_refuses_a_missing_or_empty_file(tmp_path):
    assert "no rankings file at" in one_line_error(read_rankings, tmp_path / "none.jsonl")
    assert "holds no ranking" in one_line_error(read_rankings, write_lines(tmp_path / "e.jsonl", ["", "  "]))
    (tmp_path / "bin.jsonl").write_bytes(b'{"a": "\xff"}\n')
    assert "is not UTF-8" in one_line_error(read_rankings, tmp_path / "bin.jsonl")


def test_read_rankings_against_the_samples(tmp_path):
    samples = {s["prompt_id"]: s for s in (sample("p1", ["a", "b"]), sample("p2", ["x", "y", "z"]))}
    ok = [good_ranking("p1"), good_ranking("p2", ("x", "y", "z"), (2, 0, 1))]
    assert read_rankings(write_lines(tmp_path / "ok.jsonl", ok), samples) == ok
    path = write_lines(tmp_path / "stranger.jsonl", [ok[0], good_ranking("p9")])
    message = one_line_error(read_rankings, path, samples)
    assert message.startswith(f"{path}:2: prompt_id p9 is not in the samples")
    for answers in (("b", "a"), ("a", "b "), ("a", "b", "c")):      # reordered, changed, one more
        path = write_lines(tmp_path / "other.jsonl", [good_ranking("p1", answers, range(len(answers)))])
        message = one_line_error(read_rankings, path, samples)
        assert message.startswith(f"{path}:1: not a ranking of its answers"), message


def test_read_samples_checks_each_line(tmp_path):
    good = [sample("p1", ["a", "b"]), sample("p2", ["c", "d"])]
    assert read_samples(write_lines(tmp_path / "s.jsonl", good)) == good
    for bad, expected in [({**good[1], "ended": [True]}, "1 ended flags for 2 answers"),
                          ({**good[1], "ended": [1, 0]}, "ended is not a list of true/false"),
                          ({**good[1], "answers": ["c"], "ended": [True]}, "at least 2"),
                          ({**good[1], "prompt_id": "p1"}, "prompt_id p1 is already on line 1"),
                          ({k: v for k, v in good[1].items() if k != "split"}, "no split")]:
        path = write_lines(tmp_path / "bad.jsonl", [good[0], bad])
        message = one_line_error(read_samples, path)
        assert message.startswith(f"{path}:2: ") and expected in message, message
    # samples are written atomically: a line cut short is damage, not a kill to forgive
    path = tmp_path / "cut.jsonl"
    path.write_text(json.dumps(good[0]) + "\n" + json.dumps(good[1])[:30])
    assert one_line_error(read_samples, path).startswith(f"{path}:2 is not JSON")
    assert "run reward.py's sampling first" in one_line_error(read_samples, tmp_path / "none.jsonl")


# ----------------------------------------------------------------------------- writing

def test_write_rankings_leaves_the_old_file_when_a_write_fails(tmp_path):
    path = tmp_path / "r.jsonl"
    old = [good_ranking("p1"), good_ranking("p2")]
    write_rankings(path, old)
    before = path.read_bytes()
    with pytest.raises(ValueError, match="not a ranking record"):        # an invalid record midway
        write_rankings(path, [good_ranking("p3"), {**good_ranking("p4"), "ranks": [0]}])

    def interrupted():
        yield good_ranking("p5")
        raise KeyboardInterrupt                                          # Ctrl-C while writing
    with pytest.raises(KeyboardInterrupt):
        write_rankings(path, interrupted())
    assert path.read_bytes() == before and read_rankings(path) == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.jsonl"]     # no temporary left


def test_append_ranking_adds_whole_lines_and_text_round_trips(tmp_path):
    path = tmp_path / "sub" / "r.jsonl"
    strange = good_ranking("p1", ("héllo €\n\"x\"\r", "half \ud83d of a pair"))  # a lone surrogate
    append_ranking(path, strange)
    path.write_bytes(path.read_bytes().rstrip(b"\n"))        # a last line without its newline...
    append_ranking(path, good_ranking("p2"))                 # ...does not run into the next one
    assert read_rankings(path) == [strange, good_ranking("p2")]
    with pytest.raises(ValueError):
        append_ranking(path, {**good_ranking("p3"), "rater": ""})
    assert len(read_rankings(path)) == 2


def test_a_line_cut_by_a_kill_is_ignored_with_a_warning_and_dropped_on_resume(tmp_path, capsys):
    path = tmp_path / "r.jsonl"
    write_rankings(path, [good_ranking("p1")])
    whole = path.read_bytes()
    path.write_bytes(whole + json.dumps(good_ranking("p2")).encode()[:40])
    assert read_rankings(path) == [good_ranking("p1")]
    assert f"warning: {path}:2 is cut short" in capsys.readouterr().err
    assert resume_rankings(path) == [good_ranking("p1")]
    assert path.read_bytes() == whole                        # rewritten without the cut line
    # a bad line that is not the last is no kill: an error
    path.write_bytes(whole + b'{"prompt_id": \n' + whole)
    assert one_line_error(read_rankings, path).startswith(f"{path}:2 is not JSON")
    assert resume_rankings(tmp_path / "none.jsonl") == []


# ----------------------------------------------------------------------------- importers

HH_PREFIX = "\n\nHuman: What is 2 + 3?\n\nAssistant: 5.\n\nHuman: And times 4?"


def test_import_preferences_both_forms_worked_example(tmp_path):
    path = write_lines(tmp_path / "prefs.jsonl", [
        {"prompt": "Which is larger, 7 or 3?", "chosen": "7", "rejected": "3"},
        {"chosen": HH_PREFIX + "\n\nAssistant:  20 \n", "rejected": HH_PREFIX + "\n\nAssistant: 9"},
        "",
        {"prompt": "Say hi", "chosen": "hi", "rejected": "hi"},
    ])
    got = import_preferences(path)
    assert [r["rater"] for r in got] == ["import:prefs.jsonl"] * 3
    assert all(check_ranking(r) is None for r in got)
    first, hh, same = got
    assert first["messages"] == [{"role": "user", "content": "Which is larger, 7 or 3?"}]
    assert (first["answers"], first["ranks"], first["category"]) == (["7", "3"], [0, 1], "")
    assert first["prompt_id"] == hashlib.sha256(b"Which is larger, 7 or 3?").hexdigest()[:16]
    assert hh["messages"] == [{"role": "user", "content": "What is 2 + 3?"},
                              {"role": "assistant", "content": "5."},
                              {"role": "user", "content": "And times 4?"}]
    assert (hh["answers"], hh["ranks"]) == (["20", "9"], [0, 1])
    assert hh["prompt_id"] == prompt_id_of(hh["messages"]) != first["prompt_id"]
    assert same["ranks"] == [0, 0]                      # equal texts cannot be preferred: a tie
    assert [{**r, "time": ""} for r in import_pairs(path)] == [{**r, "time": ""} for r in got]
    # a rankings file written from an import reads back as it was
    write_rankings(tmp_path / "r.jsonl", got)
    assert read_rankings(tmp_path / "r.jsonl") == got


def test_import_reads_hh_rlhfs_gzipped_files(tmp_path):
    path = tmp_path / "train.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write(json.dumps({"chosen": "\n\nHuman: hi\n\nAssistant: hello",
                            "rejected": "\n\nHuman: hi\n\nAssistant: go away"}) + "\n")
    [r] = import_preferences(path)
    assert (r["messages"], r["answers"], r["rater"]) == ([{"role": "user", "content": "hi"}],
                                                         ["hello", "go away"], "import:train.jsonl.gz")


@pytest.mark.parametrize("line,expected", [
    ({"prompt": "p", "rejected": "r"}, 'no "chosen"'),
    ({"prompt": "p", "chosen": "c"}, 'no "rejected"'),
    ({"rejected": "\n\nHuman: a\n\nAssistant: b"}, 'no "chosen"'),
    ({"prompt": "p", "chosen": 1, "rejected": "r"}, '"chosen" is not a string'),
    ({"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: A\n\nAssistant: b"},
     "chosen and rejected differ before their last assistant turn"),
    ({"chosen": "\n\nHuman: a", "rejected": "\n\nHuman: a"}, 'no "\\n\\nAssistant:" turn'),
    ({"chosen": "Human: a\n\nAssistant: b", "rejected": "Human: a\n\nAssistant: c"}, 'does not start with'),
    ("[1]", "not an object"),
    ("{oops", "is not JSON"),
])
def test_a_bad_preference_is_one_line_with_file_and_line(tmp_path, line, expected):
    path = write_lines(tmp_path / "p.jsonl", [{"prompt": "p", "chosen": "c", "rejected": "r"}, line])
    message = one_line_error(import_preferences, path)
    assert message.startswith(f"{path}:2") and expected in message, message


def test_an_empty_or_missing_preferences_file_is_refused(tmp_path):
    assert "holds no pairs" in one_line_error(import_preferences, write_lines(tmp_path / "e.jsonl", []))
    assert "no preferences file at" in one_line_error(import_preferences, tmp_path / "none.jsonl")


# ----------------------------------------------------------------------------- the terminal rater

def test_parse_ranking_lines():
    assert rate.parse_ranking("2 1=3 4", 4) == ([1, 0, 1, 2], None)
    assert rate.parse_ranking(" 1 = 2 ", 2) == ([0, 0], None)
    assert rate.parse_ranking("2 1", 2) == ([1, 0], None)
    for line, problem in [("1 3", "there is no answer 3"), ("1 1", "answer 1 appears twice"),
                          ("2", "answer 1 missing"), ("", "answers 1, 2 missing"), ("1 x", "'x' is not an answer"),
                          ("1==2", "'=' is not an answer"), ("1 -2", "'-2' is not an answer"),
                          ("1 0", "there is no answer 0")]:
        ranks, got = rate.parse_ranking(line, 2)
        assert ranks is None and problem in got, (line, got)
    for ranks in ([0, 1, 2], [1, 0, 1, 2], [0, 0], [2, 0, 1, 0, 2]):
        assert rate.parse_ranking(rate.format_ranking(ranks), len(ranks))[0] == ranks
    assert rate.format_ranking([1, 0, 1, 2]) == "2 1=3 4"


def rate_in_process(argv, keys, monkeypatch, capsys):
    """(exit status, stdout, stderr) of rate.py with `keys` as its stdin."""
    monkeypatch.setattr(sys, "stdin", io.StringIO(keys))
    code = 0
    try:
        run_main(lambda: rate.main([str(a) for a in argv]))
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


SAMPLES = [sample("pA", ["four", "five"]), sample("pB", ["x", "y", "z"], ended=[True, False, True]),
           sample("pC", ["c1", "c2"], category=""), sample("pD", ["d1", "d2"])]


def test_rate_tie_bad_line_undo_skip_quit_then_resume(tmp_path, monkeypatch, capsys):
    samples = write_lines(tmp_path / "samples.jsonl", SAMPLES)
    out = tmp_path / "rankings.jsonl"
    argv = [samples, "--out", out, "--name", "ada"]
    # A: a bad line, then 2 best; B: 1 and 3 tied; C: undo (B again), B re-ranked; C: skip; D: quit
    code, shown, err = rate_in_process(argv, "1 3\n2 1\n1=3 2\nu\n3 2 1\ns\nq\nnever read\n", monkeypatch, capsys)
    assert code == 0 and err == ""
    assert shown.startswith("0 of 4 prompts already ranked")
    assert "(there is no answer 3: the answers are 1 to 2)\n" in shown
    assert shown.count("=== prompt 1 of 4 (compare) ===") == 1
    assert shown.count("=== prompt 2 of 4 (compare) ===") == 2            # shown again after the undo
    assert "--- answer 2 (cut at the token limit):\n    y" in shown and "user: question pB?" in shown
    assert "(ranked 1=3 2)" in shown and "(undone: prompt 2 of 4 again)" in shown and "(ranked 3 2 1)" in shown
    assert "=== prompt 3 of 4 ===" in shown and "(skipped)" in shown and "=== prompt 4 of 4" in shown
    assert shown.rstrip().endswith(f"ranked 2 prompts in this session; the rankings are in {out}")
    first = read_rankings(out, {s["prompt_id"]: s for s in SAMPLES})
    assert [(r["prompt_id"], r["ranks"]) for r in first] == [("pA", [1, 0]), ("pB", [2, 1, 0])]
    assert {r["rater"] for r in first} == {"human:ada"} and all(r["split"] == "rm_train" for r in first)
    # the second run asks only for the prompts not yet ranked (C, D), the file holds each once
    code, shown, err = rate_in_process(argv, "1 2\n2=1\n", monkeypatch, capsys)
    assert code == 0 and err == ""
    assert shown.startswith("2 of 4 prompts already ranked") and "=== prompt 1 of 4" not in shown
    assert "=== prompt 2 of 4" not in shown and "=== prompt 3 of 4" in shown and "=== prompt 4 of 4" in shown
    final = read_rankings(out)
    assert final[:2] == first
    assert [(r["prompt_id"], r["ranks"]) for r in final] == [("pA", [1, 0]), ("pB", [2, 1, 0]),
                                                            ("pC", [0, 1]), ("pD", [0, 0])]
    code, shown, _ = rate_in_process(argv, "", monkeypatch, capsys)
    assert code == 0 and shown.startswith("4 of 4 prompts already ranked in") and "===" not in shown


def test_rate_undo_after_the_last_prompt_and_nothing_to_undo(tmp_path, monkeypatch, capsys):
    samples = write_lines(tmp_path / "samples.jsonl", SAMPLES[:2])
    out = tmp_path / "rankings.jsonl"
    code, shown, _ = rate_in_process([samples, "--out", out], "u\n1 2\n2 1 3\nu\n1 2 3\n", monkeypatch, capsys)
    assert code == 0 and "(nothing ranked in this session to undo)" in shown
    assert "(every prompt is done: u = undo" in shown and "(undone: prompt 2 of 2 again)" in shown
    assert [r["ranks"] for r in read_rankings(out)] == [[0, 1], [0, 1, 2]]
    assert read_rankings(out)[0]["rater"].startswith("human:")


def test_rate_resumes_after_a_kill_mid_write(tmp_path, monkeypatch, capsys):
    samples = write_lines(tmp_path / "samples.jsonl", SAMPLES[:3])
    out = tmp_path / "rankings.jsonl"
    done = rankings.ranking(SAMPLES[0], [0, 1], "human:ada")
    out.write_text(json.dumps(done) + "\n" + json.dumps(rankings.ranking(SAMPLES[1], [0, 1, 2], "human:ada"))[:50])
    code, shown, err = rate_in_process([samples, "--out", out, "--name", "ada"], "3 2 1\n2 1\n", monkeypatch, capsys)
    assert code == 0 and err == f"warning: {out}:2 is cut short (a write stopped halfway); ignored it\n"
    assert shown.startswith("1 of 3 prompts already ranked") and "=== prompt 2 of 3" in shown
    assert [(r["prompt_id"], r["ranks"]) for r in read_rankings(out)] == [("pA", [0, 1]), ("pB", [2, 1, 0]),
                                                                         ("pC", [1, 0])]
    assert capsys.readouterr().err == ""                       # the cut line is gone from the file


def test_rate_shows_control_characters_escaped(tmp_path, monkeypatch, capsys):
    samples = write_lines(tmp_path / "samples.jsonl", [sample("pE", ["\x1b[2Jcleared\nline two", ""])])
    code, shown, _ = rate_in_process([samples, "--out", tmp_path / "r.jsonl"], "q\n", monkeypatch, capsys)
    assert code == 0 and "\x1b" not in shown
    assert "    \\x1b[2Jcleared\n    line two" in shown and "(empty)" in shown


def test_rate_bad_input_is_one_line_and_exit_1(tmp_path, monkeypatch, capsys):
    argv = [tmp_path / "none.jsonl", "--out", tmp_path / "r.jsonl"]
    code, shown, err = rate_in_process(argv, "", monkeypatch, capsys)
    assert code == 1 and shown == "" and err.count("\n") == 1 and "no samples file at" in err
    samples = write_lines(tmp_path / "samples.jsonl", SAMPLES[:1])
    out = write_lines(tmp_path / "r.jsonl", [{**good_ranking(), "ranks": [0]}])
    code, shown, err = rate_in_process([samples, "--out", out], "1 2\n", monkeypatch, capsys)
    assert code == 1 and err == f"error: {out}:1: 1 ranks for 2 answers: give one rank per answer\n"
    assert out.read_text().count("\n") == 1                                 # left as it was
    with pytest.raises(SystemExit) as e:
        rate.parse_args([str(samples), "--out", str(out), "--name", " "])
    assert e.value.code == 2
    with pytest.raises(SystemExit):
        rate.parse_args([str(samples)])                                       # --out is required


def test_rate_through_a_real_pipe(tmp_path):
    samples = write_lines(tmp_path / "samples.jsonl", SAMPLES[:2])
    out = tmp_path / "rankings.jsonl"
    proc = subprocess.run([sys.executable, "rate.py", str(samples), "--out", str(out), "--name", "bo"],
                          input="2 1\n3=1 2\n", cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "rank> " not in proc.stdout                         # no prompt: stdin is no terminal
    assert [(r["ranks"], r["rater"]) for r in read_rankings(out)] == [([1, 0], "human:bo"), ([0, 1, 0], "human:bo")]
