"""The chat window: conversations on the left, the chat in the middle, decoding stats on the right, and
the method and sampling settings in the toolbar. Every turn is saved as it happens (app.conversations)."""

from __future__ import annotations

from typing import Callable

from PySide6.QtCore import QSettings, Qt
from PySide6.QtGui import QCloseEvent, QKeySequence, QShortcut
from PySide6.QtWidgets import (QHBoxLayout, QLabel, QLineEdit, QMainWindow, QPushButton, QSplitter,
                               QVBoxLayout, QWidget)

from . import dialogs
from .backend import DEFAULT_PARAMS
from .controls import DEFAULT_PRESET, PRESETS, MethodControls, SamplingControls
from .conversations import AnswerWriter, Conversation, ConversationStore, title_from
from .sidebar import ConversationSidebar
from .stats import StatsDock
from .turns import end_answer, format_stats, replay
from .widgets import PromptEdit, Transcript
from .worker import EngineHost

ErrorHandler = Callable[[str, str, str], None]  # title, message, details
SETTINGS_FILE = "studio.ini"


def default_settings() -> QSettings:
    from engine.store import store_root

    # Beside the conversations, so SUBSPEC_HOME moves (and tests isolate) both together.
    return QSettings(str(store_root() / SETTINGS_FILE), QSettings.Format.IniFormat)


