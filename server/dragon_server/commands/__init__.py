"""The subcommands of `dragon`; each module exposes `register(subparsers)`."""
