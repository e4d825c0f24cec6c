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
