"""The messages of the protocol as dataclasses, and `encode`/`decode` between them and msgpack bytes.

Every message is one msgpack map: `v` (protocol version), `type` (message name) and the message's
fields. `decode` checks every field's type and range and raises ProtocolError with a code; unknown
fields are ignored so that later versions can add optional ones.
"""

from __future__ import annotations

import math
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Dict, List, Optional, Tuple, Type

import msgpack

from dragon_protocol import limits
from dragon_protocol.errors import (
    BAD_FIELD,
    BAD_IMAGE,
    BAD_MESSAGE,
    UNKNOWN_TYPE,
    UNSUPPORTED_VERSION,
    ProtocolError,
)
from dragon_protocol.png import check_png
from dragon_protocol.shape import check_shape

_ID_PATTERN = re.compile(rf"[A-Za-z0-9._:-]{{1,{limits.MAX_ID_LENGTH}}}\Z")
_REQUIRED = object()


class _Reader:
    """Typed, range-checked access to the fields of one received map."""

    def __init__(self, obj: Dict[str, Any], kind: str):
        self.obj = obj
        self.kind = kind
        self.request_id: Optional[str] = None

    def fail(self, name: str, what: str) -> ProtocolError:
        return ProtocolError(BAD_FIELD, f"{self.kind}.{name}: {what}", self.request_id)

    def _get(self, name: str, default: Any) -> Any:
        if name in self.obj and not (self.obj[name] is None and default is None):
            return self.obj[name]
        if default is _REQUIRED:
            raise self.fail(name, "is missing")
        return default

    def text(self, name: str, default: Any = _REQUIRED, max_length: int = limits.MAX_TEXT_LENGTH) -> str:
        value = self._get(name, default)
        if not isinstance(value, str):
            raise self.fail(name, "must be a string")
        if len(value) > max_length:
            raise self.fail(name, f"is longer than {max_length} characters")
        return value

    def ident(self, name: str = "id") -> str:
        value = self._get(name, _REQUIRED)
        if not isinstance(value, str) or not _ID_PATTERN.match(value):
            raise self.fail(name, f"must be 1 to {limits.MAX_ID_LENGTH} characters of A-Z a-z 0-9 . _ : -")
        if name == "id":
            self.request_id = value
        return value

    def optional_ident(self, name: str = "id") -> Optional[str]:
        return None if self.obj.get(name) is None else self.ident(name)

    def choice(self, name: str, allowed: Tuple[str, ...], default: Any = _REQUIRED) -> str:
        value = self._get(name, default)
        if not isinstance(value, str) or value not in allowed:
            raise self.fail(name, f"must be one of {', '.join(allowed)}")
        return value

    def integer(self, name: str, bounds: Tuple[int, int] = (0, 2**63 - 1), default: Any = _REQUIRED) -> Any:
        value = self._get(name, default)
        if value is None:
            return None
        if not isinstance(value, int) or isinstance(value, bool):
            raise self.fail(name, "must be an integer")
        if not bounds[0] <= value <= bounds[1]:
            raise self.fail(name, f"must be from {bounds[0]} to {bounds[1]}")
        return value

    def number(self, name: str, bounds: Tuple[float, float], default: Any = _REQUIRED) -> Any:
        value = self._get(name, default)
        if value is None:
            return None
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise self.fail(name, "must be a finite number")
        if not bounds[0] <= value <= bounds[1]:
            raise self.fail(name, f"must be from {bounds[0]} to {bounds[1]}")
        return float(value)

    def blob(self, name: str, default: Any = _REQUIRED) -> Any:
        value = self._get(name, default)
        if value is None:
            return None
        if not isinstance(value, bytes):
            raise self.fail(name, "must be binary (msgpack bin)")
        return value

    def array(self, name: str, default: Any = _REQUIRED, max_items: int = 1000) -> list:
        value = self._get(name, default)
        if not isinstance(value, list):
            raise self.fail(name, "must be an array")
        if len(value) > max_items:
            raise self.fail(name, f"has more than {max_items} items")
        return value

    def ints(self, name: str, count: int) -> Tuple[int, ...]:
        value = self.array(name)
        if len(value) != count or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise self.fail(name, f"must be an array of {count} integers")
        return tuple(value)

    def texts(self, name: str) -> List[str]:
        value = self.array(name)
        if not all(isinstance(v, str) for v in value):
            raise self.fail(name, "must be an array of strings")
        return value

    def mapping(self, name: str, value_types: Tuple[type, ...], max_items: int = 1000) -> Dict[str, Any]:
        value = self._get(name, {})
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and len(k) <= limits.MAX_ID_LENGTH
            and isinstance(v, value_types) and not isinstance(v, bool)
            and (not isinstance(v, float) or math.isfinite(v))
            for k, v in value.items()
        ):
            raise self.fail(name, "must be a map from names to finite numbers")
        if len(value) > max_items:
            raise self.fail(name, f"has more than {max_items} entries")
        return value


