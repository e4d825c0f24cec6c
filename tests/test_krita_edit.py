"""Building `edit` messages from a document and placing results, with a fake document (no Krita)."""

import struct
import zlib
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dragon_krita import pixels
from dragon_krita.arrows import arrow_svg
from dragon_krita.edit import (
    EditSettings,
    PreparedEdit,
    Source,
    encode_images,
    gather_edit,
    layer_name,
    result_bands,
)
from dragon_krita.errors import PluginError
from dragon_krita.region import Rect
from dragon_protocol import Edit, decode, encode, read_png_header

W, H = 200, 160
SELECTION = Rect(40, 40, 40, 30)


def png(data: bytes, width: int, height: int, channels: int) -> bytes:
    """A minimal PNG writer standing in for Krita's QImage (greyscale or RGBA, 8 bit)."""
    rows = b"".join(b"\0" + data[y * width * channels : (y + 1) * width * channels] for y in range(height))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 6 if channels == 4 else 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def unpng(data: bytes):
    """Width, height and raw bytes of a PNG written by `png` (no filters)."""
    info = read_png_header(data)
    idat_len = struct.unpack(">I", data[33:37])[0]
    raw = zlib.decompress(data[41 : 41 + idat_len])
    channels = 4 if info.colour_type == 6 else 1
    row = info.width * channels + 1
    return info.width, info.height, b"".join(raw[y * row + 1 : (y + 1) * row] for y in range(info.height))


class FakeDocument(Source):
    """A 200x160 document at `res` ppi: an opaque picture, a selection, guide arrows and a reference."""

    def __init__(self, arrows=((60, 60, 120, 70),), selection=SELECTION, res=72.0, reference=None):
        self.canvas = Rect(0, 0, W, H)
        self.x_res = self.y_res = res
        self.source_name = "Paint"
        self.svg = (
            None
            if arrows is None
            else [arrow_svg(a).replace("<path", f'<path transform="scale({72 / res})"') for a in arrows]
        )
        self.sel = selection
        self.reference = reference
        self.reads = []

    def guide_svg(self):
        return self.svg

    def selection(self):
        if self.sel is None:
            return None
        data = bytes([255]) * (self.sel.width * self.sel.height)
        return self.sel, data

    def image_pixels(self, rect):
        self.reads.append(rect)
        return bytes([10, 20, 30, 255]) * (rect.width * rect.height)

    def visible_pixels(self, rect):
        self.reads.append(("visible", rect))
        return bytes([40, 50, 60, 255]) * (rect.width * rect.height)

    def reference_pixels(self, rect):
        return bytes([1, 2, 3, 255]) * (rect.width * rect.height)

    def reference_mask(self):
        box = self.reference
        mask = bytearray(W * H)
        if box is not None:
            for y in range(box.y, box.bottom):
                mask[y * W + box.x : y * W + box.right] = b"\xff" * box.width
        return self.canvas, bytes(mask)


def prepare_edit(settings: EditSettings, source: Source, request_id: str) -> PreparedEdit:
    """The edit with its images encoded, as the plugin sends it."""
    prepared = gather_edit(settings, source, request_id)
    prepared.message = encode_images(prepared, png)
    return prepared


def roundtrip(message: Edit) -> Edit:
    """The message as the server will see it: checked by the protocol's decoder."""
    return decode(encode(message))


