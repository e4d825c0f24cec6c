"""Scripting entry point: run DragonDiffusion edits on the active document from Krita's Scripter.

    import dragon_krita.script as dragon

    dragon.connect("tcp://127.0.0.1:5555", on_status=print)   # answers a moment later
    dragon.add_arrow(120, 80, 220, 80)                         # or draw it on "Drag guides"
    dragon.edit("Move", steps=20, on_done=lambda layer, error: print(layer, error))

Everything is asynchronous, like the docker: calls return at once and the callbacks run from Krita's
event loop when the server answers. `edit` uses the current selection and the guide layer's arrows,
exactly as the Edit button does, and shares the docker's connection and queue.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from .arrows import arrow_svg
from .document import active_document, controller, guide_layer, keep_active
from .edit import EditSettings

StatusCallback = Callable[[str, bool], None]
DoneCallback = Callable[[Any, Any], None]


class _StatusListener:
    """Forwards the controller's connection changes to a script callback, once connected or failed."""

    def __init__(self, callback: StatusCallback):
        self.callback = callback

    def connection_changed(self, text: str, ok: bool) -> None:
        if ok or not text.endswith("..."):
            controller().listeners.remove(self)
            self.callback(text, ok)


def connect(
    address: str = "tcp://127.0.0.1:5555",
    server_key: str = "",
    client_key: str = "",
    on_status: Optional[StatusCallback] = None,
) -> None:
    """Connect to `dragon serve`; `on_status(text, ok)` runs once the server answered or failed."""
    if on_status is not None:
        controller().listeners.append(_StatusListener(on_status))
    controller().connect(address, server_key, client_key)


def connected() -> bool:
    """True once the server has answered."""
    return controller().connected


def status() -> str:
    """The connection status line the docker shows."""
    return controller().status[0]


def add_arrow(x0: float, y0: float, x1: float, y1: float) -> None:
    """Draw an arrow (document pixels) on the active document's guide layer, creating the layer."""
    document = active_document()
    active = document.activeNode()
    layer = guide_layer(document, create=True)
    for shape in layer.addShapesFromSvg(arrow_svg((x0, y0, x1, y1))):
        shape.deselect()
    keep_active(document, active)


def edit(mode: str = "Move", on_done: Optional[DoneCallback] = None, **settings: Any) -> str:
    """Start an edit of the active document; returns its request id.

    `settings` are EditSettings fields (scale, strength, steps, seed, prompt, preview, visible_canvas,
    reference). `on_done(layer, error)` gets the new layer, or None and a PluginError. Missing inputs
    raise PluginError at once.
    """
    job = controller().start_edit(EditSettings(mode=mode, **settings), on_done)
    return job.id


def cancel() -> None:
    """Cancel every edit in flight."""
    controller().cancel()
