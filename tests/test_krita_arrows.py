"""Arrow extraction from guide-layer SVG, without Krita."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dragon_krita.arrows import arrow_svg, arrows_from_svg, parse_transform, path_end_points
from dragon_krita.errors import PluginError


def close(a, b, tol=1e-6):
    return all(math.isclose(x, y, abs_tol=tol) for x, y in zip(a, b))


def test_krita_style_line_with_translate():
    svg = '<path transform="translate(10, 10)" d="M0 0L90 40" fill="none" stroke="#000"/>'
    assert arrows_from_svg([svg]) == [(10.0, 10.0, 100.0, 50.0)]


def test_points_to_pixels_uses_document_resolution():
    svg = '<path d="M0 0L72 36"/>'
    assert arrows_from_svg([svg], x_res=300, y_res=150) == [(0.0, 0.0, 300.0, 75.0)]


def test_line_and_polyline_elements():
    svg = '<line x1="1" y1="2" x2="30" y2="40"/><polyline points="5,5 20,5 20,30"/>'
    assert arrows_from_svg([svg]) == [(1, 2, 30, 40), (5, 5, 20, 30)]


def test_curves_use_first_and_last_point():
    cubic = '<path d="M10 10 C 50 0, 80 90, 100 100"/>'
    quad = '<path d="M0 0 Q 40 40 60 0 T 120 0"/>'
    arc = '<path d="M0 0 A 20 20 0 0 1 40 0"/>'
    assert arrows_from_svg([cubic, quad, arc]) == [(10, 10, 100, 100), (0, 0, 120, 0), (0, 0, 40, 0)]


def test_relative_commands_and_implicit_lineto():
    assert path_end_points("m10 10 20 0 0 20") == ((10, 10), (30, 30))
    assert path_end_points("M10 10 h15 v-5 l5 5") == ((10, 10), (30, 10))
    assert path_end_points("M0 0 c10 10 20 20 30 30 s10 10 10 10") == ((0, 0), (40, 40))
    assert path_end_points("M1e1,2e1L-5.5.5") == ((10, 20), (-5.5, 0.5))


def test_closepath_returns_to_subpath_start():
    assert path_end_points("M0 0 L10 0 L10 10 Z") == ((0, 0), (0, 0))
    assert path_end_points("M0 0 L10 0 M20 20 L30 20 z l5 5") == ((0, 0), (25, 25))


def test_empty_path_is_not_an_arrow():
    assert path_end_points("") is None
    assert arrows_from_svg(['<path d=""/>', "<rect width='5' height='5'/>", ""]) == []


def test_arrowhead_only_at_start_reverses():
    start = '<path d="M0 0L50 0" marker-start="url(#head)"/>'
    both = '<path d="M0 0L50 0" marker-start="url(#a)" marker-end="url(#b)"/>'
    end = '<path d="M0 0L50 0" style="marker-end:url(#b)"/>'
    styled = '<path d="M0 0L50 0" style="marker-start: url(#a); marker-end: none"/>'
    assert arrows_from_svg([start, both, end, styled]) == [
        (50, 0, 0, 0),
        (0, 0, 50, 0),
        (0, 0, 50, 0),
        (50, 0, 0, 0),
    ]


def test_groups_and_nested_transforms():
    svg = (
        '<g transform="translate(100 0)"><g transform="scale(2)">'
        '<path d="M0 0 L10 0"/></g><path transform="rotate(90)" d="M0 0 L10 0"/></g>'
    )
    arrows = arrows_from_svg([svg])
    assert close(arrows[0], (100, 0, 120, 0))
    assert close(arrows[1], (100, 0, 100, 10))


def test_group_markers_are_inherited():
    svg = '<g marker-start="url(#a)"><path d="M0 0L10 0"/></g>'
    assert arrows_from_svg([svg]) == [(10, 0, 0, 0)]


def test_whole_svg_document_with_defs():
    svg = (
        '<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="100pt" height="100pt">'
        '<defs><marker id="m"><path d="M0 0L5 5"/></marker></defs>'
        '<path d="M5 5L20 5" marker-end="url(#m)"/></svg>'
    )
    assert arrows_from_svg([svg]) == [(5, 5, 20, 5)]


def test_matrix_skew_and_rotate_about_point():
    assert close(parse_transform("matrix(1 0 0 1 5 6)"), (1, 0, 0, 1, 5, 6))
    m = parse_transform("rotate(180 10 10)")
    assert close(m, (-1, 0, 0, -1, 20, 20))
    sx = parse_transform("skewX(45)")
    assert close(sx, (1, 0, 1, 1, 0, 0))
    sy = parse_transform("skewY(45)")
    assert close(sy, (1, 1, 0, 1, 0, 0))
    assert parse_transform("translate(3)") == (1, 0, 0, 1, 3, 0)
    assert parse_transform(None) == (1, 0, 0, 1, 0, 0)


def test_transform_order_is_right_to_left():
    svg = '<path transform="translate(10 0) scale(2)" d="M1 0L2 0"/>'
    assert arrows_from_svg([svg]) == [(12, 0, 14, 0)]


def test_short_arrow_is_refused():
    with pytest.raises(PluginError) as info:
        arrows_from_svg(['<path d="M10 10L10.2 10"/>'])
    assert info.value.code == "short_arrow"


@pytest.mark.parametrize(
    "svg",
    [
        '<path d="M0 0 L10"/>',
        '<path d="10 10 L 5 5"/>',
        "<path",
        '<path transform="matrix(1 2)" d="M0 0L9 9"/>',
        '<line x1="a" x2="3"/>',
    ],
)
def test_malformed_svg_is_one_plugin_error(svg):
    with pytest.raises(PluginError) as info:
        arrows_from_svg([svg])
    assert info.value.code == "bad_guide_svg"
    assert "\n" not in str(info.value)


def test_bad_resolution():
    with pytest.raises(PluginError) as info:
        arrows_from_svg([], x_res=0)
    assert info.value.code == "bad_resolution"


def test_shape_svg_written_by_krita_at_144_ppi():
    # Krita 5.1.5's Shape.toSvg() for a line added as M34 34 L64 40 (pixels) to a 144 ppi document
    svg = (
        '<path id="shape0" transform="matrix(0.5 0 0 0.5 17 17)" fill="none" stroke="#ff2a2a" '
        'stroke-width="2" d="M0 0L30 6" sodipodi:nodetypes="cc" krita:marker-fill-method="auto"/>'
    )
    assert arrows_from_svg([svg], 144, 144) == [(34, 34, 64, 40)]


coords = st.floats(-2000, 2000, allow_nan=False)


@given(coords, coords, coords, coords)
def test_arrow_svg_round_trips(x0, y0, x1, y1):
    if math.hypot(x1 - x0, y1 - y0) < 1:
        return
    (arrow,) = arrows_from_svg([arrow_svg((x0, y0, x1, y1))])
    assert close(arrow, (x0, y0, x1, y1), tol=1e-3)
