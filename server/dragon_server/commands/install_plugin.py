"""`dragon install-plugin`: put the Krita plugin where Krita finds it, enabled, with what it imports.

The plugin (`dragon_krita`) and the protocol package are copied into the pykrita folder; pyzmq and
msgpack come from Krita's own Python when it has them, else from wheels for that Python's version and
platform, unpacked into the plugin's `deps/` folder. A zip for Krita's "Import Python Plugin from
File" is written too. Flatpak Krita (org.kde.krita) keeps its folders under ~/.var/app and its own
Python: it is used when it is the only Krita found, or with --flatpak.
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import List, Optional

PLUGIN = "dragon_krita"
DESKTOP_ENTRY = """[Desktop Entry]
Type=Service
ServiceTypes=Krita/PythonPlugin
X-KDE-Library=dragon_krita
X-Python-2-Compatible=false
Name=DragonDiffusion
Comment=Move, resize, drag and restyle objects with DragonDiffusion: select, draw an arrow, press Edit
"""
"""The plugin's .desktop file (krita_plugin/dragon_krita.desktop in the repository holds the same)."""

FLATPAK_ID = "org.kde.krita"
FLATPAK_PYTHON = ("flatpak", "run", "--command=python3", FLATPAK_ID)
"""The Python inside Flatpak Krita, run from outside."""

WHEELS = ("pyzmq", "msgpack")
IMPORTS = "import zmq, msgpack"


class InstallError(Exception):
    """An installation step that failed; the message says what to do."""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "install-plugin",
        help="install the Krita plugin into Krita's pykrita folder",
        description="Copy the DragonDiffusion plugin and its protocol package into Krita's pykrita folder, "
        "enable it in kritarc, add pyzmq/msgpack wheels when Krita's Python lacks them, and write a zip for "
        "Tools > Scripts > Import Python Plugin from File. Run it while Krita is closed.",
    )
    p.add_argument("--pykrita", metavar="DIR", help="pykrita folder (default: this system's Krita user folder)")
    p.add_argument("--kritarc", metavar="FILE", help="kritarc to enable the plugin in (default: this system's)")
    p.add_argument("--flatpak", action="store_true",
                   help=f"install into Flatpak Krita ({FLATPAK_ID}, under ~/.var/app); the default when it is "
                        "the only Krita found")
    p.add_argument("--krita-python", metavar="X.Y",
                   help="Python version inside Krita, when it cannot be detected (the docker shows it)")
    p.add_argument("--zip", metavar="FILE", help="where to write the plugin zip (default: next to the pykrita folder)")
    p.set_defaults(run=run)


def default_pykrita(system: str = sys.platform, env: Optional[dict] = None) -> Path:
    """Krita's user plugin folder on Linux, Windows (win32) and macOS (darwin)."""
    env = os.environ if env is None else env
    home = Path(env.get("HOME") or Path.home())
    if system == "win32":
        return Path(env.get("APPDATA") or home / "AppData" / "Roaming") / "krita" / "pykrita"
    if system == "darwin":
        return home / "Library" / "Application Support" / "krita" / "pykrita"
    return Path(env.get("XDG_DATA_HOME") or home / ".local" / "share") / "krita" / "pykrita"


def default_kritarc(system: str = sys.platform, env: Optional[dict] = None) -> Path:
    """Krita's settings file on Linux, Windows (win32) and macOS (darwin)."""
    env = os.environ if env is None else env
    home = Path(env.get("HOME") or Path.home())
    if system == "win32":
        return Path(env.get("LOCALAPPDATA") or home / "AppData" / "Local") / "kritarc"
    if system == "darwin":
        return home / "Library" / "Preferences" / "kritarc"
    return Path(env.get("XDG_CONFIG_HOME") or home / ".config") / "kritarc"


def flatpak_folders(env: Optional[dict] = None) -> tuple:
    """(pykrita folder, kritarc) of Flatpak Krita, which keeps its files under ~/.var/app/org.kde.krita."""
    env = os.environ if env is None else env
    root = Path(env.get("HOME") or Path.home()) / ".var" / "app" / FLATPAK_ID
    return root / "data" / "krita" / "pykrita", root / "config" / "kritarc"


