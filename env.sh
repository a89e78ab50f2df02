# Sourced by run.sh and test.sh: make .venv and install the pinned requirements once.
# A stamp named after the requirement files' hash makes a second run skip pip entirely;
# editing a requirements file changes the hash and installs again.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

ensure_venv() {   # usage: ensure_venv requirements.txt [more files ...]
    local stamp
    stamp=".venv/.installed-$(cat "$@" | sha256sum | cut -c1-16)"
    if [ ! -x .venv/bin/python ]; then
        echo "creating .venv with ${PYTHON:-python3} ($(${PYTHON:-python3} --version))"
        "${PYTHON:-python3}" -m venv .venv
    fi
    if [ ! -f "$stamp" ]; then
        echo "installing $* into .venv (first run only)"
        for f in "$@"; do
            .venv/bin/python -m pip install --disable-pip-version-check --quiet -r "$f"
        done
        touch "$stamp"
    fi
}
