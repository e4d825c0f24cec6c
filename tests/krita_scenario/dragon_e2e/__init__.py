"""Test-only Krita plugin: a painter's round trip through `dragon_krita`, judged from a JSON report.

Driven by environment variables from tests/test_krita_e2e.py: DRAGON_E2E_REPORT (where the report goes;
marker files next to it ask the test to kill, restart or stop the server). The server's address comes
from the docker's saved setting, so the docker's connection on start-up is tested too. Every step is
scheduled on Krita's event loop, as a painter's clicks would be, so the plugin's timer-driven
networking runs for real.
"""

import hashlib
import json
import os
import time
import traceback

from krita import Extension, Krita, Selection
from PyQt5.QtCore import QTimer
from PyQt5.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QLabel,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSpinBox,
)

REPORT = os.environ.get("DRAGON_E2E_REPORT", "")
SIZE = 192
SQUARE = (48, 48, 40, 40)
ARROW = (68, 68, 128, 80)
STEPS = 4
BIG = (3000, 2000)
BIG_OBJECT = (1000, 700, 500, 500)
BIG_ARROW = (1250, 950, 1550, 1050)


def pattern():
    """A grey B,G,R,A canvas with a red square: the object to move."""
    data = bytearray(b"\x80\x80\x80\xff" * SIZE * SIZE)
    x0, y0, w, h = SQUARE
    for y in range(y0, y0 + h):
        for x in range(x0, x0 + w):
            data[(y * SIZE + x) * 4 : (y * SIZE + x) * 4 + 4] = b"\x20\x20\xe0\xff"
    return bytes(data)