def krita_installs(env: Optional[dict] = None, system: str = sys.platform) -> tuple:
    """(native Krita found, Flatpak Krita found) on Linux: a `krita` program or its user folder, and the
    Flatpak's folder under ~/.var/app."""
    if system != "linux":
        return True, False
    native = shutil.which("krita") is not None or default_pykrita(system, env).parent.is_dir()
    return native, flatpak_folders(env)[0].parents[2].is_dir()


def enable_in_kritarc(text: str, plugin: str = PLUGIN) -> str:
    """kritarc's text with `enable_<plugin>=true` in its [python] section, everything else kept."""
    key = f"enable_{plugin}"
    lines = text.splitlines()
    section = None
    for i, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            if section == "[python]":
                lines.insert(i, f"{key}=true")
                return "\n".join(lines) + "\n"
            section = stripped
        elif section == "[python]" and stripped.split("=", 1)[0].strip() == key:
            lines[i] = f"{key}=true"
            return "\n".join(lines) + "\n"
    if section == "[python]":
        lines.append(f"{key}=true")
    else:
        if lines and lines[-1].strip():
            lines.append("")
        lines += ["[python]", f"{key}=true"]
    return "\n".join(lines) + "\n"


def wheel_platforms(system: str = sys.platform, machine: str = platform.machine()) -> List[str]:
    """pip `--platform` tags for the wheels Krita's Python can load on this system."""
    machine = machine.lower()
    if system == "win32":
        return ["win_arm64"] if machine in ("arm64", "aarch64") else ["win_amd64"]
    if system == "darwin":
        arch = "arm64" if machine in ("arm64", "aarch64") else "x86_64"
        return [f"macosx_11_0_{arch}", f"macosx_10_9_{arch}", "macosx_10_9_universal2"]
    arch = "aarch64" if machine in ("arm64", "aarch64") else "x86_64"
    return [f"manylinux_2_28_{arch}", f"manylinux_2_17_{arch}", f"manylinux2014_{arch}"]


def check_version(text: str) -> str:
    """'X.Y' for a Python version given on the command line, or InstallError."""
    if not re.fullmatch(r"3\.\d{1,2}", text or ""):
        raise InstallError(f"--krita-python takes a Python version like 3.10, not {text!r}")
    return text


def detect_krita_python(flatpak: bool = False) -> Optional[object]:
    """The Python Krita uses: a command to run it (Linux packages: the system python3; Flatpak: the
    Flatpak's own), or 'X.Y'; None if unknown."""
    if flatpak:
        return list(FLATPAK_PYTHON) if shutil.which("flatpak") else None
    if sys.platform == "win32":
        base = os.environ.get("ProgramFiles", r"C:\Program Files")
        for dll in glob.glob(os.path.join(base, "Krita*", "bin", "python3*.dll")):
            match = re.search(r"python3(\d+)\.dll$", dll)
            if match:
                return f"3.{match.group(1)}"
        return None
    if sys.platform == "darwin":
        found = glob.glob("/Applications/krita.app/Contents/Frameworks/Python.framework/Versions/3.*")
        return os.path.basename(sorted(found)[-1]) if found else None
    krita = shutil.which("krita")
    if krita and os.path.realpath(krita).startswith("/usr/") and os.path.exists("/usr/bin/python3"):
        return ["/usr/bin/python3"]
    return None


def python_status(*command: str) -> tuple:
    """('X.Y', can import pyzmq and msgpack) for the Python that `command` runs."""
    code = f"import sys; print('%d.%d' % sys.version_info[:2]); {IMPORTS}"
    done = subprocess.run([*command, "-c", code], capture_output=True, text=True, timeout=120)
    version = done.stdout.strip().splitlines()[0] if done.stdout.strip() else ""
    return version, done.returncode == 0


def download_wheels(version: str, target: Path) -> List[str]:
    """Download pyzmq and msgpack wheels for Python `version` on this platform and unpack them."""
    with tempfile.TemporaryDirectory() as folder:
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:", "--no-deps",
                   "--python-version", version, "--implementation", "cp", "--dest", folder]
        for tag in wheel_platforms():
            command += ["--platform", tag]
        done = subprocess.run(command + list(WHEELS), capture_output=True, text=True)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["pip failed"])[-1]
            raise InstallError(f"could not download pyzmq/msgpack wheels for Python {version}: {last}")
        names = sorted(os.listdir(folder))
        for name in names:
            with zipfile.ZipFile(os.path.join(folder, name)) as wheel:
                wheel.extractall(target)
    return names


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise InstallError(f"the {name} package is not installed; reinstall with `pip install -e .`")
    return Path(list(spec.submodule_search_locations)[0])


