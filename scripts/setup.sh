#!/usr/bin/env bash
# Create .venv (if missing) and install igllama into it with the given extra.
# Usage: scripts/setup.sh [demo|test]   (run by serve-demo.sh and test.sh)
#
# The first install compiles llama.cpp inside llama-cpp-python: 5-15 minutes
# on 2 cores. pip caches the wheel it builds, so a later install takes seconds,
# and once an extra is installed the script skips pip altogether until
# pyproject.toml changes: a copy of the pyproject.toml it was installed from
# is kept in .venv/igllama-installed-EXTRA.toml.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
extra="${1:-demo}"
python="${PYTHON:-python3}"
stamp=".venv/igllama-installed-$extra.toml"

if [ -x .venv/bin/python ] && cmp -s pyproject.toml "$stamp"; then
  exit 0  # already installed from this very pyproject.toml
fi
if [ ! -x .venv/bin/python ]; then
  echo "creating .venv with $($python --version)" >&2
  "$python" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
echo "installing igllama[$extra] into .venv; the first time this compiles llama.cpp, 5-15 minutes on 2 cores" >&2
# Not --quiet: pip's own progress shows the build is alive (a spinner on a
# terminal; without one, a "still running..." line each minute).
.venv/bin/python -m pip install -e ".[$extra]"
cp pyproject.toml "$stamp"
