"""`dragon keys`: make a CurveZMQ key pair for a server or a client."""

from __future__ import annotations

import argparse
import sys

from dragon_server.serve.keys import SERVER_KEY_NAME, KeyFileError, create_key_pair


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "keys",
        help="make a key pair for a server or a client",
        description="Write NAME.key (public: share it) and NAME.key_secret (private: keep it) into a folder. "
        "Name the server's pair 'server'; give each client its own name and copy its .key into the "
        "server's --allowed-clients folder.",
    )
    p.add_argument("name", nargs="?", default=SERVER_KEY_NAME,
                   help=f"name of the key pair (default {SERVER_KEY_NAME})")
    p.add_argument("--dir", default=".", help="folder to write the key files into (default: here)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Write the key pair and say what to do with each file."""
    if not args.name or not all(c.isalnum() or c in "-_." for c in args.name) or args.name.startswith("."):
        sys.stderr.write("dragon keys: error: the name may hold only letters, digits, - _ and .\n")
        return 2
    try:
        public, secret = create_key_pair(args.dir, args.name)
    except (KeyFileError, OSError) as error:
        sys.stderr.write(f"dragon keys: error: {error}\n")
        return 1
    print(f"public key: {public}  (share it)")
    print(f"secret key: {secret}  (keep it private)")
    return 0
