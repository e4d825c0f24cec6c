"""The mask rule: strength = alpha when transparent, else the brightest channel; inside from 128.
Faint masks are refused up front; soft and coloured masks give the edit a user expects."""

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from conftest import make_scene
from dragon_server.cli import main
from dragon_server.engine import EditRequest, InputError, Mode
from dragon_server.engine.validate import INSIDE, to_mask

DISC = (30, 40, 60, 70)


def disc(fill, mode="L", size=(128, 128), background=0):
    mask = Image.new(mode, size, background)
    ImageDraw.Draw(mask).ellipse(DISC, fill=fill)
    return mask


def one_pixel(value):
    mask = Image.new("L", (128, 128), 0)
    mask.putpixel((40, 50), value)
    return mask


@pytest.mark.parametrize("mask, top", [
    (disc(60), 60), (one_pixel(1), 1), (disc(127), 127), (disc((60, 60, 60), "RGB"), 60),
])
def test_a_mask_with_no_pixel_at_half_white_is_refused_as_too_faint(mask, top):
    with pytest.raises(InputError, match=f"^the mask is too faint: its strongest pixel is {top} of 255 and "
                                         "pixels count as inside from 128"):
        to_mask(mask, (128, 128), "mask", required=True)


def test_an_all_black_mask_is_refused_as_empty():
    with pytest.raises(InputError, match="^the mask is empty"):
        to_mask(Image.new("L", (128, 128), 0), (128, 128), "mask", required=True)


def test_inside_means_at_least_half_white_for_every_kind_of_mask():
    white = np.asarray(to_mask(disc(255), (128, 128), "mask", True))
    assert set(np.unique(white)) == {0, 255}
    same = [
        disc(INSIDE),                                   # exactly half white counts
        disc((200, 0, 0), "RGB"),                       # red on black: the brightest channel counts
        disc((0, 0, 255, 255), "RGBA", background=(0, 0, 0, 255)),  # opaque colour mask
        disc((0, 0, 0, 255), "RGBA", background=(255, 255, 255, 0)),  # transparent: alpha counts, not colour
        disc(40000, "I;16"),                            # 16-bit grey
    ]
    for mask in same:
        assert (np.asarray(to_mask(mask, (128, 128), "mask", True)) == white).all(), mask.mode


def soft_disc():
    """A disc whose edge fades out over many pixels (a feathered selection)."""
    return disc(255).filter(ImageFilter.GaussianBlur(4))


def test_a_soft_mask_edits_the_pixels_of_its_inside(tiny_engine):
    image, _ = make_scene()
    soft = soft_disc()
    inside = np.asarray(soft) >= INSIDE
    for mode, extra in ((Mode.APPEARANCE, dict(reference=image, reference_mask=soft)),
                        (Mode.DRAG, dict(arrows=[(45, 55, 50, 55)])), (Mode.MOVE, dict(arrows=[(45, 55, 70, 60)]))):
        result = tiny_engine.edit(EditRequest(mode, image, mask=soft, steps=2, **extra))
        x, y, w, h = result.box
        ys, xs = np.nonzero(inside)
        assert x <= xs.min() and y <= ys.min() and x + w > xs.max() and y + h > ys.max(), mode
        changed = (np.asarray(result.image) != np.asarray(image)).any(-1)
        assert changed[inside].mean() > 0.5, mode


def test_a_red_on_black_mask_gives_the_same_edit_as_a_white_one(tiny_engine):
    image, _ = make_scene()
    red, white = disc((200, 0, 0), "RGB"), disc(255)
    results = [tiny_engine.edit(EditRequest(Mode.APPEARANCE, image, mask=m, reference=image, reference_mask=m,
                                            steps=2)) for m in (red, white)]
    assert results[0].box == results[1].box and results[0].box[2] > 0
    assert results[0].image.tobytes() == results[1].image.tobytes()


@pytest.mark.parametrize("mode_args", [
    ["--mode", "move", "--arrow", "45,55,80,60"], ["--mode", "drag", "--arrow", "45,55,60,50"],
    ["--mode", "appearance", "--reference", "in.png", "--reference-mask", "mask.png"],
])
def test_the_command_refuses_a_faint_mask_in_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys, mode_args):
    image, _ = make_scene()
    image.save(tmp_path / "in.png")
    disc(60).save(tmp_path / "mask.png")
    monkeypatch.chdir(tmp_path)
    code = main(["edit", "in.png", *mode_args, "--mask", "mask.png", "--out", "out.png", "--model", "tiny",
                 "--steps", "2"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1 and "too faint" in err and "Traceback" not in err
    assert not (tmp_path / "out.png").exists()
