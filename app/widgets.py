"""The chat transcript and the prompt box."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QColor, QFont, QKeyEvent, QTextBlockFormat, QTextCharFormat, QTextCursor
from PySide6.QtWidgets import QPlainTextEdit, QTextBrowser


def _char_format(color: str | None = None, bold: bool = False, italic: bool = False) -> QTextCharFormat:
    f = QTextCharFormat()
    if color:
        f.setForeground(QColor(color))
    if bold:
        f.setFontWeight(QFont.Weight.Bold)
    f.setFontItalic(italic)
    return f


class Transcript(QTextBrowser):
    """Turns are appended with a cursor rather than by re-rendering HTML, so a streaming answer costs one
    insert per token however long the conversation gets."""

    USER = _char_format("#1f5fa8", bold=True)
    ASSISTANT = _char_format("#2e7d32", bold=True)
    BODY = _char_format()
    NOTE = _char_format("#777777", italic=True)
    ERROR = _char_format("#c62828")
    STATS = _char_format("#8a8a8a")

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setOpenExternalLinks(True)
        self.document().setDocumentMargin(10)
        self.setPlaceholderText("Ask anything. Enter sends, Shift+Enter adds a line, Esc stops.")

    def add_user(self, text: str) -> None:
        self._begin_turn("You", self.USER)
        self._insert(text, self.BODY)

    def begin_assistant(self, name: str) -> None:
        self._begin_turn(name, self.ASSISTANT)

    def append_text(self, text: str) -> None:
        self._insert(text, self.BODY)

    def add_note(self, text: str) -> None:
        self._insert(f" [{text}]", self.NOTE)

    def add_stats(self, text: str) -> None:
        """A small grey line under an answer."""
        cursor = self._end_cursor()
        cursor.insertBlock(QTextBlockFormat(), self.STATS)
        fmt = QTextCharFormat(self.STATS)
        fmt.setFontPointSize(max(self.font().pointSizeF() - 1.5, 6.0))
        self._insert(text, fmt)

    def add_error(self, text: str) -> None:
        self._insert(f"\N{WARNING SIGN} {text}", self.ERROR)

    def _begin_turn(self, label: str, fmt: QTextCharFormat) -> None:
        cursor = self._end_cursor()
        block = QTextBlockFormat()
        if not self.document().isEmpty():
            block.setTopMargin(14)
            cursor.insertBlock(block, fmt)
        else:
            cursor.setBlockFormat(block)
        cursor.insertText(label, fmt)
        cursor.insertBlock(QTextBlockFormat(), self.BODY)

    def _insert(self, text: str, fmt: QTextCharFormat) -> None:
        bar = self.verticalScrollBar()
        follow = bar.value() >= bar.maximum() - 4  # keep following the answer unless the user scrolled up
        self._end_cursor().insertText(text, fmt)
        if follow:
            bar.setValue(bar.maximum())

    def _end_cursor(self) -> QTextCursor:
        cursor = QTextCursor(self.document())
        cursor.movePosition(QTextCursor.MoveOperation.End)
        return cursor


class PromptEdit(QPlainTextEdit):
    """Enter submits, Shift+Enter inserts a newline, Esc asks to stop."""

    submitted = Signal()
    stop_requested = Signal()

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setPlaceholderText("Message the model …")
        self.setTabChangesFocus(True)

    def keyPressEvent(self, event: QKeyEvent) -> None:
        key = event.key()
        if key in (Qt.Key.Key_Return, Qt.Key.Key_Enter):
            if event.modifiers() & Qt.KeyboardModifier.ShiftModifier:
                self.insertPlainText("\n")  # the default would insert a line separator, not "\n"
            else:
                self.submitted.emit()
            return
        if key == Qt.Key.Key_Escape:
            self.stop_requested.emit()
            return
        super().keyPressEvent(event)