def test_move_message_holds_region_mask_and_relative_arrow():
    doc = FakeDocument()
    prepared = prepare_edit(EditSettings(mode="Move", steps=20, seed=7), doc, "req-1")
    message = roundtrip(prepared.message)
    assert message.mode == "move" and message.id == "req-1" and (message.steps, message.seed) == (20, 7)
    region = prepared.region
    assert region == Rect(8, 8, 164, 104)  # object and its destination, plus 32 px of context
    assert doc.reads == [region], "only the region is read, not the whole canvas"
    x0, y0, x1, y1 = message.arrows[0]
    assert (x0 + region.x, y0 + region.y, x1 + region.x, y1 + region.y) == (60, 60, 120, 70)
    width, height, rgba = unpng(message.image)
    assert (width, height) == (region.width, region.height)
    assert rgba[:4] == bytes([30, 20, 10, 255]), "B,G,R,A from Krita goes out as R,G,B,A"
    width, height, mask = unpng(message.mask)
    assert (width, height) == (region.width, region.height)
    assert pixels.mask_bounds(mask, width, height) == Rect(40 - region.x, 40 - region.y, 40, 30)
    assert message.preview_interval > 0
    assert prepared.layer_name == "Dragon Move (dx +60, dy +10, strength 1, steps 20, seed 7)"


def test_arrows_use_document_resolution():
    doc = FakeDocument(res=300.0)
    prepared = prepare_edit(EditSettings(), doc, "r")
    assert prepared.arrows == [pytest.approx((60, 60, 120, 70))]


def test_move_uses_first_arrow_and_drag_uses_all():
    arrows = ((60, 60, 120, 70), (10, 10, 20, 20))
    assert len(prepare_edit(EditSettings(mode="Move"), FakeDocument(arrows), "a").message.arrows) == 1
    drag = prepare_edit(EditSettings(mode="Drag", preview=False), FakeDocument(arrows, None), "b")
    assert len(drag.message.arrows) == 2 and drag.message.mask is None
    assert drag.message.preview_interval == 0
    assert drag.layer_name.startswith("Dragon Drag (2 arrows,")


def test_resize_sends_scale_and_names_it():
    prepared = prepare_edit(EditSettings(mode="Resize", scale=1.5), FakeDocument(), "r")
    assert prepared.message.mode == "move" and prepared.message.scale == 1.5
    assert "scale 1.5" in prepared.layer_name


def test_appearance_sends_reference_crop_and_its_mask():
    doc = FakeDocument(arrows=None, reference=Rect(150, 100, 20, 20))
    prepared = prepare_edit(EditSettings(mode="Appearance", reference="Ref"), doc, "r")
    message = roundtrip(prepared.message)
    assert message.mode == "appearance" and message.arrows == []
    width, height, mask = unpng(message.reference_mask)
    assert pixels.mask_bounds(mask, width, height).width == 20
    assert unpng(message.reference)[2][:4] == bytes([3, 2, 1, 255])
    assert "from Ref" in prepared.layer_name


def test_paste_arrow_starts_in_reference_and_ends_in_image():
    doc = FakeDocument(arrows=((160, 110, 60, 50),), selection=None, reference=Rect(150, 100, 20, 20))
    prepared = prepare_edit(EditSettings(mode="Paste", reference="Ref"), doc, "r")
    message = roundtrip(prepared.message)
    ref_region = Rect(118, 68, 82, 84)
    (x0, y0, x1, y1) = message.arrows[0]
    assert (x0 + ref_region.x, y0 + ref_region.y) == (160, 110)
    assert (x1 + prepared.region.x, y1 + prepared.region.y) == (60, 50)
    assert unpng(message.reference)[:2] == (ref_region.width, ref_region.height)


