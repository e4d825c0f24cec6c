"""The DragonDiffusion docker: connection, mode and its controls, Edit/Cancel, progress and messages."""

from __future__ import annotations

from typing import Any, List, Optional

from krita import DockWidget, Krita

from .document import active_document, controller, guide_layer, paint_layers
from .edit import MODE_LABELS, EditSettings
from .errors import PluginError
from .jobs import Job, finished_text
from .qt import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
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


def _setting(key: str, default: str) -> str:
    return Krita.instance().readSetting(SETTINGS_GROUP, key, default)


def _save(key: str, value: Any) -> None:
    Krita.instance().writeSetting(SETTINGS_GROUP, key, str(value))


class DragonDocker(DockWidget):
    """Dock panel; all work happens in the shared controller, polled by its timer."""

    def __init__(self) -> None:
        super().__init__()
        self.setWindowTitle("DragonDiffusion")
        self.controller = controller()
        self.controller.listeners.append(self)
        root = QWidget(self)
        layout = QVBoxLayout(root)

        connection = QFormLayout()
        self.address = QLineEdit(_setting("address", self.controller.settings["address"]))
        self.server_key = self._key_field(_setting("server_key", ""), "Server public key (optional)")
        self.client_key = self._key_field(_setting("client_key", ""), "Client secret key (optional)")
        connection.addRow("Server", self.address)
        connection.addRow("Server key", self.server_key[0])
        connection.addRow("Client key", self.client_key[0])
        layout.addLayout(connection)
        self.connect_button = QPushButton("Connect")
        self.connect_button.clicked.connect(self.connect_server)
        layout.addWidget(self.connect_button)
        self.status = QLabel(self.controller.status[0])
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
        self.scale = self._double(0.1, 10.0, 1.0, 0.05)
        self.strength = self._double(0.0, 10.0, 1.0, 0.1)
        self.steps = QSpinBox()
        self.steps.setRange(1, 200)
        self.steps.setValue(int(_setting("steps", "50")))
        self.seed = QSpinBox()
        self.seed.setRange(0, 2**31 - 1)
        self.prompt = QLineEdit()
        self.prompt.setPlaceholderText("optional: what the picture shows")
        self.reference = QComboBox()
        self.visible = QCheckBox("Use the visible canvas instead of the active layer")
        self.preview = QCheckBox("Live preview")
        self.preview.setChecked(_setting("preview", "True") == "True")
        self.release_guidance = QCheckBox("Release guidance (slower)")
        self.release_guidance.setToolTip(
            "Compute the guidance as the authors' release does: two gradients from a separate feature pass, "
            "about a third more work than the paper's one-pass guidance (the default)."
        )
        self.release_guidance.setChecked(_setting("release_guidance", "False") == "True")
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
        form.addRow(self.release_guidance)
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
        self.progress.setRange(0, 100)
        self.progress.setValue(0)
        layout.addWidget(self.progress)
        self.message = QLabel("")
        self.message.setWordWrap(True)
        layout.addWidget(self.message)
        layout.addStretch(1)
        self.setWidget(root)
        self.update_mode(self.mode.currentText())
        self.jobs_changed([])

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
        current = self.reference.currentText()
        self.reference.clear()
        document = Krita.instance().activeDocument()
        if document is not None:
            self.reference.addItems(paint_layers(document))
            self.reference.setCurrentText(current)

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
        if mode in ("Appearance", "Paste"):
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
            release_guidance=self.release_guidance.isChecked(),
        )

    def edit(self) -> None:
        settings = self.settings()
        _save("mode", settings.mode)
        _save("steps", settings.steps)
        _save("preview", settings.preview)
        _save("release_guidance", settings.release_guidance)
        try:
            self.controller.start_edit(settings)
        except PluginError as exc:
            self.message.setText(str(exc))
            return
        self.message.setText("Edit sent; you can keep painting.")

    def make_guide_layer(self) -> None:
        try:
            guide_layer(active_document(), create=True)
        except PluginError as exc:
            self.message.setText(str(exc))

    # Listener callbacks from the controller.

    def connection_changed(self, text: str, ok: bool) -> None:
        self.status.setText(text)

    def jobs_changed(self, jobs: List[Job]) -> None:
        self.cancel_button.setEnabled(bool(jobs))
        if not jobs:
            self.progress.setValue(0)
            self.progress.setFormat("Idle")
            return
        job = jobs[0]
        fraction = job.step / job.total if job.total else 0.0
        self.progress.setValue(int(100 * fraction))
        more = f" (+{len(jobs) - 1} queued)" if len(jobs) > 1 else ""
        self.progress.setFormat(f"{job.stage or job.state} {job.step}/{job.total}{more}")

    def job_finished(self, job: Job, layer: Optional[Any], error: Optional[PluginError]) -> None:
        self.message.setText(finished_text(job, error))
        self.jobs_changed(self.controller.jobs.running())