def copy_plugin(pykrita: Path) -> Path:
    """Copy the plugin, its .desktop file and the protocol package into `pykrita`; return the plugin dir."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "deps")
    target = pykrita / PLUGIN
    pykrita.mkdir(parents=True, exist_ok=True)
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(_package_dir(PLUGIN), target, ignore=ignore)
    shutil.copytree(_package_dir("dragon_protocol"), target / "deps" / "dragon_protocol", ignore=ignore)
    (pykrita / f"{PLUGIN}.desktop").write_text(DESKTOP_ENTRY, encoding="utf-8")
    return target


def write_zip(pykrita: Path, path: Path) -> None:
    """The installed plugin as a zip for Tools > Scripts > Import Python Plugin from File."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.write(pykrita / f"{PLUGIN}.desktop", f"{PLUGIN}.desktop")
        for file in sorted((pykrita / PLUGIN).rglob("*")):
            if file.is_file() and "__pycache__" not in file.parts:
                archive.write(file, file.relative_to(pykrita).as_posix())


def install(args: argparse.Namespace) -> List[str]:
    """Do the installation; return the report lines (warnings included)."""
    report = []
    native, flatpak_found = krita_installs()
    flatpak = args.flatpak or (flatpak_found and not native and not (args.pykrita or args.kritarc))
    pykrita, kritarc = flatpak_folders() if flatpak else (default_pykrita(), default_kritarc())
    pykrita = Path(args.pykrita).expanduser() if args.pykrita else pykrita
    kritarc = Path(args.kritarc).expanduser() if args.kritarc else kritarc
    if flatpak:
        report.append(f"installing into Flatpak Krita ({FLATPAK_ID})")
    elif flatpak_found and not (args.pykrita or args.kritarc):
        report.append("note: Flatpak Krita is installed too; to install there as well: dragon install-plugin --flatpak")
    target = copy_plugin(pykrita)
    report.append(f"plugin installed in {target}")
    kritarc.parent.mkdir(parents=True, exist_ok=True)
    old = kritarc.read_text(encoding="utf-8") if kritarc.exists() else ""
    kritarc.write_text(enable_in_kritarc(old), encoding="utf-8")
    report.append(f"enabled in {kritarc}")
    version = check_version(args.krita_python) if args.krita_python else None
    if version is None:
        detected = detect_krita_python(flatpak)
        if isinstance(detected, list):
            version, ok = python_status(*detected)
            if ok:
                report.append(f"Krita's Python ({' '.join(detected)}, {version}) already has pyzmq and msgpack")
                version = None
            elif not version:
                raise InstallError(f"could not run Krita's Python ({' '.join(detected)}): give its version with "
                                   "--krita-python X.Y (the DragonDiffusion docker shows it)")
        elif detected:
            version = detected
        else:
            report.append(
                "warning: could not tell which Python Krita uses; if the DragonDiffusion docker says "
                "modules are missing, run the command it shows (dragon install-plugin --krita-python X.Y)"
            )
    if version:
        wheels = download_wheels(version, target / "deps")
        report.append(f"added for Krita's Python {version}: {', '.join(wheels)}")
    zip_path = Path(args.zip).expanduser() if args.zip else pykrita.parent / f"{PLUGIN}-plugin.zip"
    write_zip(pykrita, zip_path)
    report.append(f"zip for Tools > Scripts > Import Python Plugin from File: {zip_path}")
    report.append("restart Krita, then open Settings > Dockers > DragonDiffusion")
    return report


def run(args: argparse.Namespace) -> int:
    """Install and print what was done; one-line errors on failure."""
    try:
        for line in install(args):
            print(line)
    except (InstallError, OSError, subprocess.SubprocessError) as error:
        sys.stderr.write(f"dragon install-plugin: error: {error}\n")
        return 1
    return 0
