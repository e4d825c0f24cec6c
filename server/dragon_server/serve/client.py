"""`dragon edit --server`: one edit run by a remote server, returned as the engine's EditResult."""

from __future__ import annotations

import time
import uuid
from typing import Callable, Optional

from PIL import Image

from dragon_protocol import Accepted, Cancel, Cancelled, Edit, Error, Fetch, Progress, Result
from dragon_protocol.errors import UNKNOWN_REQUEST
from dragon_server.engine.request import (
    EditCancelled,
    EditError,
    EditRequest,
    EditResult,
    InputError,
    Mode,
    ModelError,
    ProgressEvent,
)
from dragon_server.engine.validate import to_rgb
from dragon_server.serve.images import PNG_MODES, image_to_png, png_to_image
from dragon_server.serve.link import LinkError, ServerLink, no_answer

KEEPALIVE_INTERVAL = 2.0
CANCEL_WAIT = 10.0
RESUBMITS = 3
"""How many times an edit is sent again to a server that stopped or restarted and so lost it."""
_ERRORS = {InputError.code: InputError, ModelError.code: ModelError}


def run_remote_edit(
    request: EditRequest,
    server: str,
    server_key: Optional[str] = None,
    client_key: Optional[str] = None,
    progress: Optional[Callable[[ProgressEvent], None]] = None,
    timeout: float = 30.0,
) -> EditResult:
    """Run `request` on the server at `server` and return the same EditResult the engine would.

    `progress` gets the server's progress events. While the edit waits or runs, silence is met with a
    `fetch` every KEEPALIVE_INTERVAL seconds (answered at once, even by a busy server); `timeout`
    seconds with no answer at all raise EditError (code "unreachable"). A server that stops
    (`cancelled` for shutdown) or comes back without the edit (`unknown_request`: it restarted) gets
    the edit again once it answers, up to RESUBMITS times: the ZeroMQ link reconnects by itself.
    Ctrl-C sends `cancel`, waits briefly for the server to confirm, then raises KeyboardInterrupt.
    Errors the server reports are raised as InputError, ModelError, EditCancelled or EditError with
    the server's code.
    """
    edit = edit_message(request, uuid.uuid4().hex)
    try:
        with ServerLink(server, server_key, client_key) as link:
            link.send(edit)
            try:
                return _follow(link, request, edit, progress, timeout, resubmits=RESUBMITS)
            except KeyboardInterrupt:
                link.send(Cancel(id=edit.id))
                try:
                    _follow(link, request, edit, None, CANCEL_WAIT, give_up=time.monotonic() + CANCEL_WAIT)
                except EditError:  # the expected `cancelled`, or the server is gone: stop either way
                    pass
                raise
    except LinkError as error:
        raise EditError(str(error), code=error.code) from None


def _follow(
    link: ServerLink,
    request: EditRequest,
    edit: Edit,
    progress: Optional[Callable[[ProgressEvent], None]],
    timeout: float,
    give_up: float = float("inf"),
    resubmits: int = 0,
) -> Optional[EditResult]:
    """Read the server's messages about `edit` until its terminal one (or `give_up`).

    A server that lost the edit gets it again, at most `resubmits` times. Keep-alives sent during the
    outage reach the server together with the resubmission, so `unknown_request` answers that come
    within KEEPALIVE_INTERVAL of it, before its `accepted`, are about the old edit and are ignored.
    """
    request_id = edit.id
    heard = time.monotonic()
    ignore_lost_until = 0.0
    stopped = False
    while time.monotonic() < give_up:
        message = link.receive(KEEPALIVE_INTERVAL)
        now = time.monotonic()
        if message is None:
            if now - heard > timeout:
                text = f"the server at {link.server} stopped and was not back within {timeout:g} s"
                raise EditError(text if stopped else no_answer(link.server, timeout), code="unreachable")
            link.send(Fetch(id=request_id))  # a keep-alive that also notices a server that lost the edit
            continue
        heard = now
        if getattr(message, "id", None) != request_id:
            continue
        lost = isinstance(message, Error) and message.code == UNKNOWN_REQUEST
        if isinstance(message, Accepted):
            ignore_lost_until = 0.0
        elif lost and now < ignore_lost_until:
            continue  # answers to keep-alives that waited in the link while the server was away
        elif lost and resubmits > 0:
            link.send(edit)  # the server is back without the edit: send it again
            resubmits -= 1
            ignore_lost_until = now + KEEPALIVE_INTERVAL
        elif isinstance(message, Cancelled) and message.reason == "shutdown" and resubmits > 0:
            stopped = True  # the keep-alive finds out when the server is back
        elif isinstance(message, Progress):
            if progress is not None:
                progress(ProgressEvent(message.stage, message.step, message.total))
        elif isinstance(message, Result):
            return edit_result(request, message)
        elif isinstance(message, Cancelled):
            raise EditCancelled(f"the server cancelled the edit ({message.reason})")
        elif isinstance(message, Error) and message.code == UNKNOWN_REQUEST:
            raise EditError(f"the server at {link.server} no longer knows this edit (restarted?)", UNKNOWN_REQUEST)
        elif isinstance(message, Error):
            raise _ERRORS.get(message.code, EditError)(message.message, code=message.code)
    return None


def edit_message(request: EditRequest, request_id: str) -> Edit:
    """The `edit` message for an engine request: images as lossless PNG in their own pixel format."""

    def png(image: Optional[Image.Image]) -> Optional[bytes]:
        if image is None:
            return None
        if image.mode == "F":
            raise InputError("the image has floating-point pixels: save it as an 8- or 16-bit image")
        if image.mode not in PNG_MODES:
            image = image.convert("RGBA" if "A" in image.mode else "RGB")
        return image_to_png(image, compress_level=1)

    return Edit(
        id=request_id,
        mode=Mode(request.mode).value,
        image=png(request.image),
        mask=png(request.mask),
        arrows=[tuple(float(v) for v in arrow) for arrow in request.arrows],
        reference=png(request.reference),
        reference_mask=png(request.reference_mask),
        prompt=request.prompt,
        steps=request.steps,
        seed=request.seed,
        strength=request.strength,
        scale=request.scale,
        context=request.context,
        working_area=request.working_area,
        settings=dict(request.settings),
        guidance=request.guidance,
    )


def edit_result(request: EditRequest, message: Result) -> EditResult:
    """The EditResult: the input (as the engine sees it) with the returned region as its patch."""
    patch, patch_mask = Image.new("RGB", (0, 0)), Image.new("L", (0, 0))
    if message.image is not None and message.mask is not None:
        patch = png_to_image(message.image, "result.image", "RGB")
        patch_mask = png_to_image(message.mask, "result.mask", "L")
    return EditResult(
        picture=to_rgb(request.image, "image"),
        patch=patch,
        patch_mask=patch_mask,
        box=tuple(message.box),
        timings=dict(message.timings),
        unet_evaluations=dict(message.unet_evaluations),
        working_size=tuple(message.working_size),
        warnings=list(message.warnings),
    )
