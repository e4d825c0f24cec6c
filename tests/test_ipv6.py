"""IPv6 endpoints (tcp://[::1]:PORT) work for serve, status, edit and the Krita plugin's client;
an IPv6 address without brackets is refused in one line."""

import time

import pytest

import serverkit as kit
from conftest import make_scene
from dragon_krita.client import Client, check_address
from dragon_krita.errors import PluginError
from dragon_protocol import Welcome
from dragon_server.cli import main


@pytest.fixture(scope="module")
def ipv6_server(tmp_path_factory):
    process, endpoint = kit.start_server(str(tmp_path_factory.mktemp("v6")), [],
                                         endpoint=f"tcp://[::1]:{kit.free_port()}")
    yield endpoint
    process.stop()


def test_status_and_edit_reach_a_server_on_ipv6_loopback(ipv6_server, tmp_path, monkeypatch, capsys):
    assert main(["status", "--server", ipv6_server]) == 0
    assert "state:    ready" in capsys.readouterr().out
    image, mask = make_scene()
    image.save(tmp_path / "in.png")
    mask.save(tmp_path / "mask.png")
    monkeypatch.chdir(tmp_path)
    assert main(["edit", "in.png", "--mode", "move", "--mask", "mask.png", "--arrow", "45,55,60,55", "--steps", "2",
                 "--out", "out.png", "--server", ipv6_server]) == 0
    assert (tmp_path / "out.png").exists()


def test_the_plugin_client_connects_over_ipv6(ipv6_server):
    client = Client(check_address(ipv6_server))
    client.connect()
    try:
        events, deadline = [], time.monotonic() + 30
        while not events and time.monotonic() < deadline:
            events = [e for e in client.poll() if isinstance(e, Welcome)]
            time.sleep(0.05)
        assert events and events[0].state == "ready"
    finally:
        client.close()


@pytest.mark.parametrize("command", [
    ["status", "--timeout", "1", "--server"], ["serve", "--model", "tiny", "--bind"],
    ["edit", "in.png", "--mode", "drag", "--arrow", "1,1,2,2", "--out", "out.png", "--server"],
])
def test_an_ipv6_address_without_brackets_is_refused_in_one_line(command, capsys, tmp_path, monkeypatch):
    make_scene()[0].save(tmp_path / "in.png")
    monkeypatch.chdir(tmp_path)
    code = main([*command, "tcp://::1:5555"])
    err = capsys.readouterr().err
    assert code == 2 and err == (f"dragon {command[0]}: error: 'tcp://::1:5555': write an IPv6 address in "
                                      "brackets, like tcp://[::1]:5555\n")
    with pytest.raises(PluginError):
        check_address("tcp://::1:5555")
