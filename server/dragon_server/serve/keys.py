"""CurveZMQ key files: making key pairs, loading them, and setting them on sockets."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Tuple

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

SERVER_KEY_NAME = "server"


class KeyFileError(ValueError):
    """A key file or folder that cannot be used; the message says which and why."""


def create_key_pair(folder: str, name: str) -> Tuple[Path, Path]:
    """Write NAME.key (public, to share) and NAME.key_secret (keep private) into `folder`."""
    directory = Path(folder)
    public, secret = directory / f"{name}.key", directory / f"{name}.key_secret"
    for path in (public, secret):
        if path.exists():
            raise KeyFileError(f"{path} exists already; pick another --name or folder")
    directory.mkdir(parents=True, exist_ok=True)
    made_public, made_secret = zmq.auth.create_certificates(str(directory), name)
    os.chmod(made_secret, 0o600)
    return Path(made_public), Path(made_secret)


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
    if not public:
        raise KeyFileError(f"{file} holds no public key")
    return public, secret or b""


def count_client_keys(folder: str) -> int:
    """How many public keys (*.key) the allowed-clients folder holds; raise if it is not a folder."""
    directory = Path(folder)
    if not directory.is_dir():
        raise KeyFileError(f"allowed-clients folder {directory} does not exist")
    return len(list(directory.glob("*.key")))


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


def start_authenticator(context: zmq.Context, allowed_clients: str) -> ThreadAuthenticator:
    """A ZAP handler that lets in only clients whose public key is in the `allowed_clients` folder."""
    auth = ThreadAuthenticator(context)
    auth.start()
    auth.configure_curve(domain="*", location=allowed_clients)
    return auth
