"""The conversations list: search, new, rename, delete. It edits the store itself and tells the window
which conversation to show."""

from __future__ import annotations

import datetime
import sqlite3

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (QLineEdit, QListWidget, QListWidgetItem, QPushButton,
                               QVBoxLayout, QWidget)

from . import dialogs
from .conversations import Conversation, ConversationStore, why_not_saved
from .overflow import OverflowRow

UNTITLED = "New conversation"


def _when(ts: float) -> str:
    moment = datetime.datetime.fromtimestamp(ts)
    if moment.date() == datetime.date.today():
        return moment.strftime("%H:%M")
    return moment.strftime("%d %b")


class ConversationSidebar(QWidget):
    selected = Signal(int)  # the user picked a conversation
    new_requested = Signal()
    deleted = Signal(int)
    renamed = Signal(int)

    def __init__(self, store: ConversationStore, parent=None):
        super().__init__(parent)
        self.store = store
        self.read_messages = store.messages  # the window's own reader replaces it (answers not written yet)
        self.search = QLineEdit()
        self.search.setAccessibleName("Search conversations")
        self.search.setPlaceholderText("Search conversations")
        self.search.setClearButtonEnabled(True)
        self.search.textChanged.connect(lambda _text: self.refresh())
        self.list = QListWidget()
        self.list.setAccessibleName("Conversations")
        self.list.currentItemChanged.connect(self._current_changed)
        # A narrow list elides long titles ("…") rather than scroll sideways.
        self.list.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.list.setTextElideMode(Qt.TextElideMode.ElideRight)
        self.list.itemDoubleClicked.connect(lambda _item: self.rename())
        self.new_button = QPushButton("New")
        self.new_button.setToolTip("Start a new conversation (Ctrl+N)")
        self.new_button.clicked.connect(self.new_requested)
        self.rename_button = QPushButton("Rename")
        self.rename_button.clicked.connect(self.rename)
        self.delete_button = QPushButton("Delete")
        self.delete_button.clicked.connect(self.delete)
        self.export_button = QPushButton("Export…")
        self.export_button.setToolTip("Save this conversation as Markdown (.md) or JSON (.json)")
        self.export_button.clicked.connect(self.export)
        # In a narrow window the buttons that do not fit wait in a "⋯" menu (app.overflow): the list may
        # then be as narrow as "New" and "⋯", leaving the chat its room.
        buttons = OverflowRow([self.new_button, self.rename_button, self.export_button, self.delete_button],
                              stretch=False)
        layout = QVBoxLayout()
        layout.setContentsMargins(6, 6, 0, 6)
        layout.addWidget(self.search)
        layout.addWidget(self.list, 1)
        layout.addWidget(buttons)
        self.setLayout(layout)
        self._current: int | None = None
        self.refresh()

    def refresh(self, current: int | None = -1) -> None:
        """Reloads the list; `current` (when given) becomes the highlighted conversation."""
        if current != -1:
            self._current = current
        self.list.blockSignals(True)  # rebuilding is not the user picking a conversation
        try:
            self.list.clear()
            for conv in self.store.conversations(self.search.text()):
                item = QListWidgetItem(self._label(conv))
                item.setData(Qt.ItemDataRole.UserRole, conv.id)
                item.setToolTip(conv.title or UNTITLED)
                self.list.addItem(item)
                if conv.id == self._current:
                    self.list.setCurrentItem(item)
        finally:
            self.list.blockSignals(False)
        self._update_buttons()

    def ids(self) -> list[int]:
        return [self.list.item(i).data(Qt.ItemDataRole.UserRole) for i in range(self.list.count())]

    def current_id(self) -> int | None:
        item = self.list.currentItem()
        return item.data(Qt.ItemDataRole.UserRole) if item else None

    def rename(self) -> None:
        cid = self.current_id()
        conv = self.store.get(cid) if cid is not None else None
        if conv is None:
            return
        title = dialogs.ask_text(self, "Rename conversation", "Title:", conv.title)
        if title is None or not title.strip():
            return
        try:
            self.store.update(cid, title=title.strip())
        except sqlite3.Error as exc:
            dialogs.show_error(self, "Could not save",
                               f"The conversation could not be renamed: {why_not_saved(self.store, exc)}.")
            return
        self.refresh()
        self.renamed.emit(cid)

    def delete(self) -> None:
        cid = self.current_id()
        conv = self.store.get(cid) if cid is not None else None
        if conv is None:
            return
        if not dialogs.confirm(self, "Delete conversation",
                               f"Delete “{conv.title or UNTITLED}” and all its messages? This cannot be undone."):
            return
        try:
            self.store.delete(cid)
        except sqlite3.Error as exc:
            dialogs.show_error(self, "Could not save",
                               f"The conversation could not be deleted: {why_not_saved(self.store, exc)}.")
            return
        if self._current == cid:
            self._current = None
        self.refresh()
        self.deleted.emit(cid)

    def export(self) -> None:
        cid = self.current_id()
        conv = self.store.get(cid) if cid is not None else None
        if conv is None:
            return
        from . import export

        answer = dialogs.ask_save_path(self, "Export conversation", export.default_name(conv) + ".md",
                                       "Markdown (*.md);;JSON (*.json)")
        if not answer:
            return
        path = export.target(*answer)
        # The dialog asked about the name as typed; a suffix added here names another file, maybe one there.
        if str(path) != answer[0] and path.exists() and not dialogs.confirm(
                self, "Replace file", f"{path.name} exists already. Replace it?"):
            return
        try:
            versions = {mid: self.store.versions(mid) for mid in self.store.version_positions(cid)}
        except sqlite3.Error:
            versions = {}  # (the answers shown are what matters)
        try:
            export.export(conv, self.read_messages(cid), path, versions)
        except OSError as exc:
            dialogs.show_error(self, "Export failed", f"Could not write {path}: {exc.strerror or exc}")

    def _label(self, conv: Conversation) -> str:
        return f"{conv.title or UNTITLED}\n{_when(conv.updated)}"

    def _current_changed(self, item: QListWidgetItem | None, _previous) -> None:
        self._update_buttons()
        if item is not None:
            self._current = item.data(Qt.ItemDataRole.UserRole)
            self.selected.emit(self._current)

    def _update_buttons(self) -> None:
        has = self.list.currentItem() is not None
        self.rename_button.setEnabled(has)
        self.delete_button.setEnabled(has)
        self.export_button.setEnabled(has)
