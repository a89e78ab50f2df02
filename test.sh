#!/usr/bin/env bash
# The test suite: CPU-only and offline. Sets up .venv on first use, fetches the registry files
# the tests need into the cache before pytest starts (pytest itself never uses the network),
# then runs pytest. Extra arguments go to pytest, e.g. `./test.sh -k dedup`.
source "$(dirname "$0")/env.sh"
ensure_venv requirements.txt requirements-dev.txt
.venv/bin/python tests/fetch.py

exec .venv/bin/python -m pytest "$@"
