"""The method's weights and schedule, with the authors' release defaults per mode.

The release fixes its schedule for 50 DDIM steps; here each schedule point is a fraction of the step
count, chosen so that 50 steps give exactly the release's indices (guidance at i < 30 where i < 10 or i
is even, time travel at 22, 24, 26, 28, regional SDE at 10 < i < 20, memory bank from step 5).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import FrozenSet, Mapping, Tuple

from dragon_server.engine.request import GUIDANCES, InputError, Mode

RANGES: Mapping[str, Tuple[float, float]] = {
    "w_edit": (0.0, 100.0), "w_content": (0.0, 100.0), "w_contrast": (0.0, 100.0), "w_inpaint": (0.0, 100.0),
    "alpha": (0.1, 100.0), "beta": (0.0, 100.0),
    "step_size": (0.0, 1.0), "energy_scale": (0.0, 20000.0), "cfg_scale": (0.0, 30.0),
    "guidance_end": (0.0, 1.0), "dense_guidance_end": (0.0, 1.0),
    "time_travel_start": (0.0, 1.0), "time_travel_end": (0.0, 1.0),
    "time_travel_every": (1, 500), "time_travel_repeats": (1, 10),
    "sde_start": (0.0, 1.0), "sde_end": (0.0, 1.0), "sde_eta": (0.0, 1.0),
    "bank_start": (0.0, 1.0), "bank_end": (0.0, 1.0),
    "drag_patch": (1, 15),
}
"""The allowed range (inclusive) of every numeric setting: fractions of the step count lie in [0, 1], a
positive alpha keeps each energy finite where S lies in [0, 1] (the release's raw cosine for move lies in
[-1, 1], where its own 1 + 4 cos could vanish; an edit that diverges is refused, never returned), and the
caps on repeats and gains keep one edit's work bounded. Values outside are refused with InputError
(`bad_input`)."""


@dataclass(frozen=True)
class MethodSettings:
    """Every weight and schedule value of one edit. Energies have the form w / (alpha + beta * S)."""

    w_edit: float = 4.0
    w_content: float = 6.0
    w_contrast: float = 0.2
    w_inpaint: float = 0.8
    alpha: float = 1.0
    beta: float = 4.0
    step_size: float = 0.04
    """Factor on the energy gradient before it is added to the predicted noise."""
    energy_scale: float = 2000.0
    """Second factor on the gradient (the release's UI value x 1000); the request's strength multiplies it."""
    cfg_scale: float = 4.0
    guidance_end: float = 0.6
    dense_guidance_end: float = 0.2
    """Guidance at every step before this fraction, then every other step until `guidance_end`."""
    time_travel_start: float = 0.44
    time_travel_end: float = 0.58
    time_travel_every: int = 2
    time_travel_repeats: int = 3
    """Times a time-travel step is denoised in all (re-noised in between)."""
    sde_start: float = 0.2
    sde_end: float = 0.4
    sde_eta: float = 0.4
    """DDIM eta inside the edit region for steps strictly between sde_start and sde_end (0 outside)."""
    bank_start: float = 0.1
    bank_end: float = 1.0
    drag_patch: int = 3
    """Side, in cells of the feature grid (a quarter of the working size), of a drag point's patch."""
    guidance: str = "release"
    """How a guided step computes its gradient (one of GUIDANCES). "release" (the default, the authors'
    release exactly): the features come from a separate pass without cross-branch attention, the edit
    and content energies are differentiated apart (two backward passes), each gradient kept in its
    region, with the release's similarity and layer weighting (see `energy`). "paper" (eqs. 4-6 and
    fig. 2): the generation branch's features come from the same UNet pass that predicts the noise,
    cross-branch attention included, and the gradient is that of the total energy (one backward pass);
    every similarity is mapped to [0, 1] and every term averaged over the feature layers."""

    @property
    def release(self) -> bool:
        return self.guidance == "release"

    @classmethod
    def for_mode(cls, mode: Mode, overrides: Mapping[str, float] = (), guidance: str = "release") -> MethodSettings:
        """The release's defaults for `mode`, with `overrides` by field name and the named `guidance`."""
        base = {
            Mode.MOVE: dict(step_size=0.08, energy_scale=500.0),
            Mode.DRAG: dict(w_inpaint=0.2),
            Mode.APPEARANCE: dict(w_edit=3.5, w_content=5.0, cfg_scale=5.0, bank_start=0.0, bank_end=0.72),
            Mode.PASTE: dict(energy_scale=1500.0, bank_start=0.0, bank_end=0.72),
        }[mode]
        if guidance not in GUIDANCES:
            raise InputError(f"unknown guidance {guidance!r}: choose {' or '.join(GUIDANCES)}")
        settings = cls(**base, guidance=guidance)
        overrides = dict(overrides)
        names = {f.name: f for f in dataclasses.fields(cls) if f.name != "guidance"}
        for key, value in overrides.items():
            if key == "guidance":
                raise InputError("the guidance is chosen by name, not as a number: use --guidance paper|release "
                                 "(protocol field 'guidance')")
            if key not in names:
                raise InputError(f"unknown setting '{key}': known settings are {', '.join(sorted(names))}")
            kind = names[key].type
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                raise InputError(f"setting '{key}' must be a finite number, got {value!r}")
            low, high = RANGES[key]
            if not low <= value <= high:
                raise InputError(f"setting '{key}' must be from {low:g} to {high:g}, got {value:g}")
            if kind == "int":
                if value != int(value) or value < 1:
                    raise InputError(f"setting '{key}' must be a positive whole number, got {value!r}")
                overrides[key] = int(value)
        return dataclasses.replace(settings, **overrides)


@dataclass(frozen=True)
class Schedule:
    """Step indices (0 = noisiest) where each part of the method acts, for a given step count."""

    steps: int
    guided: FrozenSet[int]
    time_travel: FrozenSet[int]
    sde: FrozenSet[int]
    bank: FrozenSet[int]

    @classmethod
    def build(cls, settings: MethodSettings, steps: int) -> Schedule:
        def at(fraction: float) -> int:
            return int(round(fraction * steps))

        guided = {i for i in range(at(settings.guidance_end)) if i < at(settings.dense_guidance_end) or i % 2 == 0}
        travel = set(range(at(settings.time_travel_start), at(settings.time_travel_end), settings.time_travel_every))
        sde = set(range(int(math.floor(settings.sde_start * steps)) + 1, int(math.ceil(settings.sde_end * steps))))
        bank = set(range(at(settings.bank_start), min(steps, at(settings.bank_end))))
        return cls(steps, frozenset(guided), frozenset(travel & guided), frozenset(sde), frozenset(bank))
