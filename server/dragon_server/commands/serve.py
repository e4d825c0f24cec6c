"""`dragon serve`: load the model once and serve edits over ZeroMQ until stopped."""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import sys
from typing import Optional

from dragon_protocol.limits import MAX_MESSAGE_BYTES
from dragon_server.numbers import plain
from dragon_server.serve import keys
from dragon_server.serve.endpoints import EndpointError, check_endpoint, is_loopback
from dragon_server.serve.link import DEFAULT_SERVER
from dragon_server.threads import ThreadsError, add_threads_argument, use_threads

log = logging.getLogger("dragon.server")

MAX_PENDING_MB = 4096
"""Default bound on the memory of half-sent messages, all connections together."""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve",
        help="run the inference server",
        description="Load the model once, then serve edits to Krita and `dragon edit --server` until "
        "Ctrl-C. Listening on anything but this computer needs CURVE keys (see `dragon keys`).",
    )
    p.add_argument("--bind", action="append", metavar="ENDPOINT",
                   help=f"tcp://HOST:PORT or ipc://PATH to listen on; repeatable (default {DEFAULT_SERVER})")
    p.add_argument("--model", default="sd15",
                   help="sd15 (downloaded once), tiny or sd15-random (random weights, for tests), "
                   "a diffusers folder, or a .safetensors/.ckpt file (default sd15)")
    p.add_argument("--device", default="auto", help="auto, cuda, cuda:N, mps or cpu (default auto)")
    p.add_argument("--keys", metavar="PATH",
                   help="the server's key pair: a .key_secret file, or a folder holding server.key_secret")
    p.add_argument("--allowed-clients", metavar="DIR",
                   help="folder of the public keys (*.key) of clients allowed in; needs --keys")
    p.add_argument("--insecure", action="store_true",
                   help="allow a non-loopback address without encryption or keys (trusted networks only)")
    p.add_argument("--queue", type=int, default=8, metavar="N",
                   help="how many edits may wait behind the running one (default 8)")
    p.add_argument("--client-share", type=int, metavar="N",
                   help="most waiting places one client may hold (its key; its connection without keys), so "
                   "that no client can take every place (default: half the queue, rounded up)")
    p.add_argument("--max-work", type=float, default=300.0, metavar="MPX_STEPS",
                   help="most work one edit may ask for: steps x working area in megapixels (default 300, "
                   "for example 50 steps on 6 megapixels or 500 on 0.6)")
    p.add_argument("--keep-results", type=float, default=3600.0, metavar="SECONDS",
                   help="how long finished results stay fetchable after a client went away (default 3600)")
    p.add_argument("--keep-results-mb", type=int, default=512, metavar="MB",
                   help="memory for kept results; the oldest go first (default 512)")
    p.add_argument("--max-message-mb", type=int, default=MAX_MESSAGE_BYTES // 2**20, metavar="MB",
                   help="largest message a client may send; bigger ones drop its connection "
                   f"(default {MAX_MESSAGE_BYTES // 2**20})")
    p.add_argument("--cache-mb", type=int, metavar="MB",
                   help="memory kept to reuse the work on a picture between its edits (default: a quarter "
                        "of the GPU's memory, or of the host's on a CPU; 0 turns reuse off)")
    p.add_argument("--max-pending-mb", type=int, default=MAX_PENDING_MB, metavar="MB",
                   help="memory that messages still arriving may hold in all: --max-connections x "
                   f"--max-message-mb must fit in it (default {MAX_PENDING_MB})")
    p.add_argument("--max-connections", type=int, metavar="N",
                   help="most client connections open at once; more are closed at once (default: as many as "
                   "--max-pending-mb holds messages of --max-message-mb, 16 at the defaults)")
    p.add_argument("--stop-wait", type=float, default=30.0, metavar="SECONDS",
                   help="on Ctrl-C or SIGTERM, how long to wait for the running edit to stop before leaving it "
                   "behind and exiting with status 3 (default 30)")
    p.add_argument("--replicas", type=int, metavar="N",
                   help="run N engine replicas on Ray, each with its own model and reuse cache (one GPU each "
                   "on GPUs); edits of the same picture go to the same replica. Needs the cluster extra: "
                   'pip install ".[cluster]" (default with --ray: 1)')
    p.add_argument("--ray", metavar="ADDRESS",
                   help="run the replicas on the Ray cluster whose head is at ADDRESS (host:port, as `ray start "
                   "--head` printed) instead of a private Ray on this machine; needs the cluster extra")
    p.add_argument("--spill", action="store_true",
                   help="with replicas: run an edit on an idle replica when the one holding its picture is busy "
                   "(it then inverts the picture again); default: always the picture's replica")
    add_threads_argument(p)
    p.add_argument("--verbose", action="store_true", help="log debugging detail")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Check the options, bind, and serve; return the exit code."""
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    try:
        binds = _endpoints(args)
        connections = connection_limit(args.max_pending_mb, args.max_message_mb, args.max_connections)
        threads = use_threads(args.threads)
        cluster = _cluster(args, threads)
    except (EndpointError, keys.KeyFileError, ThreadsError) as error:
        return _fail(str(error), 2)
    from dragon_server.engine.models import pick_device  # imports torch: only when serving
    from dragon_server.engine.request import ModelError
    from dragon_server.serve.faults import Faults, FaultSpecError
    from dragon_server.serve.server import BindError, Server, ServerConfig

    try:
        pick_device(args.device)
    except ModelError as error:
        return _fail(str(error), 2)

    try:
        faults = Faults.from_environment()
    except FaultSpecError as error:
        return _fail(str(error), 2)
    if faults.crash_ids and cluster is None:
        return _fail("DRAGON_TEST_FAULTS: crash@ID needs --replicas or --ray", 2)
    log.info("using %d CPU thread%s for the model's math (--threads)", threads, "" if threads == 1 else "s")
    log.info("messages still arriving hold at most %d MiB: %d connections of at most %d MiB (--max-pending-mb)",
             connections * args.max_message_mb, connections, args.max_message_mb)
    if faults:
        log.warning("WARNING: test-only fault injection is on (DRAGON_TEST_FAULTS): %s", faults)

    config = ServerConfig(
        binds=binds,
        model=args.model,
        device=args.device,
        queue_size=args.queue,
        client_share=args.client_share,
        max_work=args.max_work,
        keep_seconds=args.keep_results,
        keep_bytes=args.keep_results_mb * 2**20,
        secret_key=args.keys,
        allowed_clients=args.allowed_clients,
        max_message_bytes=args.max_message_mb * 2**20,
        cache_bytes=None if args.cache_mb is None else args.cache_mb * 2**20,
        faults=faults,
        stop_wait=args.stop_wait,
        max_connections=connections,
        cluster=cluster,
    )
    server = Server(config)
    try:
        server.bind()
    except (BindError, keys.KeyFileError) as error:
        server.close()
        return _fail(str(error), 1)
    code = server.run()
    if server.abandoned:  # the worker thread is still inside the model: leave without waiting on it
        logging.shutdown()
        os._exit(code)
    return code


def _endpoints(args: argparse.Namespace) -> list:
    """The endpoints to bind, after checking that each public one is protected."""
    binds = [check_endpoint(endpoint) for endpoint in (args.bind or [DEFAULT_SERVER])]
    if (args.keys is None) != (args.allowed_clients is None):
        raise EndpointError("--keys and --allowed-clients go together: give both or neither")
    if args.insecure and args.keys:
        raise EndpointError("--insecure and --keys exclude each other")
    for name in ("queue", "keep_results_mb", "max_message_mb", "max_pending_mb", "client_share", "max_connections"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise EndpointError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    if not 1 <= args.max_work < float("inf"):
        raise EndpointError(f"--max-work must be a number of at least 1, got {plain(args.max_work)}")
    if not 0 <= args.stop_wait <= 3600:
        raise EndpointError(f"--stop-wait must be from 0 to 3600 seconds, got {plain(args.stop_wait)}")
    for name in ("keep_results", "cache_mb"):
        value = getattr(args, name)
        if value is not None and not 0 <= value < float("inf"):
            raise EndpointError(f"--{name.replace('_', '-')} must be a number of at least 0, got {plain(value)}")
    if args.keys is not None:
        keys.load_secret(args.keys)
        keys.load_allowed_keys(args.allowed_clients)
        return binds
    public = [endpoint for endpoint in binds if not is_loopback(endpoint)]
    if public and not args.insecure:
        raise EndpointError(
            f"refusing to listen on {public[0]} without encryption: give --keys and --allowed-clients "
            "(make them with `dragon keys`), use an SSH tunnel, or add --insecure on a trusted network"
        )
    for endpoint in public:
        log.warning(
            "WARNING: listening on %s without encryption or client keys (--insecure): anyone who can "
            "reach it can use this server and see the images", endpoint,
        )
    return binds


def connection_limit(pending_mb: int, message_mb: int, connections: Optional[int]) -> int:
    """The most connections open at once, so that as many half-sent messages of `message_mb` MiB fit in
    `pending_mb` MiB: `connections` when given and it fits, else as many as fit.

    ZeroMQ holds each connection's message until its last byte arrives (its pages become resident as the
    bytes come), so `pending_mb` bounds that memory only through this product. Raises EndpointError
    saying which option to change when the product does not fit, or not even one message does.
    """
    fit = pending_mb // message_mb
    if connections is None and fit < 1:
        raise EndpointError(f"--max-pending-mb {pending_mb} does not hold one message of --max-message-mb "
                            f"{message_mb}: raise it to {message_mb} or more, or lower --max-message-mb")
    if connections is None:
        return fit
    if connections * message_mb > pending_mb:
        fixes = [f"--max-connections {fit} or less"] if fit else []
        if pending_mb // connections:
            fixes.append(f"--max-message-mb {pending_mb // connections} or less")
        fixes.append(f"--max-pending-mb {connections * message_mb} or more")
        raise EndpointError(
            f"--max-connections {connections} x --max-message-mb {message_mb} is {connections * message_mb} MiB "
            f"of messages still arriving, more than --max-pending-mb {pending_mb}: give {', or '.join(fixes)}"
        )
    return connections


def _cluster(args: argparse.Namespace, threads: int):
    """The replicas asked for (a ClusterConfig), or None for one engine in this process."""
    if args.replicas is None and args.ray is None:
        if args.spill:
            raise EndpointError("--spill goes with --replicas or --ray")
        return None
    from dragon_server.serve.cluster import INSTALL_HINT, ClusterConfig

    if not ray_installed():
        raise EndpointError(f"--replicas and --ray need Ray. {INSTALL_HINT}")
    if args.replicas is not None and args.replicas < 1:
        raise EndpointError("--replicas must be at least 1")
    return ClusterConfig(replicas=args.replicas or 1, address=args.ray, spill=args.spill, threads=threads)


def ray_installed() -> bool:
    """Whether the cluster extra (Ray) is installed, without importing it (here, not in the serving code,
    which never imports by name)."""
    return importlib.util.find_spec("ray") is not None


def _fail(message: str, code: int) -> int:
    sys.stderr.write(f"dragon serve: error: {message}\n")
    return code
