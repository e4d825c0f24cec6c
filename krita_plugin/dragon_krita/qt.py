"""The Qt names the plugin uses, from PyQt5 (Krita 5) or PyQt6 (Krita 6), imported in one place."""

from typing import Any

try:
    from PyQt5 import QtCore, QtGui, QtWidgets

    QT6 = False
except ImportError:  # Krita 6
    from PyQt6 import QtCore, QtGui, QtWidgets  # type: ignore[no-redef]

    QT6 = True


def _enum(owner: Any, scope: str, name: str) -> Any:
    """An enum value: `owner.name` in PyQt5, `owner.scope.name` in PyQt6."""
    return getattr(getattr(owner, scope), name) if QT6 else getattr(owner, name)


QBuffer, QByteArray, QIODevice, Qt, QTimer = (
    QtCore.QBuffer, QtCore.QByteArray, QtCore.QIODevice, QtCore.Qt, QtCore.QTimer
)
QImage, QPainter, QPixmap = QtGui.QImage, QtGui.QPainter, QtGui.QPixmap
QCheckBox, QComboBox, QDoubleSpinBox, QFileDialog, QFormLayout, QHBoxLayout, QLabel = (
    QtWidgets.QCheckBox, QtWidgets.QComboBox, QtWidgets.QDoubleSpinBox, QtWidgets.QFileDialog,
    QtWidgets.QFormLayout, QtWidgets.QHBoxLayout, QtWidgets.QLabel,
)
QLineEdit, QProgressBar, QPushButton, QScrollArea, QSpinBox, QToolButton, QVBoxLayout, QWidget = (
    QtWidgets.QLineEdit, QtWidgets.QProgressBar, QtWidgets.QPushButton, QtWidgets.QScrollArea,
    QtWidgets.QSpinBox, QtWidgets.QToolButton, QtWidgets.QVBoxLayout, QtWidgets.QWidget,
)

FORMAT_RGBA = _enum(QImage, "Format", "Format_RGBA8888")
FORMAT_GREY = _enum(QImage, "Format", "Format_Grayscale8")
FORMAT_ARGB = _enum(QImage, "Format", "Format_ARGB32")
"""32-bit ARGB words: B, G, R, A bytes on the little-endian machines Krita runs on, as Krita's own pixels."""
FORMAT_ARGB_PREMULTIPLIED = _enum(QImage, "Format", "Format_ARGB32_Premultiplied")
WHITE = _enum(Qt, "GlobalColor", "white")
KEEP_ASPECT = _enum(Qt, "AspectRatioMode", "KeepAspectRatio")
OPEN_WRITE = _enum(QIODevice, "OpenModeFlag", "WriteOnly")
SMOOTH = _enum(Qt, "TransformationMode", "SmoothTransformation")
IGNORE_ASPECT = _enum(Qt, "AspectRatioMode", "IgnoreAspectRatio")
TEXT_SELECTABLE = _enum(Qt, "TextInteractionFlag", "TextSelectableByMouse")

__all__ = [
    "FORMAT_ARGB",
    "FORMAT_ARGB_PREMULTIPLIED",
    "FORMAT_GREY",
    "FORMAT_RGBA",
    "IGNORE_ASPECT",
    "KEEP_ASPECT",
    "OPEN_WRITE",
    "SMOOTH",
    "TEXT_SELECTABLE",
    "WHITE",
    "QBuffer",
    "QByteArray",
    "QCheckBox",
    "QComboBox",
    "QDoubleSpinBox",
    "QFileDialog",
    "QFormLayout",
    "QHBoxLayout",
    "QImage",
    "QPainter",
    "QPixmap",
    "QLabel",
    "QLineEdit",
    "QProgressBar",
    "QPushButton",
    "QScrollArea",
    "QSpinBox",
    "QToolButton",
    "QTimer",
    "QVBoxLayout",
    "QWidget",
]