@dataclass
class Message(ABC):
    """Base of all messages; `type` is the wire name."""

    type: ClassVar[str] = ""

    @classmethod
    @abstractmethod
    def _read(cls: Type[Message], r: _Reader) -> Message:
        """The message of this type from a checked wire map (each message says how)."""

    def to_wire(self) -> Dict[str, Any]:
        """The message as the map that goes on the wire."""
        body: Dict[str, Any] = {"v": limits.PROTOCOL_VERSION, "type": self.type}
        for f in fields(self):
            body[f.name] = getattr(self, f.name)
        return body


@dataclass
class Hello(Message):
    """Client -> server: asks for a `welcome`. `client` names the client program, for the log."""

    type: ClassVar[str] = "hello"
    client: str = ""

    @classmethod
    def _read(cls, r: _Reader) -> Hello:
        return cls(client=r.text("client", ""))


@dataclass
class Welcome(Message):
    """Server -> client: who the server is, what it can do, its limits and its queue."""

    type: ClassVar[str] = "welcome"
    protocol: int
    server: str
    state: str
    model: str
    device: str
    dtype: str
    modes: List[str]
    image_formats: List[str]
    limits: Dict[str, Any]
    queued: int
    running: int
    queue_capacity: int
    cache: Dict[str, int] = field(default_factory=dict)
    """Reuse between edits: entries, bytes, max_bytes, hits, misses (empty while the model loads)."""
    replicas: List[Dict[str, Any]] = field(default_factory=list)
    """With engine replicas (`dragon serve --replicas`): one map each, of index, state, device, queued,
    running, restarts, entries, hits, misses; empty for a server with one engine."""

    @classmethod
    def _read(cls, r: _Reader) -> Welcome:
        return cls(
            protocol=r.integer("protocol"),
            server=r.text("server"),
            state=r.text("state"),
            model=r.text("model"),
            device=r.text("device"),
            dtype=r.text("dtype"),
            modes=r.texts("modes"),
            image_formats=r.texts("image_formats"),
            limits=r.mapping("limits", (int, float, list)),
            queued=r.integer("queued"),
            running=r.integer("running"),
            queue_capacity=r.integer("queue_capacity"),
            cache=r.mapping("cache", (int,)),
            replicas=[_record(r, "replicas", item) for item in r.array("replicas", [], max_items=1024)],
        )


def _record(r: _Reader, name: str, item: Any) -> Dict[str, Any]:
    """One map of names to numbers and short texts inside the array `name`."""
    if not isinstance(item, dict) or not all(
        isinstance(k, str) and len(k) <= limits.MAX_ID_LENGTH
        and (isinstance(v, str) and len(v) <= limits.MAX_TEXT_LENGTH or isinstance(v, int) and not isinstance(v, bool))
        for k, v in item.items()
    ):
        raise r.fail(name, "must be an array of maps from names to integers or strings")
    return item


