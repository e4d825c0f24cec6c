"""Every message the plugin shows a painter: one line, filled in, and the fix for missing modules."""

import pytest

from dragon_krita.errors import MESSAGES, PluginError, missing_modules, missing_modules_error


@pytest.mark.parametrize("code", sorted(MESSAGES))
def test_every_message_is_one_filled_line(code):
    error = PluginError(code, detail="DETAIL", command="COMMAND")
    text = str(error)
    assert text and "\n" not in text and "{" not in text and "}" not in text
    assert text[0].isupper() or text.startswith(("DETAIL", "`")), text
    if "{detail}" in MESSAGES[code]:
        assert "DETAIL" in text
    assert error.code == code and error.detail == "DETAIL"


def test_painter_words_not_programmer_words():
    for code, template in MESSAGES.items():
        for jargon in ("Exception", "Traceback", "None", "msgpack", "ZeroMQ", "socket"):
            assert jargon not in template, (code, jargon)


def test_unknown_code_is_a_programming_error():
    with pytest.raises(KeyError):
        PluginError("no_such_code")


def test_missing_modules_names_the_exact_command():
    assert missing_modules(["json", "surely_not_a_module_xyz"]) == ["surely_not_a_module_xyz"]
    error = missing_modules_error(["zmq", "msgpack"], (3, 10, 4))
    assert error.code == "missing_modules"
    assert str(error) == (
        "The plugin cannot load pyzmq, msgpack. Close Krita and run: dragon install-plugin --krita-python 3.10"
    )
    assert "the DragonDiffusion protocol package" in str(missing_modules_error(["dragon_protocol"]))
