"""The Qt names the plugin uses, from PyQt5 (Krita 5) or PyQt6 (Krita 6), imported in one place."""

try:
    from PyQt5.QtCore import QBuffer, QByteArray, QIODevice, Qt, QTimer
    from PyQt5.QtGui import QImage
    from PyQt5.QtWidgets import (
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

    FORMAT_RGBA = QImage.Format_RGBA8888
    FORMAT_GREY = QImage.Format_Grayscale8
    OPEN_WRITE = QIODevice.WriteOnly
    SMOOTH = Qt.SmoothTransformation
    IGNORE_ASPECT = Qt.IgnoreAspectRatio
    TEXT_SELECTABLE = Qt.TextSelectableByMouse
except ImportError:  # Krita 6
    from PyQt6.QtCore import QBuffer, QByteArray, QIODevice, Qt, QTimer  # type: ignore[no-redef]
    from PyQt6.QtGui import QImage  # type: ignore[no-redef]
    from PyQt6.QtWidgets import (  # type: ignore[no-redef]
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

    FORMAT_RGBA = QImage.Format.Format_RGBA8888
    FORMAT_GREY = QImage.Format.Format_Grayscale8
    OPEN_WRITE = QIODevice.OpenModeFlag.WriteOnly
    SMOOTH = Qt.TransformationMode.SmoothTransformation
    IGNORE_ASPECT = Qt.AspectRatioMode.IgnoreAspectRatio
    TEXT_SELECTABLE = Qt.TextInteractionFlag.TextSelectableByMouse

__all__ = [
    "FORMAT_GREY",
    "FORMAT_RGBA",
    "IGNORE_ASPECT",
    "OPEN_WRITE",
    "SMOOTH",
    "TEXT_SELECTABLE",
    "QBuffer",
    "QByteArray",
    "QCheckBox",
    "QComboBox",
    "QDoubleSpinBox",
    "QFileDialog",
    "QFormLayout",
    "QHBoxLayout",
    "QImage",
    "QLabel",
    "QLineEdit",
    "QProgressBar",
    "QPushButton",
    "QSpinBox",
    "QTimer",
    "QVBoxLayout",
    "QWidget",
]
