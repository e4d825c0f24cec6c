"""`dragon install-plugin`: folders per system, kritarc editing, copying, wheels and the zip (no Krita)."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from dragon_server.cli import main
from dragon_server.commands import install_plugin as ip

ROOT = Path(__file__).resolve().parent.parent


def test_desktop_file_matches_the_repository():
    assert (ROOT / "krita_plugin" / "dragon_krita.desktop").read_text() == ip.DESKTOP_ENTRY


@pytest.mark.parametrize(
    "system, env, pykrita, kritarc",
    [
        ("linux", {"HOME": "/h"}, "/h/.local/share/krita/pykrita", "/h/.config/kritarc"),
        ("linux", {"HOME": "/h", "XDG_DATA_HOME": "/d", "XDG_CONFIG_HOME": "/c"}, "/d/krita/pykrita", "/c/kritarc"),
        ("win32", {"HOME": "/h", "APPDATA": "/r", "LOCALAPPDATA": "/l"}, "/r/krita/pykrita", "/l/kritarc"),
        ("darwin", {"HOME": "/h"}, "/h/Library/Application Support/krita/pykrita", "/h/Library/Preferences/kritarc"),
    ],
)
def test_default_folders(system, env, pykrita, kritarc):
    assert ip.default_pykrita(system, env) == Path(pykrita)
    assert ip.default_kritarc(system, env) == Path(kritarc)


def test_enable_in_kritarc_keeps_everything_else():
    assert ip.enable_in_kritarc("") == "[python]\nenable_dragon_krita=true\n"
    text = "[General]\nx=1\n\n[python]\nenable_other=true\nenable_dragon_krita=false\n[Zed]\ny=2\n"
    assert ip.enable_in_kritarc(text) == (
        "[General]\nx=1\n\n[python]\nenable_other=true\nenable_dragon_krita=true\n[Zed]\ny=2\n"
    )
    assert ip.enable_in_kritarc("[python]\nenable_other=true\n[Zed]\ny=2") == (
        "[python]\nenable_other=true\nenable_dragon_krita=true\n[Zed]\ny=2\n"
    )
    assert ip.enable_in_kritarc("[General]\nx=1") == "[General]\nx=1\n\n[python]\nenable_dragon_krita=true\n"
    once = ip.enable_in_kritarc("[python]\nenable_other=true\n")
    assert ip.enable_in_kritarc(once) == once


def test_wheel_platforms_and_versions():
    assert ip.wheel_platforms("win32", "AMD64") == ["win_amd64"]
    assert ip.wheel_platforms("darwin", "arm64")[0] == "macosx_11_0_arm64"
    assert all("x86_64" in tag for tag in ip.wheel_platforms("linux", "x86_64"))
    assert ip.check_version("3.10") == "3.10"
    for bad in ("3", "310", "2.7", "3.10.1", ""):
        with pytest.raises(ip.InstallError, match="like 3.10"):
            ip.check_version(bad)


def run_install(tmp_path, monkeypatch, *extra):
    monkeypatch.setattr(ip, "detect_krita_python", lambda flatpak=False: None)
    code = main(
        ["install-plugin", "--pykrita", str(tmp_path / "pykrita"), "--kritarc", str(tmp_path / "kritarc"), *extra]
    )
    return code


def test_install_copies_plugin_protocol_and_zip(tmp_path, monkeypatch, capsys):
    assert run_install(tmp_path, monkeypatch) == 0
    out = capsys.readouterr().out
    pykrita = tmp_path / "pykrita"
    assert (pykrita / "dragon_krita.desktop").read_text() == ip.DESKTOP_ENTRY
    assert (pykrita / "dragon_krita" / "script.py").is_file()
    assert (pykrita / "dragon_krita" / "deps" / "dragon_protocol" / "messages.py").is_file()
    assert not list(pykrita.rglob("__pycache__"))
    assert (tmp_path / "kritarc").read_text() == "[python]\nenable_dragon_krita=true\n"
    assert "--krita-python X.Y" in out
    names = zipfile.ZipFile(tmp_path / "dragon_krita-plugin.zip").namelist()
    assert "dragon_krita.desktop" in names and "dragon_krita/__init__.py" in names
    assert "dragon_krita/deps/dragon_protocol/__init__.py" in names
    assert run_install(tmp_path, monkeypatch) == 0, "installing again replaces the old copy"


def test_install_fetches_wheels_for_the_named_python(tmp_path, monkeypatch, capsys):
    calls = []

    def fake_download(version, target):
        calls.append((version, target))
        return ["msgpack-1-cp310.whl", "pyzmq-1-cp310.whl"]

    monkeypatch.setattr(ip, "download_wheels", fake_download)
    assert run_install(tmp_path, monkeypatch, "--krita-python", "3.10", "--zip", str(tmp_path / "p.zip")) == 0
    assert calls == [("3.10", tmp_path / "pykrita" / "dragon_krita" / "deps")]
    assert "for Krita's Python 3.10" in capsys.readouterr().out
    assert (tmp_path / "p.zip").is_file()


def test_bad_version_and_failed_download_are_one_line(tmp_path, monkeypatch, capsys):
    assert run_install(tmp_path, monkeypatch, "--krita-python", "three") == 1
    assert capsys.readouterr().err.count("\n") == 1

    def failing(command, **kwargs):
        return subprocess.CompletedProcess(command, 1, "", "ERROR: No matching distribution found for pyzmq\n")

    monkeypatch.setattr(ip.subprocess, "run", failing)
    assert run_install(tmp_path, monkeypatch, "--krita-python", "3.9") == 1
    err = capsys.readouterr().err
    assert err == (
        "dragon install-plugin: error: could not download pyzmq/msgpack wheels for Python 3.9: "
        "ERROR: No matching distribution found for pyzmq\n"
    )


def test_python_status_of_this_python():
    version, ok = ip.python_status(sys.executable)
    assert version == f"{sys.version_info[0]}.{sys.version_info[1]}" and ok


@pytest.fixture
def flatpak_home(tmp_path, monkeypatch):
    """A home folder where Flatpak Krita has run (and `flatpak` is on the PATH); native Krita only when
    the test makes its folder."""
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("XDG_DATA_HOME", "XDG_CONFIG_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(ip.sys, "platform", "linux")
    monkeypatch.setattr(ip.shutil, "which", lambda name: "/usr/bin/flatpak" if name == "flatpak" else None)
    (tmp_path / ".var" / "app" / "org.kde.krita" / "config").mkdir(parents=True)
    ran, fetched = [], []
    monkeypatch.setattr(ip, "python_status", lambda *command: ran.append(command) or ("3.10", False))
    monkeypatch.setattr(ip, "download_wheels", lambda version, target: fetched.append((version, target)) or ["w"])
    return tmp_path, ran, fetched


def test_flatpak_krita_alone_is_found_installed_enabled_and_given_wheels_for_its_python(flatpak_home, capsys):
    home, ran, fetched = flatpak_home
    root = home / ".var" / "app" / "org.kde.krita"
    assert main(["install-plugin"]) == 0
    assert (root / "data" / "krita" / "pykrita" / "dragon_krita" / "script.py").is_file()
    assert (root / "config" / "kritarc").read_text() == "[python]\nenable_dragon_krita=true\n"
    assert ran == [ip.FLATPAK_PYTHON]
    assert fetched == [("3.10", root / "data" / "krita" / "pykrita" / "dragon_krita" / "deps")]
    assert "installing into Flatpak Krita (org.kde.krita)" in capsys.readouterr().out
    assert not (home / ".local").exists() and not (home / ".config").exists()


def test_with_both_kritas_the_native_one_is_used_and_the_flag_for_the_flatpak_is_named(flatpak_home, capsys):
    home, _, _ = flatpak_home
    (home / ".local" / "share" / "krita").mkdir(parents=True)
    assert main(["install-plugin", "--krita-python", "3.10"]) == 0
    assert (home / ".local" / "share" / "krita" / "pykrita" / "dragon_krita").is_dir()
    assert "to install there as well: dragon install-plugin --flatpak" in capsys.readouterr().out
    assert main(["install-plugin", "--flatpak"]) == 0
    assert (home / ".var" / "app" / "org.kde.krita" / "data" / "krita" / "pykrita" / "dragon_krita").is_dir()
