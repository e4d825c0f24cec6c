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
    kinds = p.add_subparsers(dest="bench", metavar="{quality,dragbench}", parser_class=type(p))
    q = kinds.add_parser("quality", help="edits with known answers on synthetic scenes: table and contact sheet",
                         description="Edit fixed synthetic scenes in every mode under a strength-0 control and "
                                     "both guidances, and measure where the object went (docs/QUALITY.md).")
    add_quality_arguments(q)
    q.set_defaults(run=run_quality)
    d = kinds.add_parser("dragbench", help="run a DragBench folder through drag mode: mean distance and 1 - LPIPS",
                         description="Run every sample of a DragBench folder through drag mode and report mean "
                                     "distance and 1 - LPIPS as the published tables do (docs/QUALITY.md).")
    add_dragbench_arguments(d)
    d.set_defaults(run=run_dragbench)


def add_quality_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="toy", help="the model to edit with (default toy)")
    p.add_argument("--steps", type=int, default=20,
                   help="DDIM steps per edit (default 20, the step count the toy's strengths are set for; "
                        "the release runs 50)")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", choices=["fp32", "fp16", "bf16"])
    add_threads_argument(p)
    p.add_argument("--modes", default="move,resize,drag,appearance,paste",
                   help="comma-separated subset of move,resize,drag,appearance,paste (default all)")
    p.add_argument("--conditions", default="control,release,paper",
                   help="comma-separated subset of control,release,paper (default all)")
    p.add_argument("--strength", type=float, default=1.0, metavar="F",
                   help="guidance strength of the guided conditions, a factor on the model's own (default 1)")
    p.add_argument("--json", metavar="FILE", help="write every figure to FILE as JSON")
    p.add_argument("--sheet", metavar="PNG", default="quality-sheet.png",
                   help="contact sheet path (default quality-sheet.png)")


def add_dragbench_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, metavar="DIR", help="the DragBench folder")
    p.add_argument("--model", default="sd15", help="the model that edits (default sd15)")
    p.add_argument("--md-model", metavar="MODEL", help="the model whose UNet features find the handles for MD "
                                                       "(default: the editing model)")
    p.add_argument("--lpips", metavar="FILE",
                   help="LPIPS network saved by torch.export.save (.pt2) for IF; without it IF is skipped")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--guidance", choices=GUIDANCES, default="release")
    p.add_argument("--ensemble", type=int, default=8, help="noises averaged for the MD features (default 8)")
    p.add_argument("--limit", type=int, metavar="N", help="only the first N samples")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", choices=["fp32", "fp16", "bf16"])
    add_threads_argument(p)
    p.add_argument("--out", metavar="DIR", help="also save each result as DIR/<sample>/dragged_image.png")
    p.add_argument("--json", metavar="FILE", help="write every figure to FILE as JSON")


def _threads_set(args: argparse.Namespace, command: str) -> bool:
    """Set the thread count; False, after one line on stderr, when the option is wrong."""
    try:
        use_threads(args.threads)
    except ValueError as error:
        sys.stderr.write(f"dragon bench {command}: error: {error}\n")
        return False
    return True


def run_quality(args: argparse.Namespace) -> int:
    """Set the thread count, then run `dragon_server.quality.run`."""
    if not _threads_set(args, "quality"):
        return 2
    from dragon_server.quality import run as measure

    return measure(args)


def run_dragbench(args: argparse.Namespace) -> int:
    """Set the thread count, then run `dragon_server.dragbench.run`."""
    if not _threads_set(args, "dragbench"):
        return 2
    from dragon_server.dragbench import run as measure

    return measure(args)


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
