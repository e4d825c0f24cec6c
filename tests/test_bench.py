"""`dragon bench` smoke test with `tiny`: every figure is there, and the counts tell the savings."""

import json

import pytest
import torch
import torch.nn.functional as F

from dragon_server.bench import main
from dragon_server.engine.meter import Meter


def test_bench_reports_stages_ratios_and_savings(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["--model", "tiny", "--sizes", "128", "--steps", "10", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    for guidance in ("release", "paper"):
        assert f"first edit / reference, {guidance} guidance" in printed
        assert f"repeat edit / reference, {guidance} guidance" in printed
    report = json.loads(out.read_text())
    assert report["model"] == "tiny" and report["steps"] == 10 and "platform" in report["machine"]
    assert report["guidances"] == ["release", "paper"]
    runs = report["sizes"]["128"]["runs"]
    first, repeat, ref = runs["release_first"], runs["release_repeat"], runs["reference_first"]
    for run in (first, repeat, ref):
        assert run["total"]["seconds"] > 0 and run["total"]["flops"] > 0
    # the repeat skips inversion and guidance-branch features; the reference does everything every time
    assert "inversion" in first and "inversion" not in repeat and "source_features" not in repeat
    assert repeat["total"]["forward"] == first["total"]["forward"] - 10
    assert ref["sampling"]["forward"] > first["sampling"]["forward"]  # CFG always on
    assert ref["source_features"]["features"] > first["source_features"]["features"]
    assert repeat["total"]["flops"] < first["total"]["flops"] < ref["total"]["flops"]
    ratios = report["sizes"]["128"]["ratios"]
    for guidance in ("release", "paper"):
        assert 0 < ratios[guidance]["repeat"]["flops"] < ratios[guidance]["first"]["flops"] < 1
    assert ratios["paper"]["first"]["flops"] < ratios["release"]["first"]["flops"]
    assert runs["paper_first"]["total"]["backward"] * 2 == first["total"]["backward"]
    assert runs["reference_repeat"]["total"]["flops"] == pytest.approx(ref["total"]["flops"], rel=0.01)


def test_bench_measures_what_the_server_adds(tmp_path, capsys):
    out = tmp_path / "protocol.json"
    assert main(["--protocol", "256", "--json", str(out)]) == 0
    assert "beyond PNG" in capsys.readouterr().out
    figures = json.loads(out.read_text())["protocol"]
    assert figures["size"] == 256
    assert figures["remote_seconds"] > 0 and figures["in_process_seconds"] > 0 and figures["png_seconds"] > 0


def test_meter_counts_attention_on_the_cpu_too():
    q = torch.randn(1, 8, 256, 40)
    meter = Meter(torch.device("cpu"))
    with meter.active(), meter.stage("attention"):
        F.scaled_dot_product_attention(q, q, q)
    assert meter.report()["attention"]["flops"] == 2 * (2 * 8 * 256 * 256 * 40)  # QK^T and AV
