"""`dragon bench`: its options, checked in one line each before PyTorch is imported; the measuring is
in `dragon_server.bench`."""

from __future__ import annotations

import argparse
import sys

from dragon_server.engine.request import GUIDANCES
from dragon_server.threads import add_threads_argument, use_threads

SIZE_RANGE = (64, 2048)
"""Square sizes a benchmark edit may have: the engine's smallest and largest working area."""
STEPS_RANGE = (2, 500)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="measure the cost of edits against the release's cost profile",
                       description="Measure a first and a repeat edit stage by stage (time, UNet passes, FLOPs) "
                                   "next to a schedule with the cost profile of the authors' release "
                                   "(docs/PERFORMANCE.md).")
    add_arguments(p)
    p.set_defaults(run=run)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="sd15-random", help="tiny, sd15-random (default) or a real model")
    p.add_argument("--sizes", default="512,768",
                   help=f"comma-separated square sizes in pixels, {SIZE_RANGE[0]} to {SIZE_RANGE[1]}")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", choices=["fp32", "fp16", "bf16"])
    add_threads_argument(p)
    p.add_argument("--no-flops", action="store_true", help="skip FLOP counting (it slows small models)")
    p.add_argument("--guidance", choices=["both", *GUIDANCES], default="both",
                   help="how our edits compute guidance (default: both, each against the reference, which always "
                        "uses the release's)")
    p.add_argument("--reference-once", action="store_true",
                   help="run the reference schedule once: it has no reuse, so its repeat costs the same")
    p.add_argument("--protocol", type=int, metavar="SIZE",
                   help="instead, measure what a server on loopback adds to a tiny-model edit of a SIZE^2 image")
    p.add_argument("--json", metavar="FILE", help="write every figure to FILE as JSON")


def check(args: argparse.Namespace) -> None:
    """Turn `args.sizes` into a list of whole sizes; raise ValueError with a one-line reason for any
    option out of range."""
    lo, hi = SIZE_RANGE
    try:
        sizes = [int(s) for s in args.sizes.split(",")]
    except ValueError:
        raise ValueError(f"--sizes {args.sizes} must be whole numbers like 512,768") from None
    if not sizes or any(not lo <= s <= hi for s in sizes):
        raise ValueError(f"--sizes {args.sizes}: each size must be between {lo} and {hi} pixels")
    if not STEPS_RANGE[0] <= args.steps <= STEPS_RANGE[1]:
        raise ValueError(f"--steps must be between {STEPS_RANGE[0]} and {STEPS_RANGE[1]}, got {args.steps}")
    if args.protocol is not None and not lo <= args.protocol <= hi:
        raise ValueError(f"--protocol SIZE must be between {lo} and {hi} pixels, got {args.protocol}")
    args.sizes = sizes


def run(args: argparse.Namespace) -> int:
    """Check the options and set the thread count, then measure (see `dragon_server.bench.run`)."""
    try:
        check(args)
        use_threads(args.threads)
    except ValueError as error:  # ThreadsError is one
        sys.stderr.write(f"dragon bench: error: {error}\n")
        return 2
    from dragon_server.bench import run as measure

    return measure(args)
