"""Dialogs: the one used for engine failures and uncaught exceptions, and three small questions (tests
replace these functions, since a modal dialog would block them)."""

from __future__ import annotations

import logging
import sys
import traceback

from PySide6.QtCore import QObject, Signal, Slot
from PySide6.QtGui import QIcon
from PySide6.QtWidgets import QApplication, QInputDialog, QMessageBox, QWidget

from .paths import icon_files

log = logging.getLogger("subspec.app")
COPY_LABEL = "Copy details"


def show_error(parent: QWidget | None, title: str, message: str, details: str = "") -> None:
    """A modal error with a "Copy details" button; everything shown also goes to the log."""
    log.error("%s: %s%s", title, message, f"\n{details}" if details else "")
    error_box(parent, title, message, details).exec()


def error_box(parent: QWidget | None, title: str, message: str, details: str = "") -> QMessageBox:
    box = QMessageBox(parent)
    box.setIcon(QMessageBox.Icon.Critical)
    box.setWindowTitle(title)
    box.setText(message)
    if details:
        box.setDetailedText(details)
    box.setStandardButtons(QMessageBox.StandardButton.Ok)
    copy = box.addButton(COPY_LABEL, QMessageBox.ButtonRole.ActionRole)
    # A QMessageBox closes on any of its buttons; this one only copies, so it loses that connection.
    copy.clicked.disconnect()
    copy.clicked.connect(lambda: _copy(copy, error_report(title, message, details)))
    return box


def error_report(title: str, message: str, details: str = "") -> str:
    """What "Copy details" puts on the clipboard: enough for a bug report without a screenshot."""
    from . import logs

    parts = [f"{title}: {message}"]
    if details:
        parts.append(details.rstrip())
    parts.append(f"SubSpec Studio {logs.version()}; {logs.environment()}")
    if logs.log_file() is not None:
        parts.append(f"Log: {logs.log_file()}")
    return "\n\n".join(parts) + "\n"


def _copy(button, text: str) -> None:
    QApplication.clipboard().setText(text)
    button.setText("Copied")


def app_icon() -> QIcon:
    icon = QIcon()
    for path in icon_files():
        icon.addFile(str(path))
    return icon


class _Relay(QObject):
    """Lives on the GUI thread: an exception raised on another thread reaches the dialog through it (a
    queued call to a method of a GUI-thread object), since widgets may only be made on the GUI thread."""

    show = Signal(str, str)

    def __init__(self):
        super().__init__()
        self.show.connect(self._show)

    @Slot(str, str)
    def _show(self, message: str, details: str) -> None:
        _show_unexpected(message, details)


_relay: _Relay | None = None
_showing = False


def install_excepthook() -> None:
    """Uncaught exceptions are printed and shown in a dialog instead of silently killing a slot."""
    global _relay
    _relay = _Relay()
    sys.excepthook = _excepthook


def _excepthook(exc_type, exc, tb) -> None:
    if issubclass(exc_type, KeyboardInterrupt) or _relay is None:
        sys.__excepthook__(exc_type, exc, tb)
        return
    details = "".join(traceback.format_exception(exc_type, exc, tb))
    sys.stderr.write(details)
    if QApplication.instance() is not None:
        _relay.show.emit(f"{exc_type.__name__}: {exc}", details)  # show_error logs it
    else:
        log.error("uncaught exception\n%s", details)


def _show_unexpected(message: str, details: str) -> None:
    global _showing
    if _showing:  # an error inside the dialog's own event loop must not stack dialogs without end
        return
    _showing = True
    try:
        show_error(QApplication.activeWindow(), "Unexpected error",
                   f"Something went wrong. The app keeps running.\n\n{message}", details)
    finally:
        _showing = False


def show_info(parent: QWidget | None, title: str, text: str) -> None:
    box = QMessageBox(parent)
    box.setIcon(QMessageBox.Icon.Information)
    box.setWindowTitle(title)
    box.setText(text)
    box.setStandardButtons(QMessageBox.StandardButton.Ok)
    box.exec()


def ask_text(parent: QWidget | None, title: str, label: str, text: str = "") -> str | None:
    """A line of text from the user, or None when cancelled."""
    value, ok = QInputDialog.getText(parent, title, label, text=text)
    return value if ok else None


def ask_save_path(parent: QWidget | None, title: str, name: str, filters: str) -> tuple[str, str] | None:
    """(a file to write, the filter chosen), or None when cancelled."""
    from PySide6.QtWidgets import QFileDialog

    path, chosen = QFileDialog.getSaveFileName(parent, title, name, filters)
    return (path, chosen) if path else None


def choose_file(parent: QWidget | None, title: str, filters: str) -> str | None:
    """One file the user picked, or None when cancelled."""
    from PySide6.QtWidgets import QFileDialog

    path, _ = QFileDialog.getOpenFileName(parent, title, "", filters)
    return path or None


def choose_files(parent: QWidget | None, title: str) -> list[str]:
    """Files the user picked (none when cancelled)."""
    from PySide6.QtWidgets import QFileDialog

    paths, _ = QFileDialog.getOpenFileNames(parent, title, "", "Text files (*.txt *.md *.py *.json *.csv *.log "
                                            "*.c *.cpp *.h *.js *.ts *.rs *.go *.java *.sh *.toml *.yaml *.yml "
                                            "*.html *.css *.sql *.xml);;All files (*)")
    return list(paths)


def choose_item(parent: QWidget | None, title: str, label: str, items: list[str]) -> int | None:
    """The index of the item the user picked from a list, or None when cancelled."""
    value, ok = QInputDialog.getItem(parent, title, label, items, 0, False)
    return items.index(value) if ok and value in items else None


def confirm(parent: QWidget | None, title: str, question: str) -> bool:
    answer = QMessageBox.question(parent, title, question,
                                  QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
                                  QMessageBox.StandardButton.No)
    return answer == QMessageBox.StandardButton.Yes
