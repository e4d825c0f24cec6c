"""The DragonDiffusion engine: load a model once, then `edit(request, progress=..., cancel=...)`.

`Engine` and `MethodSettings` are imported on first use, so that the request types (and the `dragon`
commands that only need them) load without PyTorch."""

from typing import Any

from dragon_server.engine.request import (
    GUIDANCES,
    EditCancelled,
    EditError,
    EditRequest,
    EditResult,
    InputError,
    Mode,
    ModelError,
    ProgressEvent,
)

_LAZY = {"Engine": "dragon_server.engine.engine", "MethodSettings": "dragon_server.engine.settings"}

__all__ = [
    "Engine", "EditRequest", "EditResult", "EditError", "InputError", "ModelError", "EditCancelled",
    "Mode", "ProgressEvent", "MethodSettings", "GUIDANCES",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
