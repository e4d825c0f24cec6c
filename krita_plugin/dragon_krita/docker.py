"""The DragonDiffusion docker: connection, mode and its controls, Edit/Cancel, progress and messages."""

from __future__ import annotations

import time
from typing import Any, List, Optional

from krita import DockWidget, Krita

from dragon_protocol import limits

from .document import active_document, controller, edit_layer, guide_layer, paint_layers
from .edit import MODE_LABELS, EditSettings
from .errors import PluginError
from .jobs import Job, finished_text, progress_text
from .layers import reference_choice
from .qt import (
    KEEP_ASPECT,
    SMOOTH,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPixmap,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QTimer,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

SETTINGS_GROUP = "dragon_krita"
MODE_HELP = {
    "Move": "Select the object, draw one arrow from it to where it should go.",
    "Resize": "Like Move, and the object is scaled by Scale.",
    "Drag": "Draw arrows from points to where they should go; a selection limits what may change.",
    "Appearance": "Select the object; it takes the look of the reference layer's object.",
    "Paste": "Draw an arrow from the reference layer's object to where it should be pasted.",
}


ERROR_STYLE = "color: #d04040;"
CONNECTION_CODES = ("not_connected", "cannot_connect", "timeout", "server_shutdown", "server_lost", "server_busy")
"""Messages whose cause is the connection: cleared once the server answers again."""
REFERENCE_REFRESH_MS = 1000
SEED_MAX = 2**31 - 1
"""Qt spin boxes hold 32-bit numbers; the server takes larger seeds, scripts can send them."""


def _setting(key: str, default: str) -> str:
    return Krita.instance().readSetting(SETTINGS_GROUP, key, default)


def _number(key: str, default: float) -> float:
    try:
        return float(_setting(key, str(default)))
    except ValueError:
        return default


def _save(key: str, value: Any) -> None:
    Krita.instance().writeSetting(SETTINGS_GROUP, key, str(value))


def _show(label: QLabel, text: str, error: bool) -> None:
    """Errors in red, information in the normal colour."""
    label.setText(text)
    label.setStyleSheet(ERROR_STYLE if error and text else "")


class DragonDocker(DockWidget):
    """Dock panel; all work happens in the shared controller, polled by its timer."""

    def __init__(self) -> None:
        super().__init__()
        self.setWindowTitle("DragonDiffusion")
        self.controller = controller()
        self.controller.listeners.append(self)
        self.message_code = ""
        root = QWidget()
        layout = QVBoxLayout(root)

        server_row = QHBoxLayout()
        self.address = QLineEdit(_setting("address", self.controller.settings["address"]))
        self.address.setToolTip("Where `dragon serve` listens, like tcp://127.0.0.1:5555")
        self.connect_button = QPushButton("Connect")
        self.connect_button.clicked.connect(self.connect_server)
        self.keys_button = QToolButton()
        self.keys_button.setText("Keys")
        self.keys_button.setCheckable(True)
        self.keys_button.setToolTip("Key files for a server on another computer (made by `dragon keys`)")
        for widget in (QLabel("Server"), self.address, self.connect_button, self.keys_button):
            server_row.addWidget(widget)
        layout.addLayout(server_row)
        self.keys = QWidget()
        keys_form = QFormLayout(self.keys)
        keys_form.setContentsMargins(0, 0, 0, 0)
        self.server_key = self._key_field(_setting("server_key", ""), "Server public key (.key)")
        self.client_key = self._key_field(_setting("client_key", ""), "Your secret key (.key_secret)")
        keys_form.addRow("Server key", self.server_key[0])
        keys_form.addRow("Client key", self.client_key[0])
        layout.addWidget(self.keys)
        has_keys = bool(self.server_key[1].text() or self.client_key[1].text())
        self.keys_button.setChecked(has_keys)
        self.keys.setVisible(has_keys)
        self.keys_button.toggled.connect(self.keys.setVisible)
        self.status = QLabel()
        self.status.setWordWrap(True)
        layout.addWidget(self.status)

        form = QFormLayout()
        self.mode = QComboBox()
        self.mode.addItems(list(MODE_LABELS))
        self.mode.setCurrentText(_setting("mode", "Move"))
        self.mode.currentTextChanged.connect(self.update_mode)
        form.addRow("Mode", self.mode)
        self.mode_help = QLabel()
        self.mode_help.setWordWrap(True)
        form.addRow(self.mode_help)
        self.scale = self._double(0.05, limits.SCALE_RANGE[1], _number("scale", 1.0), 0.05)
        self.strength = self._double(*limits.STRENGTH_RANGE, _number("strength", 1.0), 0.1)
        self.steps = QSpinBox()
        self.steps.setRange(*limits.STEPS_RANGE)
        self.steps.setValue(int(_number("steps", 50)))
        self.seed = QSpinBox()
        self.seed.setRange(limits.SEED_RANGE[0], SEED_MAX)
        self.seed.setValue(int(_number("seed", 0)))
        self.prompt = QLineEdit()
        self.prompt.setPlaceholderText("optional: what the picture shows")
        self.reference = QComboBox()
        self.visible = QCheckBox("Use the visible canvas instead of the active layer")
        self.visible.setChecked(_setting("visible_canvas", "False") == "True")
        self.preview = QCheckBox("Live preview")
        self.preview.setChecked(_setting("preview", "True") == "True")
        self.paper_guidance = QCheckBox("Paper guidance (faster, experimental)")
        self.paper_guidance.setToolTip(
            "Guide as the paper describes (one pass, about a quarter less work) instead of as the authors' "
            "release does (the default)."
        )
        self.paper_guidance.setChecked(_setting("paper_guidance", "False") == "True")
        self.rows = {
            "scale": ("Scale", self.scale),
            "strength": ("Strength", self.strength),
            "steps": ("Steps", self.steps),
            "seed": ("Seed", self.seed),
            "prompt": ("Prompt", self.prompt),
            "reference": ("Reference layer", self.reference),
        }
        self.labels = {}
        for key, (label, widget) in self.rows.items():
            self.labels[key] = QLabel(label)
            form.addRow(self.labels[key], widget)
        form.addRow(self.visible)
        form.addRow(self.preview)
        form.addRow(self.paper_guidance)
        layout.addLayout(form)

        guides = QPushButton("Guide layer")
        guides.setToolTip('Create the "Drag guides" vector layer; draw arrows on it with the line tool.')
        guides.clicked.connect(self.make_guide_layer)
        buttons = QHBoxLayout()
        self.edit_button = QPushButton("Edit")
        self.edit_button.clicked.connect(self.edit)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.controller.cancel)
        for button in (guides, self.edit_button, self.cancel_button):
            buttons.addWidget(button)
        layout.addLayout(buttons)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        layout.addWidget(self.progress)
        self.preview_image = QLabel()
        self.preview_image.setVisible(False)
        layout.addWidget(self.preview_image)
        self.message = QLabel("")
        self.message.setWordWrap(True)
        layout.addWidget(self.message)
        layout.addStretch(1)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setWidget(root)
        self.setWidget(scroll)
        self.update_mode(self.mode.currentText())
        self.connection_changed(*self.controller.status)
        self.jobs_changed([])
        self.reference_timer = QTimer(self)
        self.reference_timer.setInterval(REFERENCE_REFRESH_MS)
        self.reference_timer.timeout.connect(self.refresh_references)
        self.reference_timer.start()
        if self.controller.jobs.client is None and self.controller.jobs.retry_at is None:
            QTimer.singleShot(0, self.connect_server)  # the saved address, on start-up

    def _double(self, low: float, high: float, value: float, step: float) -> QDoubleSpinBox:
        box = QDoubleSpinBox()
        box.setRange(low, high)
        box.setSingleStep(step)
        box.setValue(value)
        return box

    def _key_field(self, value: str, placeholder: str) -> tuple:
        row = QWidget()
        line = QLineEdit(value)
        line.setPlaceholderText(placeholder)
        browse = QPushButton("...")
        browse.clicked.connect(lambda: self._browse(line))
        box = QHBoxLayout(row)
        box.setContentsMargins(0, 0, 0, 0)
        box.addWidget(line)
        box.addWidget(browse)
        return row, line

    def _browse(self, line: QLineEdit) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Key file", line.text())
        if path:
            line.setText(path)

    def canvasChanged(self, canvas: Any) -> None:  # noqa: N802 (Krita's name)
        self.refresh_references()

    def refresh_references(self) -> None:
        """Offer the active document's paint layers; never pick the layer an edit would change."""
        if not self.reference.isVisible() or self.reference.view().isVisible():
            return  # hidden for this mode, or open in the painter's hands
        document = Krita.instance().activeDocument()
        names: List[str] = []
        source = ""
        if document is not None:
            names = paint_layers(document)
            try:
                source = edit_layer(document, self.controller.remembered_layer(document)).name()
            except PluginError:
                source = ""
        choice = reference_choice(names, self.reference.currentText(), source)
        if names != [self.reference.itemText(i) for i in range(self.reference.count())]:
            self.reference.clear()
            self.reference.addItems(names)
        if self.reference.currentText() != choice:
            self.reference.setCurrentText(choice)

    def update_mode(self, mode: str) -> None:
        shown = {
            "Move": ("strength", "steps", "seed", "prompt"),
            "Resize": ("scale", "strength", "steps", "seed", "prompt"),
            "Drag": ("strength", "steps", "seed", "prompt"),
            "Appearance": ("reference", "strength", "steps", "seed", "prompt"),
            "Paste": ("reference", "scale", "strength", "steps", "seed", "prompt"),
        }[mode]
        for key, (_, widget) in self.rows.items():
            widget.setVisible(key in shown)
            self.labels[key].setVisible(key in shown)
        self.mode_help.setText(MODE_HELP[mode])
        self.refresh_references()

    def connect_server(self) -> None:
        address = self.address.text().strip()
        _save("address", address)
        _save("server_key", self.server_key[1].text())
        _save("client_key", self.client_key[1].text())
        self.controller.connect(address, self.server_key[1].text().strip(), self.client_key[1].text().strip())

    def settings(self) -> EditSettings:
        mode = self.mode.currentText()
        return EditSettings(
            mode=mode,
            scale=self.scale.value() if mode in ("Resize", "Paste") else 1.0,
            strength=self.strength.value(),
            steps=self.steps.value(),
            seed=self.seed.value(),
            prompt=self.prompt.text().strip(),
            preview=self.preview.isChecked(),
            visible_canvas=self.visible.isChecked(),
            reference=self.reference.currentText(),
            paper_guidance=self.paper_guidance.isChecked(),
        )

    def show_message(self, text: str, error: bool = False, code: str = "") -> None:
        self.message_code = code
        _show(self.message, text, error)

    def edit(self) -> None:
        settings = self.settings()
        for key in ("mode", "steps", "seed", "strength", "preview", "visible_canvas", "paper_guidance"):
            _save(key, getattr(settings, key))
        _save("scale", self.scale.value())
        try:
            self.controller.start_edit(settings)
        except PluginError as exc:
            self.show_message(str(exc), True, exc.code)
            return
        self.show_message("Edit sent; you can keep painting.")

    def make_guide_layer(self) -> None:
        try:
            guide_layer(active_document(), create=True)
        except PluginError as exc:
            self.show_message(str(exc), True, exc.code)

    # Listener callbacks from the controller.

    def connection_changed(self, text: str, ok: bool) -> None:
        _show(self.status, text, not ok and not text.endswith("..."))
        if ok and self.message_code in CONNECTION_CODES:
            self.show_message("")

    def jobs_changed(self, jobs: List[Job]) -> None:
        self.cancel_button.setEnabled(bool(jobs))
        if not jobs:
            self.progress.setValue(0)
            self.progress.setFormat("Idle")
            self.preview_image.setVisible(False)
            return
        job = jobs[0]
        self.progress.setValue(int(1000 * job.fraction))
        self.progress.setFormat(progress_text(job, time.monotonic(), len(jobs) - 1))

    def job_preview(self, job: Job, image: Any) -> None:
        jobs = self.controller.jobs.running()
        if not self.preview.isChecked() or not jobs or jobs[0] is not job:
            return
        width = max(64, self.progress.width())
        self.preview_image.setPixmap(QPixmap.fromImage(image).scaled(width, width, KEEP_ASPECT, SMOOTH))
        self.preview_image.setVisible(True)

    def job_finished(self, job: Job, layer: Optional[Any], error: Optional[PluginError]) -> None:
        if error is not None:
            self.show_message(str(error), True, error.code)
        else:
            self.show_message(finished_text(job, None))
