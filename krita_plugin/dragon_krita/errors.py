"""Every problem the plugin can report, worded for painters rather than programmers.

Code raises `PluginError(code, detail=...)`; the docker shows `str(error)`. Keeping the wording in one
table makes it testable and consistent.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any, Dict, List, Sequence

GUIDE_LAYER_NAME = "Drag guides"

MESSAGES: Dict[str, str] = {
    "no_document": "Open an image first.",
    "unsupported_color": (
        "DragonDiffusion edits 8-bit RGB/Alpha images; this one is {detail}. Convert it with "
        "Image > Convert Image Color Space (RGB/Alpha, 8-bit integer), or edit a copy."
    ),
    "no_paint_layer": (
        "There is no visible paint layer to edit (the active layer is {detail}); add a paint layer with "
        "the picture, or tick Use the visible canvas."
    ),
    "empty_layer": "The layer being edited is empty; pick the layer that holds the picture.",
    "no_selection": "Select the object first (for example with the freehand selection tool), then Edit.",
    "no_guide_layer": (
        f'There is no "{GUIDE_LAYER_NAME}" layer. Press "Guide layer", then draw an arrow on it with the '
        "line tool: from where the object is to where it should go."
    ),
    "no_arrows": (
        f'The "{GUIDE_LAYER_NAME}" layer has no arrows. Draw a line on it with the line or path tool: '
        "from where the object is to where it should go."
    ),
    "short_arrow": "An arrow on the guide layer {detail} is too short to show a direction; draw it longer.",
    "bad_guide_svg": "An arrow on the guide layer could not be read ({detail}); redraw it as a simple line.",
    "bad_resolution": ("The image has no usable resolution ({detail}); set one in Image > Scale Image To New Size."),
    "no_reference": "Choose a reference layer for {detail} in the DragonDiffusion docker.",
    "reference_is_source": "The reference layer must be a different layer from the one being edited.",
    "empty_reference": "The reference layer {detail} is empty; paint or paste the reference object there.",
    "paste_start": "Start the paste arrow on the object in the reference layer {detail}; end it at its new place.",
    "bad_parameter": "{detail}",
    "not_connected": (
        "Not connected to a DragonDiffusion server yet; the docker keeps trying the address next to Server "
        "(press Connect after changing it)."
    ),
    "cannot_connect": (
        "Cannot reach the DragonDiffusion server at {detail}. Is `dragon serve` running, and is the address "
        "right? Trying again every few seconds."
    ),
    "timeout": (
        "The server at {detail} stopped answering. Is `dragon serve` still running? The plugin reconnects "
        "by itself when it is back."
    ),
    "bad_address": "{detail} is not a server address; write it like tcp://127.0.0.1:5555.",
    "bad_key": "Cannot use the key file {detail}; choose the .key_secret / .key files `dragon serve` made.",
    "version_mismatch": (
        "The plugin and the server are different versions ({detail}); update both, then run "
        "`dragon install-plugin` again and restart Krita."
    ),
    "missing_modules": "The plugin cannot load {detail}. Close Krita and run: {command}",
    "document_closed": "The image was closed before the edit finished, so the result was dropped.",
    "layer_gone": "The edited layer was deleted before the edit finished, so the result was dropped.",
    "nothing_changed": "The edit changed nothing. Try a longer arrow, more steps or a higher strength.",
    "cancelled": "Edit cancelled.",
    "server_bad_input": "The server refused the edit: {detail}",
    "server_model": "The server cannot load its model: {detail}",
    "server_memory": (
        "The server ran out of graphics memory for this edit; select a smaller object or move it a shorter way."
    ),
    "server_lost": "The server no longer knows this edit (was it restarted?); press Edit again.",
    "server_busy": "The server is busy with too many edits; wait for one to finish and try again.",
    "server_shutdown": (
        "The server shut down before the edit finished. Start `dragon serve` again (the plugin reconnects "
        "by itself), then press Edit."
    ),
    "server_error": "The server failed during the edit: {detail}",
    "bad_reply": "The server sent something the plugin does not understand ({detail}); update both.",
}


class PluginError(Exception):
    """A problem to show the painter: `code` picks the wording from MESSAGES, `detail` fills it in."""

    def __init__(self, code: str, detail: str = "", command: str = ""):
        if code not in MESSAGES:
            raise KeyError(f"unknown plugin error code {code!r}")
        self.code = code
        self.detail = detail
        self.command = command
        super().__init__(MESSAGES[code].format(detail=detail, command=command))


REQUIRED_MODULES = ("zmq", "msgpack", "dragon_protocol")
MODULE_NAMES = {
    "zmq": "pyzmq",
    "msgpack": "msgpack",
    "dragon_protocol": "the DragonDiffusion protocol package",
}


def missing_modules(names: Sequence[str] = REQUIRED_MODULES) -> List[str]:
    """The modules the plugin needs that this Python cannot import."""
    missing = []
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    return missing


def missing_modules_error(missing: Sequence[str], version: Any = sys.version_info) -> PluginError:
    """The docker's message when modules are missing, with the exact command that fixes it."""
    command = f"dragon install-plugin --krita-python {version[0]}.{version[1]}"
    return PluginError("missing_modules", detail=", ".join(MODULE_NAMES.get(m, m) for m in missing), command=command)
