"""Reuse between edits: a warm edit equals a cold one, the memory bound evicts, changes miss."""

import numpy as np
import pytest

from conftest import make_scene
from dragon_server.engine import EditRequest, Engine, Mode
from dragon_server.engine.settings import MethodSettings, Schedule


@pytest.fixture()
def engine(tiny_engine):
    fresh = Engine(tiny_engine.components, cache_bytes=1 << 30)
    yield fresh


def move(image, mask, arrow=(45, 55, 85, 60), **kw):
    return EditRequest(Mode.MOVE, image, mask=mask, arrows=[arrow], steps=6, seed=3, **kw)


@pytest.mark.parametrize("settings", [{}, {"release_guidance": 1}], ids=["paper", "release"])
def test_warm_edit_is_identical_to_a_cold_one_and_skips_the_source_work(engine, settings):
    image, mask = make_scene()
    cold = engine.edit(move(image, mask, settings=settings))
    assert engine.cache.info()["misses"] == 1 and len(engine.cache) == 1
    warm = engine.edit(move(image, mask, settings=settings))
    assert engine.cache.info()["hits"] == 1
    assert np.array_equal(np.asarray(cold.image), np.asarray(warm.image))
    # no inversion passes and no source-feature passes the second time
    assert warm.unet_evaluations["forward"] == cold.unet_evaluations["forward"] - 6
    source_feature_passes = len(Schedule.build(MethodSettings.for_mode(Mode.MOVE), 6).guided)
    assert warm.unet_evaluations.get("features", 0) == cold.unet_evaluations["features"] - source_feature_passes


def test_another_arrow_on_the_same_picture_reuses_it(engine):
    image, mask = make_scene()
    engine.edit(move(image, mask))
    other = engine.edit(move(image, mask, arrow=(45, 55, 60, 90)))
    assert engine.cache.info()["hits"] == 1
    cold = Engine(engine.components, cache_bytes=0).edit(move(image, mask, arrow=(45, 55, 60, 90)))
    assert np.array_equal(np.asarray(other.image), np.asarray(cold.image))


@pytest.mark.parametrize("change", ["pixel", "prompt", "steps", "mode-bank"])
def test_a_changed_picture_or_setting_misses(engine, change):
    image, mask = make_scene()
    engine.edit(move(image, mask))
    if change == "pixel":
        image = image.copy()
        image.putpixel((100, 100), (0, 0, 0))
        engine.edit(move(image, mask))
    elif change == "prompt":
        engine.edit(move(image, mask, prompt="a red ball"))
    elif change == "steps":
        engine.edit(EditRequest(Mode.MOVE, image, mask=mask, arrows=[(45, 55, 85, 60)], steps=5))
    else:  # appearance records the memory bank on other steps
        ref, ref_mask = make_scene(seed=9)
        engine.edit(EditRequest(Mode.APPEARANCE, image, mask=mask, reference=ref, reference_mask=ref_mask, steps=6))
    assert engine.cache.info()["hits"] == 0


def test_memory_bound_evicts_the_least_recently_used(tiny_engine):
    image, mask = make_scene()
    probe = Engine(tiny_engine.components, cache_bytes=1 << 30)
    probe.edit(move(image, mask))
    one = probe.cache.nbytes
    assert one > 0
    engine = Engine(tiny_engine.components, cache_bytes=int(one * 2.5))
    images = [make_scene(seed=s)[0] for s in range(3)]
    for im in images:
        engine.edit(move(im, mask))
    assert len(engine.cache) == 2 and engine.cache.nbytes <= engine.cache.max_bytes
    engine.edit(move(images[0], mask))  # evicted first: a miss
    assert engine.cache.info()["hits"] == 0
    engine.edit(move(images[2], mask))  # still there
    assert engine.cache.info()["hits"] == 1


def test_zero_bound_keeps_nothing(tiny_engine):
    image, mask = make_scene()
    engine = Engine(tiny_engine.components, cache_bytes=0)
    engine.edit(move(image, mask))
    engine.edit(move(image, mask))
    assert len(engine.cache) == 0 and engine.cache.info()["hits"] == 0


def test_a_picture_bigger_than_the_bound_is_not_kept_and_says_why(tiny_engine, caplog):
    image, mask = make_scene()
    engine = Engine(tiny_engine.components, cache_bytes=1000)
    with caplog.at_level("WARNING"):
        engine.edit(move(image, mask))
    assert len(engine.cache) == 0
    assert "more than the 0 MiB kept for reuse" in caplog.text and "--cache-mb" in caplog.text
