"""Everything that touches Krita's document API: reading inputs, previews and inserting results.

`KritaSource` reads one edit's inputs; `Controller` owns the connection, polls it from a Qt timer (so
the GUI thread never waits on the network) and puts results into the document as new layers. Previews
go to the docker, never into the document, so the only undo step an edit makes is adding its result.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from typing import Any, Callable, Iterator, List, Optional, Tuple

from krita import Krita

from . import pixels
from .client import Client
from .edit import EditSettings, Source, encode_images, gather_edit, result_bands
from .errors import GUIDE_LAYER_NAME, PluginError
from .jobs import Host, Job, Jobs, new_request_id
from .layers import color_name, kind_name, pick_edit_layer
from .qt import (
    FORMAT_ARGB,
    FORMAT_ARGB_PREMULTIPLIED,
    FORMAT_GREY,
    FORMAT_RGBA,
    IGNORE_ASPECT,
    OPEN_WRITE,
    SMOOTH,
    WHITE,
    QBuffer,
    QByteArray,
    QImage,
    QPainter,
    QTimer,
)
from .region import Rect, preview_crop

POLL_MS = 30
PNG_QUALITY = 80
"""Qt's PNG "quality" is the inverse of zlib's level: 80 compresses fast (level 1-2), so pressing Edit on
a big canvas stays quick; the server is usually near, where bytes are cheap."""


def encode_png(data: bytes, width: int, height: int, channels: int) -> bytes:
    """PNG of R,G,B,A (channels 4) or grey (channels 1) bytes, through QImage."""
    image = QImage(data, width, height, width * channels, FORMAT_RGBA if channels == 4 else FORMAT_GREY)
    array = QByteArray()
    buffer = QBuffer(array)
    buffer.open(OPEN_WRITE)
    image.save(buffer, "PNG", PNG_QUALITY)
    buffer.close()
    return bytes(array)


def decode_png(data: bytes, channels: int, size: Optional[Tuple[int, int]] = None) -> Tuple[bytes, int, int]:
    """R,G,B,A or grey bytes of a PNG (optionally scaled to `size`), with its width and height."""
    image = QImage.fromData(data, "PNG")
    if image.isNull():
        raise PluginError("bad_reply", detail="an image is not a readable PNG")
    if size is not None and (image.width(), image.height()) != size:
        image = image.scaled(size[0], size[1], IGNORE_ASPECT, SMOOTH)
    image = image.convertToFormat(FORMAT_RGBA if channels == 4 else FORMAT_GREY)
    return image_bytes(image, channels), image.width(), image.height()


def image_bytes(image: Any, channels: int) -> bytes:
    """The rows of a QImage of `channels` bytes per pixel, without line padding."""
    width, height, stride = image.width(), image.height(), image.bytesPerLine()
    bits = image.constBits()
    bits.setsize(stride * height)
    raw = bytes(bits)
    row = width * channels
    if stride != row:
        raw = b"".join(raw[y * stride : y * stride + row] for y in range(height))
    return raw


def decode_result(result: Any) -> Tuple[bytes, bytes]:
    """A `result` message's R,G,B,A image and its grey blend mask (scaled to the image if it differs)."""
    rgba, width, height = decode_png(result.image, 4)
    mask, _, _ = decode_png(result.mask, 1, (width, height))
    return rgba, mask


def active_document() -> Any:
    """The document in the active view, or PluginError(no_document)."""
    document = Krita.instance().activeDocument()
    if document is None:
        raise PluginError("no_document")
    return document


def check_color(document: Any) -> None:
    """Only 8-bit RGBA documents are supported; refuse others with the way to convert them."""
    model, depth = document.colorModel(), document.colorDepth()
    if (model, depth) != ("RGBA", "U8"):
        raise PluginError("unsupported_color", detail=color_name(model, depth))


def _rect(qrect: Any) -> Rect:
    return Rect(qrect.x(), qrect.y(), qrect.width(), qrect.height())


def find_layer(document: Any, name: str, kind: str = "") -> Any:
    """The first layer called `name` (of node type `kind` when given), anywhere in the tree, or None."""
    pending = list(document.topLevelNodes())
    while pending:
        node = pending.pop(0)
        if node.name() == name and (not kind or node.type() == kind):
            return node
        pending.extend(node.childNodes())
    return None


