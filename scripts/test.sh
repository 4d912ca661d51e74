#!/usr/bin/env bash
# Install everything into .venv and run the whole test suite.
# Extra arguments go to pytest (e.g. -k sse, -x).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh test
exec .venv/bin/python -m pytest "$@"
