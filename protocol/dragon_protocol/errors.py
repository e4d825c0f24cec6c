"""Protocol errors: a machine-readable code and a one-line message for people."""

from __future__ import annotations

from typing import Optional

BAD_MESSAGE = "bad_message"
UNSUPPORTED_VERSION = "unsupported_version"
UNKNOWN_TYPE = "unknown_type"
BAD_FIELD = "bad_field"
BAD_IMAGE = "bad_image"
IMAGE_TOO_LARGE = "image_too_large"
QUEUE_FULL = "queue_full"
DUPLICATE_ID = "duplicate_id"
UNKNOWN_REQUEST = "unknown_request"
SHUTTING_DOWN = "shutting_down"
BAD_INPUT = "bad_input"
OUT_OF_MEMORY = "out_of_memory"
MODEL_UNAVAILABLE = "model_unavailable"
INTERNAL_ERROR = "internal_error"
NOT_FINITE = "not_finite"
ENGINE_LOST = "engine_lost"

ERROR_CODES = {
    BAD_MESSAGE: "the bytes are not a msgpack map with integer `v` and string `type`",
    UNSUPPORTED_VERSION: "`v` is not a protocol version the receiver speaks",
    UNKNOWN_TYPE: "`type` names no message the receiver accepts",
    BAD_FIELD: "a field is missing, has the wrong type, or is outside its allowed range",
    BAD_IMAGE: "an image is not a PNG, is corrupt, or its size does not match the image it belongs to",
    IMAGE_TOO_LARGE: "an image has more pixels than the limit (read from its PNG header)",
    QUEUE_FULL: "the server's queue is full; try again later",
    DUPLICATE_ID: "an edit with this id is queued or running already",
    UNKNOWN_REQUEST: "no request with this id is queued, running or kept (answers cancel and fetch only)",
    SHUTTING_DOWN: "the server is stopping and takes no new edits",
    BAD_INPUT: "the inputs do not make an edit (for example an empty mask); the message says why",
    OUT_OF_MEMORY: "the accelerator ran out of memory for this edit; try a smaller working area",
    MODEL_UNAVAILABLE: "the server could not load its model",
    INTERNAL_ERROR: "the server failed unexpectedly on this request; it goes on serving others",
    NOT_FINITE: "the model's numbers became infinite or NaN (even after a retry in fp32); nothing was returned",
    ENGINE_LOST: "the engine process running this edit stopped (a crash, or killed for memory); it restarts: "
    "send the edit again",
}
"""Every error code a server sends, with its meaning. Other codes may appear: treat them as failures."""


class ProtocolError(Exception):
    """A message that breaks the protocol; becomes an `error` reply with `code` and `str(self)`."""

    def __init__(self, code: str, message: str, request_id: Optional[str] = None):
        super().__init__(message)
        self.code = code
        self.request_id = request_id
