"""`dragon bench dragbench --data DIR`: every sample of a DragBench folder through drag mode, scored as
the published tables score it.

A DragBench folder holds one folder per sample (usually grouped in category folders), each with
`original_image.png` and the drag: a prompt, points (x, y in the image's pixels, handle and target
alternating) and a mask (non-zero where the image may change). The public release stores these in
`meta_data.pkl`; a `meta_data.json` ({"prompt": str, "points": [[x, y], ...], "mask": "mask.png"}) is read
first when present. Pickles are read with an unpickler that builds only plain data and numpy arrays,
so a pickle in a folder you point this at cannot run code.

Figures, as DragDiffusion's evaluation computes them:
- MD (mean distance, pixels): for each handle point, the point of the edited image whose DIFT-style
  feature (decoder block 1 of `--md-model`'s UNet, the image noised to t = 261, averaged over an
  ensemble of noises) is most similar (cosine) to the handle's feature in the original; its distance
  to the target point. Published tables use Stable Diffusion 2.1's features; SD 2.x is not an SD 1.x
  model this engine loads, so MD here uses an SD 1.x model's (say which in any comparison).
- IF (image fidelity) = 1 - LPIPS between the original and the edited image at 224 x 224 in [-1, 1].
  LPIPS needs trained network weights that are not downloaded here: `--lpips FILE` names a network
  saved with `torch.export.save` that takes two (N, 3, 224, 224) tensors and returns N distances
  (QUALITY.md shows how to make one from the `lpips` package); without it IF is not reported.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import pickle
import sys
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from dragon_server.engine import EditRequest, Engine, Mode
from dragon_server.engine.models import Components, load_components
from dragon_server.engine.runner import Runner

Point = Tuple[float, float]


class DragBenchError(Exception):
    """A sample or option that cannot be used; the message says which and why, in one line."""


@dataclass
class Sample:
    """One DragBench sample: the image (RGB), the editable region (L, 255 inside) or None, handle and
    target points (x, y pixels, pairwise), and the prompt."""

    name: str
    image: Image.Image
    mask: Optional[Image.Image]
    handles: List[Point]
    targets: List[Point]
    prompt: str


class _PlainData(pickle.Unpickler):
    """Builds only numpy arrays and scalars besides the built-in containers (no other class, no code)."""

    ALLOWED = {
        ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not plain data")


def _read_meta(folder: str) -> dict:
    path = os.path.join(folder, "meta_data.json")
    if os.path.isfile(path):
        with open(path) as f:
            meta = json.load(f)
        if isinstance(meta.get("mask"), str):
            meta["mask"] = np.asarray(Image.open(os.path.join(folder, meta["mask"])).convert("L"))
        return meta
    path = os.path.join(folder, "meta_data.pkl")
    with open(path, "rb") as f:
        return _PlainData(io.BytesIO(f.read())).load()


def read_sample(folder: str, name: str) -> Sample:
    """The sample in `folder`; raises DragBenchError (one line) when it is incomplete or malformed."""
    try:
        image = Image.open(os.path.join(folder, "original_image.png")).convert("RGB")
        meta = _read_meta(folder)
    except FileNotFoundError as exc:
        raise DragBenchError(f"{name}: {os.path.basename(exc.filename)} is missing") from None
    except (OSError, ValueError, pickle.UnpicklingError, EOFError) as exc:
        raise DragBenchError(f"{name}: unreadable sample ({str(exc).splitlines()[0] or type(exc).__name__})") from None
    if not isinstance(meta, dict):
        raise DragBenchError(f"{name}: the meta data is not a dictionary")
    points = meta.get("points")
    try:
        pts = [(float(p[0]), float(p[1])) for p in points]
    except (TypeError, ValueError, IndexError, KeyError):
        raise DragBenchError(f"{name}: 'points' must be a list of [x, y] pairs") from None
    if len(pts) < 2 or len(pts) % 2:
        raise DragBenchError(f"{name}: 'points' must alternate handle and target points (got {len(pts)} points)")
    mask = None
    if meta.get("mask") is not None:
        arr = np.asarray(meta["mask"])
        if arr.ndim == 3:
            arr = arr[..., 0]
        if arr.shape != (image.height, image.width):
            raise DragBenchError(f"{name}: the mask is {arr.shape[::-1]} but the image is {image.size}")
        mask = Image.fromarray(((arr > 0) * 255).astype(np.uint8), "L")
    prompt = meta.get("prompt", "")
    return Sample(name, image, mask, pts[0::2], pts[1::2], prompt if isinstance(prompt, str) else "")


def find_samples(root: str) -> List[str]:
    """Every folder under `root` holding an original_image.png, sorted; raises DragBenchError if none."""
    if not os.path.isdir(root):
        raise DragBenchError(f"{root} is not a folder: give the DragBench folder (categories of sample folders)")
    found = sorted(d for d, _, files in os.walk(root) if "original_image.png" in files)
    if not found:
        raise DragBenchError(f"{root} has no sample folders (folders with original_image.png)")
    return found


class PointMatcher:
    """DIFT-style correspondence with one model's UNet: features of decoder block 1 of the image noised
    to `timestep`, averaged over `ensemble` noises from `seed`."""

    def __init__(self, components: Components, timestep: int = 261, ensemble: int = 8, seed: int = 42):
        self.c = components
        self.runner = Runner(components)
        self.timestep = timestep
        self.ensemble = ensemble
        self.seed = seed

    @torch.no_grad()
    def features(self, image: Image.Image, prompt: str) -> torch.Tensor:
        """Unit-length features (C, H, W) at the image's own size, float32."""
        w, h = image.size
        side = (max(64, int(round(w / 64)) * 64), max(64, int(round(h / 64)) * 64))
        latent = self.runner.encode(image.resize(side, Image.Resampling.BICUBIC))
        alpha = float(self.c.scheduler.alphas_cumprod[self.timestep])
        generator = torch.Generator().manual_seed(self.seed)
        noise = torch.randn((self.ensemble, *latent.shape[1:]), generator=generator).to(latent.device, latent.dtype)
        noisy = math.sqrt(alpha) * latent + math.sqrt(1 - alpha) * noise
        t = torch.tensor(self.timestep, device=latent.device)
        state = self.runner.trunk(noisy, t, self.runner.text(prompt))
        block1 = self.runner.features_from(state)[0].float().mean(0, keepdim=True)
        up = F.interpolate(block1, size=(h, w), mode="bilinear", align_corners=False)[0]
        return F.normalize(up, dim=0)

    @staticmethod
    def match(source: torch.Tensor, edited: torch.Tensor, point: Point) -> Point:
        """The (x, y) of `edited` whose feature is most similar to `source`'s at `point`."""
        _, h, w = source.shape
        x, y = min(w - 1, max(0, int(round(point[0])))), min(h - 1, max(0, int(round(point[1]))))
        similarity = torch.einsum("c,chw->hw", source[:, y, x], edited)
        row, col = divmod(int(similarity.argmax()), w)
        return float(col), float(row)