def keep_active(document: Any, node: Any) -> None:
    """Make `node` the active layer again, now and after Krita's deferred switch to a new node."""
    if node is None:
        return
    document.setActiveNode(node)
    QTimer.singleShot(0, lambda: document.setActiveNode(node))


def guide_layer(document: Any, create: bool = False) -> Any:
    """The "Drag guides" vector layer; made on top of the layer stack when `create` and missing.

    Creating it leaves the active layer as it was, so the next Edit still edits the painter's layer.
    """
    layer = find_layer(document, GUIDE_LAYER_NAME, "vectorlayer")
    if layer is None and create:
        active = document.activeNode()
        layer = document.createVectorLayer(GUIDE_LAYER_NAME)
        document.rootNode().addChildNode(layer, None)
        keep_active(document, active)
    return layer


def layer_stack(document: Any) -> List[Any]:
    """Every node of the document, top first, as the Layers docker lists them (children under groups)."""
    nodes: List[Any] = []
    pending = list(reversed(document.topLevelNodes()))
    while pending:
        node = pending.pop(0)
        nodes.append(node)
        pending[0:0] = list(reversed(node.childNodes()))
    return nodes


def paint_layers(document: Any) -> List[str]:
    """Names of the document's paint layers, top first, for the reference chooser."""
    return [node.name() for node in layer_stack(document) if node.type() == "paintlayer"]


def _index(nodes: List[Any], node: Any) -> Optional[int]:
    if node is None:
        return None
    return next((i for i, other in enumerate(nodes) if _same(other, node)), None)


def edit_layer(document: Any, remembered: Any = None, visible_canvas: bool = False) -> Any:
    """The paint layer an edit of `document` works on (see `layers.pick_edit_layer`).

    With `visible_canvas` any active layer will do (the result goes above it); else PluginError.
    """
    active = document.activeNode()
    nodes = layer_stack(document)
    index = pick_edit_layer([(n.type(), n.visible()) for n in nodes], _index(nodes, active), _index(nodes, remembered))
    if index is not None:
        return nodes[index]
    if visible_canvas and active is not None:
        return active
    raise PluginError("no_paint_layer", detail="nothing" if active is None else f"a {kind_name(active.type())}")


class KritaSource(Source):
    """The inputs of one edit, read from a Krita document."""

    def __init__(self, document: Any, settings: EditSettings, remembered: Any = None):
        check_color(document)
        self.document = document
        self.settings = settings
        self.canvas = Rect(0, 0, document.width(), document.height())
        self.x_res, self.y_res = document.xRes(), document.yRes()
        self.node = edit_layer(document, remembered, settings.visible_canvas)
        self.source_name = self.node.name()

    def guide_svg(self) -> Optional[List[str]]:
        layer = guide_layer(self.document)
        return None if layer is None else [shape.toSvg() for shape in layer.shapes()]  # groups included

    def selection(self) -> Optional[Tuple[Rect, bytes]]:
        selection = self.document.selection()
        if selection is None or selection.width() <= 0 or selection.height() <= 0:
            return None
        rect = Rect(selection.x(), selection.y(), selection.width(), selection.height())
        return rect, bytes(selection.pixelData(*rect))

    def image_pixels(self, rect: Rect) -> bytes:
        return bytes(self.node.pixelData(*rect))

    def visible_pixels(self, rect: Rect) -> bytes:
        """The visible layers but the guides, each drawn with its opacity and normal blending, over white."""
        image = QImage(rect.width, rect.height, FORMAT_ARGB_PREMULTIPLIED)
        image.fill(WHITE)
        painter = QPainter(image)
        try:
            for node in self.document.topLevelNodes():  # bottom first
                guides = (node.type(), node.name()) == ("vectorlayer", GUIDE_LAYER_NAME)
                if guides or not node.visible() or node.type().endswith("mask"):
                    continue
                data = bytes(node.projectionPixelData(*rect))
                if len(data) != 4 * rect.width * rect.height:
                    continue
                painter.setOpacity(node.opacity() / 255)
                painter.drawImage(0, 0, QImage(data, rect.width, rect.height, 4 * rect.width, FORMAT_ARGB))
        finally:
            painter.end()
        return image_bytes(image.convertToFormat(FORMAT_ARGB), 4)

    def _reference_node(self) -> Any:
        node = find_layer(self.document, self.settings.reference)
        if node is None:
            raise PluginError("no_reference", detail=self.settings.mode.lower())
        return node

    def reference_pixels(self, rect: Rect) -> bytes:
        return bytes(self._reference_node().pixelData(*rect))

    def reference_mask(self) -> Tuple[Rect, bytes]:
        node = self._reference_node()
        for child in node.childNodes():
            if child.type() == "selectionmask" and hasattr(child, "selection"):
                selection = child.selection()
                rect = Rect(selection.x(), selection.y(), selection.width(), selection.height())
                if not rect.is_empty():
                    return rect, bytes(selection.pixelData(*rect))
        rect = _rect(node.bounds()).intersect(self.canvas)
        if rect.is_empty():
            return Rect(0, 0, 1, 1), b"\0"
        return rect, pixels.alpha_channel(bytes(node.pixelData(*rect)))


