#!/usr/bin/env bash
# Installs the server into ./.venv on first use, then starts it; arguments go to `dragon serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/dragon ]; then
  "${PYTHON:-python3}" -m venv .venv
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e .
fi
exec .venv/bin/dragon serve "$@"
