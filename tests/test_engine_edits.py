"""End to end with the random-weight `tiny` model on the CPU: every mode, the promises of an edit."""

import numpy as np
import pytest
from PIL import Image

from conftest import make_scene
from dragon_server.engine import EditCancelled, EditRequest, Engine, InputError, Mode

STEPS = 8


def requests(image, mask):
    ref, ref_mask = make_scene(size=(150, 120), seed=3)
    return {
        "move": EditRequest(Mode.MOVE, image, mask=mask, arrows=[(45, 55, 85, 60)], steps=STEPS, seed=1),
        "resize": EditRequest(Mode.MOVE, image, mask=mask, scale=1.4, steps=STEPS, seed=1),
        "drag": EditRequest(Mode.DRAG, image, arrows=[(45, 55, 60, 50), (50, 65, 55, 80)], steps=STEPS, seed=1),
        "drag-masked": EditRequest(Mode.DRAG, image, mask=mask, arrows=[(45, 55, 52, 50)], steps=STEPS, seed=1),
        "appearance": EditRequest(Mode.APPEARANCE, image, mask=mask, reference=ref, reference_mask=ref_mask,
                                  steps=STEPS, seed=1),
        "paste": EditRequest(Mode.PASTE, image, reference=ref, reference_mask=ref_mask,
                             arrows=[(45, 55, 90, 90)], scale=0.8, steps=STEPS, seed=1),
        "prompt": EditRequest(Mode.MOVE, image, mask=mask, arrows=[(45, 55, 70, 80)], prompt="a red ball",
                              steps=STEPS, seed=1),
    }


@pytest.fixture(scope="module")
def results(tiny_engine):
    image, mask = make_scene()
    out = {}
    for name, req in requests(image, mask).items():
        events = []
        out[name] = (req, tiny_engine.edit(req, progress=events.append), events)
    return out


NAMES = list(requests(*make_scene()).keys())


@pytest.mark.parametrize("name", NAMES)
def test_output_keeps_size_and_pixels_outside_the_edit(results, name):
    req, result, _ = results[name]
    assert result.image.size == req.image.size and result.image.mode == "RGB"
    a, b = np.asarray(req.image.convert("RGB")), np.asarray(result.image)
    m = np.asarray(result.mask)
    assert m.shape == a.shape[:2]
    assert (a[m == 0] == b[m == 0]).all()
    assert (m > 0).sum() > 50
    assert np.abs(a.astype(int) - b.astype(int))[m == 255].mean() > 1  # inside, the picture changed
    x, y, w, h = result.box
    assert Image.fromarray(m).getbbox() == (x, y, x + w, y + h)


@pytest.mark.parametrize("name", NAMES)
def test_progress_reaches_every_total_in_order(results, name):
    _, _, events = results[name]
    stages = [e.stage for e in events]
    assert stages[0] == "encode" and stages[-1] == "decode"
    assert "inversion" in stages and "sampling" in stages
    sampling = [e.step for e in events if e.stage == "sampling"]
    assert sampling == list(range(1, STEPS + 1))
    for stage in set(stages):
        steps = [e.step for e in events if e.stage == stage]
        assert steps == sorted(steps) and steps[-1] == events[stages.index(stage)].total


def test_modes_with_a_reference_invert_it_too(results):
    for name in ("appearance", "paste"):
        assert "reference" in {e.stage for e in results[name][2]}


def test_the_edit_region_follows_the_mode(results):
    move = np.asarray(results["move"][1].mask)
    assert move[55, 45] == 255 and move[58, 85] == 255  # where the disc was and where it goes
    appearance = np.asarray(results["appearance"][1].mask)
    assert appearance[55, 45] == 255 and appearance[55, 100] == 0
    paste = np.asarray(results["paste"][1].mask)
    assert paste[90, 90] == 255 and paste[20, 20] == 0


def test_prompt_turns_on_classifier_free_guidance(results):
    assert results["prompt"][1].unet_evaluations["forward"] > results["move"][1].unet_evaluations["forward"]


def test_same_seed_same_picture_other_seed_other_picture(tiny_engine, results):
    req, first, _ = results["drag"]
    again = tiny_engine.edit(req)
    assert np.array_equal(np.asarray(first.image), np.asarray(again.image))
    req.seed = 2
    other = tiny_engine.edit(req)
    assert not np.array_equal(np.asarray(first.image), np.asarray(other.image))


def test_large_canvas_edits_only_a_region(tiny_engine):
    image, mask = make_scene(size=(400, 300))
    result = tiny_engine.edit(EditRequest(Mode.MOVE, image, mask=mask, arrows=[(45, 55, 60, 55)], steps=4))
    assert result.image.size == (400, 300)
    x, y, w, h = result.box
    assert x + w < 250 and y + h < 250
    assert result.working_size[0] % 64 == 0 and result.working_size[1] % 64 == 0


def test_object_pushed_partly_off_the_canvas_is_clipped(tiny_engine):
    image, mask = make_scene()
    result = tiny_engine.edit(EditRequest(Mode.MOVE, image, mask=mask, arrows=[(45, 55, 120, 55)], steps=4))
    assert np.asarray(result.mask)[55, 127] == 255


