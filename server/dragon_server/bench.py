"""`dragon bench` (also `python -m dragon_server.bench`): the cost of an edit, stage by stage, for a
first edit and a repeat edit of the same picture with another arrow, next to a `reference` schedule
that reproduces the cost profile of the authors' release in the same process (its guidance: features
from a separate pass, two backward passes per guided step; no reuse between edits, CFG always on,
guidance-branch features recomputed at every guided evaluation, feature and noise passes apart, the
memory bank kept in host memory and moved at each use)."""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from dragon_server.engine import GUIDANCES, EditRequest, Engine, Mode
from dragon_server.engine.engine import Economy
from dragon_server.engine.meter import Meter
from dragon_server.engine.models import load_components

STAGES = ("inversion", "reference", "source_features", "sampling", "guidance", "decode", "blend", "other", "total")


def scene(size: int, seed: int = 0):
    """A smooth, textured picture with a disc to move, and the disc's mask."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    base = np.stack([0.5 + 0.4 * np.sin(6 * x), 0.5 + 0.4 * np.cos(5 * y), 0.5 + 0.3 * np.sin(4 * (x + y))], -1)
    base = np.clip(base + rng.normal(0, 0.05, base.shape), 0, 1)
    image = Image.fromarray((base * 255).astype(np.uint8), "RGB")
    mask = Image.new("L", (size, size), 0)
    c, r = (0.3 * size, 0.4 * size), 0.12 * size
    box = (c[0] - r, c[1] - r, c[0] + r, c[1] + r)
    ImageDraw.Draw(image).ellipse(box, fill=(200, 60, 40))
    ImageDraw.Draw(mask).ellipse(box, fill=255)
    return image, mask, c


def measure(engine: Engine, request: EditRequest, count_flops: bool) -> Dict[str, Dict[str, float]]:
    """Run one edit under a meter; the per-stage figures."""
    meter = Meter(engine.components.device, count_flops)
    engine.runner.meter = meter
    try:
        with meter.active():
            engine.edit(request)
    finally:
        engine.runner.meter = None
    return meter.report()


def edits(size: int, steps: int, guidance: str):
    """The benchmark's first edit and repeat edit (same picture, another arrow)."""
    image, mask, c = scene(size)
    common = dict(mask=mask, steps=steps, working_area=size * size, guidance=guidance)
    return (EditRequest(Mode.MOVE, image, arrows=[(c[0], c[1], c[0] + 0.25 * size, c[1])], **common),
            EditRequest(Mode.MOVE, image, arrows=[(c[0], c[1], c[0], c[1] + 0.2 * size)], **common))


def run_size(components, size: int, steps: int, count_flops: bool, reference_repeat: bool,
             guidances: Sequence[str] = GUIDANCES) -> Dict[str, object]:
    """Our first and repeat edit with each of `guidances` (release, paper), and the reference schedule's
    (the release's cost profile: release guidance, no savings)."""
    area = size * size
    reference = Engine(components, economy=Economy.reference())
    # Warm up (lazy initialisation, kernel selection) on another picture, outside the figures.
    warm_image, warm_mask, wc = scene(size, seed=1)
    Engine(components, cache_bytes=0).edit(EditRequest(
        Mode.MOVE, warm_image, mask=warm_mask, arrows=[(wc[0], wc[1], wc[0] + 8, wc[1])], steps=2, working_area=area))
    runs = {}
    cache_bytes = {}
    for guidance in guidances:
        ours = Engine(components, cache_bytes=1 << 40)  # the benchmark measures reuse: keep what it makes
        first, repeat = edits(size, steps, guidance)
        runs[f"{guidance}_first"] = measure(ours, first, count_flops)
        runs[f"{guidance}_repeat"] = measure(ours, repeat, count_flops)
        cache_bytes[guidance] = ours.cache.nbytes
    reference_first, reference_repeat_edit = edits(size, steps, "release")
    runs["reference_first"] = measure(reference, reference_first, count_flops)
    runs["reference_repeat"] = (measure(reference, reference_repeat_edit, count_flops) if reference_repeat
                                else runs["reference_first"])
    ratios: Dict[str, Dict[str, Dict[str, float]]] = {}
    for guidance in guidances:
        ratios[guidance] = {}
        for kind in ("first", "repeat"):
            ours_total, ref_total = runs[f"{guidance}_{kind}"]["total"], runs[f"reference_{kind}"]["total"]
            ratios[guidance][kind] = {key: ours_total.get(key, 0) / ref_total[key]
                                      for key in ("seconds", "flops", "peak_bytes") if ref_total.get(key)}
    return {"guidances": list(guidances), "runs": runs, "ratios": ratios, "cache_bytes": cache_bytes,
            "reference_repeat_measured": reference_repeat}


