"""`dragon train-toy`: train the small `toy` model on procedural scenes (CPU, about an hour)."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys

from dragon_server.toy.config import TrainConfig

TOY_FOLDER = os.path.join(os.path.dirname(os.path.dirname(__file__)), "toy", "model")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train-toy", help="train the toy model on procedural scenes (resumable)")
    p.add_argument("--out", default=TOY_FOLDER, metavar="DIR",
                   help="where the diffusers folder goes (default: the packaged toy model)")
    p.add_argument("--work", default="toy-training", metavar="DIR",
                   help="checkpoint and encoded scenes; rerun with the same folder to resume (default ./toy-training)")
    p.add_argument("--checkpoint-minutes", type=float, default=5.0, metavar="MIN",
                   help="time between checkpoints (default 5)")
    p.add_argument("--pictures", metavar="DIR",
                   help="afterwards, write samples.png (scenes from noise) and round-trip.png (DDIM inversion "
                        "and back) of the model to DIR")
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
    if config.problem():
        sys.stderr.write(f"dragon train-toy: error: {config.problem()}\n")
        return 2
    from dragon_server.toy.train import Trainer

    Trainer(config, args.work, args.checkpoint_minutes).run(args.out, args.export_only)
    print(f"toy model written to {args.out}")
    if args.pictures:
        write_pictures(args.out, args.pictures, config)
    return 0


def write_pictures(model: str, folder: str, config: TrainConfig) -> None:
    """Samples from noise for a few captions and the inversion round trip of two fixed scenes."""
    import numpy as np
    from PIL import Image

    from dragon_server.engine.models import load_components
    from dragon_server.quality import psnr
    from dragon_server.toy.pictures import round_trip, samples
    from dragon_server.toy.scenes import random_scene, render

    os.makedirs(folder, exist_ok=True)
    components = load_components(model, "cpu")
    prompts = ["", "", "a red disc on a white and grey gradient background",
               "a blue square, a yellow star on a green and white striped background"]
    samples(components, prompts).save(os.path.join(folder, "samples.png"))
    rows = []
    for seed in (11, 12):
        image, _ = render(random_scene(np.random.default_rng([config.seed + 99, seed]), config.size), config.size)
        strip = round_trip(components, image)
        w = image.width
        vae, regenerated = strip.crop((w, 0, 2 * w, w)), strip.crop((2 * w, 0, 3 * w, w))
        print(f"round trip {seed}: VAE only {psnr(np.asarray(vae), np.asarray(image)):.1f} dB, "
              f"inverted and regenerated {psnr(np.asarray(regenerated), np.asarray(image)):.1f} dB")
        rows.append(strip)
    sheet = Image.new("RGB", (rows[0].width, sum(r.height for r in rows)))
    for i, r in enumerate(rows):
        sheet.paste(r, (0, i * r.height))
    sheet.save(os.path.join(folder, "round-trip.png"))
    print(f"pictures written to {folder}")
