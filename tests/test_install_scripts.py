"""install/serve.sh and install/test.sh share ./.venv without fighting over its PyTorch, and install
quietly. Run against stand-in python, pip and dragon programs that record what they are asked."""

import shutil
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

FAKE_PYTHON = """#!/bin/sh
echo "python $* OMP_NUM_THREADS=$OMP_NUM_THREADS" >> "$LOG"
case "$*" in
  *"import sys, torch"*) [ "$FAKE_TORCH" = cuda ]; exit $? ;;
  *"import torch"*) [ "$FAKE_TORCH" != none ]; exit $? ;;
esac
exit 0
"""
FAKE_PIP = """#!/bin/sh
echo "pip $*" >> "$LOG"
case "$*" in *"-e ."*) printf '#!/bin/sh\\necho "dragon $*" >> "$LOG"\\n' > "$(dirname "$0")/dragon"
  chmod +x "$(dirname "$0")/dragon" ;; esac
"""
RECORD = '#!/bin/sh\necho "$(basename "$0") $*" >> "$LOG"\n'


def script(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def checkout(tmp_path):
    """A copy of the install scripts with a .venv of stand-ins; `run(script, torch, gpu)` runs one."""
    repo = tmp_path / "repo"
    shutil.copytree(ROOT / "install", repo / "install")
    bin_dir = tmp_path / "bin"
    for name in ("dpkg", "apt-get"):
        script(bin_dir / name, RECORD)
    log = tmp_path / "log"

    def make_venv(with_dragon: bool) -> None:
        script(repo / ".venv/bin/python", FAKE_PYTHON)
        script(repo / ".venv/bin/pip", FAKE_PIP)
        script(repo / ".venv/bin/ruff", RECORD)
        if with_dragon:
            script(repo / ".venv/bin/dragon", RECORD)

    def run(name: str, torch: str, gpu: bool, *args: str):
        if gpu:
            script(bin_dir / "nvidia-smi", "#!/bin/sh\nexit 0\n")
        env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "LOG": str(log), "FAKE_TORCH": torch,
               "PYTHON": str(repo / ".venv/bin/python"), "HOME": str(tmp_path)}
        done = subprocess.run(["bash", str(repo / "install" / name), *args], capture_output=True, text=True,
                              env=env, timeout=60)
        lines = log.read_text().splitlines() if log.exists() else []
        return done, lines

    run.make_venv = make_venv
    return run


def pip_lines(lines):
    return [line for line in lines if line.startswith("pip ")]


def test_test_command_keeps_the_servers_pytorch(checkout):
    checkout.make_venv(with_dragon=True)
    done, lines = checkout("test.sh", "cuda", True, "-x", "tests/test_masks.py")
    assert done.returncode == 0, done.stderr
    assert not any("torch" in line for line in pip_lines(lines))
    assert pip_lines(lines) and all(" -qq " in line for line in pip_lines(lines))
    assert lines[-1] == "python -m pytest -x tests/test_masks.py OMP_NUM_THREADS=1"


def test_test_command_installs_the_pinned_cpu_build_into_a_venv_without_pytorch(checkout):
    checkout.make_venv(with_dragon=False)
    done, lines = checkout("test.sh", "none", False)
    assert done.returncode == 0, done.stderr
    assert "pip install -qq torch==2.13.0" in lines


def test_serve_command_uses_an_existing_venv_as_it_is_and_says_when_its_pytorch_cannot_use_the_gpu(checkout):
    checkout.make_venv(with_dragon=True)
    done, lines = checkout("serve.sh", "cpu", True, "--model", "tiny")
    assert done.returncode == 0 and pip_lines(lines) == []
    assert lines[-1] == "dragon serve --model tiny"
    assert done.stderr.count("\n") == 1 and "holds a PyTorch without CUDA" in done.stderr
    assert "pip install --force-reinstall torch" in done.stderr
    done, _ = checkout("serve.sh", "cuda", True)
    assert done.stderr == ""


def test_serve_command_installs_quietly_on_first_use(checkout):
    checkout.make_venv(with_dragon=False)
    done, lines = checkout("serve.sh", "cuda", False, "--bind", "tcp://127.0.0.1:5555")
    assert done.returncode == 0, done.stderr
    assert pip_lines(lines) == ["pip install -qq --upgrade pip", "pip install -qq -e ."]
    assert lines[-1] == "dragon serve --bind tcp://127.0.0.1:5555" and done.stderr == ""
