"""CPU threads: which count the commands use, how to override it, and one-line errors for bad values."""

import threading

import pytest
import torch

from conftest import make_scene
from dragon_server.cli import main
from dragon_server.threads import ThreadsError, default_threads, thread_count


def test_the_default_is_half_the_cpus_at_least_one_at_most_eight():
    assert [default_threads(n) for n in (1, 2, 3, 4, 8, 16, 64)] == [1, 1, 1, 2, 4, 8, 8]


def test_flag_beats_dragon_threads_beats_omp_num_threads_beats_the_default():
    env = {"DRAGON_THREADS": "3", "OMP_NUM_THREADS": "5"}
    assert thread_count(2, env) == 2
    assert thread_count(None, env) == 3
    assert thread_count(None, {"OMP_NUM_THREADS": "5", "DRAGON_THREADS": " "}) == 5
    assert thread_count(None, {}) == default_threads()


@pytest.mark.parametrize("flag, env, where", [
    (0, {}, "--threads"), (-2, {}, "--threads"), (None, {"DRAGON_THREADS": "many"}, "DRAGON_THREADS"),
    (None, {"OMP_NUM_THREADS": "0"}, "OMP_NUM_THREADS"), (None, {"DRAGON_THREADS": "1.5"}, "DRAGON_THREADS"),
])
def test_a_count_below_one_or_not_whole_is_refused_naming_where_it_came_from(flag, env, where):
    with pytest.raises(ThreadsError, match=f"^{where} must be a whole number of threads of at least 1"):
        thread_count(flag, env)


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_edit_uses_the_threads_flag_also_in_pytorch_worker_threads(tmp_path, monkeypatch, restore_threads):
    image, mask = make_scene()
    image.save(tmp_path / "in.png")
    mask.save(tmp_path / "mask.png")
    monkeypatch.chdir(tmp_path)
    assert main(["edit", "in.png", "--mode", "move", "--mask", "mask.png", "--arrow", "45,55,60,55", "--out",
                 "out.png", "--model", "tiny", "--steps", "2", "--threads", "2"]) == 0
    seen = []
    worker = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    worker.start()
    worker.join()
    assert torch.get_num_threads() == 2 and seen == [2]


@pytest.mark.parametrize("args, env", [(["--threads", "0"], {}), ([], {"DRAGON_THREADS": "lots"})])
def test_edit_with_a_bad_thread_count_exits_2_in_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys,
                                                                              args, env):
    image, mask = make_scene()
    image.save(tmp_path / "in.png")
    monkeypatch.chdir(tmp_path)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code = main(["edit", "in.png", "--mode", "drag", "--arrow", "45,55,60,55", "--out", "out.png",
                 "--model", "tiny", *args])
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1 and "threads of at least 1" in err
    assert not (tmp_path / "out.png").exists()


def test_serve_with_a_bad_thread_count_exits_2_in_one_line(capsys):
    assert main(["serve", "--model", "tiny", "--threads", "0"]) == 2
    err = capsys.readouterr().err
    assert err == "dragon serve: error: --threads must be a whole number of threads of at least 1, got '0'\n"
