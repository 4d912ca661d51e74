#!/usr/bin/env bash
# Create .venv (if missing) and install igllama into it with the given extra.
# Usage: scripts/setup.sh [demo|test]   (sourced by serve-demo.sh and test.sh)
# The first install compiles llama-cpp-python (about 5 minutes on 2 cores);
# pip caches the wheel, so later installs take seconds.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
extra="${1:-demo}"
python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "creating .venv with $($python --version)" >&2
  "$python" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
echo "installing igllama[$extra] into .venv (the first time compiles llama.cpp: ~5 minutes)" >&2
.venv/bin/python -m pip install --quiet -e ".[$extra]"
