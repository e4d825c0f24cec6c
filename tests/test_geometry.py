"""Pixel geometry: placements, masks, region of interest, working size and blending."""

import numpy as np
import pytest
from PIL import Image

from conftest import make_scene
from dragon_server.engine.geometry import (
    Affine,
    Frame,
    blend_mask,
    mask_box,
    paste_back,
    region_of_interest,
    warp_mask,
    working_size,
)
from dragon_server.engine.planning import plan_pixels
from dragon_server.engine.request import EditRequest, InputError, Mode
from dragon_server.engine.validate import check_request


def square(size, box):
    m = Image.new("L", size, 0)
    m.paste(255, box)
    return m


def test_affine_compose_and_invert():
    a = Affine.about((10, 20), 2.0, (5, -5))
    assert a(10, 20) == (15, 15)
    assert a(11, 20) == (17, 15)
    x, y = a.inverse()(*a(3.5, 7))
    assert (x, y) == pytest.approx((3.5, 7))
    b = Affine(0.5, 0.25, 1, 2)
    assert a.then(b)(3, 4) == pytest.approx(b(*a(3, 4)))


def test_warp_mask_moves_scales_and_clips():
    m = square((40, 40), (10, 10, 20, 20))
    assert mask_box(warp_mask(m, Affine.about((15, 15), 1, (7, 3)), (0, 0, 40, 40))) == (17, 13, 27, 23)
    assert mask_box(warp_mask(m, Affine.about((15, 15), 2, (0, 0)), (0, 0, 40, 40)), 127) == (5, 5, 25, 25)
    assert mask_box(warp_mask(m, Affine.about((15, 15), 0.5, (0, 0)), (0, 0, 40, 40)), 127) == (13, 13, 17, 17)
    # pushed partly off the canvas: clipped, not an error
    assert mask_box(warp_mask(m, Affine.about((15, 15), 1, (25, 0)), (0, 0, 40, 40)), 127) == (35, 10, 40, 20)


@pytest.mark.parametrize("scale", [1.0, 2.0, 0.5, 1.37])
def test_a_warped_window_is_that_part_of_the_whole_warp(scale):
    """The plan warps masks only in the frame (or around the moved object): the same pixels as the part
    of a whole-picture warp, and the same box as the whole warp's."""
    from dragon_server.engine.geometry import shift, warped_box

    m = square((300, 200), (100, 60, 140, 90))
    moved = Affine.about((120, 75), scale, (37.3, -11.6))
    whole = warp_mask(m, moved, (0, 0, 300, 200))
    for window in [(50, 20, 260, 180), (0, 0, 300, 200), (117, 41, 118, 170)]:
        part = np.asarray(warp_mask(m, moved, window)).astype(int)
        assert np.abs(part - np.asarray(whole.crop(window))).max() <= 1, window
    for threshold in (0, 127):
        assert warped_box(m, moved, mask_box(m), 300, 200, threshold) == mask_box(whole, threshold)
    assert shift((1, 2, 3, 4), 10, 20) == (11, 22, 13, 24)


def whole(mask: Image.Image, frame: Frame, size) -> np.ndarray:
    """A mask of the frame (as the plan makes them) on a canvas of the whole picture's `size`."""
    canvas = Image.new("L", size, 0)
    canvas.paste(mask, frame.box[:2])
    return np.asarray(canvas)


@pytest.mark.parametrize("w,h,area", [(100, 100, 512 * 512), (300, 90, 768 * 768), (64, 640, 128 * 128)])
def test_working_size_is_multiple_of_64_near_area_and_aspect(w, h, area):
    W, H = working_size(w, h, area)
    assert W % 64 == 0 and H % 64 == 0
    assert 0.5 < W * H / area < 1.6 or min(W, H) == 64
    if min(W, H) > 64:
        assert abs(W / H - w / h) / (w / h) < 0.25


@pytest.mark.parametrize("edit", [(0, 0, 10, 10), (90, 90, 100, 100), (40, 10, 60, 95), (0, 0, 100, 100)])
def test_region_of_interest_stays_inside_and_covers_the_edit(edit):
    frame = region_of_interest(edit, 100, 100, 64 * 64, 0.25)
    x0, y0, x1, y1 = frame.box
    assert 0 <= x0 and 0 <= y0 and x1 <= 100 and y1 <= 100
    assert x0 <= edit[0] and y0 <= edit[1] and x1 >= edit[2] and y1 >= edit[3]
    assert frame.to_work()(x0, y0) == pytest.approx((0, 0))
    assert frame.to_work()(x1, y1) == pytest.approx(frame.size)


