#!/usr/bin/env bash
# Installs everything the tests need and runs the whole suite: Python packages into ./.venv (the CPU
# build of PyTorch when .venv has none; a PyTorch that install/serve.sh put there is kept), and, as
# root on Debian/Ubuntu, Krita, Xvfb and Krita's pyzmq/msgpack for the real-Krita test. Installers
# speak only when something fails. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
DEBIAN_PACKAGES="krita xvfb python3-zmq python3-msgpack"
if ! dpkg -s $DEBIAN_PACKAGES >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    APT_LOG="$(mktemp)"
    if ! { apt-get update -qq && apt-get install -y -qq $DEBIAN_PACKAGES; } >"$APT_LOG" 2>&1; then
      cat "$APT_LOG" >&2
      exit 1
    fi
    rm -f "$APT_LOG"
  else
    echo "note: the real-Krita test needs: sudo apt-get install $DEBIAN_PACKAGES" >&2
  fi
fi
"${PYTHON:-python3}" -m venv .venv
.venv/bin/pip install -qq --upgrade pip
# A .venv made by install/serve.sh keeps its PyTorch (a CUDA build runs the tests too); a new one gets the CPU build.
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  .venv/bin/pip install -qq "torch==2.13.0"
fi
.venv/bin/pip install -qq -e ".[test,cluster]"
.venv/bin/ruff check .
# One math thread per process: PyTorch's default threads spin and slow a busy 2-core machine many times over.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-1}"
exec .venv/bin/python -m pytest "$@"
