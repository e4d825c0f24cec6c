"""`dragon train-toy`: train the small `toy` model on procedural scenes (CPU, about an hour)."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os

from dragon_server.toy.train import TrainConfig, Trainer

TOY_FOLDER = os.path.join(os.path.dirname(os.path.dirname(__file__)), "toy", "model")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train-toy", help="train the toy model on procedural scenes (resumable)")
    p.add_argument("--out", default=TOY_FOLDER, metavar="DIR",
                   help="where the diffusers folder goes (default: the packaged toy model)")
    p.add_argument("--work", default="toy-training", metavar="DIR",
                   help="checkpoint and encoded scenes; rerun with the same folder to resume (default ./toy-training)")
    p.add_argument("--checkpoint-minutes", type=float, default=5.0, metavar="MIN",
                   help="time between checkpoints (default 5)")
    p.add_argument("--export-only", action="store_true",
                   help="write the model folder from the work folder's checkpoint as it is, without training")
    defaults = TrainConfig()
    for field in dataclasses.fields(TrainConfig):
        p.add_argument("--" + field.name.replace("_", "-"), type=type(getattr(defaults, field.name)),
                       default=getattr(defaults, field.name), metavar="N",
                       help=f"(default {getattr(defaults, field.name)})")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Train (or resume) and write the model folder. The step counts may change between runs of one
    work folder (to stop early or train longer); everything else must stay."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    config = TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)})
    Trainer(config, args.work, args.checkpoint_minutes).run(args.out, args.export_only)
    print(f"toy model written to {args.out}")
    return 0
