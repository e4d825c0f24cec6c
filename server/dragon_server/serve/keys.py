"""CurveZMQ key files: making key pairs, loading them, and setting them on sockets."""

from __future__ import annotations

import os
from pathlib import Path
from typing import FrozenSet, Tuple

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

SERVER_KEY_NAME = "server"
_Z85_KEY_LENGTH = 40
"""A CURVE key (32 bytes) as Z85 text."""


class KeyFileError(ValueError):
    """A key file or folder that cannot be used; the message says which and why."""


_KEY_FILE = """#   ZeroMQ CURVE {kind} Certificate, made by `dragon keys`
#   {advice}

metadata
curve
    public-key = "{public}"
{secret}"""


def create_key_pair(folder: str, name: str) -> Tuple[Path, Path]:
    """Write NAME.key (public, to share) and NAME.key_secret (keep private) into `folder`.

    The secret file is created with mode 0600 (owner only) in the same call that creates it, so it is
    never readable by others, not even for an instant; neither file ever replaces an existing one.
    """
    directory = Path(folder)
    public, secret = directory / f"{name}.key", directory / f"{name}.key_secret"
    for path in (public, secret):
        if path.exists():
            raise KeyFileError(f"{path} exists already; pick another --name or folder")
    directory.mkdir(parents=True, exist_ok=True)
    public_key, secret_key = (key.decode("ascii") for key in zmq.curve_keypair())
    _write_new(secret, 0o600, _KEY_FILE.format(
        kind="**Secret**", advice="keep it private: never copy it to another computer", public=public_key,
        secret=f'    secret-key = "{secret_key}"\n'))
    _write_new(public, 0o644, _KEY_FILE.format(
        kind="Public", advice="copy it to the other side of the link", public=public_key, secret=""))
    return public, secret


def _write_new(path: Path, mode: int, text: str) -> None:
    """Create `path` with permissions `mode` (less the umask) from the start; fail if it exists."""
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise KeyFileError(f"{path} exists already; pick another --name or folder") from None
    with os.fdopen(descriptor, "w", encoding="ascii") as file:
        file.write(text)


def load_secret(path: str) -> Tuple[bytes, bytes]:
    """(public, secret) from a .key_secret file, or from SERVER_KEY_NAME.key_secret in a folder."""
    file = Path(path)
    if file.is_dir():
        file = file / f"{SERVER_KEY_NAME}.key_secret"
    public, secret = _load(file)
    if not secret:
        raise KeyFileError(f"{file} holds no secret key: give the .key_secret file made by `dragon keys`")
    return public, secret


def load_public(path: str) -> bytes:
    """The public key in a .key (or .key_secret) file."""
    return _load(Path(path))[0]


def _load(file: Path) -> Tuple[bytes, bytes]:
    if not file.is_file():
        raise KeyFileError(f"key file {file} does not exist; make one with `dragon keys`")
    try:
        public, secret = zmq.auth.load_certificate(str(file))
    except (ValueError, OSError, UnicodeDecodeError):
        raise KeyFileError(f"{file} is not a key file made by `dragon keys`") from None
    if len(public) != _Z85_KEY_LENGTH or secret and len(secret) != _Z85_KEY_LENGTH:
        raise KeyFileError(f"{file} holds no valid key: give a file made by `dragon keys`")
    return public, secret or b""


def load_allowed_keys(folder: str) -> FrozenSet[bytes]:
    """The public keys (Z85) of the *.key files in the allowed-clients folder.

    Raises KeyFileError when the folder does not exist, holds no key, or holds a *.key entry that is not
    a readable public key file (a folder, a stray text file, a file without read permission): one bad
    entry must not silently lock out every client, so the server refuses to start and names it.
    """
    directory = Path(folder)
    if not directory.is_dir():
        raise KeyFileError(f"allowed-clients folder {directory} does not exist")
    allowed = set()
    for entry in sorted(directory.glob("*.key")):
        try:
            allowed.add(_load(entry)[0])
        except KeyFileError:
            raise KeyFileError(
                f"{entry} in the allowed-clients folder is not a readable public key file made by "
                "`dragon keys`: fix or remove it"
            ) from None
    if not allowed:
        raise KeyFileError(f"{directory} holds no client public keys (*.key): make one with `dragon keys`")
    return frozenset(allowed)


def secure_server_socket(socket: zmq.Socket, secret_path: str) -> None:
    """Make `socket` a CURVE server with the key pair in `secret_path` (call before bind)."""
    public, secret = load_secret(secret_path)
    socket.curve_secretkey = secret
    socket.curve_publickey = public
    socket.curve_server = True


def secure_client_socket(socket: zmq.Socket, server_key: str, client_key: str) -> None:
    """Make `socket` a CURVE client of the server whose public key is in `server_key` (before connect)."""
    socket.curve_serverkey = load_public(server_key)
    public, secret = load_secret(client_key)
    socket.curve_publickey = public
    socket.curve_secretkey = secret


class _AllowedKeys:
    """The authenticator's credentials provider: a fixed set of Z85 public keys."""

    def __init__(self, allowed: FrozenSet[bytes]):
        self.allowed = allowed

    def callback(self, domain: str, key: bytes) -> bool:
        return key in self.allowed


def start_authenticator(context: zmq.Context, allowed_clients: str) -> ThreadAuthenticator:
    """A ZAP handler that lets in only clients whose public key is in the `allowed_clients` folder
    (read once, here; raises KeyFileError as `load_allowed_keys` does)."""
    allowed = load_allowed_keys(allowed_clients)
    auth = ThreadAuthenticator(context)
    auth.start()
    auth.configure_curve_callback(domain="*", credentials_provider=_AllowedKeys(allowed))
    return auth
