#!/usr/bin/env bash
# Installs everything the tests need and runs the whole suite: Python packages into ./.venv (the CPU
# build of PyTorch), and, as root on Debian/Ubuntu, Krita, Xvfb and Krita's pyzmq/msgpack for the
# real-Krita test. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
DEBIAN_PACKAGES="krita xvfb python3-zmq python3-msgpack"
if ! dpkg -s $DEBIAN_PACKAGES >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq $DEBIAN_PACKAGES >/dev/null
  else
    echo "note: the real-Krita test needs: sudo apt-get install $DEBIAN_PACKAGES" >&2
  fi
fi
"${PYTHON:-python3}" -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q "torch==2.13.0"
.venv/bin/pip install -q -e ".[test,cluster]"
.venv/bin/ruff check .
exec .venv/bin/python -m pytest "$@"
