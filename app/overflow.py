"""Narrow windows (half a laptop screen): every action reachable, every label whole, the chat readable.

OverflowRow: a row of buttons that keeps to the room it is given: the buttons that do not fit, from the
right, go into a "⋯" menu (as a toolbar's extension button does) instead of being squeezed until their
labels are clipped. The chat's actions and the conversation list's buttons use it.

ChatSplitter: the conversation list beside the chat gives up its width, down to its least, before the chat
is squeezed below a readable width (or below the width the user last dragged it to, if narrower), and
takes it back as the window widens, up to the width the user gave it."""

from __future__ import annotations

from PySide6.QtCore import QEvent, QSize
from PySide6.QtGui import QAction
from PySide6.QtWidgets import QAbstractButton, QHBoxLayout, QLayout, QMenu, QSplitter, QToolButton, QWidget


class OverflowRow(QWidget):
    def __init__(self, buttons: list[QAbstractButton], trailing: QWidget | None = None, stretch: bool = True,
                 parent=None):
        """`trailing`: a widget at the row's right end (a status line) that keeps its room while shown.
        `stretch`: the buttons keep their natural width, left-aligned (else they share the row)."""
        super().__init__(parent)
        self.row_buttons = list(buttons)
        self.trailing = trailing
        self.more = QToolButton()
        self.more.setText("⋯")
        self.more.setAccessibleName("More actions")
        self.more.setToolTip("More actions (the window is too narrow to show them all)")
        self.more.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        self.more.setAutoRaise(True)
        self.more.setStyleSheet("QToolButton::menu-indicator { image: none; }")  # "⋯" says it already
        self.menu = QMenu(self.more)
        self.menu.setToolTipsVisible(True)
        self.menu.aboutToShow.connect(self._fill_menu)
        self.more.setMenu(self.menu)
        self.more.hide()
        layout = QHBoxLayout()
        layout.setContentsMargins(0, 0, 0, 0)
        # The row's least is minimumSizeHint's, not every button's (what a layout would hold it to).
        layout.setSizeConstraint(QLayout.SizeConstraint.SetNoConstraint)
        for b in self.row_buttons:
            layout.addWidget(b, 0 if stretch else 1)
        layout.addWidget(self.more)
        if stretch:
            layout.addStretch()
        if trailing is not None:
            layout.addWidget(trailing)
            trailing.installEventFilter(self)  # shown or hidden: the buttons get less or more room
        self.setLayout(layout)

    def overflowed(self) -> list[QAbstractButton]:
        """The buttons now in the "⋯" menu."""
        return [b for b in self.row_buttons if b.isHidden()]

    def sizeHint(self) -> QSize:
        # Room for every button (and the trailing widget while shown): what the row would like.
        hint = super().sizeHint()
        margins = self.layout().contentsMargins()
        width = sum(b.sizeHint().width() + self._spacing() for b in self.row_buttons) + self._trailing_width()
        return QSize(width + margins.left() + margins.right(), hint.height())

    def minimumSizeHint(self) -> QSize:
        # As narrow as the first button and "⋯" (plus the trailing widget while shown): the rest can wait
        # in the menu.
        hint = super().minimumSizeHint()
        width = self._trailing_width() + (self.row_buttons[0].sizeHint().width() + self._spacing()
                                          if self.row_buttons else 0) + self.more.sizeHint().width()
        return QSize(width, hint.height())

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        self._fit(event.size().width())

    def eventFilter(self, watched, event) -> bool:
        if watched is self.trailing and event.type() in (QEvent.Type.Show, QEvent.Type.Hide):
            self._fit(self.width())
        return False

    def _spacing(self) -> int:
        return max(self.layout().spacing(), 0)

    def _trailing_width(self) -> int:
        if self.trailing is None or self.trailing.isHidden():
            return 0
        return self.trailing.sizeHint().width() + self._spacing()

    def _fit(self, width: int) -> None:
        room = width - self._trailing_width()
        widths = [b.sizeHint().width() + self._spacing() for b in self.row_buttons]
        if sum(widths) > room:  # then "⋯" takes its place too
            room -= self.more.sizeHint().width()
        shown, used = 0, 0
        for w in widths:
            if used + w > room and shown > 0:
                break
            used += w
            shown += 1
        for i, b in enumerate(self.row_buttons):
            b.setHidden(i >= shown)
        self.more.setHidden(shown == len(self.row_buttons))

    def _fill_menu(self) -> None:
        """The hidden buttons as menu items, each enabled as its button is, each clicking it."""
        self.menu.clear()
        for b in self.overflowed():
            action = QAction(b.text(), self.menu)
            action.setToolTip(b.toolTip())
            action.setEnabled(b.isEnabled())
            action.triggered.connect(b.click)
            self.menu.addAction(action)


class ChatSplitter(QSplitter):
    """The list (widget 0) and the chat (widget 1)."""

    CHAT_WIDTH = 480  # below this the chat's lines and its row of actions get cramped

    def __init__(self, parent=None):
        super().__init__(parent)
        self.list_width: int | None = None  # what the user (or the start) gave the list
        # The chat's least before the list yields: CHAT_WIDTH, or less where the user chose a narrower chat.
        self.chat_least = self.CHAT_WIDTH
        self.splitterMoved.connect(lambda _pos, _index: self._remember())

    def set_list_width(self, width: int) -> None:
        self.list_width, self.chat_least = width, self.CHAT_WIDTH
        self.setSizes([width, max(self.width() - width, 1)])
        self._fit()

    def restoreState(self, state) -> bool:
        done = super().restoreState(state)
        if done:
            self._remember()
        return done

    def _remember(self) -> None:
        sizes = self.sizes()
        if len(sizes) != 2:
            return
        self.list_width = sizes[0]
        self.chat_least = min(self.CHAT_WIDTH, sizes[1]) if sizes[1] > 0 else self.CHAT_WIDTH

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        self._fit()

    def _fit(self) -> None:
        if self.count() != 2 or self.list_width is None or not self.widget(0).isVisibleTo(self):
            return
        total = sum(self.sizes())
        if total <= 0:
            return
        least = self.widget(0).minimumSizeHint().width()
        width = max(least, min(self.list_width, total - self.chat_least))
        if self.sizes()[0] != width:
            self.setSizes([width, total - width])