@pytest.mark.parametrize(
    "settings, doc, code",
    [
        (EditSettings(mode="Move"), FakeDocument(selection=None), "no_selection"),
        (EditSettings(mode="Move"), FakeDocument(arrows=None), "no_guide_layer"),
        (EditSettings(mode="Move"), FakeDocument(arrows=()), "no_arrows"),
        (EditSettings(mode="Appearance"), FakeDocument(), "no_reference"),
        (EditSettings(mode="Appearance", reference="Paint"), FakeDocument(), "reference_is_source"),
        (EditSettings(mode="Paste", reference="Ref"), FakeDocument(), "empty_reference"),
        (EditSettings(mode="Paste", reference="Ref"), FakeDocument(reference=Rect(150, 100, 20, 20)), "paste_start"),
        (EditSettings(mode="Move", steps=0), FakeDocument(), "bad_parameter"),
        (EditSettings(mode="Move", scale=20), FakeDocument(), "bad_parameter"),
        (EditSettings(mode="Warp"), FakeDocument(), "bad_parameter"),
        (EditSettings(mode="Move", prompt="x" * 2000), FakeDocument(), "bad_parameter"),
    ],
)
def test_missing_inputs_are_refused_in_words(settings, doc, code):
    with pytest.raises(PluginError) as info:
        prepare_edit(settings, doc, "r")
    assert info.value.code == code
    assert "\n" not in str(info.value)


def test_empty_layer_is_refused():
    doc = FakeDocument()
    doc.image_pixels = lambda rect: bytes(4 * rect.width * rect.height)
    with pytest.raises(PluginError, match="empty"):
        prepare_edit(EditSettings(), doc, "r")


def test_too_many_arrows():
    doc = FakeDocument(arrows=[(i, 0, i, 10) for i in range(40)], selection=None)
    with pytest.raises(PluginError, match="at most 32 arrows"):
        prepare_edit(EditSettings(mode="Drag"), doc, "r")


def test_paper_guidance_is_sent_as_a_named_choice_and_named():
    default = roundtrip(prepare_edit(EditSettings(), FakeDocument(), "a").message)
    assert default.guidance == "release" and default.settings == {}, "the authors' release by default"
    paper = prepare_edit(EditSettings(paper_guidance=True), FakeDocument(), "b")
    assert roundtrip(paper.message).guidance == "paper"
    assert paper.layer_name.endswith("seed 0, paper guidance)")
    assert "guidance" not in prepare_edit(EditSettings(), FakeDocument(), "c").layer_name


def test_a_transparent_layer_sends_what_the_painter_sees():
    """An object on its own layer, or a layer moved off part of the canvas: the composite goes out."""
    doc = FakeDocument()
    layer = bytearray(bytes([10, 20, 30, 255]) * (W * H))
    layer[3::4] = bytes(255 if i % W < 100 else 0 for i in range(W * H))  # the right half is empty
    doc.image_pixels = lambda rect: pixels.copy_into(bytes(layer), doc.canvas, rect, channels=4)
    prepared = prepare_edit(EditSettings(), doc, "r")
    assert prepared.composite and doc.reads == [("visible", prepared.region)]
    assert unpng(prepared.message.image)[2][:4] == bytes([60, 50, 40, 255])
    assert prepared.image[:4] == bytes([60, 50, 40, 255]), "the result is unmixed against what was sent"
    opaque = FakeDocument()
    assert not prepare_edit(EditSettings(), opaque, "r").composite and len(opaque.reads) == 1
    visible = FakeDocument()
    assert prepare_edit(EditSettings(visible_canvas=True), visible, "r").composite
    assert [read[0] for read in visible.reads] == ["visible"], "the layer itself is not read"


def test_layer_names():
    move = EditSettings(mode="Move", seed=3)
    assert layer_name(move, [(0, 0, 5.4, -3)]) == "Dragon Move (dx +5, dy -3, strength 1, steps 50, seed 3)"
    paste = EditSettings(mode="Paste", reference="Cat", prompt="a cat", strength=2)
    assert layer_name(paste, [(0, 0, 1, 1)]) == (
        'Dragon Paste (dx +1, dy +1, scale 1, from Cat, "a cat", strength 2, steps 50, seed 0)'
    )
    assert layer_name(EditSettings(mode="Drag"), [(0, 0, 1, 1)]).startswith("Dragon Drag (1 arrow,")


def prepared_for(region, under_pixel):
    edit = Edit(id="r", mode="move", image=b"")
    return PreparedEdit(edit, region, "layer", [], under_pixel * (region.width * region.height))


