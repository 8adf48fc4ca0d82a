"""The window's keyboard shortcuts, and the list Help > Keyboard shortcuts shows (made from the same table,
so the two cannot disagree). On macOS Qt reads Ctrl as Cmd."""

from __future__ import annotations

import sys
from html import escape

from PySide6.QtGui import QKeySequence, QShortcut

VERSION_KEYS = ("Ctrl+Alt+Left", "Ctrl+Alt+Right") if sys.platform == "darwin" else ("Alt+Left", "Alt+Right")
# (keys, what they do, the window's method); Ctrl+N is the Conversation menu's, Esc the window's own
SHORTCUTS = (
    ("Ctrl+F", "Search the conversations", "focus_search"),
    ("Ctrl+L", "Go to the message box", "focus_prompt"),
    ("Ctrl+O", "Attach text files to the message", "attach_files"),
    ("Ctrl+R", "Regenerate the last answer", "regenerate"),
    # Not Ctrl+E: in Qt's one-line fields on Linux that is "end of line", and the field would take it.
    ("Ctrl+Shift+E", "Edit your last message and send it again", "begin_edit"),
    # Alt+arrows move by word in macOS text fields (Option): there Cmd+Option (Qt's Ctrl+Alt) instead.
    (VERSION_KEYS[0], "Previous version of the last answer", "previous_version"),
    (VERSION_KEYS[1], "Next version of the last answer", "next_version"),
)
LISTED = (("Enter", "Send"), ("Shift+Enter", "A new line in the message"), ("Ctrl+N", "New conversation"),
          *((keys, what) for keys, what, _ in SHORTCUTS), ("Esc", "Stop the answer; cancel an edit"))


def install(window) -> list[QShortcut]:
    # Called without arguments: attach_files() then asks which files.
    return [QShortcut(QKeySequence(keys), window, lambda name=name: getattr(window, name)())
            for keys, _what, name in SHORTCUTS]


def describe() -> str:
    native = QKeySequence.SequenceFormat.NativeText
    rows = "".join(f"<tr><td><b>{escape(QKeySequence(keys).toString(native) or keys)}</b></td>"
                   f"<td>&nbsp;&nbsp;{escape(what)}</td></tr>" for keys, what in LISTED)
    return f"<table>{rows}</table>"