class MainWindow(QMainWindow):
    ANSWER_SAVE_INTERVAL_S = 1.0  # how much of a streaming answer a crash may lose

    def __init__(self, host: EngineHost, params: dict | None = None, on_error: ErrorHandler | None = None,
                 store: ConversationStore | None = None, settings: QSettings | None = None):
        super().__init__()
        self.host = host
        self.params = {**DEFAULT_PARAMS, **(params or {})}
        self.store = store or ConversationStore()
        self.settings = settings or default_settings()
        self.conversation: Conversation | None = None  # None: a new chat, saved on its first message
        self.history: list[dict] = []  # the conversation as the model sees it (without the system prompt)
        self.model_name: str | None = None
        self.busy = False
        self.writer: AnswerWriter | None = None
        self._turn: tuple[int, bool] | None = None  # the user message id; whether its send created the chat
        self._on_error = on_error
        self.setWindowTitle("SubSpec Studio")
        self.resize(1240, 760)
        self._build()
        host.capabilities.connect(self.method.apply_capabilities)
        host.loaded.connect(self._on_loaded)
        host.progress.connect(self.model_label.setText)
        host.token.connect(self._on_token)
        host.step.connect(self.stats_dock.add_step)
        host.finished.connect(self._on_finished)
        host.failed.connect(self._on_failed)
        self._restore()
        self._update_controls()

    def _build(self) -> None:
        toolbar = self.addToolBar("Decoding")
        toolbar.setObjectName("decoding")
        toolbar.setMovable(False)
        self.method = MethodControls(toolbar)
        toolbar.addSeparator()
        self.sampling = SamplingControls(toolbar)
        self.sampling.changed.connect(self._save_conversation_settings)

        self.system_prompt = QLineEdit()
        self.system_prompt.setPlaceholderText("System prompt (optional, saved with the conversation)")
        self.system_prompt.editingFinished.connect(self._save_conversation_settings)
        self.transcript = Transcript()
        self.prompt = PromptEdit()
        self.prompt.setFixedHeight(84)
        self.prompt.submitted.connect(self.send)
        self.prompt.stop_requested.connect(self.stop)
        self.send_button = QPushButton("Send")
        self.send_button.setDefault(True)
        self.send_button.clicked.connect(self.send)
        self.stop_button = QPushButton("Stop")
        self.stop_button.clicked.connect(self.stop)
        # Esc stops wherever the focus is (the prompt box handles it too, for when it has the focus).
        QShortcut(QKeySequence(Qt.Key.Key_Escape), self, self.stop)
        QShortcut(QKeySequence.StandardKey.New, self, self.new_conversation)
        buttons = QVBoxLayout()
        buttons.addWidget(self.send_button)
        buttons.addWidget(self.stop_button)
        buttons.addStretch()
        row = QHBoxLayout()
        row.addWidget(self.prompt, 1)
        row.addLayout(buttons)
        chat_layout = QVBoxLayout()
        chat_layout.setContentsMargins(6, 6, 6, 6)
        chat_layout.addWidget(self.system_prompt)
        chat_layout.addWidget(self.transcript, 1)
        chat_layout.addLayout(row)
        chat = QWidget()
        chat.setLayout(chat_layout)

        self.sidebar = ConversationSidebar(self.store)
        self.sidebar.selected.connect(self.open_conversation)
        self.sidebar.new_requested.connect(self.new_conversation)
        self.sidebar.deleted.connect(self._on_deleted)
        self.splitter = QSplitter()
        self.splitter.addWidget(self.sidebar)
        self.splitter.addWidget(chat)
        self.splitter.setStretchFactor(1, 1)
        self.splitter.setSizes([230, 700])
        self.setCentralWidget(self.splitter)

        self.stats_dock = StatsDock(self)
        self.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, self.stats_dock)
        self.resizeDocks([self.stats_dock], [300], Qt.Orientation.Horizontal)

        self.model_label = QLabel("No model loaded")
        self.model_label.setContentsMargins(6, 0, 0, 0)
        self.stats_label = QLabel("")
        self.stats_label.setContentsMargins(0, 0, 6, 0)
        self.statusBar().addWidget(self.model_label, 1)
        self.statusBar().addPermanentWidget(self.stats_label)
        self.prompt.setFocus()

    def _restore(self) -> None:
        geometry = self.settings.value("geometry")
        if geometry is not None:
            self.restoreGeometry(geometry)
        state = self.settings.value("state")
        if state is not None:
            self.restoreState(state)
        try:
            last = int(self.settings.value("last_conversation", 0))
        except (TypeError, ValueError):
            last = 0
        if last and self.store.get(last) is not None:
            self.open_conversation(last)
        else:
            self.new_conversation()

    # Conversations

    def new_conversation(self) -> None:
        if self.busy:
            return
        self.conversation = None
        self.history = []
        self.transcript.clear()
        self.sampling.set_values(DEFAULT_PRESET, *PRESETS[DEFAULT_PRESET])
        self.system_prompt.clear()
        self.sidebar.refresh(None)
        self.settings.remove("last_conversation")
        self.prompt.setFocus()

    def open_conversation(self, cid: int) -> None:
        conv = self.store.get(cid)
        if self.busy or conv is None:
            self.sidebar.refresh(self.conversation.id if self.conversation else None)
            return
        self.conversation = conv
        self.transcript.clear()
        self.history = replay(self.transcript, self.store.messages(cid))
        self.sampling.set_values(conv.preset, conv.temperature, conv.top_p)
        self.system_prompt.setText(conv.system_prompt)
        self.sidebar.refresh(cid)
        self.settings.setValue("last_conversation", cid)

    def _on_deleted(self, cid: int) -> None:
        if self.conversation and self.conversation.id == cid:
            self.new_conversation()

    def _save_conversation_settings(self) -> None:
        if self.conversation is not None:
            self.store.update(self.conversation.id, system_prompt=self.system_prompt.text(),
                              **self.sampling.values())

    # Chat

    def load_model(self, model: str) -> None:
        self.model_name = None
        self.model_label.setText(f"Loading {model} …")
        self._update_controls()
        self.host.load(model)

    def send(self) -> None:
        text = self.prompt.toPlainText().strip()
        if not text or self.busy or self.model_name is None:
            return
        self.prompt.clear()
        created = self.conversation is None
        if created:
            self.conversation = self.store.create(title_from(text), self.system_prompt.text(),
                                                  **self.sampling.values())
            self.settings.setValue("last_conversation", self.conversation.id)
        else:
            self._save_conversation_settings()
        cid = self.conversation.id
        self._turn = (self.store.add_message(cid, "user", text), created)
        self.writer = AnswerWriter(self.store, cid, self.ANSWER_SAVE_INTERVAL_S)
        self.history.append({"role": "user", "content": text})
        self.transcript.add_user(text)
        self.transcript.begin_assistant(self.model_name)
        self.busy = True
        self.stats_dock.begin_answer()
        self.sidebar.refresh(cid)
        self.stats_label.setText("generating …")
        self._update_controls()
        self.prompt.setFocus()  # after a click on Send, typing should go on in the box
        system = self.system_prompt.text().strip()
        messages = ([{"role": "system", "content": system}] if system else []) + self.history
        sampling = self.sampling.values()
        params = {**self.params, "temperature": sampling["temperature"], "top_p": sampling["top_p"],
                  **self.method.params()}
        self.host.generate(messages, params)

    def stop(self) -> None:
        if self.busy:
            self.host.stop()

    def _on_loaded(self, name: str) -> None:
        self.model_name = name
        self.model_label.setText(name)
        self._update_controls()

    def _on_token(self, text: str) -> None:
        if self.busy and self.writer is not None:
            self.writer.append(text)
            self.transcript.append_text(text)

    def _on_finished(self, summary: dict) -> None:
        if self.writer is None:  # the window was closed mid-answer and has saved what it had
            return
        self.busy = False
        text = self.writer.text
        stats = {k: v for k, v in summary.items() if k != "text"}
        # A stopped answer is kept, in the history too: the user saw it, so the model should too.
        self.writer.finish(text, stats)
        self.writer = None
        end_answer(self.transcript, summary["finish_reason"], stats)
        self.history.append({"role": "assistant", "content": text})
        self.stats_label.setText(format_stats(summary))
        self.model_label.setText(self.model_name or "No model loaded")  # a draft build may have used it
        self.sidebar.refresh()
        self._update_controls()

    def _on_failed(self, message: str, details: str) -> None:
        if self.busy:
            self.busy = False
            self.transcript.add_error(message)
            self._forget_failed_turn()
            # The failed turn leaves the history so the next request is well formed; the text goes back
            # into the box to be sent again.
            turn = self.history.pop()
            if not self.prompt.toPlainText().strip():
                self.prompt.setPlainText(turn["content"])
            self.stats_label.setText("")
            self.model_label.setText(self.model_name or "No model loaded")
        elif self.model_name is None:
            self.model_label.setText("No model loaded")
        self._update_controls()
        if self._on_error:
            self._on_error("Engine error", message, details)
        else:
            dialogs.show_error(self, "Engine error", message, details)

    def _forget_failed_turn(self) -> None:
        """The saved conversation matches the history: the turn goes, and a chat it created with it."""
        if self.writer is not None:
            self.writer.discard()
            self.writer = None
        if self._turn and self.conversation:
            message_id, created = self._turn
            self.store.delete_message(message_id)
            if created:
                self.store.delete(self.conversation.id)
                self.conversation = None
                self.settings.remove("last_conversation")
                self.sidebar.refresh(None)
        self._turn = None

    def _update_controls(self) -> None:
        ready = self.model_name is not None
        self.send_button.setEnabled(ready and not self.busy)
        self.stop_button.setEnabled(self.busy)
        # Switching chats mid-answer would mix two conversations' turns.
        self.sidebar.setEnabled(not self.busy)

    def closeEvent(self, event: QCloseEvent) -> None:
        self.settings.setValue("geometry", self.saveGeometry())
        self.settings.setValue("state", self.saveState())
        if self.writer is not None:
            self.writer.flush()  # kept as far as it got, marked incomplete (complete=0)
            self.writer = None
            self.busy = False
        self.host.shutdown()
        self.settings.sync()
        super().closeEvent(event)
