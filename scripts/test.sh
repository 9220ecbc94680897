#!/usr/bin/env bash
# The test command (after scripts/setup.sh): the whole suite, GPU tests skip cleanly without a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python -m pytest -q "$@"