def _same(a: Any, b: Any) -> bool:
    """Krita makes new Python wrappers on every call; compare what they wrap."""
    try:
        return a == b
    except Exception:
        return a is b


class Controller(Host):
    """The plugin's one connection and job queue; the docker and scripts both use it.

    Listeners (the docker, scripts) may implement connection_changed(text, ok), jobs_changed(jobs),
    job_preview(job, image) and job_finished(job, layer, error).
    """

    def __init__(self) -> None:
        self.settings = {"address": "tcp://127.0.0.1:5555", "server_key": "", "client_key": ""}
        self.jobs = Jobs(self, self._make_client)
        self.listeners: List[Any] = []
        self.status = ("Not connected.", False)
        self.painted: List[Tuple[Any, Any]] = []
        """(document, paint layer) the painter was last on, per document."""
        self.worker = ThreadPoolExecutor(1)  # QImage reads and writes PNGs without holding Python's lock
        self.background: List[Tuple[Job, Future, Callable[[Any], None]]] = []
        """(job, work on the worker thread, what the timer does with its outcome)."""
        self.timer = QTimer()
        self.timer.setInterval(POLL_MS)
        self.timer.timeout.connect(self.poll)
        notifier = Krita.instance().notifier()
        notifier.imageClosed.connect(self._documents_changed)
        notifier.applicationClosing.connect(self.shutdown)

    def _make_client(self) -> Client:
        s = self.settings
        return Client(s["address"], s["server_key"], s["client_key"])

    def connect(self, address: str = "", server_key: str = "", client_key: str = "") -> None:
        """Connect to the server (the welcome arrives a moment later through the timer)."""
        if address:
            self.settings.update(address=address, server_key=server_key, client_key=client_key)
        self.jobs.connect()
        self.timer.start()

    @property
    def connected(self) -> bool:
        return self.jobs.client is not None and self.jobs.client.connected

    def remembered_layer(self, document: Any) -> Any:
        """The paint layer the painter was last on in `document`, or None."""
        return next((node for doc, node in self.painted if _same(doc, document)), None)

    def _note_active_layer(self) -> None:
        document = Krita.instance().activeDocument()
        node = document.activeNode() if document is not None else None
        if node is not None and node.type() == "paintlayer":
            self.painted = [(d, n) for d, n in self.painted if not _same(d, document)] + [(document, node)]

    def start_edit(
        self, settings: EditSettings, on_done: Optional[Callable[[Any, Optional[PluginError]], None]] = None
    ) -> Job:
        """Read an edit from the active document; PluginError says what is missing. Its images are
        encoded on a worker thread and it is sent from the timer once they are, so Edit never freezes Krita."""
        if not self.connected:
            raise PluginError("not_connected")
        document = active_document()
        source = KritaSource(document, settings, self.remembered_layer(document))
        job = Job(gather_edit(settings, source, new_request_id()), document, source.node, state="encoding")
        job.extra.update(on_done=on_done)
        self._in_background(job, partial(encode_images, job.prepared, encode_png), partial(self._send, job))
        return job

    def _send(self, job: Job, message: Any) -> None:
        job.prepared.message, job.prepared.raw = message, {}
        self._check_alive(job)
        self.jobs.submit(job)

    def _in_background(self, job: Job, work: Callable[[], Any], then: Callable[[Any], None]) -> None:
        """Run `work()` on the worker thread; `then(outcome)` runs from the timer once it is done."""
        self.background.append((job, self.worker.submit(work), then))

    def _background_done(self) -> None:
        for item in [item for item in self.background if item[1].done()]:
            self.background.remove(item)
            job, future, then = item
            try:
                then(future.result())
            except PluginError as exc:
                self.job_failed(job, exc)

    def cancel(self) -> None:
        encoding = [item for item in self.background if item[0].state == "encoding"]
        for item in encoding:
            self.background.remove(item)
            self.job_failed(item[0], PluginError("cancelled"))
        self.jobs.cancel()

    def poll(self) -> None:
        self._note_active_layer()
        self._background_done()
        self.jobs.poll()

    def shutdown(self) -> None:
        """Krita is closing: stop polling and drop the socket without touching documents."""
        self.timer.stop()
        self.background = []
        self.worker.shutdown(wait=False)
        self.jobs.drop(lambda job: True)
        self.jobs.disconnect()

    def _documents_changed(self) -> None:
        open_documents = Krita.instance().documents()
        self.painted = [(d, n) for d, n in self.painted if any(_same(d, o) for o in open_documents)]
        self.jobs.drop(
            lambda job: not any(_same(job.document, d) for d in open_documents), PluginError("document_closed")
        )

    # Host: called by Jobs from the timer.

    def _notify(self, method: str, *args: Any) -> None:
        for listener in list(self.listeners):
            handler = getattr(listener, method, None)
            if handler is not None:
                handler(*args)

    def connection_changed(self, text: str, ok: bool) -> None:
        self.status = (text, ok)
        self._notify("connection_changed", text, ok)

    def job_changed(self, job: Job) -> None:
        self._notify("jobs_changed", self.jobs.running())

    def _document_open(self, job: Job) -> bool:
        return any(_same(job.document, d) for d in Krita.instance().documents())

    def job_lost(self, job: Job) -> bool:
        return job.node.parentNode() is None and self._document_open(job)

    def _check_alive(self, job: Job) -> None:
        if not self._document_open(job):
            raise PluginError("document_closed")
        if job.node.parentNode() is None:
            raise PluginError("layer_gone")

    def job_preview(self, job: Job, png: bytes, box: Tuple[int, int, int, int]) -> None:
        image = QImage.fromData(png, "PNG")
        if image.isNull():
            return
        if job.prepared.focus is not None:
            crop = preview_crop(job.prepared.focus, job.prepared.region, box, (image.width(), image.height()))
            image = image.copy(*crop)
        self._notify("job_preview", job, image)

    def job_result(self, job: Job, result: Any) -> None:
        """Put the result into one new layer directly above the edited layer: made, filled, then added,
        so adding it is the edit's one undo step, whatever the painter did meanwhile.

        The PNGs are decoded on the worker thread, then the layer is filled a band at a time, one band
        per turn of Krita's event loop, so a big result never freezes Krita.
        """
        self._check_alive(job)
        if result.image is None or result.mask is None or result.box[2] == 0:
            raise PluginError("nothing_changed")
        self._in_background(job, partial(decode_result, result), partial(self._land, job, tuple(result.box)))

    def _land(self, job: Job, box: Tuple[int, int, int, int], decoded: Tuple[bytes, bytes]) -> None:
        bands = result_bands(job.prepared, box, *decoded)
        layer = job.document.createNode(job.prepared.layer_name, "paintlayer")
        self._fill(job, layer, bands)

    def _fill(self, job: Job, layer: Any, bands: Iterator[Tuple[Rect, bytes]]) -> None:
        """Fill `layer` with the next band, or add it above the edited layer when all are in."""
        try:
            band = next(bands, None)
            if band is not None:
                rect, bgra = band
                layer.setPixelData(bgra, *rect)
                QTimer.singleShot(0, lambda: self._fill(job, layer, bands))
                return
            self._check_alive(job)
        except PluginError as exc:
            self.job_failed(job, exc)
            return
        active = job.document.activeNode()
        job.node.parentNode().addChildNode(layer, job.node)
        keep_active(job.document, active)
        self._notify("job_finished", job, layer, None)
        self._notify("jobs_changed", self.jobs.running())
        callback = job.extra.get("on_done")
        if callback:
            callback(layer, None)

    def job_failed(self, job: Job, error: PluginError) -> None:
        self._notify("job_finished", job, None, error)
        self._notify("jobs_changed", self.jobs.running())
        callback = job.extra.get("on_done")
        if callback:
            callback(None, error)


_controller: Optional[Controller] = None


def controller() -> Controller:
    """The plugin's controller, made on first use."""
    global _controller
    if _controller is None:
        _controller = Controller()
    return _controller
