"""Which layer an edit works on and what the reference chooser offers (plain Python, no Krita)."""

from dragon_krita.errors import PluginError
from dragon_krita.layers import color_name, kind_name, pick_edit_layer, reference_choice

GUIDES, PAINT, GROUP = ("vectorlayer", True), ("paintlayer", True), ("grouplayer", True)
HIDDEN = ("paintlayer", False)


def test_the_active_paint_layer_is_edited():
    assert pick_edit_layer([GUIDES, PAINT, PAINT], 2, 1) == 2


def test_guides_active_edit_the_layer_the_painter_was_on():
    assert pick_edit_layer([GUIDES, PAINT, PAINT], 0, 2) == 2


def test_guides_active_and_nothing_remembered_edit_the_visible_layer_below():
    assert pick_edit_layer([GUIDES, HIDDEN, PAINT, PAINT], 0, None) == 2
    assert pick_edit_layer([PAINT, GUIDES, GROUP, PAINT], 1, None) == 3, "into groups, top child first"
    assert pick_edit_layer([PAINT, GUIDES], 1, None) == 0, "or above when nothing is below"
    assert pick_edit_layer([GUIDES, PAINT], None, None) == 1
    assert pick_edit_layer([GUIDES, HIDDEN], 0, None) is None


def test_a_remembered_layer_that_is_no_paint_layer_is_ignored():
    assert pick_edit_layer([GUIDES, GROUP, PAINT], 0, 1) == 2
    assert pick_edit_layer([GUIDES, PAINT], 0, 7) == 1


def test_reference_never_defaults_to_the_edited_layer():
    assert reference_choice(["Cat", "Photo"], "", "Photo") == "Cat"
    assert reference_choice(["Photo", "Cat"], "Photo", "Photo") == "Cat"
    assert reference_choice(["Photo", "Cat", "Dog"], "Dog", "Photo") == "Dog", "the painter's choice stays"
    assert reference_choice(["Photo", "Cat"], "Gone", "Photo") == "Cat", "a removed or renamed layer is replaced"
    assert reference_choice(["Photo"], "", "Photo") == ""


def test_painters_words():
    assert kind_name("vectorlayer") == "vector layer" and kind_name("grouplayer") == "group layer"
    assert color_name("RGBA", "U16") == "RGB/Alpha 16-bit integer"
    assert color_name("GRAYA", "F32") == "Grayscale/Alpha 32-bit float"
    text = str(PluginError("unsupported_color", detail=color_name("RGBA", "U16")))
    assert "16-bit integer" in text and "U16" not in text