@dataclass
class Edit(Message):
    """Client -> server: one edit. Images are PNG bytes; arrows are (x0, y0, x1, y1) in image pixels."""

    type: ClassVar[str] = "edit"
    id: str
    mode: str
    image: bytes
    mask: Optional[bytes] = None
    arrows: List[Tuple[float, float, float, float]] = field(default_factory=list)
    reference: Optional[bytes] = None
    reference_mask: Optional[bytes] = None
    prompt: str = ""
    steps: int = 50
    seed: int = 0
    strength: float = 1.0
    scale: float = 1.0
    context: float = 0.25
    working_area: Optional[int] = None
    settings: Dict[str, float] = field(default_factory=dict)
    guidance: str = "release"
    preview_interval: float = 0.0
    preview_size: int = 256

    @classmethod
    def _read(cls, r: _Reader) -> Edit:
        request_id = r.ident()
        mode = r.choice("mode", limits.MODES)
        image = r.blob("image")
        size = _png_size(image, "edit.image")
        mask = r.blob("mask", None)
        if mask is not None and _png_size(mask, "edit.mask") != size:
            raise ProtocolError(BAD_IMAGE, "edit.mask: size differs from the image's", request_id)
        reference = r.blob("reference", None)
        reference_mask = r.blob("reference_mask", None)
        if reference_mask is not None:
            if reference is None:
                raise r.fail("reference_mask", "is given without a reference")
            if _png_size(reference_mask, "edit.reference_mask") != _png_size(reference, "edit.reference"):
                raise ProtocolError(
                    BAD_IMAGE, "edit.reference_mask: size differs from the reference's", request_id
                )
        elif reference is not None:
            _png_size(reference, "edit.reference")
        arrows = []
        for item in r.array("arrows", [], max_items=limits.MAX_ARROWS):
            if not isinstance(item, list) or len(item) != 4:
                raise r.fail("arrows", "each arrow must be an array [x0, y0, x1, y1]")
            arrows.append(tuple(_coordinate(r, v) for v in item))
        return cls(
            id=request_id,
            mode=mode,
            image=image,
            mask=mask,
            arrows=arrows,
            reference=reference,
            reference_mask=reference_mask,
            prompt=r.text("prompt", ""),
            steps=r.integer("steps", limits.STEPS_RANGE, 50),
            seed=r.integer("seed", limits.SEED_RANGE, 0),
            strength=r.number("strength", limits.STRENGTH_RANGE, 1.0),
            scale=r.number("scale", limits.SCALE_RANGE, 1.0),
            context=r.number("context", limits.CONTEXT_RANGE, 0.25),
            working_area=r.integer("working_area", limits.WORKING_AREA_RANGE, None),
            settings=r.mapping("settings", (int, float), limits.MAX_SETTINGS),
            guidance=r.choice("guidance", limits.GUIDANCES, "release"),
            preview_interval=r.number("preview_interval", limits.PREVIEW_INTERVAL_RANGE, 0.0),
            preview_size=r.integer("preview_size", limits.PREVIEW_SIZE_RANGE, 256),
        )


def _png_size(data: bytes, name: str) -> Tuple[int, int]:
    info = check_png(data, name)
    return info.width, info.height


def _coordinate(r: _Reader, value: Any) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise r.fail("arrows", "coordinates must be finite numbers")
    if abs(value) > limits.MAX_COORDINATE:
        raise r.fail("arrows", f"coordinates must be within +-{limits.MAX_COORDINATE:g}")
    return float(value)


@dataclass
class Accepted(Message):
    """Server -> client: the edit is queued; `position` requests are ahead of it (0: runs next or now)."""

    type: ClassVar[str] = "accepted"
    id: str
    position: int

    @classmethod
    def _read(cls, r: _Reader) -> Accepted:
        return cls(id=r.ident(), position=r.integer("position"))


@dataclass
class Progress(Message):
    """Server -> client: the edit is at `step` of `total` in `stage`; `preview` is an optional PNG of
    the part of the edit's image given by `preview_box` (x, y, width, height)."""

    type: ClassVar[str] = "progress"
    id: str
    stage: str
    step: int
    total: int
    preview: Optional[bytes] = None
    preview_box: Optional[Tuple[int, int, int, int]] = None

    @classmethod
    def _read(cls, r: _Reader) -> Progress:
        return cls(
            id=r.ident(),
            stage=r.text("stage"),
            step=r.integer("step"),
            total=r.integer("total"),
            preview=r.blob("preview", None),
            preview_box=r.ints("preview_box", 4) if r.obj.get("preview_box") is not None else None,
        )


@dataclass
class Result(Message):
    """Server -> client, terminal: the output's pixels inside `box` and the blend mask there.

    `image` is already blended with the input: pasting it over the input at (box x, box y) gives the
    whole edited picture. `mask` (greyscale, same size) is 0 where the output equals the input. When
    nothing changed, `box` is [0, 0, 0, 0] and both images are nil.
    """

    type: ClassVar[str] = "result"
    id: str
    image: Optional[bytes]
    mask: Optional[bytes]
    box: Tuple[int, int, int, int]
    size: Tuple[int, int]
    working_size: Tuple[int, int]
    timings: Dict[str, float] = field(default_factory=dict)
    unet_evaluations: Dict[str, int] = field(default_factory=dict)
    warnings: List[str] = field(default_factory=list)

    @classmethod
    def _read(cls, r: _Reader) -> Result:
        return cls(
            id=r.ident(),
            image=r.blob("image", None),
            mask=r.blob("mask", None),
            box=r.ints("box", 4),
            size=r.ints("size", 2),
            working_size=r.ints("working_size", 2),
            timings=r.mapping("timings", (int, float)),
            unet_evaluations=r.mapping("unet_evaluations", (int,)),
            warnings=r.texts("warnings") if r.obj.get("warnings") is not None else [],
        )


