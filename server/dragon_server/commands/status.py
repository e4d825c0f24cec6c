"""`dragon status`: ask a running server who it is and how busy it is."""

from __future__ import annotations

import argparse
import sys

from dragon_server.serve.link import DEFAULT_SERVER, LinkError, ServerLink


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("status", help="show a server's model, device, limits and queue")
    p.add_argument("--server", default=DEFAULT_SERVER, metavar="ENDPOINT",
                   help=f"the server's endpoint (default {DEFAULT_SERVER})")
    p.add_argument("--server-key", metavar="FILE", help="the server's public key file (server.key)")
    p.add_argument("--client-key", metavar="FILE", help="this client's secret key file (NAME.key_secret)")
    p.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS",
                   help="how long to wait for an answer (default 10)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Print the server's welcome; exit 1 with one line when it cannot be reached, 2 for a malformed
    address."""
    try:
        with ServerLink(args.server, args.server_key, args.client_key) as link:
            welcome = link.hello(args.timeout)
    except LinkError as error:
        sys.stderr.write(f"dragon status: error: {error}\n")
        return 2 if error.code == "bad_address" else 1
    limits = welcome.limits
    print(f"server:   {welcome.server} at {args.server} (protocol {welcome.protocol})")
    print(f"state:    {welcome.state}")
    print(f"model:    {welcome.model} on {welcome.device or '?'} ({welcome.dtype or '?'})")
    print(f"modes:    {', '.join(welcome.modes)}")
    print(f"queue:    {welcome.running} running, {welcome.queued} waiting, room for {welcome.queue_capacity}")
    if welcome.cache:
        c = welcome.cache
        print(f"reuse:    {c['entries']} pictures kept, {c['bytes'] / 2**20:.0f} of {c['max_bytes'] / 2**20:.0f} MiB, "
              f"{c['hits']} hits, {c['misses']} misses")
    for replica in welcome.replicas:
        print(f"replica {replica.get('index')}: {replica.get('state')} on {replica.get('device') or '?'}, "
              f"{replica.get('running')} running, {replica.get('queued')} waiting, {replica.get('restarts')} "
              f"restarts, {replica.get('entries')} pictures kept, {replica.get('hits')} hits")
    print(
        f"limits:   {limits.get('max_image_pixels')} pixels per image, {limits.get('max_arrows')} arrows, "
        f"{limits.get('max_message_bytes')} bytes per message"
    )
    return 0
