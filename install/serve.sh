#!/usr/bin/env bash
# Installs the server into ./.venv on first use, then starts it; arguments go to `dragon serve`.
# An existing ./.venv is used as it is: its PyTorch is never replaced behind your back.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/dragon ]; then
  "${PYTHON:-python3}" -m venv .venv
  .venv/bin/pip install -qq --upgrade pip
  .venv/bin/pip install -qq -e .
fi
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 \
    && ! .venv/bin/python -c "import sys, torch; sys.exit(torch.version.cuda is None)" 2>/dev/null; then
  echo "note: this computer has an NVIDIA GPU but ./.venv holds a PyTorch without CUDA (install/test.sh" \
       "installs the CPU build into a new .venv); for the GPU run: .venv/bin/pip install --force-reinstall torch" >&2
fi
exec .venv/bin/dragon serve "$@"
