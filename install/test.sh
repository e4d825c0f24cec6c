#!/usr/bin/env bash
# Installs everything the tests need into ./.venv (CPU build of PyTorch) and runs the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
"${PYTHON:-python3}" -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q "torch==2.13.0"
.venv/bin/pip install -q -e ".[test]"
.venv/bin/ruff check .
exec .venv/bin/python -m pytest "$@"
