"""Fetch into the cache the registry files the tests read, so that pytest never touches the
network. ./test.sh runs this before pytest."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bpe  # noqa: E402
from common import run_main  # noqa: E402


def main():
    print(f"GPT-2 ranks: {bpe.gpt2_ranks_path()}")


if __name__ == "__main__":
    run_main(main)
