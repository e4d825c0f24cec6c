"""docs/RELIABILITY.md stays true to the tests: every promise names tests, and every named test exists."""

from __future__ import annotations

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_every_promise_names_tests_that_exist():
    text = (ROOT / "docs" / "RELIABILITY.md").read_text()
    sources = "\n".join(path.read_text() for path in (ROOT / "tests").glob("test_*.py"))
    promises = re.findall(r"^\| (\d+) \| .*\| (.*) \|$", text, flags=re.MULTILINE)
    assert len(promises) >= 17
    for number, tests in promises:
        named = re.findall(r"`(test_\w+)`", tests)
        assert named, f"promise {number} names no test"
        for name in named:
            assert f"def {name}(" in sources, f"promise {number}: no test called {name}"
