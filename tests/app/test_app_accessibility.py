"""Screen readers name a control by its accessible name (or a label made its buddy); a text field's
placeholder or a spin box's tooltip is not read as its name, so every input says what it is."""

from PySide6.QtWidgets import (QAbstractSpinBox, QComboBox, QLineEdit, QListWidget, QPlainTextEdit, QSlider,
                               QTextEdit, QWidget)

INPUTS = (QLineEdit, QPlainTextEdit, QTextEdit, QComboBox, QAbstractSpinBox, QListWidget, QSlider)


def test_every_input_in_the_window_and_its_panels_has_a_name(qtbot, make_window):
    window = make_window()
    window.show_models()
    window.show_hardware()
    unnamed, seen = [], 0
    for widget in window.findChildren(QWidget):
        if not isinstance(widget, INPUTS) or isinstance(widget.parent(), (QComboBox, QAbstractSpinBox)):
            continue  # (a combo box's or spin box's own line edit is part of it)
        seen += 1
        if not widget.accessibleName().strip():
            unnamed.append(f"{type(widget).__name__} {widget.toolTip()[:40] or widget.objectName()}")
    assert seen >= 15 and unnamed == []
