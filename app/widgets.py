"""The chat transcript, the prompt box and the notice bar above the chat."""

from __future__ import annotations

import contextlib

from PySide6.QtCore import Qt, QTimer, QUrl, Signal
from PySide6.QtGui import (QColor, QDesktopServices, QFont, QGuiApplication, QKeyEvent, QPalette,
                           QTextBlockFormat, QTextCharFormat, QTextCursor, QTextDocument, QTextDocumentFragment)
from PySide6.QtWidgets import QHBoxLayout, QLabel, QPlainTextEdit, QPushButton, QTextBrowser, QWidget

from . import markdown, theme
from .thinking import split_thinking


def _char_format(color: str | None = None, bold: bool = False, italic: bool = False) -> QTextCharFormat:
    f = QTextCharFormat()
    if color:
        f.setForeground(QColor(color))
    if bold:
        f.setFontWeight(QFont.Weight.Bold)
    f.setFontItalic(italic)
    return f


class Transcript(QTextBrowser):
    """Turns are appended with a cursor, never by re-rendering the whole conversation. The answer being
    streamed is the exception: its Markdown is re-rendered from its start, at most every RENDER_MS, since
    a half-written list or code block only takes its shape once more text has come."""

    RENDER_MS = 100  # ~10 Hz: smooth to read, and a long answer is not re-laid out per token
    earlier_requested = Signal()  # "Show them" above a long conversation's latest messages
    thinking_toggled = Signal()  # an answer's "Show"/"Hide" of its thinking: redraw with show_thinking flipped
    version_requested = Signal(int, int)  # an answer's ‹ or › under it: (message id, -1 or +1)
    branch_requested = Signal(int)  # an answer's "Branch": a new conversation up to that answer (message id)
    BODY = _char_format()

    # Asked for at each use: the colors follow the appearance (app.theme), light or dark.
    @property
    def USER(self) -> QTextCharFormat:
        return _char_format(theme.colors().user, bold=True)

    @property
    def ASSISTANT(self) -> QTextCharFormat:
        return _char_format(theme.colors().assistant, bold=True)

    @property
    def NOTE(self) -> QTextCharFormat:
        return _char_format(theme.colors().note, italic=True)

    @property
    def ERROR(self) -> QTextCharFormat:
        return _char_format(theme.colors().error)

    @property
    def STATS(self) -> QTextCharFormat:
        return _char_format(theme.colors().stats)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setOpenLinks(False)  # links are handled in _on_anchor: copy actions, and the web in a browser
        self.restyle()
        self.anchorClicked.connect(self._on_anchor)
        self.document().setDocumentMargin(10)
        self.setPlaceholderText("Ask anything. Enter sends, Shift+Enter adds a line, Esc stops.")
        self.copies: list[str] = []  # what each "Copy" link copies, by index
        self.trailing_errors: list[str] = []  # error lines after the last turn
        self.renders = 0
        self._body: str | None = None  # the streaming answer's Markdown; None when no answer is open
        self._body_start = 0
        self._copies_mark = 0
        self.show_thinking = False  # reasoning models' thinking, under each answer's "Thought" line
        self._answer_from = 0  # where the streaming answer proper starts, once its thinking is drawn for good
        # The streaming answer drawn for good: its characters, their end, its copies, and whether what follows
        # continues a prose segment (markdown.stable_prefix).
        self._stable = (0, 0, 0, False)
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(self.RENDER_MS)
        self._timer.timeout.connect(self._render)
        self._batch: QTextDocument | None = None  # where turns go during batch(): a document no view lays out

    @contextlib.contextmanager
    def batch(self):
        """Many turns at once (a conversation opened or redrawn): they are written into a detached document,
        which no view lays out as it grows, and that goes into the transcript in one insertion. Written
        straight into the view, each of a long conversation's ten-odd edits per message was laid out on
        its own (3,000 messages: over 5 s)."""
        live = self.document()
        if self._batch is not None or not live.isEmpty():  # nested (the outer one collects), or appended to
            yield  # a transcript that has turns already: written as they come
            return
        doc = QTextDocument()
        doc.setDefaultFont(live.defaultFont())
        doc.setDefaultStyleSheet(live.defaultStyleSheet())
        doc.setDocumentMargin(live.documentMargin())
        doc.setIndentWidth(live.indentWidth())
        self._batch = doc
        try:
            yield
        finally:
            self._batch = None
            if not doc.isEmpty():
                self._append_document(doc)

    def _append_document(self, doc: QTextDocument) -> None:
        fragment = QTextDocumentFragment(doc)
        cursor = self._end_cursor()
        with self._following_the_end():
            # The first block would keep the (empty) live document's format: take the batch's.
            cursor.setBlockFormat(doc.begin().blockFormat())
            cursor.setBlockCharFormat(doc.begin().charFormat())
            cursor.insertFragment(fragment)

    def _doc(self) -> QTextDocument:
        return self._batch if self._batch is not None else self.document()

    def restyle(self) -> None:
        """Links in answers in the appearance's link color, the one the Copy links use (Qt's importer gives
        Markdown links the palette's, pure blue in Fusion's light palette)."""
        palette = self.palette()
        palette.setColor(QPalette.ColorRole.Link, QColor(theme.colors().link))
        self.setPalette(palette)

    def clear(self) -> None:
        self._timer.stop()
        self._body = None
        self.copies = []
        self.trailing_errors = []
        super().clear()

    def add_user(self, text: str) -> None:
        self.trailing_errors = []
        self._begin_turn("You", self.USER)
        self._insert(text, self.BODY)

    def begin_assistant(self, name: str, text: str = "") -> None:
        """Opens an answer; `text` is what it already says (a continued answer)."""
        self.trailing_errors = []
        self._begin_turn(name, self.ASSISTANT)
        self._body = ""
        self._body_start = self._end_cursor().position()
        self._copies_mark = len(self.copies)
        self._stable = (0, self._body_start, self._copies_mark, False)  # see _render
        self._answer_from = 0
        if text:
            self._body = text
            self._render(whole=True)

    def append_text(self, text: str) -> None:
        if self._body is None:
            self._insert(text, self.BODY)
            return
        self._body += text
        if not self._timer.isActive():
            self._timer.start()

    def end_answer(self) -> None:
        """Renders what is still pending and closes the answer."""
        if self._body is None:
            return
        self._timer.stop()
        self._render(whole=True)  # the answer as a reopened conversation shows it
        self._body = None

    def add_note(self, text: str) -> None:
        self.end_answer()
        space = " "
        if markdown.is_code_block(self._end_cursor().blockFormat()):
            self._end_cursor().insertBlock(QTextBlockFormat(), self.NOTE)
            space = ""
        self._insert(f"{space}[{text}]", self.NOTE)

    def add_stats(self, text: str, copy_text: str | None = None,
                  version: tuple[int, int, int, bool] | None = None, branch: int | None = None) -> None:
        """A small grey line under an answer, with a link copying the answer when there is one, with
        `version` (message id, shown, count, switchable) "‹ 2/3 ›" to step through its versions, and with
        `branch` (a saved answer's message id) a link that goes on from that answer in a new conversation."""
        self.end_answer()
        self.trailing_errors = []  # a stored line now follows them: they are no longer the latest
        cursor = self._end_cursor()
        cursor.insertBlock(QTextBlockFormat(), self.STATS)
        fmt = QTextCharFormat(self.STATS)
        fmt.setFontPointSize(max(self.font().pointSizeF() - 1.5, 6.0))

        def link(label: str, href: str) -> None:
            f = markdown.link_format(href)
            f.setFontPointSize(fmt.fontPointSize())
            self._insert(label, f)

        parts = []  # each draws one part of the line; " · " between them
        if text:
            parts.append(lambda: self._insert(text, fmt))
        if copy_text is not None:
            self.copies.append(copy_text)
            parts.append(lambda index=len(self.copies) - 1: link("Copy", f"{markdown.COPY_SCHEME}:{index}"))
        if branch is not None:
            parts.append(lambda: link("Branch", f"{markdown.BRANCH_SCHEME}:{branch}"))
        if version is not None:
            def versions(mid: int, shown: int, count: int, switchable: bool) -> None:
                for step, arrow in ((-1, "‹"), (0, None), (1, "›")):
                    if arrow is None:
                        self._insert(f" {shown}/{count} ", fmt)
                    elif switchable and 1 <= shown + step <= count:
                        link(arrow, f"{markdown.VERSION_SCHEME}:{mid}:{step}")
                    else:
                        self._insert(arrow, fmt)
            parts.append(lambda: versions(*version))
        for i, draw in enumerate(parts):
            if i:
                self._insert(" · ", fmt)
            draw()

    def add_earlier(self, count: int) -> None:
        """The line above a long conversation's latest messages: how many earlier ones are not shown, and a
        link that shows them (`earlier_requested`)."""
        fmt = QTextCharFormat(self.STATS)
        self._insert(f"{count} earlier message{'s' if count != 1 else ''} not shown · ", fmt)
        self._insert("Show them", markdown.link_format(f"{markdown.EARLIER_SCHEME}:"))

    def add_error(self, text: str) -> None:
        """On a line of its own: after a failed redo the transcript ends with the restored answer."""
        self.end_answer()
        if not self._doc().isEmpty():
            block = QTextBlockFormat()
            block.setTopMargin(8)
            self._end_cursor().insertBlock(block, self.ERROR)
        self._insert(f"\N{WARNING SIGN} {text}", self.ERROR)
        # Not stored with the conversation: a redraw from the store puts these back (app.main_window).
        self.trailing_errors.append(text)

    def copy(self, index: int) -> None:
        if 0 <= index < len(self.copies):
            QGuiApplication.clipboard().setText(self.copies[index])

    def loadResource(self, _type, _url):  # noqa: N802 - Qt's name
        # Model output may name local files or URLs as images; nothing is ever fetched for it.
        return None

    def _on_anchor(self, url: QUrl) -> None:
        if url.scheme() == markdown.EARLIER_SCHEME:
            self.earlier_requested.emit()
        elif url.scheme() == markdown.THINKING_SCHEME:
            self.thinking_toggled.emit()
        elif url.scheme() == markdown.VERSION_SCHEME:
            mid, _, step = url.path().partition(":")
            with contextlib.suppress(ValueError):
                self.version_requested.emit(int(mid), int(step))
        elif url.scheme() == markdown.BRANCH_SCHEME:
            with contextlib.suppress(ValueError):
                self.branch_requested.emit(int(url.path()))
        elif url.scheme() == markdown.COPY_SCHEME:
            try:
                self.copy(int(url.path()))
            except ValueError:
                pass
        elif url.scheme() in ("http", "https"):
            QDesktopServices.openUrl(url)

    def _render(self, whole: bool = False) -> None:
        """Redraws the streaming answer from its last stable point on (markdown.stable_prefix): what comes
        before it is drawn for good. `whole`: from its start (at its end, and for a saved answer), which
        draws the same; and it drops the formats the partial redraws left in the document."""
        if self._body is None:
            return
        if whole:
            self._stable = (0, self._body_start, self._copies_mark, False)
            self._answer_from = 0
        thinking = split_thinking(self._body) if not self._answer_from else None
        if thinking is not None and thinking.text is not None:
            self._stable = (0, self._body_start, self._copies_mark, False)  # drawn from the answer's start
        done, position, copies, continues = self._stable
        cursor = QTextCursor(self._doc())
        cursor.setPosition(position)
        cursor.movePosition(QTextCursor.MoveOperation.End, QTextCursor.MoveMode.KeepAnchor)
        with self._following_the_end():
            cursor.beginEditBlock()
            cursor.removeSelectedText()
            del self.copies[copies:]
            if thinking is not None and thinking.text is not None:
                markdown.render_thinking(cursor, thinking, self.show_thinking)
                if not thinking.done or thinking.answer_start == len(self._body):
                    # (Over, but the answer has not begun: where it begins is not known yet.)
                    cursor.endEditBlock()
                    self.renders += 1
                    return
                # Over: drawn for good, and the answer proper streams after it as any answer does.
                self._answer_from = done = thinking.answer_start
                continues = False
                self._stable = (done, cursor.position(), len(self.copies), False)
            stable, then = markdown.stable_prefix(self._body, done)
            if stable > done and not whole:
                head = self._body[done:stable]
                if markdown.FENCE.match(self._body[stable:].split("\n", 1)[0]):
                    head = head[:-1]  # the prose before a fence: its lines without the last newline, as drawn whole
                markdown.render(cursor, head, self.copies, continues)
                done, continues = stable, then
                self._stable = (done, cursor.position(), len(self.copies), continues)
            markdown.render(cursor, self._body[done:], self.copies, continues)
            cursor.endEditBlock()
        self.renders += 1

    def _begin_turn(self, label: str, fmt: QTextCharFormat) -> None:
        self.end_answer()
        cursor = self._end_cursor()
        block = QTextBlockFormat()
        if not self._doc().isEmpty():
            block.setTopMargin(14)
            cursor.insertBlock(block, fmt)
        else:
            cursor.setBlockFormat(block)
        cursor.insertText(label, fmt)
        cursor.insertBlock(QTextBlockFormat(), self.BODY)

    def _insert(self, text: str, fmt: QTextCharFormat) -> None:
        with self._following_the_end():
            self._end_cursor().insertText(text, fmt)

    @contextlib.contextmanager
    def _following_the_end(self):
        """Keeps the view at the end across an edit, unless the user scrolled up to read."""
        bar = self.verticalScrollBar()
        follow = bar.value() >= bar.maximum() - 4
        yield
        if follow:
            bar.setValue(bar.maximum())

    def _end_cursor(self) -> QTextCursor:
        cursor = QTextCursor(self._doc())
        cursor.movePosition(QTextCursor.MoveOperation.End)
        return cursor


