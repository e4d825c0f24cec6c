"""Start-up cost: the commands that run no model import no PyTorch, diffusers or transformers."""

import socket
import subprocess
import sys

import pytest

HEAVY = ("torch", "diffusers", "transformers")
PROBE = f"""
import atexit, sys
atexit.register(lambda: sys.stderr.write('heavy:' + ','.join(m for m in {HEAVY!r} if m in sys.modules) + '\\n'))
from dragon_server.cli import main
sys.exit(main(sys.argv[1:]))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("args", [
    ["--version"], ["--help"], ["edit", "--help"], ["serve", "--help"], ["bench", "--help"], ["keys", "--help"],
    ["status", "--help"], ["install-plugin", "--help"], ["keys", "laptop", "--dir", "{tmp}"],
    ["status", "--server", "tcp://127.0.0.1:{port}", "--timeout", "0.2"],
    ["bench", "--sizes", "0"], ["edit", "missing.png", "--mode", "move", "--out", "{tmp}/x.png"],
])
def test_commands_that_run_no_model_import_no_torch(args, tmp_path):
    args = [a.format(tmp=tmp_path, port=free_port()) for a in args]
    done = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=120)
    assert "Traceback" not in done.stderr
    assert done.stderr.splitlines()[-1] == "heavy:", done.stderr