def test_image_near_the_working_area_is_edited_whole():
    frame = region_of_interest((10, 10, 20, 20), 1000, 800, 768 * 768, 0.25)
    assert frame.box == (0, 0, 1000, 800) and frame.size == (832, 704)


def test_small_edit_on_large_canvas_gets_context_not_the_whole_canvas():
    frame = region_of_interest((1000, 1000, 1040, 1040), 4000, 3000, 512 * 512, 0.25)
    w, h = frame.crop_size
    assert 256 <= w < 1000 and 256 <= h < 1000


def test_blend_mask_is_zero_outside_the_region_of_interest():
    region = square((100, 100), (40, 40, 60, 60))
    frame = Frame((20, 20, 80, 80), (128, 128))
    m = whole(blend_mask(region.crop(frame.box), frame, region.size, grow=3, feather=4), frame, region.size)
    assert m[50, 50] == 255
    assert m[:21].max() == 0 and m[79:].max() == 0 and m[:, :21].max() == 0 and m[:, 79:].max() == 0
    assert m[40:60, 40:60].min() == 255
    assert 0 < m[37, 50] < 255 or 0 < m[36, 50] < 255  # feathered edge


def test_blend_mask_may_touch_the_image_edge():
    region = square((100, 100), (0, 40, 20, 60))
    frame = Frame((0, 20, 60, 80), (64, 64))
    m = whole(blend_mask(region.crop(frame.box), frame, region.size, grow=2, feather=2), frame, region.size)
    assert m[50, 0] == 255


def test_paste_back_keeps_pixels_outside_the_mask_exactly():
    original, _ = make_scene()
    edited = Image.new("RGB", (128, 128), (0, 255, 0))
    frame = Frame((20, 20, 100, 100), (128, 128))
    mask = blend_mask(square((128, 128), (40, 40, 60, 60)).crop(frame.box), frame, (128, 128), 2, 3)
    patch, patch_mask, (x, y, w, h) = paste_back(original, edited, frame, mask)
    assert patch.size == patch_mask.size == (w, h) and (x, y, w, h) == (34, 34, 32, 32)
    out = original.copy()
    out.paste(patch, (x, y))
    out = np.asarray(out)
    m = whole(mask, frame, (128, 128))
    assert (out[m == 0] == np.asarray(original)[m == 0]).all()
    assert (out[m == 255] == [0, 255, 0]).all()


def _checked(**kw):
    image, mask = make_scene()
    kw.setdefault("mask", mask)
    return check_request(EditRequest(image=image, **kw))


def test_move_off_canvas_is_clipped_and_fully_off_is_an_error():
    plan = plan_pixels(_checked(mode=Mode.MOVE, arrows=[(45, 55, 125, 55)]), 128 * 128)
    assert mask_box(plan.target_mask, 127)[2] == 128
    with pytest.raises(InputError, match="entirely off the image"):
        plan_pixels(_checked(mode=Mode.MOVE, arrows=[(45, 55, 200, 55)], scale=0.2), 128 * 128)


def test_resize_in_place_scales_about_the_object_centre():
    plan = plan_pixels(_checked(mode=Mode.MOVE, scale=2.0), 128 * 128)
    x0, y0, x1, y1 = mask_box(plan.target_mask, 127)
    assert (x0 + x1) / 2 == pytest.approx(45, abs=1) and (y0 + y1) / 2 == pytest.approx(55, abs=1)
    assert x1 - x0 == pytest.approx(60, abs=2)


def test_paste_frames_line_up_arrow_start_and_end():
    image, mask = make_scene()
    ref = Image.new("RGB", (200, 150), (10, 10, 10))
    ref_mask = square((200, 150), (150, 100, 170, 120))
    req = check_request(EditRequest(Mode.PASTE, image, reference=ref, reference_mask=ref_mask,
                                    arrows=[(160, 110, 64, 64)], scale=1.0))
    plan = plan_pixels(req, 128 * 128)
    a = plan.ref_frame.to_work()(160, 110)
    b = plan.frame.to_work()(64, 64)
    assert a == pytest.approx(b, abs=plan.frame.size[0] / plan.frame.crop_size[0])
    assert mask_box(plan.target_mask, 127) == (54, 54, 74, 74)