class NoticeBar(QWidget):
    """A line of advice above the chat (no model installed, editing a message), with an optional button."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.label = QLabel()
        self.label.setWordWrap(True)
        self.label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.button = QPushButton()
        self.button.hide()
        layout = QHBoxLayout()
        layout.setContentsMargins(8, 4, 8, 4)
        layout.addWidget(self.label, 1)
        layout.addWidget(self.button)
        self.setLayout(layout)
        self.setAutoFillBackground(True)
        theme.style_notice(self)
        self.setAttribute(Qt.WidgetAttribute.WA_StyledBackground, True)
        self.hide()

    def show_notice(self, text: str, button: str = "") -> None:
        self.label.setText(text)
        self.button.setText(button)
        self.button.setVisible(bool(button))
        self.show()


def replace_text(box: QPlainTextEdit, text: str) -> None:
    """The box's whole text replaced as one edit that Ctrl+Z undoes (setPlainText clears the undo history:
    a draft replaced by accident would be gone)."""
    cursor = box.textCursor()
    cursor.select(QTextCursor.SelectionType.Document)
    cursor.insertText(text)
    box.setTextCursor(cursor)


class _GrowingTextEdit(QPlainTextEdit):
    """A plain text box as tall as its lines (wrapped ones included) within height_bounds(); past them it
    scrolls. Tab moves the focus on, as in a form."""

    PADDING = 2  # pixels beyond the lines and margins

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setTabChangesFocus(True)
        self.document().documentLayout().documentSizeChanged.connect(lambda _size: self.fit_height())

    def height_for(self, lines: int) -> float:
        margins = self.contentsMargins()
        return (lines * self.fontMetrics().lineSpacing() + 2 * self.document().documentMargin()
                + margins.top() + margins.bottom() + self.PADDING)

    def height_bounds(self) -> tuple[float, float]:
        raise NotImplementedError

    def fit_height(self) -> None:
        lines = max(int(self.document().documentLayout().documentSize().height()), 1)  # (lines, in a plain edit)
        low, high = self.height_bounds()
        height = int(min(max(self.height_for(lines), low), high))
        if height != self.height():
            self.setFixedHeight(height)

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        if event.oldSize().width() != event.size().width():  # narrower: more wrapped lines
            self.fit_height()


class SystemPromptEdit(_GrowingTextEdit):
    """The conversation's system prompt: one line until it has more (instructions often do), then up to
    MAX_LINES before it scrolls. Reads like the QLineEdit it replaced: text(), setText() and
    editingFinished (when the focus leaves it), so the window saves it as before."""

    editingFinished = Signal()
    MAX_LINES = 6

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)
        self.fit_height()
        self._finished_text = ""

    def height_bounds(self) -> tuple[float, float]:
        return self.height_for(1), self.height_for(self.MAX_LINES)

    def text(self) -> str:
        return self.toPlainText()

    def setText(self, text: str) -> None:  # noqa: N802 - QLineEdit's name, kept for its callers
        self._finished_text = text  # what the window holds already: leaving the box unchanged saves nothing
        if text != self.toPlainText():
            self.setPlainText(text)

    def focusOutEvent(self, event) -> None:
        super().focusOutEvent(event)
        if self.toPlainText() != self._finished_text:  # as QLineEdit: only after a change (a write each)
            self._finished_text = self.toPlainText()
            self.editingFinished.emit()


class PromptEdit(_GrowingTextEdit):
    """Enter submits, Shift+Enter inserts a newline, Esc asks to stop. Files dropped on it are attached
    (files_dropped); dropped text is inserted as usual. As tall as its lines between MIN_HEIGHT and
    MAX_SHARE of the window: a long paste shows as a long message instead of three lines to scroll through."""

    submitted = Signal()
    stop_requested = Signal()
    files_dropped = Signal(list)  # local paths

    MIN_HEIGHT = 84  # about three lines: the box's height when empty or short
    MAX_SHARE = 0.4  # it grows with what is typed up to this share of the window, then scrolls
    PADDING = 4

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setPlaceholderText("Message the model … (drop a text file here to attach it)")
        self.setFixedHeight(self.MIN_HEIGHT)

    def height_bounds(self) -> tuple[float, float]:
        return self.MIN_HEIGHT, max(self.MIN_HEIGHT, int(self.window().height() * self.MAX_SHARE))

    @staticmethod
    def _files(mime) -> list[str]:
        return [u.toLocalFile() for u in mime.urls() if u.isLocalFile()] if mime.hasUrls() else []

    def dragEnterEvent(self, event) -> None:
        if self._files(event.mimeData()):
            event.acceptProposedAction()
            return
        super().dragEnterEvent(event)

    def dragMoveEvent(self, event) -> None:
        if self._files(event.mimeData()):
            event.acceptProposedAction()
            return
        super().dragMoveEvent(event)

    def dropEvent(self, event) -> None:
        files = self._files(event.mimeData())
        if files:
            event.acceptProposedAction()
            self.files_dropped.emit(files)
            return
        super().dropEvent(event)

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
