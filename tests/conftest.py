"""Shared fixtures: the random-weight `tiny` engine and a small synthetic scene."""

from __future__ import annotations

import os

# One math thread in this process and in every command and server the tests start: on a small shared
# machine PyTorch's default threads spin against each other (the suite ran 20x slower under load).
for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402


def pytest_configure(config):
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture(scope="session")
def tiny_engine():
    from dragon_server.engine import Engine

    return Engine.load("tiny", device="cpu")


def make_scene(size=(128, 128), seed: int = 0):
    """A noisy background with a red disc; returns (image, disc mask)."""
    rng = np.random.default_rng(seed)
    image = Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype(np.uint8), "RGB")
    ImageDraw.Draw(image).ellipse((30, 40, 60, 70), fill=(200, 50, 50))
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).ellipse((30, 40, 60, 70), fill=255)
    return image, mask


@pytest.fixture
def scene():
    return make_scene()


def pytest_terminal_summary(terminalreporter):
    """Print the reliability campaign's figures (cases fuzzed, requests, faults) when its tests ran."""
    from campaign import FIGURES, SOAK

    if FIGURES:
        terminalreporter.section(f"reliability figures (soak level {SOAK})")
        for name, value in sorted(FIGURES.items()):
            terminalreporter.write_line(f"{name}: {value}")
