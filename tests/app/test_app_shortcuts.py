"""Keyboard shortcuts do what Help > Keyboard shortcuts says they do."""

from app_fakes import PROMPT, FakeBackend
from PySide6.QtCore import Qt
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import QApplication

from app import dialogs as app_dialogs
from app import shortcuts


def press(qtbot, window, keys: str) -> None:
    combo = QKeySequence(keys)[0]
    qtbot.keyClick(window, combo.key(), combo.keyboardModifiers())


def test_the_shortcuts_work(qtbot, make_window, monkeypatch):
    window = make_window(FakeBackend())
    window.prompt.setFocus()
    press(qtbot, window, "Ctrl+F")
    assert QApplication.focusWidget() is window.sidebar.search
    press(qtbot, window, "Ctrl+L")
    assert QApplication.focusWidget() is window.prompt
    with qtbot.waitSignal(window.host.finished, timeout=5000):
        qtbot.keyClicks(window.prompt, PROMPT)
        qtbot.keyClick(window.prompt, Qt.Key.Key_Return)
    with qtbot.waitSignal(window.host.finished, timeout=5000):
        press(qtbot, window, "Ctrl+R")  # regenerate: a second call, the same history
    assert len(window.backend.calls) == 2 and window.backend.calls[1][0] == window.backend.calls[0][0]
    assert "‹ 2/2 ›" in window.transcript.toPlainText()
    window.prompt.setFocus()  # (where the focus nearly always is: the box must not take the keys)
    press(qtbot, window.prompt, shortcuts.VERSION_KEYS[0])  # the version Regenerate kept
    assert "‹ 1/2 ›" in window.transcript.toPlainText()
    press(qtbot, window.prompt, shortcuts.VERSION_KEYS[1])
    assert "‹ 2/2 ›" in window.transcript.toPlainText()
    press(qtbot, window, "Ctrl+Shift+E")
    assert window.editing and window.prompt.toPlainText() == PROMPT
    asked = []
    monkeypatch.setattr(app_dialogs, "choose_files", lambda parent, title: asked.append(title) or [])
    press(qtbot, window, "Ctrl+O")
    assert asked == ["Attach text files"]
    press(qtbot, window, "Ctrl+N")  # the Conversation menu's "New conversation"
    assert window.conversation is None and not window.editing and window.transcript.toPlainText() == ""


def test_help_lists_every_shortcut(qtbot, make_window, dialogs):
    window = make_window(FakeBackend())
    window.findChild(QAction, "keyboard_shortcuts").trigger()
    shown = dialogs.shown[-1]
    assert shown["title"] == "Keyboard shortcuts"
    for keys, what in shortcuts.LISTED:
        assert what in shown["text"]
    assert {k for k, _w, _m in shortcuts.SHORTCUTS} <= {k for k, _w in shortcuts.LISTED}
