"""`dragon edit` as a user runs it: every mode with --model tiny, JSON summary, one-line errors."""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import make_scene
from dragon_server.cli import main


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    image, mask = make_scene()
    ref, ref_mask = make_scene(size=(150, 120), seed=5)
    image.save(d / "image.png")
    mask.save(d / "mask.png")
    ref.save(d / "ref.png")
    ref_mask.save(d / "ref_mask.png")
    Image.new("L", (64, 64), 255).save(d / "small_mask.png")
    (d / "notes.txt").write_text("not an image")
    return d


MODES = {
    "move": ["--mode", "move", "--mask", "mask.png", "--arrow", "45,55,80,60"],
    "resize": ["--mode", "move", "--mask", "mask.png", "--scale", "1.3"],
    "drag": ["--mode", "drag", "--arrow", "45,55,60,50", "--arrow", "50,65,55,80"],
    "appearance": ["--mode", "appearance", "--mask", "mask.png", "--reference", "ref.png",
                   "--reference-mask", "ref_mask.png"],
    "paste": ["--mode", "paste", "--reference", "ref.png", "--reference-mask", "ref_mask.png",
              "--arrow", "45,55,90,90", "--scale", "0.8"],
}


@pytest.mark.parametrize("name", list(MODES))
def test_every_mode_writes_the_edit_and_a_json_summary(files, name, capsys, monkeypatch):
    monkeypatch.chdir(files)
    out = f"out-{name}.png"
    code = main(["edit", "image.png", *MODES[name], "--out", out, "--model", "tiny", "--steps", "4",
                 "--json", "--mask-out", f"mask-{name}.png"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["model"] == "tiny" and summary["device"] == "cpu" and summary["mode"] == MODES[name][1]
    assert summary["unet_evaluations"]["forward"] >= 8 and "sampling" in summary["timings"]
    edited, original = Image.open(files / out), Image.open(files / "image.png")
    assert edited.size == original.size
    m = np.asarray(Image.open(files / f"mask-{name}.png"))
    assert (np.asarray(edited)[m == 0] == np.asarray(original)[m == 0]).all()


def test_release_guidance_by_default_and_paper_on_request(files, capsys, monkeypatch):
    monkeypatch.chdir(files)
    counts = {}
    for guidance in ("default", "paper", "release"):
        choice = [] if guidance == "default" else ["--guidance", guidance]
        assert main(["edit", "image.png", *MODES["move"], "--out", f"g-{guidance}.png", "--model", "tiny",
                     "--steps", "6", "--json", *choice]) == 0
        summary = json.loads(capsys.readouterr().out)
        assert summary["guidance"] == ("release" if guidance == "default" else guidance)
        counts[guidance] = summary["unet_evaluations"]
    assert counts["release"]["backward"] == 2 * counts["paper"]["backward"] > 0
    assert counts["default"] == counts["release"]


ERRORS = [
    (["--mode", "move", "--mask", "small_mask.png", "--arrow", "1,1,2,2"], "is 64x64 but its image is 128x128"),
    (["--mode", "move", "--mask", "mask.png", "--arrow", "500,1,2,2"], "outside the 128x128 image"),
    (["--mode", "teleport"], "invalid choice: 'teleport'"),
    (["--mode", "paste", "--arrow", "1,1,2,2"], "needs a reference image"),
    (["--mode", "move", "--mask", "mask.png", "--scale", "0"], "scale must be positive"),
    (["--mode", "move", "--mask", "notes.txt", "--arrow", "1,1,2,2"], "not an image"),
    (["--mode", "move", "--mask", "missing.png", "--arrow", "1,1,2,2"], "does not exist"),
    (["--mode", "move", "--mask", "mask.png", "--arrow", "1,2,3"], "four numbers"),
    (["--mode", "move", "--mask", "mask.png", "--arrow", "1,1,2,2", "--model", "gone.safetensors"],
     "checkpoint gone.safetensors does not exist"),
    (["--mode", "move", "--mask", "mask.png", "--arrow", "1,1,2,2", "--set", "w_edit"], "NAME=NUMBER"),
    (["--mode", "move", "--mask", "mask.png", "--arrow", "1,1,2,2", "--set", "guidance=1"], "chosen by name"),
    (["--mode", "move", "--mask", "mask.png", "--arrow", "1,1,2,2", "--guidance", "fast"],
     "invalid choice: 'fast' (choose from 'release', 'paper')"),
]


@pytest.mark.parametrize("args,message", ERRORS, ids=[e[1][:30] for e in ERRORS])
def test_bad_input_is_one_line_and_exit_2(files, args, message, capsys, monkeypatch):
    monkeypatch.chdir(files)
    argv = ["edit", "image.png", *args, "--out", "x.png"]
    if "--model" not in args:
        argv += ["--model", "tiny"]
    with pytest.raises(SystemExit) as exit_info:
        code = main(argv)
        raise SystemExit(code)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and "Traceback" not in err[0]


def test_console_command_runs_in_a_fresh_process(files):
    proc = subprocess.run(
        [sys.executable, "-m", "dragon_server.cli", "edit", "image.png", *MODES["move"], "--out", "sub.png",
         "--model", "tiny", "--steps", "3", "--json"],
        cwd=files, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["out"] == "sub.png"
    assert (files / "sub.png").exists()