@pytest.mark.parametrize("stage,at", [("inversion", 3), ("sampling", 2)])
def test_cancel_stops_within_one_step(tiny_engine, stage, at):
    image, mask = make_scene()
    seen = []
    state = {"cancel": False}

    def progress(event):
        seen.append((event.stage, event.step))
        if event.stage == stage and event.step == at:
            state["cancel"] = True

    req = EditRequest(Mode.MOVE, image, mask=mask, arrows=[(45, 55, 85, 60)], steps=STEPS)
    engine = Engine(tiny_engine.components, cache_bytes=0)  # a cold start: the inversion really runs
    with pytest.raises(EditCancelled):
        engine.edit(req, progress=progress, cancel=lambda: state["cancel"])
    assert seen[-1] == (stage, at)


def test_preview_decodes_the_current_estimate(tiny_engine):
    image, mask = make_scene()
    previews, boxes = [], []

    def progress(event):
        if event.stage == "sampling" and event.step == 2:
            previews.append(event.preview())
            boxes.append(event.preview_box)

    tiny_engine.edit(EditRequest(Mode.MOVE, image, mask=mask, arrows=[(45, 55, 85, 60)], steps=4), progress=progress)
    assert previews and previews[0].mode == "RGB" and previews[0].size[0] % 64 == 0
    assert boxes == [(0, 0, 128, 128)]


def _rgba(image, alpha):
    out = image.convert("RGBA")
    out.putalpha(alpha)
    return out


BAD = [
    ("mask of another size", dict(mode=Mode.MOVE, mask=Image.new("L", (64, 64), 255), arrows=[(1, 1, 2, 2)]),
     "is 64x64 but its image is 128x128"),
    ("empty mask", dict(mode=Mode.MOVE, mask=Image.new("L", (128, 128), 0), arrows=[(1, 1, 2, 2)]), "mask is empty"),
    ("arrow outside", dict(mode=Mode.MOVE, arrows=[(300, 5, 2, 2)]), "starts at \\(300, 5\\), outside"),
    ("unknown mode", dict(mode="wiggle"), "unknown mode 'wiggle'"),
    ("no reference", dict(mode=Mode.APPEARANCE), "needs a reference image"),
    ("no reference paste", dict(mode=Mode.PASTE, arrows=[(1, 1, 2, 2)]), "needs a reference image"),
    ("zero scale", dict(mode=Mode.MOVE, scale=0.0, arrows=[(1, 1, 2, 2)]), "scale must be positive"),
    ("negative scale", dict(mode=Mode.MOVE, scale=-1.0, arrows=[(1, 1, 2, 2)]), "between 0 and 8"),
    ("no arrow", dict(mode=Mode.MOVE), "needs an arrow"),
    ("two move arrows", dict(mode=Mode.MOVE, arrows=[(1, 1, 2, 2)] * 2), "one arrow"),
    ("drag without arrows", dict(mode=Mode.DRAG, mask=None), "at least one arrow"),
    ("drag end outside", dict(mode=Mode.DRAG, arrows=[(5, 5, 500, 5)]), "ends at"),
    ("nan arrow", dict(mode=Mode.MOVE, arrows=[(float("nan"), 1, 2, 2)]), "finite numbers"),
    ("transparent image", dict(mode=Mode.MOVE, arrows=[(1, 1, 2, 2)], image="transparent"), "transparent pixels"),
    ("not an image", dict(mode=Mode.MOVE, arrows=[(1, 1, 2, 2)], image=b"PNG"), "not an image"),
    ("bad steps", dict(mode=Mode.MOVE, arrows=[(1, 1, 2, 2)], steps=1), "steps must be between"),
    ("bad setting", dict(mode=Mode.MOVE, arrows=[(1, 1, 2, 2)], settings={"nope": 1}), "unknown setting"),
    ("float image", dict(mode=Mode.MOVE, arrows=[(1, 1, 2, 2)], image="float"), "floating-point"),
]


@pytest.mark.parametrize("name,kw,message", BAD, ids=[b[0] for b in BAD])
def test_bad_inputs_get_one_line_errors(tiny_engine, name, kw, message):
    image, mask = make_scene()
    kw = dict(kw)
    if kw.get("image") == "transparent":
        kw["image"] = _rgba(image, Image.new("L", image.size, 128))
    elif kw.get("image") == "float":
        kw["image"] = image.convert("F")
    kw.setdefault("image", image)
    kw.setdefault("mask", mask)
    with pytest.raises(InputError, match=message) as err:
        tiny_engine.edit(EditRequest(**kw))
    assert "\n" not in str(err.value)


def test_greyscale_16_bit_and_opaque_alpha_images_are_converted(tiny_engine):
    image, mask = make_scene()
    grey16 = Image.fromarray(np.asarray(image.convert("L"), dtype=np.uint16) * 257)
    for variant in (image.convert("L"), grey16, _rgba(image, Image.new("L", image.size, 255))):
        result = tiny_engine.edit(EditRequest(Mode.MOVE, variant, mask=mask, arrows=[(45, 55, 60, 55)], steps=2))
        assert result.image.mode == "RGB" and result.image.size == image.size


def test_drag_default_region_surrounds_the_arrows(tiny_engine):
    image, _ = make_scene()
    result = tiny_engine.edit(EditRequest(Mode.DRAG, image, arrows=[(60, 60, 70, 60)], steps=2))
    m = np.asarray(result.mask)
    assert m[60, 60] == 255 and m[60, 70] == 255 and m[5, 5] == 0 and m[120, 120] == 0
