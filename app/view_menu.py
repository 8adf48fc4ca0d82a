"""The View menu: the appearance (follow the system, light or dark), kept across starts."""

from __future__ import annotations

from PySide6.QtGui import QActionGroup
from PySide6.QtWidgets import QMainWindow, QMenu

from . import theme

LABELS = {"system": "Follow the system", "light": "Light", "dark": "Dark"}


def saved_scheme(settings) -> str:
    value = settings.value(theme.SETTING, "system")
    return value if value in theme.SCHEMES else "system"  # a hand-edited or future value: the default


def add_view_menu(window: QMainWindow, settings) -> QMenu:
    menu = window.menuBar().addMenu("&View")
    menu.setObjectName("view_menu")
    appearance = menu.addMenu("Appearance")
    appearance.setObjectName("appearance_menu")
    group = QActionGroup(menu)
    current = saved_scheme(settings)
    for scheme in theme.SCHEMES:
        action = appearance.addAction(LABELS[scheme])
        action.setObjectName(f"appearance_{scheme}")
        action.setCheckable(True)
        action.setChecked(scheme == current)
        group.addAction(action)
        action.triggered.connect(lambda _checked=False, s=scheme: _choose(settings, s))
    return menu


def _choose(settings, scheme: str) -> None:
    settings.setValue(theme.SETTING, scheme)
    theme.apply(scheme)
