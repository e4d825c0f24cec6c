"""Registration with Krita: the docker, or a docker that says what to install when imports fail."""

from __future__ import annotations

from typing import Any

from krita import DockWidget, DockWidgetFactory, DockWidgetFactoryBase, Krita

from .errors import missing_modules, missing_modules_error
from .qt import TEXT_SELECTABLE, QLabel

DOCKER_ID = "dragon_krita_docker"


class MissingModulesDocker(DockWidget):
    """Stands in for the real docker and shows what to run."""

    def __init__(self) -> None:
        super().__init__()
        self.setWindowTitle("DragonDiffusion")
        label = QLabel(str(missing_modules_error(missing_modules())))
        label.setWordWrap(True)
        label.setTextInteractionFlags(TEXT_SELECTABLE)
        self.setWidget(label)

    def canvasChanged(self, canvas: Any) -> None:  # noqa: N802 (Krita's name)
        """Nothing depends on the canvas here."""


def register() -> None:
    """Add the DragonDiffusion docker to Krita."""
    if missing_modules():
        docker: Any = MissingModulesDocker
    else:
        from .docker import DragonDocker

        docker = DragonDocker
    factory = DockWidgetFactory(DOCKER_ID, DockWidgetFactoryBase.DockRight, docker)
    Krita.instance().addDockWidgetFactory(factory)
