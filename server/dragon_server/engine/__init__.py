"""The DragonDiffusion engine: load a model once, then `edit(request, progress=..., cancel=...)`."""

from dragon_server.engine.engine import Engine
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
from dragon_server.engine.settings import MethodSettings

__all__ = [
    "Engine", "EditRequest", "EditResult", "EditError", "InputError", "ModelError", "EditCancelled",
    "Mode", "ProgressEvent", "MethodSettings", "GUIDANCES",
]
