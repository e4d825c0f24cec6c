"""The method's schedule and settings: the release's indices at 50 steps, scaling, overrides."""

import pytest

from dragon_server.engine.request import InputError, Mode
from dragon_server.engine.settings import MethodSettings, Schedule


def test_fifty_steps_reproduce_the_release_schedule():
    s = Schedule.build(MethodSettings.for_mode(Mode.MOVE), 50)
    assert s.guided == frozenset(i for i in range(30) if i < 10 or i % 2 == 0)
    assert len(s.guided) == 20
    assert s.time_travel == frozenset({22, 24, 26, 28})
    assert s.sde == frozenset(range(11, 20))
    assert s.bank == frozenset(range(5, 50))


def test_appearance_and_paste_use_the_bank_early():
    for mode in (Mode.APPEARANCE, Mode.PASTE):
        s = Schedule.build(MethodSettings.for_mode(mode), 50)
        assert s.bank == frozenset(range(0, 36))


@pytest.mark.parametrize("steps", [2, 8, 20, 25, 100])
def test_schedule_scales_with_steps(steps):
    s = Schedule.build(MethodSettings.for_mode(Mode.DRAG), steps)
    assert all(0 <= i < steps for part in (s.guided, s.time_travel, s.sde, s.bank) for i in part)
    assert s.time_travel <= s.guided
    assert 0 in s.guided


def test_mode_defaults_follow_the_release():
    move, drag = MethodSettings.for_mode(Mode.MOVE), MethodSettings.for_mode(Mode.DRAG)
    app, paste = MethodSettings.for_mode(Mode.APPEARANCE), MethodSettings.for_mode(Mode.PASTE)
    assert (move.w_edit, move.w_content, move.w_contrast, move.w_inpaint) == (4, 6, 0.2, 0.8)
    assert move.step_size * move.energy_scale == pytest.approx(0.08 * 500)
    assert (drag.w_inpaint, drag.step_size * drag.energy_scale) == (0.2, pytest.approx(0.04 * 2000))
    assert (app.w_edit, app.w_content, app.cfg_scale) == (3.5, 5, 5)
    assert paste.step_size * paste.energy_scale == pytest.approx(0.04 * 1500)
    assert move.alpha == 1 and move.beta == 4


def test_overrides_and_their_errors():
    s = MethodSettings.for_mode(Mode.MOVE, {"w_edit": 2.5, "time_travel_repeats": 2})
    assert s.w_edit == 2.5 and s.time_travel_repeats == 2 and isinstance(s.time_travel_repeats, int)
    with pytest.raises(InputError, match="unknown setting 'w_edt'"):
        MethodSettings.for_mode(Mode.MOVE, {"w_edt": 1})
    with pytest.raises(InputError, match="finite number"):
        MethodSettings.for_mode(Mode.MOVE, {"w_edit": float("nan")})
    with pytest.raises(InputError, match="positive whole number"):
        MethodSettings.for_mode(Mode.MOVE, {"drag_patch": 1.5})