def test_result_layer_places_box_and_sets_alpha_from_mask():
    prepared = prepared_for(Rect(100, 50, 64, 64), bytes([200, 100, 50, 255]))
    rgba = bytes([200, 100, 50, 255]) * 6
    ((rect, bgra),) = result_bands(prepared, (10, 20, 3, 2), rgba, bytes([0, 64, 128, 255, 255, 0]))
    assert rect == Rect(110, 70, 3, 2)
    assert bgra[:4] == bytes([50, 100, 200, 0]) and bgra[4:8] == bytes([50, 100, 200, 64])
    for box in ((0, 0, 3, 3), (62, 0, 3, 2)):
        with pytest.raises(PluginError) as info:
            result_bands(prepared, box, rgba, bytes(6))  # checked at once, before any band is made
        assert info.value.code == "bad_reply"


def test_big_results_come_in_bands_of_whole_rows():
    """A big result is placed band by band so Krita's GUI thread gets a turn in between."""
    prepared = prepared_for(Rect(0, 0, 40, 30), bytes([9, 8, 7, 255]))
    rgba = bytes(range(256)) * (40 * 30 * 4 // 256) + bytes(40 * 30 * 4 % 256)
    mask = bytes((i * 7) % 256 for i in range(40 * 30))
    ((whole_rect, whole),) = result_bands(prepared, (0, 0, 40, 30), rgba, mask, band_pixels=10**6)
    bands = list(result_bands(prepared, (0, 0, 40, 30), rgba, mask, band_pixels=100))
    assert [rect for rect, _ in bands] == [Rect(0, y, 40, 2) for y in range(0, 30, 2)]
    assert b"".join(data for _, data in bands) == whole and whole_rect == Rect(0, 0, 40, 30)


def composite(layer_rgba: bytes, under: bytes) -> bytes:
    """`layer` drawn over opaque `under`, per byte, as Krita's normal blending does."""
    out = bytearray(under)
    for i in range(0, len(layer_rgba), 4):
        a = layer_rgba[i + 3]
        for c in range(3):
            out[i + c] = (layer_rgba[i + c] * a + under[i + c] * (255 - a) + 127) // 255
    return bytes(out)


@given(
    st.lists(
        st.tuples(st.binary(min_size=3, max_size=3), st.binary(min_size=3, max_size=3), st.integers(0, 255)),
        min_size=1,
        max_size=30,
    )
)
def test_result_layer_over_the_source_gives_the_servers_picture(pixels_):
    edited = b"".join(e + b"\xff" for e, _, _ in pixels_)
    under = b"".join(u + b"\xff" for _, u, _ in pixels_)
    mask = bytes(m for _, _, m in pixels_)
    blended = composite(pixels.with_alpha(edited, mask), under)  # what the server sends back
    layer = pixels.unblend(blended, under, mask)
    again = composite(pixels.with_alpha(layer, mask), under)
    assert all(abs(a - b) <= 1 for a, b in zip(again, blended))


def test_unblend_checks_sizes():
    with pytest.raises(ValueError):
        pixels.unblend(bytes(8), bytes(4), bytes(2))


def test_images_are_encoded_apart_from_reading_the_document():
    """Reading is quick; PNG encoding of a big region is not, so the Krita side runs it on a worker thread."""
    settings = EditSettings(mode="Paste", reference="Ref")
    doc = FakeDocument(arrows=((160, 110, 60, 50),), reference=Rect(150, 100, 20, 20))
    gathered = gather_edit(settings, doc, "r")
    assert gathered.message.image == b"" and gathered.message.mask is None
    assert sorted(gathered.raw) == ["image", "mask", "reference", "reference_mask"]
    with ThreadPoolExecutor(1) as pool:
        message = pool.submit(encode_images, gathered, png).result()
    assert roundtrip(message) == roundtrip(prepare_edit(settings, doc, "r").message)
