"""Test-only Krita plugin: one move edit through `dragon_krita.script`, judged from a JSON report.

Driven by environment variables from tests/test_krita_e2e.py: DRAGON_E2E_SERVER (address) and
DRAGON_E2E_REPORT (where the report goes). Every step is scheduled on Krita's event loop, as a painter's
clicks would be, so the plugin's timer-driven networking runs for real.
"""

import hashlib
import json
import os
import traceback

from krita import Extension, Krita, Selection
from PyQt5.QtCore import QTimer
from PyQt5.QtWidgets import QLabel, QPushButton

REPORT = os.environ.get("DRAGON_E2E_REPORT", "")
SERVER = os.environ.get("DRAGON_E2E_SERVER", "")
SIZE = 192
SQUARE = (48, 48, 40, 40)
ARROW = (68, 68, 128, 80)
STEPS = 4


def pattern():
    """A grey B,G,R,A canvas with a red square: the object to move."""
    data = bytearray(b"\x80\x80\x80\xff" * SIZE * SIZE)
    x0, y0, w, h = SQUARE
    for y in range(y0, y0 + h):
        for x in range(x0, x0 + w):
            data[(y * SIZE + x) * 4 : (y * SIZE + x) * 4 + 4] = b"\x20\x20\xe0\xff"
    return bytes(data)


def names(document):
    return [node.name() for node in document.topLevelNodes()]