def mean_distances(matcher: PointMatcher, sample: Sample, edited: Image.Image) -> List[float]:
    """Per handle point: pixels from where its content is found in `edited` to its target."""
    source = matcher.features(sample.image, sample.prompt)
    after = matcher.features(edited.convert("RGB").resize(sample.image.size, Image.Resampling.BILINEAR),
                             sample.prompt)
    return [math.dist(matcher.match(source, after, h), t) for h, t in zip(sample.handles, sample.targets)]


def load_lpips(path: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """An exported LPIPS network (`torch.export.save`, a .pt2 file) from `path`; raises DragBenchError
    when it is not one."""
    if not os.path.isfile(path):
        raise DragBenchError(f"--lpips {path} does not exist: give an exported LPIPS network (see docs/QUALITY.md)")
    try:
        net = torch.export.load(path).module()
        probe = net(torch.zeros(1, 3, 224, 224), torch.zeros(1, 3, 224, 224))
    except Exception as exc:  # torch raises many types for foreign files
        raise DragBenchError(f"--lpips {path} is not a usable exported LPIPS network ({type(exc).__name__})") from None
    if probe.numel() != 1:
        raise DragBenchError(f"--lpips {path} must return one distance per image pair")
    return net


def to_lpips_input(image: Image.Image) -> torch.Tensor:
    """(1, 3, 224, 224) float32 in [-1, 1], bilinear, as the published evaluation prepares images."""
    x = torch.from_numpy(np.asarray(image.convert("RGB"), np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
    return F.interpolate(x, size=(224, 224), mode="bilinear", align_corners=False)


def run_samples(engine: Engine, folders: Sequence[str], root: str, matcher: PointMatcher,
                lpips: Optional[Callable], steps: int, guidance: str, out: Optional[str] = None,
                progress: Optional[Callable[[str], None]] = None) -> List[Dict[str, object]]:
    """Edit every sample; a row per sample with its distances, LPIPS (or None) and seconds."""
    rows = []
    for folder in folders:
        name = os.path.relpath(folder, root)
        if progress is not None:
            progress(name)
        sample = read_sample(folder, name)
        arrows = [(h[0], h[1], t[0], t[1]) for h, t in zip(sample.handles, sample.targets)]
        start = time.perf_counter()
        result = engine.edit(EditRequest(Mode.DRAG, sample.image, mask=sample.mask, arrows=arrows,
                                         prompt=sample.prompt, steps=steps, guidance=guidance))
        seconds = time.perf_counter() - start
        if out is not None:
            os.makedirs(os.path.join(out, name), exist_ok=True)
            result.image.save(os.path.join(out, name, "dragged_image.png"))
        distance = None
        if lpips is not None:
            with torch.no_grad():
                distance = float(lpips(to_lpips_input(sample.image), to_lpips_input(result.image)).reshape(-1)[0])
        rows.append({"sample": name, "distances": mean_distances(matcher, sample, result.image), "lpips": distance,
                     "seconds": seconds})
    return rows


def totals(rows: Sequence[Dict[str, object]]) -> Dict[str, Optional[float]]:
    """MD over all handle points, IF = 1 - mean LPIPS (None without LPIPS), and the mean seconds."""
    distances = [d for r in rows for d in r["distances"]]  # type: ignore[attr-defined]
    lp = [r["lpips"] for r in rows if r["lpips"] is not None]
    return {"samples": len(rows), "points": len(distances), "md": float(np.mean(distances)),
            "if": 1 - float(np.mean(lp)) if lp else None, "seconds": float(np.mean([r["seconds"] for r in rows]))}


def run(args: argparse.Namespace) -> int:
    """Load the models, run the samples, print the table (and write the JSON)."""
    from dragon_server.engine.request import EditError

    def fail(message: str) -> int:
        sys.stderr.write(f"dragon bench dragbench: error: {message}\n")
        return 2

    if args.steps < 2 or args.ensemble < 1 or (args.limit is not None and args.limit < 1):
        return fail("--steps must be at least 2, --ensemble and --limit at least 1")
    try:
        folders = find_samples(args.data)[: args.limit]
        lpips = load_lpips(args.lpips) if args.lpips else None
        engine = Engine.load(args.model, args.device, args.dtype)
        md_components = (engine.components if not args.md_model or args.md_model == args.model
                         else load_components(args.md_model, args.device, args.dtype))
        matcher = PointMatcher(md_components, ensemble=args.ensemble)
        rows = run_samples(engine, folders, args.data, matcher, lpips, args.steps, args.guidance, args.out,
                           lambda name: (sys.stderr.write(f"  {name}\n"), sys.stderr.flush()))
    except (DragBenchError, EditError) as exc:
        return fail(str(exc))
    sys.stdout.write(f"{'sample':40} {'MD px':>8} {'LPIPS':>7} {'sec':>7}\n")
    for r in rows:
        lp = f"{r['lpips']:7.3f}" if r["lpips"] is not None else f"{'-':>7}"
        sys.stdout.write(f"{r['sample'][:40]:40} {np.mean(r['distances']):8.1f} {lp} {r['seconds']:7.1f}\n")
    total = totals(rows)
    fidelity = f"{total['if']:.3f}" if total["if"] is not None else "not measured (no --lpips)"
    sys.stdout.write(f"{total['samples']} samples, {total['points']} points: MD {total['md']:.2f} px, "
                     f"IF (1 - LPIPS) {fidelity}; MD features from {args.md_model or args.model}, "
                     f"{args.guidance} guidance\n")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": args.model, "md_model": args.md_model or args.model, "guidance": args.guidance,
                       "steps": args.steps, "totals": total, "rows": rows}, f, indent=1)
    return 0
