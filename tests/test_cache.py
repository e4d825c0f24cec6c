"""Reuse between edits: a warm edit equals a cold one, the memory bound evicts, changes miss."""

import numpy as np
import pytest
import torch

from conftest import make_scene
from dragon_server.engine import EditRequest, Engine, Mode
from dragon_server.engine.attention import MemoryBank
from dragon_server.engine.ddim import Timeline
from dragon_server.engine.inversion import invert
from dragon_server.engine.settings import MethodSettings, Schedule


@pytest.fixture()
def engine(tiny_engine):
    fresh = Engine(tiny_engine.components, cache_bytes=1 << 30)
    yield fresh


def move(image, mask, arrow=(45, 55, 85, 60), **kw):
    return EditRequest(Mode.MOVE, image, mask=mask, arrows=[arrow], steps=6, seed=3, **kw)


@pytest.mark.parametrize("guidance", ["paper", "release"])
def test_warm_edit_is_identical_to_a_cold_one_and_skips_the_source_work(engine, guidance):
    image, mask = make_scene()
    cold = engine.edit(move(image, mask, guidance=guidance))
    assert engine.cache.info()["misses"] == 1 and len(engine.cache) == 1
    warm = engine.edit(move(image, mask, guidance=guidance))
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


def paste(image, ref, ref_mask, scale=1.0, guidance="release"):
    return EditRequest(Mode.PASTE, image, arrows=[(50, 60, 70, 64)], scale=scale, reference=ref,
                       reference_mask=ref_mask, steps=6, seed=4, guidance=guidance)


def appearance(image, mask, ref, ref_mask, guidance="release"):
    return EditRequest(Mode.APPEARANCE, image, mask=mask, reference=ref, reference_mask=ref_mask, steps=6, seed=4,
                       guidance=guidance)


@pytest.mark.parametrize("target", ["move", "paste", "appearance"])
def test_an_edit_is_the_same_whatever_ran_before_it_on_the_same_picture(engine, target):
    """The cache holds only what the guidance branch computes on its own (plain self-attention), so an
    edit gives the same bits first, after another mode's edit, or after an edit with the other guidance."""
    image, mask = make_scene()
    ref, ref_mask = make_scene(seed=9)
    requests = {"move": lambda g: move(image, mask, guidance=g),
                "paste": lambda g: paste(image, ref, ref_mask, guidance=g),
                "appearance": lambda g: appearance(image, mask, ref, ref_mask, guidance=g)}
    first = np.asarray(Engine(engine.components, cache_bytes=0).edit(requests[target]("release")).image)
    histories = [[other for other in requests if other != target], [target]]
    for history in histories:
        fresh = Engine(engine.components, cache_bytes=1 << 30)
        for name in history:
            fresh.edit(requests[name]("paper"))
            fresh.edit(requests[name]("release"))
        after = fresh.edit(requests[target]("release"))
        assert np.array_equal(first, np.asarray(after.image)), history
    assert fresh.cache.info()["hits"] >= 2


def test_a_scaled_paste_inverts_the_reference_at_its_scale_and_keeps_that_inversion(engine):
    """As the release does, a paste at scale s inverts the reference resized by s (not its unscaled
    inversion warped): the reference crop the model sees is magnified s times, and it is cached."""
    image, _ = make_scene()
    ref, ref_mask = make_scene(seed=9)
    seen = []
    engine.runner.encode, encode = (lambda crop: seen.append(crop) or encode(crop)), engine.runner.encode
    try:
        engine.edit(paste(image, ref, ref_mask, scale=1.0))
        engine.edit(paste(image, ref, ref_mask, scale=2.0))
        engine.edit(paste(image, ref, ref_mask, scale=2.0))
    finally:
        engine.runner.encode = encode
    # image once, the reference at scale 1, the reference at scale 2; the second scale-2 paste hits
    assert len(seen) == 3 and engine.cache.info()["hits"] == 3
    def disc_area(crop):  # the reference's flat red disc, inside the crop the model saw
        rgb = np.asarray(crop, dtype=np.int16)
        return int((np.abs(rgb - np.array([200, 50, 50])).max(-1) < 8).sum())

    assert 3.2 < disc_area(seen[2]) / disc_area(seen[1]) < 4.8  # twice the size: four times the area


def test_inversion_records_into_the_bank_it_is_given(tiny_engine):
    """The reference schedule's host-memory bank is the one inversion fills; ours stays on the device."""
    image, mask = make_scene()
    ours = Engine(tiny_engine.components, cache_bytes=1 << 30)
    ours.edit(move(image, mask))
    (state,) = ours.cache._items.values()
    assert state.bank.on_host is False and state.bank.entries
    seen = []
    invert_bank = MemoryBank(on_host=True)
    runner = ours.runner
    timeline = Timeline.build(tiny_engine.components.scheduler, 4, torch.device("cpu"))
    result = invert(runner, runner.encode(image), runner.text(""), timeline, frozenset({1, 2}),
                    lambda done, total: seen.append(done), invert_bank)
    assert result.bank is invert_bank and sorted(invert_bank.entries) == [1, 2] and seen == [1, 2, 3, 4]
    assert all(k.device.type == "cpu" for layers in invert_bank.entries.values() for k, _ in layers.values())
