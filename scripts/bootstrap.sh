#!/usr/bin/env bash
# Create .venv with Python 3.12+ and install the project (Rust extension
# included, built by maturin) with its development extras.
# Used by `make install`; safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

find_python() {
    local candidates=("${PYTHON:-}" python3.13 python3.12)
    # pyenv keeps versions that are installed but not on PATH.
    if [ -n "${PYENV_ROOT:-}" ] || [ -d "$HOME/.pyenv" ]; then
        candidates+=("${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.1[2-9]*/bin/python3)
    fi
    for candidate in "${candidates[@]}"; do
        [ -n "$candidate" ] || continue
        if "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 12))' >/dev/null 2>&1; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}

if [ ! -x .venv/bin/python ]; then
    python=$(find_python) || { echo "error: Python 3.12 or newer is needed (set PYTHON=/path/to/python3.12)" >&2; exit 1; }
    echo "creating .venv with $("$python" --version) ($python)"
    "$python" -m venv .venv
fi
# Quiet pip, but say what is happening: the whole install takes a minute or
# two and would otherwise look stuck.
step() { echo "==> $* ($(date +%H:%M:%S))"; }
step "upgrading pip in .venv"
.venv/bin/python -m pip install --quiet --upgrade pip
step "installing agentmark-gw and its development tools; building the Rust extension (cargo, via maturin) takes a minute or two"
.venv/bin/python -m pip install --quiet -e '.[dev]'
echo "installed: $(.venv/bin/python -c 'import agentmark_gw._core, sys; print("agentmark-gw with its Rust extension on Python", sys.version.split()[0])')"
