"""The command line checks its options before any work: one line, exit 2, nothing written."""

import pytest

from dragon_server.cli import main


@pytest.mark.parametrize("args, message", [
    (["--sizes", "0"], "--sizes 0: each size must be between 64 and 2048 pixels"),
    (["--sizes", "512,abc"], "--sizes 512,abc must be whole numbers like 512,768"),
    (["--sizes", "512,99999"], "--sizes 512,99999: each size must be between 64 and 2048 pixels"),
    (["--steps", "0"], "--steps must be between 2 and 500, got 0"),
    (["--protocol", "-3"], "--protocol SIZE must be between 64 and 2048 pixels, got -3"),
    (["--threads", "0"], "--threads must be a whole number of threads of at least 1, got '0'"),
])
def test_bench_refuses_bad_options_in_one_line(args, message, capsys):
    assert main(["bench", "--model", "tiny", *args]) == 2
    assert capsys.readouterr().err == f"dragon bench: error: {message}\n"


@pytest.mark.parametrize("args, message", [
    (["--cache-mb", "-5"], "--cache-mb must be a number of at least 0, got -5"),
    (["--queue", "0"], "--queue must be at least 1, got 0"),
    (["--keep-results-mb", "-1"], "--keep-results-mb must be at least 1, got -1"),
    (["--keep-results", "nan"], "--keep-results must be a number of at least 0, got nan"),
    (["--keep-results", "-2"], "--keep-results must be a number of at least 0, got -2"),
])
def test_serve_refuses_bad_options_in_one_line(args, message, capsys):
    assert main(["serve", "--model", "tiny", *args]) == 2
    assert capsys.readouterr().err == f"dragon serve: error: {message}\n"


@pytest.fixture
def picture(tmp_path, monkeypatch):
    from conftest import make_scene

    image, mask = make_scene()
    image.save(tmp_path / "in.png")
    mask.save(tmp_path / "mask.png")
    (tmp_path / "folder.png").mkdir()
    monkeypatch.chdir(tmp_path)
    return tmp_path


MOVE = ["in.png", "--mode", "move", "--mask", "mask.png", "--arrow", "45,55,60,55", "--model", "tiny", "--steps", "2"]


@pytest.mark.parametrize("outputs, message", [
    (["--out", "folder.png"], "--out folder.png is a folder: give a file name such as folder.png/out.png"),
    (["--out", "missing/out.png"], "the folder of --out missing/out.png does not exist: create it first"),
    (["--out", "out.jpg"], "--out out.jpg must end in .png (the edit is written losslessly)"),
    (["--out", "out.png", "--mask-out", "missing/m.png"],
     "the folder of --mask-out missing/m.png does not exist: create it first"),
    (["--out", "out.png", "--mask-out", "mask.xyz"], "--mask-out mask.xyz needs an image extension such as .png"),
    (["--out", "out.png", "--mask-out", "folder.png"],
     "--mask-out folder.png is a folder: give a file name such as folder.png/out.png"),
])
def test_output_paths_are_checked_before_any_work(picture, capsys, outputs, message):
    assert main(["edit", *MOVE, *outputs]) == 2
    assert capsys.readouterr().err == f"dragon edit: error: {message}\n"
    assert sorted(p.name for p in picture.iterdir()) == ["folder.png", "in.png", "mask.png"]
    assert not any((picture / "folder.png").iterdir())


@pytest.mark.parametrize("bad", [
    ["--steps", "0"], ["--arrow", "500,5,9,9"], ["--working-area", "4194305"], ["--scale", "-1"],
    ["--mask", "in.png", "--arrow", "1,1,2,2", "--arrow", "3,3,4,4"], ["--seed", "-1"],
])
def test_edit_through_a_server_refuses_bad_input_with_the_in_process_words(picture, capsys, bad):
    from serverkit import free_port

    in_process = main(["edit", *MOVE, "--out", "a.png", *bad])
    local = capsys.readouterr().err
    remote = main(["edit", *MOVE, "--out", "b.png", *bad, "--server", f"tcp://127.0.0.1:{free_port()}"])
    assert in_process == remote == 2
    assert capsys.readouterr().err == local and len(local.splitlines()) == 1 and "Traceback" not in local
    assert not (picture / "a.png").exists() and not (picture / "b.png").exists()


def test_numbers_in_messages_are_written_in_full(picture, capsys):
    assert main(["edit", *MOVE, "--out", "a.png", "--working-area", "4194305"]) == 2
    assert capsys.readouterr().err == ("dragon edit: error: working area must be between 4096 and 4194304, "
                                       "got 4194305\n")


@pytest.mark.parametrize("device, message", [
    ("xpu", "XPU was asked for but this PyTorch cannot use it here: use --device cpu or auto"),
    ("meta", "META was asked for but this PyTorch cannot use it here: use --device cpu or auto"),
    ("hpu", "HPU was asked for but this PyTorch cannot use it here: use --device cpu or auto"),
    ("gpu0", "unknown device 'gpu0': use auto, cuda, cuda:N, mps or cpu"),
])
@pytest.mark.parametrize("command", ["edit", "serve", "bench"])
def test_a_device_this_pytorch_cannot_use_is_one_line_and_exit_2(picture, capsys, device, message, command):
    args = {"edit": ["edit", *MOVE, "--out", "out.png"], "serve": ["serve", "--model", "tiny"],
            "bench": ["bench", "--model", "tiny", "--sizes", "64"]}[command]
    assert main([*args, "--device", device]) == 2
    assert capsys.readouterr().err == f"dragon {command}: error: {message}\n"
    assert not (picture / "out.png").exists()
