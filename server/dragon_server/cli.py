"""The `dragon` command: one parser, each subcommand registered by the module that implements it."""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from dragon_server import __version__


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line and exit with status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        raise SystemExit(2)


SUBCOMMAND_MODULES = (
    "dragon_server.commands.edit",
    "dragon_server.commands.serve",
    "dragon_server.commands.keys",
    "dragon_server.commands.status",
    "dragon_server.commands.install_plugin",
    "dragon_server.commands.train_toy",
    "dragon_server.commands.bench",
)


def build_parser() -> argparse.ArgumentParser:
    """The full `dragon` parser; every module in SUBCOMMAND_MODULES adds its own subcommands."""
    import importlib

    parser = OneLineParser(prog="dragon", description="DragonDiffusion drag-style image editing.")
    parser.add_argument("--version", action="version", version=f"dragon {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    sub.required = True
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the `dragon` console command."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        sys.stderr.write("dragon: interrupted\n")
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
