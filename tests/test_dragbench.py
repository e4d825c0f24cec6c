"""`dragon bench dragbench` end to end on a small fabricated DragBench-layout folder, with `tiny`."""

import json
import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from dragon_server.cli import main
from dragon_server.dragbench import DragBenchError, PointMatcher, find_samples, read_sample
from dragon_server.engine.models import load_components


def _sample(folder, seed, meta_format):
    os.makedirs(folder)
    rng = np.random.default_rng(seed)
    image = Image.fromarray((rng.random((96, 128, 3)) * 255).astype(np.uint8), "RGB")
    ImageDraw.Draw(image).ellipse((30, 30, 60, 60), fill=(220, 40, 40))
    image.save(os.path.join(folder, "original_image.png"))
    mask = np.zeros((96, 128), np.uint8)
    mask[20:80, 20:100] = 1
    meta = {"prompt": "a red disc", "points": [[45, 45], [70, 50], [40, 35], [52, 30]], "mask": mask}
    if meta_format == "pkl":
        with open(os.path.join(folder, "meta_data.pkl"), "wb") as f:
            pickle.dump(meta, f)
    else:
        Image.fromarray(mask * 255).save(os.path.join(folder, "mask.png"))
        meta["mask"] = "mask.png"
        with open(os.path.join(folder, "meta_data.json"), "w") as f:
            json.dump(meta, f)


class Lpips(torch.nn.Module):
    """A fabricated LPIPS-shaped network: mean squared difference of random conv features."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 4, 3, stride=4)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (self.conv(a) - self.conv(b)).pow(2).mean(dim=(1, 2, 3))


@pytest.fixture
def bench_folder(tmp_path):
    root = tmp_path / "drag_bench_data"
    _sample(str(root / "animals" / "s1"), 1, "pkl")
    _sample(str(root / "art_work" / "s2"), 2, "json")
    return root


def test_harness_runs_every_sample_and_reports_md_and_if(bench_folder, tmp_path, capsys):
    lpips = tmp_path / "lpips.pt2"
    example = (torch.zeros(1, 3, 224, 224), torch.zeros(1, 3, 224, 224))
    torch.export.save(torch.export.export(Lpips(), example), str(lpips))
    out, report = tmp_path / "out", tmp_path / "report.json"
    code = main(["bench", "dragbench", "--data", str(bench_folder), "--model", "tiny", "--device", "cpu",
                 "--steps", "3", "--ensemble", "2", "--lpips", str(lpips), "--out", str(out), "--json", str(report)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "2 samples, 4 points: MD" in printed and "IF (1 - LPIPS) 0." in printed
    figures = json.loads(report.read_text())
    assert [r["sample"] for r in figures["rows"]] == ["animals/s1", "art_work/s2"]
    for row in figures["rows"]:
        assert len(row["distances"]) == 2 and all(0 <= d <= 160 for d in row["distances"])
        assert row["lpips"] > 0
    assert 0 < figures["totals"]["if"] < 1
    assert (out / "animals" / "s1" / "dragged_image.png").is_file()


def test_point_matcher_finds_an_unchanged_point_where_it_was():
    components = load_components("tiny", "cpu")
    matcher = PointMatcher(components, ensemble=2)
    image = Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8), "RGB")
    features = matcher.features(image, "")
    assert features.shape[1:] == (64, 64)
    assert matcher.match(features, features, (20, 30)) == (20.0, 30.0)


def test_a_pickle_that_would_run_code_is_refused(bench_folder):
    folder = bench_folder / "animals" / "s1"

    class Boom:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    with open(folder / "meta_data.pkl", "wb") as f:
        pickle.dump({"prompt": Boom(), "points": [], "mask": None}, f)
    with pytest.raises(DragBenchError, match="not plain data"):
        read_sample(str(folder), "animals/s1")


@pytest.mark.parametrize("meta, message", [
    ({"prompt": "x", "points": [[1, 2]]}, "alternate handle and target"),
    ({"prompt": "x", "points": "nope"}, "list of \\[x, y\\] pairs"),
    ({"prompt": "x", "points": [[1, 2], [3, 4]], "mask": np.zeros((5, 5))}, "the mask is"),
])
def test_malformed_samples_get_one_line_reasons(bench_folder, meta, message):
    folder = bench_folder / "animals" / "s1"
    with open(folder / "meta_data.pkl", "wb") as f:
        pickle.dump(meta, f)
    with pytest.raises(DragBenchError, match=message):
        read_sample(str(folder), "animals/s1")


def test_bad_folders_and_options_exit_2_with_one_line(tmp_path, capsys):
    assert main(["bench", "dragbench", "--data", str(tmp_path / "missing"), "--model", "tiny"]) == 2
    assert "is not a folder" in capsys.readouterr().err
    with pytest.raises(DragBenchError, match="no sample folders"):
        find_samples(str(tmp_path))
    (tmp_path / "a").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "a" / "original_image.png")
    (tmp_path / "lp.pt2").write_bytes(b"not a network")
    assert main(["bench", "dragbench", "--data", str(tmp_path), "--model", "tiny", "--lpips",
                 str(tmp_path / "lp.pt2")]) == 2
    err = capsys.readouterr().err
    assert "not a usable exported LPIPS network" in err and len(err.strip().splitlines()) == 1