class Scenario:
    def __init__(self):
        self.report = {"steps": []}

    def step(self, name):
        self.report["steps"].append(name)

    def finish(self, error=None):
        if error:
            self.report["error"] = error
        with open(REPORT + ".tmp", "w") as handle:
            json.dump(self.report, handle, indent=1)
        os.replace(REPORT + ".tmp", REPORT)

    def guarded(self, function):
        def run(*args):
            try:
                function(*args)
            except Exception:
                self.finish(traceback.format_exc())

        return run

    def start(self):
        app = Krita.instance()
        window = app.activeWindow() or (app.windows() or [None])[0]
        if window is None:
            QTimer.singleShot(500, self.guarded(self.start))
            return
        document = app.createDocument(SIZE, SIZE, "dragon e2e", "RGBA", "U8", "", 144.0)
        window.addView(document)
        self.document = document
        source = document.createNode("Source", "paintlayer")
        source.setPixelData(pattern(), 0, 0, SIZE, SIZE)
        document.rootNode().addChildNode(source, None)
        selection = Selection()
        selection.select(SQUARE[0] - 4, SQUARE[1] - 4, SQUARE[2] + 8, SQUARE[3] + 8, 255)
        document.setSelection(selection)
        import dragon_krita.script as dragon

        self.dragon = dragon
        document.setActiveNode(source)
        dragon.add_arrow(*ARROW)
        document.refreshProjection()
        self.step("document")
        QTimer.singleShot(300, self.guarded(self.connect))

    def connect(self):
        self.source_before = hashlib.sha256(self.source().pixelData(0, 0, SIZE, SIZE)).hexdigest()
        self.report["before"] = names(self.document)
        self.report["active_before"] = self.document.activeNode().name()
        self.report["guide_svg"] = [shape.toSvg() for shape in self.document.nodeByName("Drag guides").shapes()]
        self.dragon.connect(SERVER, on_status=self.guarded(self.connected))

    def source(self):
        return self.document.nodeByName("Source")

    def connected(self, text, ok):
        self.report["status"] = text
        if not ok:
            self.finish("not connected: " + text)
            return
        self.step("connected")
        self.report["active_at_edit"] = self.document.activeNode().name()
        self.report["request"] = self.dragon.edit(
            "Move", steps=STEPS, seed=1, preview=True, on_done=self.guarded(self.done)
        )

    def done(self, layer, error):
        if error is not None:
            self.finish(f"edit failed: {error.code}: {error}")
            return
        self.step("result")
        self.layer_name = layer.name()
        QTimer.singleShot(500, self.guarded(self.inspect))

    def inspect(self):
        document = self.document
        layer = document.nodeByName(self.layer_name)
        bounds = layer.bounds()
        self.report.update(
            after=names(document),
            layer=self.layer_name,
            layer_type=layer.type(),
            bounds=[bounds.x(), bounds.y(), bounds.width(), bounds.height()],
            source_unchanged=hashlib.sha256(self.source().pixelData(0, 0, SIZE, SIZE)).hexdigest()
            == self.source_before,
            active=document.activeNode().name(),
            selection=[
                document.selection().x(),
                document.selection().y(),
                document.selection().width(),
                document.selection().height(),
            ]
            if document.selection()
            else None,
            guide_shapes=len(document.nodeByName("Drag guides").shapes()),
            status=self.dragon.status(),
            dockers=[docker.windowTitle() for docker in Krita.instance().dockers()],
            docker_status=[
                label.text()
                for docker in Krita.instance().dockers()
                if docker.windowTitle() == "DragonDiffusion"
                for label in docker.findChildren(QLabel)
                if label.text().startswith("Connected")
            ],
        )
        Krita.instance().action("edit_undo").trigger()
        QTimer.singleShot(500, self.guarded(self.after_undo))

    def after_undo(self):
        self.report["after_undo"] = names(self.document)
        self.step("undo")
        self.probe()
        QTimer.singleShot(100, self.guarded(self.close_during_edit))

    def close_during_edit(self):
        """Start an edit and close its document at once: the edit ends with a message, Krita lives on."""
        document = self.document
        document.setActiveNode(self.source())
        self.report["closed_edit"] = None
        self.dragon.edit("Move", steps=STEPS, preview=True, on_done=self.guarded(self.closed))
        (edit_button,) = [b for b in self.docker().findChildren(QPushButton) if b.text() == "Edit"]
        edit_button.click()  # a second edit, queued through the docker
        self.report["docker_after_click"] = self.docker_texts()
        document.setModified(False)
        document.close()
        QTimer.singleShot(3000, self.guarded(self.after_close))

    def docker(self):
        (docker,) = [d for d in Krita.instance().dockers() if d.windowTitle() == "DragonDiffusion"]
        return docker

    def docker_texts(self):
        return [label.text() for label in self.docker().findChildren(QLabel)]

    def after_close(self):
        self.report["docker_after_close"] = self.docker_texts()
        self.finish()

    def closed(self, layer, error):
        self.report["closed_edit"] = [layer is None, error.code if error else None]

    def probe(self):
        """The document adapter's other inputs, read in real Krita without running edits."""
        from dragon_krita import document as adapter
        from dragon_krita.arrows import arrows_from_svg
        from dragon_krita.edit import EditSettings, prepare_edit
        from dragon_krita.errors import PluginError

        document = self.document
        probes = self.report["probes"] = {}
        reference = document.createNode("Ref", "paintlayer")
        reference.setPixelData(b"\xff\x00\x00\xff" * 30 * 30, 60, 60, 30, 30)
        document.rootNode().addChildNode(reference, None)
        document.setActiveNode(self.source())
        source = adapter.KritaSource(document, EditSettings(mode="Paste", reference="Ref"))
        rect, mask = source.reference_mask()
        probes["reference_mask"] = [rect.x, rect.y, rect.width, rect.height, sum(1 for v in mask if v)]
        local = document.createSelectionMask("Ref object")
        part = Selection()
        part.select(125, 125, 10, 10, 255)
        local.setSelection(part)
        reference.addChildNode(local, None)
        rect, mask = source.reference_mask()
        probes["local_selection"] = [rect.x, rect.y, rect.width, rect.height, sum(1 for v in mask if v)]
        local.remove()
        message = prepare_edit(source.settings, source, "probe").message
        probes["paste"] = [len(message.reference), len(message.reference_mask), list(message.arrows[0])]
        rgba, width, height = adapter.decode_png(message.reference, 4)
        probes["reference_png"] = [width, height, list(rgba[:4])]
        guides = document.nodeByName("Drag guides")
        guides.addShapesFromSvg(
            '<svg xmlns="http://www.w3.org/2000/svg"><g transform="translate(10 0)">'
            '<path d="M0 0 L20 0" stroke="#000"/><path d="M0 10 L0 30" stroke="#000"/></g></svg>'
        )
        fragments = source.guide_svg()
        probes["shape_types"] = [shape.type() for shape in guides.shapes()]
        probes["arrows"] = [[round(v, 2) for v in arrow] for arrow in arrows_from_svg(fragments, 144, 144)]
        document.setActiveNode(guides)
        try:
            adapter.KritaSource(document, EditSettings())
        except PluginError as error:
            probes["vector_active"] = error.code
        deep = Krita.instance().createDocument(8, 8, "deep", "RGBA", "U16", "", 72.0)
        try:
            adapter.check_color(deep)
        except PluginError as error:
            probes["u16"] = str(error)
        deep.close()


class ScenarioExtension(Extension):
    def setup(self):
        pass

    def createActions(self, window):  # noqa: N802 (Krita's name)
        if REPORT and not getattr(ScenarioExtension, "started", False):
            ScenarioExtension.started = True
            scenario = Scenario()
            QTimer.singleShot(1500, scenario.guarded(scenario.start))


Krita.instance().addExtension(ScenarioExtension(Krita.instance()))