def _median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_protocol(size: int, repeats: int = 3) -> Dict[str, float]:
    """What going through a server on loopback adds to the same `tiny` edit run in this process, and
    how much of that is PNG encoding and decoding."""
    from dragon_protocol import Hello, Welcome
    from dragon_server.serve.client import run_remote_edit
    from dragon_server.serve.link import ServerLink

    threads = torch.get_num_threads()
    image, mask, c = scene(size)
    request = EditRequest(Mode.MOVE, image, mask=mask, arrows=[(c[0], c[1], c[0] + 0.1 * size, c[1])], steps=4)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        endpoint = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    server = subprocess.Popen([sys.executable, "-m", "dragon_server.cli", "serve", "--model", "tiny", "--device",
                               "cpu", "--bind", endpoint], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        link = ServerLink(endpoint)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            link.send(Hello(client="bench"))
            reply = link.receive(1.0)
            if isinstance(reply, Welcome) and reply.state == "ready":
                break
        link.close()
        local = Engine.load("tiny", "cpu")
        result = local.edit(request)  # warm both sides: the same picture is reused from here on
        run_remote_edit(request, endpoint)
        in_process = _median_seconds(lambda: local.edit(request), repeats)
        remote = _median_seconds(lambda: run_remote_edit(request, endpoint), repeats)
    finally:
        server.terminate()
        server.wait(30)
    x, y, w, h = result.box

    def png_round_trip() -> None:
        for picture in (image, mask, result.image.crop((x, y, x + w, y + h)), result.mask.crop((x, y, x + w, y + h))):
            data = io.BytesIO()
            picture.save(data, "PNG")
            Image.open(io.BytesIO(data.getvalue())).load()

    png = _median_seconds(png_round_trip, repeats)
    return {"size": size, "in_process_seconds": in_process, "remote_seconds": remote, "png_seconds": png,
            "overhead_seconds": remote - in_process, "overhead_beyond_png_seconds": remote - in_process - png}


def machine(device: torch.device) -> Dict[str, str]:
    info = {"platform": platform.platform(), "cpus": str(os.cpu_count()), "torch": torch.__version__}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def print_table(size: int, result: Dict[str, object]) -> None:
    out = sys.stdout
    out.write(f"\n{size}x{size}\n")
    out.write(f"{'run':18} {'stage':16} {'seconds':>9} {'GFLOP':>11} {'fwd':>5} {'feat':>5} {'bwd':>5} "
              f"{'peak GiB':>9}\n")
    for run, stages in result["runs"].items():
        for stage in STAGES:
            f = stages.get(stage)
            if not f:
                continue
            peak = f"{f['peak_bytes'] / 2**30:9.2f}" if f.get("peak_bytes") else f"{'-':>9}"
            out.write(f"{run:18} {stage:16} {f.get('seconds', 0):9.2f} {f.get('flops', 0) / 1e9:11.1f} "
                      f"{int(f.get('forward', 0)):5d} {int(f.get('features', 0)):5d} {int(f.get('backward', 0)):5d} "
                      f"{peak}\n")
    for guidance, by_kind in result["ratios"].items():
        for kind, r in by_kind.items():
            parts = ", ".join(f"{k.replace('_bytes', '')} {v:.2f}x" for k, v in r.items())
            out.write(f"{kind} edit / reference, {guidance} guidance: {parts}\n")


def run(args: argparse.Namespace) -> int:
    """Measure what `args` asks for; `args` as checked by `dragon_server.commands.bench.check`, with the
    thread count set."""
    from dragon_server.engine.request import EditError

    if args.protocol:
        figures = measure_protocol(args.protocol)
        ms = {k: v * 1000 for k, v in figures.items()}
        sys.stdout.write(
            f"protocol overhead at {args.protocol}x{args.protocol} (tiny model, loopback): in-process "
            f"{ms['in_process_seconds']:.0f} ms, through the server {ms['remote_seconds']:.0f} ms; adds "
            f"{ms['overhead_seconds']:.0f} ms, of which PNG {ms['png_seconds']:.0f} ms "
            f"-> {ms['overhead_beyond_png_seconds']:.0f} ms beyond PNG\n")
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"protocol": figures}, f, indent=1)
        return 0
    try:
        components = load_components(args.model, args.device, args.dtype)
    except EditError as exc:
        sys.stderr.write(f"dragon bench: error: {exc}\n")
        return 2
    guidances = list(GUIDANCES) if args.guidance == "both" else [args.guidance]
    report: Dict[str, object] = {
        "model": args.model, "device": str(components.device), "dtype": str(components.dtype).replace("torch.", ""),
        "steps": args.steps, "guidances": guidances, "machine": machine(components.device), "sizes": {},
    }
    sys.stdout.write(f"dragon bench: {args.model} on {components.device} "
                     f"({report['machine'].get('gpu', platform.processor() or 'CPU')}), {report['dtype']}, "
                     f"{args.steps} steps, {' and '.join(guidances)} guidance against the reference\n")
    for size in args.sizes:
        result = run_size(components, size, args.steps, not args.no_flops, not args.reference_once, guidances)
        report["sizes"][str(size)] = result
        print_table(size, result)
        sys.stdout.flush()
        if args.json:
            with open(args.json, "w") as f:
                json.dump(report, f, indent=1)
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    from dragon_server.commands import bench as command

    p = argparse.ArgumentParser(prog="python -m dragon_server.bench", description=__doc__)
    command.add_arguments(p)
    return command.run(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
