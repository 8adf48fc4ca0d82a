"""The Help menu: the welcome dialog again (hardware, recommended model) and the logs folder."""

from __future__ import annotations

from PySide6.QtWidgets import QMainWindow, QMenu

from . import dialogs, first_run, logs, shortcuts


def add_help_menu(window: QMainWindow) -> QMenu:
    menu = window.menuBar().addMenu("&Help")
    menu.setObjectName("help_menu")
    welcome = menu.addAction("Welcome and recommended model…")
    welcome.setObjectName("welcome")
    welcome.triggered.connect(lambda: first_run.show_welcome(window))
    keys = menu.addAction("Keyboard shortcuts")
    keys.setObjectName("keyboard_shortcuts")
    keys.triggered.connect(lambda: dialogs.show_info(window, "Keyboard shortcuts", shortcuts.describe()))
    open_logs = menu.addAction("Open logs folder")
    open_logs.setObjectName("open_logs")
    open_logs.setToolTip("The app's log files, for a bug report")
    open_logs.triggered.connect(lambda: logs.open_logs_folder(window))
    return menu