def big_picture():
    """A 3000x2000 B,G,R,A picture: diagonal colour gradients (cheap to build, photo-like to compress)."""
    width, height = BIG
    row = bytearray(4 * 2 * width)
    row[0::4] = bytes((x * 97) % 256 for x in range(2 * width))
    row[1::4] = bytes((x // 12) % 256 for x in range(2 * width))
    row[2::4] = bytes(255 - (x // 24) % 256 for x in range(2 * width))
    row[3::4] = b"\xff" * 2 * width
    row = bytes(row)
    return b"".join(row[4 * (y % width) : 4 * (y % width + width)] for y in range(height))


def names(document):
    return [node.name() for node in document.topLevelNodes()]


def digest(node, width=SIZE, height=SIZE):
    return hashlib.sha256(node.pixelData(0, 0, width, height)).hexdigest()


class Listener:
    """Counts the previews the docker is sent."""

    def __init__(self):
        self.previews = 0
        self.running = False

    def job_preview(self, job, image):
        self.previews += 1

    def jobs_changed(self, jobs):
        self.running = any(job.state == "running" and job.step > 0 for job in jobs)


class Scenario:
    def __init__(self):
        self.report = {"steps": []}
        self.listener = Listener()

    def step(self, name):
        self.report["steps"].append(name)
        self.save()

    def save(self):
        with open(REPORT + ".partial", "w") as handle:
            json.dump(self.report, handle, indent=1)

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

    def later(self, ms, function):
        QTimer.singleShot(ms, self.guarded(function))

    def wait(self, condition, then, seconds, what):
        """Check `condition` every 100 ms; run `then` once it holds, or fail after `seconds`."""
        deadline = time.monotonic() + seconds

        def check():
            if condition():
                then()
            elif time.monotonic() > deadline:
                self.finish(f"timed out waiting for {what}; status: {self.dragon.status()}")
            else:
                self.later(100, check)

        self.later(100, check)

    def marker(self, name, text=""):
        with open(f"{REPORT}.{name}", "w") as handle:
            handle.write(text)

    def docker(self):
        (docker,) = [d for d in Krita.instance().dockers() if d.windowTitle() == "DragonDiffusion"]
        return docker

    def edit_button(self):
        (button,) = [b for b in self.docker().findChildren(QPushButton) if b.text() == "Edit"]
        return button

    def docker_texts(self):
        return [label.text() for label in self.docker().findChildren(QLabel)]

    def combo(self, first_item):
        return [c for c in self.docker().findChildren(QComboBox) if c.count() and c.itemText(0) == first_item][0]

    # 1. Start-up: the docker connects to its saved address by itself.

    def start(self):
        app = Krita.instance()
        window = app.activeWindow() or (app.windows() or [None])[0]
        if window is None:
            self.later(500, self.start)
            return
        document = app.createDocument(SIZE, SIZE, "dragon e2e", "RGBA", "U8", "", 144.0)
        window.addView(document)
        self.window = window
        self.document = document
        source = document.createNode("Source", "paintlayer")
        source.setPixelData(pattern(), 0, 0, SIZE, SIZE)
        document.rootNode().addChildNode(source, None)
        selection = Selection()
        selection.select(SQUARE[0] - 4, SQUARE[1] - 4, SQUARE[2] + 8, SQUARE[3] + 8, 255)
        document.setSelection(selection)
        import dragon_krita.script as dragon
        from dragon_krita.document import controller

        self.dragon = dragon
        controller().listeners.append(self.listener)
        document.setActiveNode(source)
        dragon.add_arrow(*ARROW)
        self.step("document")
        self.wait(dragon.connected, self.edit_from_guides, 120, "the connection on start-up")

    def source(self):
        return self.document.nodeByName("Source")

    def guides(self):
        return self.document.nodeByName("Drag guides")

    # 2. Edit with the guide layer active, paint meanwhile, one undo removes the result.

    def edit_from_guides(self):
        self.step("connected")
        self.report["status"] = self.dragon.status()
        self.report["before"] = names(self.document)
        self.report["guide_svg"] = [shape.toSvg() for shape in self.guides().shapes()]
        self.document.setActiveNode(self.guides())
        self.later(300, self.edit_then_paint)

    def edit_then_paint(self):
        self.source_before = digest(self.source())
        self.report["active_at_edit"] = self.document.activeNode().name()
        done = self.guarded(self.done)
        self.report["request"] = self.dragon.edit("Move", steps=STEPS, seed=1, preview=True, on_done=done)
        self.document.setActiveNode(self.source())
        self.later(100, self.paint)

    def paint(self):
        """A painter's stroke while the edit runs: fill the selection on the source layer (undoable)."""
        Krita.instance().action("fill_selection_foreground_color").trigger()
        self.report["painted_during_edit"] = True

    def done(self, layer, error):
        if error is not None:
            self.finish(f"edit failed: {error.code}: {error}")
            return
        self.step("result")
        self.layer_name = layer.name()
        self.later(800, self.inspect)

    def inspect(self):
        document = self.document
        layer = document.nodeByName(self.layer_name)
        bounds = layer.bounds()
        self.source_painted = digest(self.source())
        self.report.update(
            after=names(document),
            layer=self.layer_name,
            layer_type=layer.type(),
            bounds=[bounds.x(), bounds.y(), bounds.width(), bounds.height()],
            source_painted=self.source_painted != self.source_before,
            active=document.activeNode().name(),
            selection=[
                document.selection().x(),
                document.selection().y(),
                document.selection().width(),
                document.selection().height(),
            ]
            if document.selection()
            else None,
            guide_shapes=len(self.guides().shapes()),
            previews=self.listener.previews,
            dockers=[docker.windowTitle() for docker in Krita.instance().dockers()],
            docker_status=[text for text in self.docker_texts() if text.startswith("Connected")],
        )
        Krita.instance().action("edit_undo").trigger()
        self.later(800, self.after_undo)

    def after_undo(self):
        self.report["after_undo"] = names(self.document)
        self.report["stroke_kept"] = digest(self.source()) == self.source_painted
        self.step("undo")
        self.later(100, self.transparent_layer)

    # 3. An object on its own transparent layer is edited as the painter sees it.

    def transparent_layer(self):
        document = self.document
        layer = document.createNode("Object", "paintlayer")
        x0, y0, w, h = SQUARE
        layer.setPixelData(b"\xe0\x40\x20\xff" * w * h, x0, y0, w, h)
        document.rootNode().addChildNode(layer, self.source())
        document.setActiveNode(layer)
        self.later(300, self.edit_object)

    def edit_object(self):
        self.report["object_active"] = self.document.activeNode().name()
        self.dragon.edit("Move", steps=STEPS, seed=2, preview=False, on_done=self.guarded(self.object_done))

    def object_done(self, layer, error):
        self.report["object_edit"] = str(error) if error else layer.name()
        self.report["object_after"] = names(self.document)
        self.step("object")
        self.later(100, self.references)

    # 4. The reference list follows the layers and never offers the edited layer first.

    def references(self):
        self.combo("Move").setCurrentText("Appearance")
        reference = self.document.createNode("Ref", "paintlayer")
        reference.setPixelData(b"\xff\x00\x00\xff" * 30 * 30, 60, 60, 30, 30)
        self.document.rootNode().addChildNode(reference, None)
        self.document.setActiveNode(self.source())
        self.later(2500, self.read_references)

    def read_references(self):
        combo = [c for c in self.docker().findChildren(QComboBox) if c.findText("Ref") >= 0 and c.findText("Move") < 0]
        self.report["reference_items"] = [combo[0].itemText(i) for i in range(combo[0].count())] if combo else []
        self.report["reference_current"] = combo[0].currentText() if combo else None
        self.combo("Move").setCurrentText("Move")
        self.probe()
        self.step("probe")
        self.later(100, self.delete_during_edit)

    def delete_during_edit(self):
        """Delete the edited layer while its edit runs: the edit ends, and the server stops it."""
        document = self.document
        doomed = document.createNode("Doomed", "paintlayer")
        doomed.setPixelData(pattern(), 0, 0, SIZE, SIZE)
        document.rootNode().addChildNode(doomed, self.source())
        document.setActiveNode(doomed)
        self.report["deleted_edit"] = None
        self.later(300, self.edit_doomed)

    def edit_doomed(self):
        self.dragon.edit("Move", steps=500, preview=False, on_done=self.guarded(self.doomed_done))
        self.wait(lambda: self.listener.running, self.delete_doomed, 60, "the edit of the doomed layer")

    def delete_doomed(self):
        self.document.nodeByName("Doomed").remove()
        self.document.setActiveNode(self.source())

    def doomed_done(self, layer, error):
        self.report["deleted_edit"] = error.code if error else "finished"
        self.later(2500, self.after_delete)

    def after_delete(self):
        self.report["status_after_delete"] = self.dragon.status()
        self.later(100, self.close_during_edit)

    def close_during_edit(self):
        """Start an edit and close its document at once: the edit ends with a message, Krita lives on."""
        document = self.document
        document.setActiveNode(self.source())
        self.report["closed_edit"] = None
        self.dragon.edit("Move", steps=STEPS, preview=True, on_done=self.guarded(self.closed))
        self.edit_button().click()  # a second edit, queued through the docker
        self.report["docker_after_click"] = self.docker_texts()
        document.setModified(False)
        document.close()
        self.later(3000, self.after_close)

    def after_close(self):
        self.report["docker_after_close"] = self.docker_texts()
        self.layout_probe()
        self.step("closed")
        self.later(100, self.big_document)

    def closed(self, layer, error):
        self.report["closed_edit"] = [layer is None, error.code if error else None]

    # 5. No freezes on a 3000x2000 canvas: the longest gap between 10 ms timer ticks.

    def big_document(self):
        width, height = BIG
        document = Krita.instance().createDocument(width, height, "big", "RGBA", "U8", "", 300.0)
        self.window.addView(document)
        self.big = document
        layer = document.createNode("Photo", "paintlayer")
        layer.setPixelData(big_picture(), 0, 0, width, height)
        x0, y0, w, h = BIG_OBJECT
        layer.setPixelData(b"\x30\xc0\x30\xff" * w * h, x0, y0, w, h)
        document.rootNode().addChildNode(layer, None)
        selection = Selection()
        selection.select(x0 - 20, y0 - 20, w + 40, h + 40, 255)
        selection.feather(16)
        document.setSelection(selection)
        document.setActiveNode(layer)
        self.dragon.add_arrow(*BIG_ARROW)
        self.later(4000, self.measure_stall)  # let Krita finish drawing the new canvas

    def measure_stall(self):
        from dragon_krita.document import controller

        self.timings = []
        timed = ("job_result", "job_preview", "_land", "_fill", "_background_done")
        for owner, name in [(controller(), name) for name in timed] + [(controller().jobs, "poll")]:
            setattr(owner, name, self.timed(name, getattr(owner, name)))
        self.ticks = []
        self.ticker = QTimer()
        self.ticker.setInterval(10)
        self.ticker.timeout.connect(lambda: self.ticks.append(time.monotonic()))
        self.ticker.start()
        self.edit_started = time.monotonic() + 2.0
        self.later(2000, self.big_edit)  # two seconds of Krita alone first, for comparison

    def timed(self, name, function):
        def run(*args):
            started = time.monotonic()
            try:
                return function(*args)
            finally:
                spent = time.monotonic() - started
                if spent > 0.05:
                    self.timings.append([name, round(started - self.edit_started, 2), round(spent, 3)])

        return run

    def big_edit(self):
        started = self.edit_started = time.monotonic()
        self.dragon.edit("Move", steps=STEPS, seed=3, preview=True, on_done=self.guarded(self.big_done))
        self.report["big_edit_call"] = round(time.monotonic() - started, 3)

    def big_done(self, layer, error):
        self.report["big_edit"] = str(error) if error else layer.name()
        self.later(1500, self.stall_measured)

    def stall_measured(self):
        self.ticker.stop()
        gaps = [b - a for a, b in zip(self.ticks, self.ticks[1:]) if a >= self.edit_started - 0.05]
        idle = [b - a for a, b in zip(self.ticks, self.ticks[1:]) if b < self.edit_started]
        self.report["stall"] = round(max(gaps), 3) if gaps else None
        self.report["idle_stall"] = round(max(idle), 3) if idle else None
        self.report["stall_at"] = sorted(
            ([round(b - a, 3), round(a - self.edit_started, 2)] for a, b in zip(self.ticks, self.ticks[1:])),
            reverse=True,
        )[:4]
        self.report["stall_timings"] = self.timings
        self.report["ticks"] = len(self.ticks)
        self.step("stall")
        self.later(100, self.kill_server)

    # 6. The server dies and comes back: noticed within seconds, reconnected by itself.

    def kill_server(self):
        self.marker("kill")
        self.wait(lambda: not self.dragon.connected(), self.noticed, 60, "the dead server to be noticed")

    def noticed(self):
        killed = open(f"{REPORT}.killed").read() if os.path.exists(f"{REPORT}.killed") else ""
        self.report["noticed_after"] = round(time.time() - float(killed), 2) if killed else None
        self.report["status_dead"] = self.dragon.status()
        self.report["docker_dead"] = self.docker_texts()
        self.report["style_dead"] = self.status_style()
        self.edit_button().click()  # while the server is away
        self.report["docker_edit_dead"] = self.docker_texts()
        self.marker("noticed")
        self.wait(self.dragon.connected, self.reconnected, 120, "the reconnection")

    def reconnected(self):
        self.report["status_back"] = self.dragon.status()
        self.step("reconnected")
        self.later(1500, self.edit_then_stop_server)

    def edit_then_stop_server(self):
        self.report["docker_back"] = self.docker_texts()
        self.dragon.edit("Move", steps=500, seed=4, preview=False, on_done=self.guarded(self.stopped))
        self.wait(lambda: self.listener.running, lambda: self.later(3000, self.stop_server), 60, "the long edit")

    def stop_server(self):
        (bar,) = self.docker().findChildren(QProgressBar)
        self.report["progress"] = [bar.value() / bar.maximum(), bar.text()]
        self.marker("term")

    def stopped(self, layer, error):
        self.report["stopped_edit"] = error.code if error else "finished"
        self.later(300, self.after_stop)

    def after_stop(self):
        self.report["docker_stopped"] = self.docker_texts()
        self.big.setModified(False)
        self.finish()

    def layout_probe(self):
        """The docker's controls: ranges, scrolling, folded keys, the guidance box, remembered settings."""
        docker = self.docker()
        boxes = docker.findChildren(QSpinBox) + docker.findChildren(QDoubleSpinBox)
        labels = docker.findChildren(QLabel)
        self.report["layout"] = {
            "spin_ranges": sorted([box.minimum(), box.maximum()] for box in boxes),
            "scrolls": bool(docker.findChildren(QScrollArea)),
            "key_fields_shown": [text.text() for text in labels if text.text().endswith(" key") and text.isVisible()],
            "checkboxes": {box.text(): box.isChecked() for box in docker.findChildren(QCheckBox)},
            "saved_steps": Krita.instance().readSetting("dragon_krita", "steps", ""),
            "saved_strength": Krita.instance().readSetting("dragon_krita", "strength", ""),
        }

    def status_style(self):
        return [label.styleSheet() for label in self.docker().findChildren(QLabel) if "server" in label.text()]

    def probe(self):
        """The document adapter's other inputs, read in real Krita without running edits."""
        from dragon_krita import document as adapter
        from dragon_krita.arrows import arrows_from_svg
        from dragon_krita.edit import EditSettings, encode_images, gather_edit
        from dragon_krita.errors import PluginError

        document = self.document
        probes = self.report["probes"] = {}
        reference = document.nodeByName("Ref")
        document.nodeByName("Object").remove()
        document.setActiveNode(self.source())
        source = adapter.KritaSource(document, EditSettings(mode="Paste", reference="Ref"))
        probes["paste_source"] = source.node.name()
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
        message = encode_images(gather_edit(source.settings, source, "probe"), adapter.encode_png)
        probes["paste"] = [len(message.reference), len(message.reference_mask), list(message.arrows[0])]
        rgba, width, height = adapter.decode_png(message.reference, 4)
        probes["reference_png"] = [width, height, list(rgba[:4])]
        guides = self.guides()
        guides.addShapesFromSvg(
            '<svg xmlns="http://www.w3.org/2000/svg"><g transform="translate(10 0)">'
            '<path d="M0 0 L20 0" stroke="#000"/><path d="M0 10 L0 30" stroke="#000"/></g></svg>'
        )
        fragments = source.guide_svg()
        probes["shape_types"] = [shape.type() for shape in guides.shapes()]
        probes["arrows"] = [[round(v, 2) for v in arrow] for arrow in arrows_from_svg(fragments, 144, 144)]
        probes["visible_pixel"] = list(source.visible_pixels(adapter.Rect(20, 0, 1, 1)))  # on a guide line
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
