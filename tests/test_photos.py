"""Photos as cameras write them: EXIF orientation is honoured, huge files get the engine's size message."""

import warnings

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageOps

from dragon_server.cli import main
from dragon_server.engine import EditRequest, Mode
from dragon_server.engine.validate import to_rgb

ROTATE_90_CW = 6  # EXIF Orientation: stored sideways, shown turned 90 degrees clockwise


def sideways_photo(path, size=(300, 200)):
    """A JPEG stored `size` with Orientation 6, and the upright picture a viewer shows for it."""
    rng = np.random.default_rng(0)
    pixels = (rng.random((size[1], size[0], 3)) * 255).astype(np.uint8)
    stored = Image.fromarray(pixels, "RGB")
    ImageDraw.Draw(stored).rectangle((20, 20, 60, 60), fill=(250, 20, 20))  # a red square near a corner
    exif = Image.Exif()
    exif[0x0112] = ROTATE_90_CW
    stored.save(path, quality=95, exif=exif.tobytes())
    with Image.open(path) as im:
        im.load()
        return ImageOps.exif_transpose(im)


def test_a_sideways_photo_is_edited_upright(tmp_path, tiny_engine):
    upright = sideways_photo(tmp_path / "photo.jpg")
    assert upright.size == (200, 300)
    with Image.open(tmp_path / "photo.jpg") as stored:
        stored.load()
        assert stored.size == (300, 200) and to_rgb(stored, "image").tobytes() == upright.tobytes()
        # the red square is at the top right of the upright picture; a mask drawn there is found
        mask = Image.new("L", (200, 300), 0)
        ImageDraw.Draw(mask).rectangle((140, 20, 180, 60), fill=255)
        result = tiny_engine.edit(EditRequest(Mode.APPEARANCE, stored, mask=mask, reference=stored,
                                              reference_mask=mask, steps=2))
    assert result.image.size == (200, 300)
    outside = np.asarray(result.mask) == 0
    assert (np.asarray(result.image)[outside] == np.asarray(upright)[outside]).all()


def test_the_command_reads_sideways_image_mask_and_reference_upright(tmp_path, monkeypatch):
    upright = sideways_photo(tmp_path / "photo.jpg")
    mask_stored = Image.new("L", (300, 200), 0)
    ImageDraw.Draw(mask_stored).rectangle((20, 20, 60, 60), fill=255)
    exif = Image.Exif()
    exif[0x0112] = ROTATE_90_CW
    mask_stored.save(tmp_path / "mask.jpg", quality=95, exif=exif.tobytes())
    monkeypatch.chdir(tmp_path)
    assert main(["edit", "photo.jpg", "--mode", "appearance", "--mask", "mask.jpg", "--reference", "photo.jpg",
                 "--reference-mask", "mask.jpg", "--out", "out.png", "--mask-out", "blend.png", "--model", "tiny",
                 "--steps", "2"]) == 0
    out, blend = Image.open("out.png"), np.asarray(Image.open("blend.png"))
    assert out.size == (200, 300)
    ys, xs = np.nonzero(blend)
    assert xs.min() > 100 and ys.max() < 150  # the edit is where the square is shown: top right
    assert (np.asarray(out)[blend == 0] == np.asarray(upright)[blend == 0]).all()


@pytest.mark.parametrize("size", [(14000, 13000), (9000, 8000)])
def test_a_huge_image_gets_the_engines_size_message_before_it_is_decoded(tmp_path, monkeypatch, capsys, size):
    # Pillow's limit: a warning above 89 MP and an error above 179 MP; 14000x13000 is 182 MP, 9000x8000 72 MP
    Image.new("1", size).save(tmp_path / "big.png")
    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's DecompressionBombWarning would fail the test
        code = main(["edit", "big.png", "--mode", "drag", "--arrow", "5,5,9,9", "--out", "out.png", "--model", "tiny"])
    err = capsys.readouterr().err
    pixels = size[0] * size[1]
    assert code == 2
    assert err == f"dragon edit: error: the image has {pixels} pixels, more than 64000000: crop or scale it down\n"
    assert not (tmp_path / "out.png").exists()
