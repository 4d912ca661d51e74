#!/usr/bin/env bash
# Install everything into .venv and serve the bundled demo model on http://127.0.0.1:8080.
# Extra arguments go to `igllama api` (e.g. --port 3000).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh demo
exec .venv/bin/igllama api "$@"
