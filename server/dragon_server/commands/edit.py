"""`dragon edit`: one edit of an image file, in this process (or through a server with --server)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Dict, Optional, Tuple

from PIL import Image, UnidentifiedImageError

from dragon_server.engine.request import EditCancelled, EditError, EditRequest, InputError, Mode, ModelError
from dragon_server.engine.validate import check_request, check_size
from dragon_server.threads import ThreadsError, add_threads_argument, thread_count, use_threads


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "edit", help="edit an image file (move, drag, appearance, paste)",
        description="Run one DragonDiffusion edit. Masks are grey images of the image's size (white = inside); "
                    "coordinates are image pixels.")
    p.add_argument("image", help="the image to edit (PNG, JPEG, ...)")
    p.add_argument("--mode", required=True, choices=[m.value for m in Mode])
    p.add_argument("--out", required=True, help="where to write the edited image (PNG)")
    p.add_argument("--mask", help="object mask (move, appearance) or editable region (drag, optional)")
    p.add_argument("--arrow", action="append", default=[], metavar="X0,Y0,X1,Y1", type=_arrow,
                   help="from start to end point, in pixels; repeat for several drag points")
    p.add_argument("--scale", type=float, default=1.0, help="object scale factor (move/resize, paste)")
    p.add_argument("--reference", help="reference image (appearance, paste)")
    p.add_argument("--reference-mask", help="the reference object's mask (appearance, paste)")
    p.add_argument("--prompt", default="", help="optional text describing the image")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps (default 50)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--strength", type=float, default=1.0, help="multiplies the mode's guidance strength")
    p.add_argument("--working-area", type=int, help="pixel area the edit region is scaled to")
    p.add_argument("--guidance", choices=["release", "paper"], default="release",
                   help="release (default): exactly as the authors' release computes a guided step (a separate "
                        "feature pass, two gradients each kept in its region); paper: as the paper writes it, one "
                        "UNet pass gives features and noise and one gradient of the total energy (faster, "
                        "experimental)")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", type=_setting,
                   help="override one of the method's weights or schedule values")
    p.add_argument("--model", default="sd15", help="sd15 (default, downloaded once), tiny, sd15-random, "
                   "a diffusers folder or a .safetensors/.ckpt file")
    p.add_argument("--device", default="auto", help="auto, cuda, mps or cpu")
    p.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], help="default: fp16 on GPUs, fp32 on CPU")
    add_threads_argument(p)
    p.add_argument("--mask-out", help="also write the blend mask (white where the image changed)")
    p.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    p.add_argument("--server", help="run the edit on a dragon server at this address instead")
    p.add_argument("--server-key", help="the server's public key file (CurveZMQ)")
    p.add_argument("--client-key", help="this client's secret key file (CurveZMQ)")
    p.set_defaults(run=run)


def _arrow(text: str) -> Tuple[float, float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 4:
        raise argparse.ArgumentTypeError(f"arrow '{text}' must be four numbers X0,Y0,X1,Y1")
    return values


def _setting(text: str) -> Tuple[str, float]:
    name, _, value = text.partition("=")
    try:
        return name.strip(), float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"setting '{text}' must be NAME=NUMBER") from None


def _open(path: Optional[str], what: str) -> Optional[Image.Image]:
    """The image file at `path`, its size checked before it is decoded (Pillow's own decompression-bomb
    limit is replaced by the engine's size limit, so that every size gets the same message)."""
    if path is None:
        return None
    limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        with Image.open(path) as im:
            check_size(im.size, what)
            im.load()
            return im
    except FileNotFoundError:
        raise InputError(f"{what} file {path} does not exist") from None
    except IsADirectoryError:
        raise InputError(f"{what} file {path} is a folder: give an image file") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise InputError(f"{what} file {path} is not an image Pillow can read (use PNG or JPEG)") from None
    finally:
        Image.MAX_IMAGE_PIXELS = limit


class _Bars:
    """One terminal progress bar per stage."""

    def __init__(self) -> None:
        from tqdm.auto import tqdm

        self._tqdm = tqdm
        self.stage: Optional[str] = None
        self.bar = None

    def __call__(self, event) -> None:
        if event.stage != self.stage:
            self.close()
            self.stage = event.stage
            self.bar = self._tqdm(total=event.total, desc=event.stage, unit="step", file=sys.stderr, leave=False)
        self.bar.update(event.step - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _check_output(option: str, path: str) -> None:
    if os.path.isdir(path):
        raise InputError(f"{option} {path} is a folder: give a file name such as {os.path.join(path, 'out.png')}")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise InputError(f"the folder of {option} {path} does not exist: create it first")
    if not os.access(folder, os.W_OK):
        raise InputError(f"the folder of {option} {path} is not writable: pick another place")


def check_outputs(args: argparse.Namespace) -> None:
    """Raise InputError, before any work, when --out or --mask-out cannot be written."""
    if not args.out.lower().endswith(".png"):
        raise InputError(f"--out {args.out} must end in .png (the edit is written losslessly)")
    _check_output("--out", args.out)
    if args.mask_out is not None:
        extension = os.path.splitext(args.mask_out)[1].lower()
        if Image.registered_extensions().get(extension) not in Image.SAVE:
            raise InputError(f"--mask-out {args.mask_out} needs an image extension such as .png")
        _check_output("--mask-out", args.mask_out)


def build_request(args: argparse.Namespace) -> EditRequest:
    """The EditRequest described by the command line (files opened, nothing checked yet)."""
    settings: Dict[str, float] = dict(args.set)
    return EditRequest(
        mode=Mode(args.mode), image=_open(args.image, "image"), mask=_open(args.mask, "mask"),
        arrows=list(args.arrow), scale=args.scale, reference=_open(args.reference, "reference image"),
        reference_mask=_open(args.reference_mask, "reference mask"), prompt=args.prompt, steps=args.steps,
        seed=args.seed, strength=args.strength, working_area=args.working_area, settings=settings,
        guidance=args.guidance)


def run(args: argparse.Namespace) -> int:
    bars = _Bars()
    try:
        check_outputs(args)
        thread_count(args.threads)
        request = build_request(args)
        if args.server:
            from dragon_server.serve.endpoints import EndpointError, check_endpoint

            try:
                check_endpoint(args.server)
            except EndpointError as error:
                raise InputError(str(error)) from None
            request = check_request(request)  # the same one-line refusals as in this process, before sending
            from dragon_server.serve.client import run_remote_edit

            result = run_remote_edit(request, args.server, server_key=args.server_key,
                                     client_key=args.client_key, progress=bars)
            model, device = "server", args.server
        else:
            from dragon_server.engine import Engine

            use_threads(args.threads)
            engine = Engine.load(args.model, args.device, args.dtype)
            result = engine.edit(request, progress=bars)
            model, device = engine.model_name, engine.device
    except EditCancelled:
        bars.close()
        sys.stderr.write("dragon edit: cancelled\n")
        return 130
    except (InputError, ModelError, ThreadsError) as exc:
        bars.close()
        sys.stderr.write(f"dragon edit: error: {exc}\n")
        return 2
    except EditError as exc:
        bars.close()
        sys.stderr.write(f"dragon edit: error: {exc}\n")
        return 1
    bars.close()
    for warning in result.warnings:
        sys.stderr.write(f"dragon edit: warning: {warning}\n")
    result.image.save(args.out)
    if args.mask_out:
        result.mask.save(args.mask_out)
    if args.json:
        summary = {
            "out": args.out, "mode": args.mode, "guidance": args.guidance, "model": model, "device": device,
            "box": list(result.box),
            "working_size": list(result.working_size), "timings": {k: round(v, 4) for k, v in result.timings.items()},
            "unet_evaluations": result.unet_evaluations, "warnings": result.warnings,
        }
        json.dump(summary, sys.stdout)
        sys.stdout.write("\n")
    else:
        sys.stderr.write(f"wrote {args.out}\n")
    return 0