@dataclass
class Error(Message):
    """Server -> client: `code` and a one-line `message`; `id` names the request it is about, if any."""

    type: ClassVar[str] = "error"
    id: Optional[str]
    code: str
    message: str

    @classmethod
    def _read(cls, r: _Reader) -> Error:
        return cls(id=r.optional_ident(), code=r.text("code"), message=r.text("message"))


@dataclass
class Cancelled(Message):
    """Server -> client, terminal: the edit stopped; `reason` is "client" (asked to) or "shutdown"."""

    type: ClassVar[str] = "cancelled"
    id: str
    reason: str

    @classmethod
    def _read(cls, r: _Reader) -> Cancelled:
        return cls(id=r.ident(), reason=r.text("reason"))


@dataclass
class Cancel(Message):
    """Client -> server: stop the queued or running edit `id`."""

    type: ClassVar[str] = "cancel"
    id: str

    @classmethod
    def _read(cls, r: _Reader) -> Cancel:
        return cls(id=r.ident())


@dataclass
class Fetch(Message):
    """Client -> server: send edit `id`'s terminal message again, or route its remaining messages here."""

    type: ClassVar[str] = "fetch"
    id: str

    @classmethod
    def _read(cls, r: _Reader) -> Fetch:
        return cls(id=r.ident())


@dataclass
class Ping(Message):
    """Client -> server: are you there? `nonce` comes back in the `pong`."""

    type: ClassVar[str] = "ping"
    nonce: int = 0

    @classmethod
    def _read(cls, r: _Reader) -> Ping:
        return cls(nonce=r.integer("nonce", default=0))


@dataclass
class Pong(Message):
    """Server -> client: answer to `ping`, with the queue's state."""

    type: ClassVar[str] = "pong"
    nonce: int
    queued: int
    running: int

    @classmethod
    def _read(cls, r: _Reader) -> Pong:
        return cls(nonce=r.integer("nonce"), queued=r.integer("queued"), running=r.integer("running"))


MESSAGE_TYPES: Dict[str, Type[Message]] = {
    cls.type: cls
    for cls in (Hello, Welcome, Edit, Accepted, Progress, Result, Error, Cancelled, Cancel, Fetch, Ping, Pong)
}


def encode(message: Message) -> bytes:
    """The msgpack bytes of `message` (binary fields as msgpack bin)."""
    return msgpack.packb(message.to_wire(), use_bin_type=True)


def decode(data: bytes, accept: Optional[Tuple[str, ...]] = None) -> Message:
    """Check `data` and turn it into a message; raise ProtocolError with a code if it is wrong.

    `accept` limits which message types are welcome (the server accepts only client messages).
    """
    check_shape(data)
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception:
        raise ProtocolError(BAD_MESSAGE, "the message is not valid msgpack") from None
    if not isinstance(obj, dict):
        raise ProtocolError(BAD_MESSAGE, "the message is not a msgpack map")
    version = obj.get("v")
    if not isinstance(version, int) or isinstance(version, bool):
        raise ProtocolError(BAD_MESSAGE, "the message has no integer protocol version `v`")
    if version != limits.PROTOCOL_VERSION:
        raise ProtocolError(
            UNSUPPORTED_VERSION,
            f"protocol version {version} is not supported; "
            f"this side speaks version {limits.PROTOCOL_VERSION}",
        )
    kind = obj.get("type")
    if not isinstance(kind, str):
        raise ProtocolError(BAD_MESSAGE, "the message has no string `type`")
    cls = MESSAGE_TYPES.get(kind)
    if cls is None or (accept is not None and kind not in accept):
        raise ProtocolError(UNKNOWN_TYPE, f"unknown message type {kind[:40]!r}")
    reader = _Reader(obj, kind)
    try:
        return cls._read(reader)
    except ProtocolError as error:
        if error.request_id is None:
            error.request_id = reader.request_id
        raise
