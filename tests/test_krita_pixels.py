"""Pixel buffers and rectangles of the Krita plugin, without Krita."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dragon_krita.pixels import (
    alpha_channel,
    bgra_to_rgba,
    copy_into,
    is_empty,
    is_opaque,
    mask_bounds,
    rgba_to_bgra,
    with_alpha,
)
from dragon_krita.region import (
    Rect,
    arrows_rect,
    edit_region,
    moved_rect,
    paste_arrows,
    preview_crop,
    relative_arrows,
    result_rect,
    with_context,
)


def test_bgra_to_rgba_and_back():
    bgra = bytes([1, 2, 3, 4, 10, 20, 30, 40])
    assert bgra_to_rgba(bgra) == bytes([3, 2, 1, 4, 30, 20, 10, 40])
    assert rgba_to_bgra(bgra_to_rgba(bgra)) == bgra


@given(st.binary(max_size=400).map(lambda b: b[: len(b) // 4 * 4]))
def test_swap_is_an_involution(data):
    assert rgba_to_bgra(bgra_to_rgba(data)) == data
    assert alpha_channel(bgra_to_rgba(data)) == alpha_channel(data)


def test_swap_refuses_partial_pixels():
    with pytest.raises(ValueError, match="4-byte pixels"):
        bgra_to_rgba(b"\x00" * 5)


def test_selection_bytes_to_region_mask():
    # a 2x2 soft selection at (1, 1) in a 4x3 region at (0, 0)
    selection = bytes([255, 128, 64, 0])
    mask = copy_into(selection, Rect(1, 1, 2, 2), Rect(0, 0, 4, 3))
    assert mask == bytes([0, 0, 0, 0, 0, 255, 128, 0, 0, 64, 0, 0])


def test_copy_into_crops_and_handles_no_overlap():
    rgba = bytes(range(4 * 3 * 2))  # 3x2 pixels at (10, 10)
    assert copy_into(rgba, Rect(10, 10, 3, 2), Rect(11, 11, 1, 1), channels=4) == bytes(range(16, 20))
    assert copy_into(rgba, Rect(10, 10, 3, 2), Rect(0, 0, 2, 1), channels=4) == bytes(8)
    with pytest.raises(ValueError, match="want 24"):
        copy_into(rgba[:-1], Rect(10, 10, 3, 2), Rect(0, 0, 1, 1), channels=4)


def test_with_alpha_uses_mask_and_keeps_existing_alpha():
    opaque = bytes([1, 2, 3, 255, 4, 5, 6, 255])
    assert with_alpha(opaque, bytes([0, 200])) == bytes([1, 2, 3, 0, 4, 5, 6, 200])
    half = bytes([1, 2, 3, 128, 4, 5, 6, 255])
    assert with_alpha(half, bytes([255, 100])) == bytes([1, 2, 3, 128, 4, 5, 6, 100])
    with pytest.raises(ValueError):
        with_alpha(opaque, bytes(3))


def test_mask_bounds():
    mask = bytes([0, 0, 0, 0, 0, 9, 0, 0, 0, 0, 7, 1])  # 4x3
    assert mask_bounds(mask, 4, 3) == Rect(1, 1, 3, 2)
    assert mask_bounds(mask, 4, 3, threshold=8) == Rect(1, 1, 1, 1)
    assert mask_bounds(bytes(12), 4, 3) is None
    assert is_empty(bytes(12)) and not is_empty(mask)
    with pytest.raises(ValueError):
        mask_bounds(mask, 5, 3)


def test_rect_arithmetic():
    a, b = Rect(0, 0, 10, 10), Rect(5, 5, 10, 10)
    assert a.union(b) == Rect(0, 0, 15, 15)
    assert a.intersect(b) == Rect(5, 5, 5, 5)
    assert a.intersect(Rect(20, 20, 1, 1)).is_empty()
    assert a.union(Rect(0, 0, 0, 0)) == a and Rect(0, 0, 0, 0).union(a) == a
    assert a.pad(2) == Rect(-2, -2, 14, 14)
    assert a.translate(3, 4) == Rect(3, 4, 10, 10)
    assert (b.right, b.bottom) == (15, 15)


def test_moved_and_scaled_rect():
    box = Rect(10, 10, 20, 10)
    assert moved_rect(box, 5, -5) == Rect(15, 5, 20, 10)
    assert moved_rect(box, 0, 0, scale=2) == Rect(0, 5, 40, 20)
    assert arrows_rect([(1.5, 2.5, 10.2, 0.0)]) == Rect(1, 0, 10, 3)
    assert arrows_rect([]).is_empty()


def test_context_margin_and_clamp():
    canvas = Rect(0, 0, 1000, 1000)
    assert with_context(Rect(100, 100, 400, 200), canvas, 0.25) == Rect(0, 0, 600, 400)
    assert with_context(Rect(500, 500, 10, 10), canvas, 0.25) == Rect(468, 468, 74, 74)
    assert with_context(Rect(990, 990, 10, 10), canvas, 0.0, min_margin=0) == Rect(990, 990, 10, 10)


def test_edit_region_per_mode():
    canvas = Rect(0, 0, 2000, 2000)
    obj = Rect(400, 400, 100, 100)
    move = edit_region("move", canvas, [(450, 450, 650, 450)], obj, context=0.0)
    assert move == Rect(368, 368, 364, 164)
    resize = edit_region("move", canvas, [(0, 0, 0, 0)], obj, scale=2.0, context=0.0)
    assert resize == Rect(318, 318, 264, 264)
    drag = edit_region("drag", canvas, [(100, 100, 200, 150), (300, 120, 310, 130)], None, context=0.0)
    assert drag == Rect(68, 68, 275, 115)
    appearance = edit_region("appearance", canvas, [], obj, context=0.5)
    assert appearance == Rect(350, 350, 200, 200)
    paste = edit_region("paste", canvas, [(450, 450, 1450, 1450)], None, reference_box=obj, context=0.0)
    assert paste == Rect(1368, 1368, 164, 164)


def test_arrow_and_result_offsets():
    region = Rect(100, 50, 300, 300)
    assert relative_arrows([(150, 60, 200, 70)], region) == [(50, 10, 100, 20)]
    ref = Rect(0, 0, 100, 100)
    assert paste_arrows([(10, 20, 150, 80)], ref, region) == [(10, 20, 50, 30)]
    assert result_rect(region, 5, 6, 20, 30) == Rect(105, 56, 20, 30)


def test_opaque():
    assert is_opaque(b"\xff\xff") and is_opaque(b"")
    assert not is_opaque(b"\xff\xfe") and not is_opaque(b"\x00")


def test_preview_crop_shows_the_edited_area_only():
    region = Rect(100, 100, 400, 200)
    # the preview shows the region's box (0, 0, 400, 200) at half size: 200x100 pixels
    assert preview_crop(Rect(200, 150, 100, 50), region, (0, 0, 400, 200), (200, 100)) == Rect(50, 25, 50, 25)
    # a box inside the region, and a focus reaching past it, are clipped to the image
    assert preview_crop(Rect(0, 0, 250, 250), region, (100, 0, 200, 200), (200, 200)) == Rect(0, 0, 50, 150)
    assert preview_crop(Rect(0, 0, 10, 10), region, (0, 0, 400, 200), (200, 100)) == Rect(0, 0, 200, 100)
