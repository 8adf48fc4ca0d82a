"""The chat window: conversations on the left, the chat in the middle, decoding stats on the right, and
the method and sampling settings in the toolbar. Every turn is saved as it happens (app.conversations)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Callable

from PySide6.QtCore import QByteArray, QEvent, QSettings, Qt, QTimer
from PySide6.QtGui import QCloseEvent, QKeySequence, QShortcut
from PySide6.QtWidgets import (QHBoxLayout, QLabel, QMainWindow, QProgressBar, QPushButton, QVBoxLayout,
                               QWidget)

from engine.store import DEFAULT_MODEL, model_available, names_a_path

from . import dialogs, import_chat, shortcuts, theme
from .actions import ChatActions
from .api_server import ApiSwitch
from .attachments import attach
from .backend import DEFAULT_PARAMS
from .chat_flow import ChatFlow
from .compare import CompareJob
from .overflow import ChatSplitter
from .context_meter import ContextMeter
from .controls import MORE_DEFAULTS, MethodControls, SamplingControls, ThinkingSwitch
from .conversation_menu import (add_conversation_menu, new_conversation_defaults, reset_new_conversation_defaults,
                                save_new_conversation_defaults)
from .conversations import AnswerWriter, Conversation, ConversationStore, Message, open_store, why_not_saved
from .hardware_panel import HardwareDock, forget_load_options, load_options_for, save_load_options
from .help_menu import add_help_menu
from .model_manager import ModelManager
from .model_picker import ModelPicker
from .models_panel import ModelsDock
from .sidebar import ConversationSidebar
from .stats import StatsDock
from .turns import Turn, replay
from .view_menu import add_view_menu, saved_scheme
from .widgets import NoticeBar, PromptEdit, SystemPromptEdit, Transcript, replace_text
from .worker import EngineHost

ErrorHandler = Callable[[str, str, str], None]  # title, message, details
SETTINGS_FILE = "studio.ini"


def default_settings() -> QSettings:
    from engine.store import store_root

    # Beside the conversations, so SUBSPEC_HOME moves (and tests isolate) both together.
    return QSettings(str(store_root() / SETTINGS_FILE), QSettings.Format.IniFormat)


class MainWindow(ChatFlow, QMainWindow):
    ANSWER_SAVE_INTERVAL_S = 1.0  # how much of a streaming answer a crash may lose
    # A long conversation opens on its latest messages (laying out thousands takes seconds); "Show them"
    # at the top shows the rest.
    SHOWN_MESSAGES = 200
    DEFAULT_SIZE = (1240, 760)

    def __init__(self, host: EngineHost, params: dict | None = None, on_error: ErrorHandler | None = None,
                 store: ConversationStore | None = None, settings: QSettings | None = None):
        super().__init__()
        self.host = host
        self.params = {**DEFAULT_PARAMS, **(params or {})}
        store_problem = None  # a damaged, newer or unwritable conversations file: said once the window shows
        if store is None:
            store, store_problem = open_store()
        self.store = store
        self.settings = settings or default_settings()
        self.conversation: Conversation | None = None  # None: a new chat, saved on its first message
        self.history: list[dict] = []  # the conversation as the model sees it (without the system prompt)
        self.model_name: str | None = None
        self.loading = False
        self._requested_model: str | None = None
        self._load_saved_options = False  # the load under way uses the options this model was last loaded with
        self.remember_model = True  # the next load is what the next start opens (not a --model run's)
        self.busy = False
        self.editing = False  # the prompt box holds the last user message, to replace it
        self._draft = ""  # what the box held when an edit began: back in it if the edit is cancelled
        self._unsaved: dict[int, Message] = {}  # answers whose last write failed (a full disk): by id
        self._retry_writes_at = 0.0  # (monotonic) when to try writing them again
        self._show_all: int | None = None  # the conversation whose earlier messages were asked for
        self._unloaded: tuple[str, dict] | None = None  # Model > Unload: the name and load options, for Load again
        self.writer: AnswerWriter | None = None
        self._turn: Turn | None = None  # the request in flight and what it changed
        self._compare: CompareJob | None = None  # a speed comparison in flight
        self._request: dict = {}
        # This session's timings, never saved: a speed is only comparable to one taken on the same machine
        # in the same run. Answer id -> its stats; model name -> plain decoding's last tok/s.
        self._measured: dict[int, dict] = {}
        self.plain_speeds: dict[str, float] = {}
        self._on_error = on_error
        self.setWindowTitle("SubSpec Studio")
        self.resize(*self.DEFAULT_SIZE)
        self._restyle_pending = False  # the appearance changed mid-answer: redraw the transcript after it
        theme.apply(saved_scheme(self.settings))
        theme.notifier.changed.connect(self._on_theme_changed)
        self._build()
        host.capabilities.connect(self.method.apply_capabilities)
        host.capabilities.connect(self.thinking.apply_capabilities)
        host.model_info.connect(self.hardware_dock.set_model)
        self.hardware_dock.reload_requested.connect(self.reload_model)
        host.finished.connect(self.hardware_dock.add_answer)
        host.loaded.connect(self._on_loaded)
        host.progress.connect(self.model_label.setText)
        host.token.connect(self._on_token)
        host.prompt_progress.connect(self._on_prompt_progress)
        self._api_running = False
        self._answer_started = False  # a token of the answer under way has come (it is not waiting)
        host.api_busy.connect(self._on_api_busy)
        host.step.connect(self.stats_dock.add_step)
        host.step.connect(self._on_step_note)
        host.finished.connect(self._on_finished)
        host.failed.connect(self._on_failed)
        host.models.connect(self.picker.set_models)
        host.loaded.connect(self.models_dock.set_loaded_model)
        self.model_manager.inventory.connect(self._on_store_changed)
        # A download finishing or failing is news with the Models panel closed too.
        self.model_manager.notice.connect(lambda n: self.statusBar().showMessage(n["message"], 15_000))
        host.missing_model.connect(self._on_missing_model)
        host.unloaded.connect(self._on_unloaded)
        host.list_models()  # queued before the first load, so the menu fills while the model loads
        self._restore()
        if store_problem:
            QTimer.singleShot(0, lambda: self._report("Conversations", store_problem))
        self._update_controls()

    def _build(self) -> None:
        toolbar = self.addToolBar("Decoding")
        toolbar.setObjectName("decoding")
        toolbar.setMovable(False)
        self.picker = ModelPicker(toolbar)
        self.picker.chosen.connect(self.switch_model)
        toolbar.addSeparator()
        self.method = MethodControls(toolbar)
        # The tree (depth, width, auto depth) is the user's, kept across runs; whether SubSpec is on follows
        # what the loaded model can do.
        self.method.restore(self.settings)
        self.method.changed.connect(lambda: self.method.save(self.settings))
        toolbar.addSeparator()
        self.sampling = SamplingControls(toolbar)
        self.sampling.changed.connect(self._save_conversation_settings)
        self.thinking = ThinkingSwitch(toolbar, self.settings)

        self.system_prompt = SystemPromptEdit()
        self.system_prompt.setAccessibleName("System prompt")
        self.system_prompt.setPlaceholderText("System prompt (optional, saved with the conversation)")
        self.system_prompt.editingFinished.connect(self._save_conversation_settings)
        self.transcript = Transcript()
        self.transcript.setAccessibleName("Conversation")
        self.transcript.earlier_requested.connect(self._show_earlier)
        self.transcript.thinking_toggled.connect(self.toggle_thinking)
        self.transcript.version_requested.connect(self.switch_version)
        self.transcript.branch_requested.connect(self.branch_conversation)
        self.transcript.show_thinking = self.settings.value("show_thinking", "false") in ("true", True)
        self.notice = NoticeBar()
        self.notice.button.clicked.connect(self._retry_load)
        self.chat_actions = ChatActions()
        self.chat_actions.regenerate.clicked.connect(self.regenerate)
        self.chat_actions.edit.clicked.connect(self.begin_edit)
        self.chat_actions.continue_.clicked.connect(self.continue_answer)
        self.chat_actions.edit_answer.clicked.connect(self.edit_answer)
        self.chat_actions.compare.clicked.connect(self.compare)
        self.prompt = PromptEdit()
        self.prompt.setAccessibleName("Message")
        self.prompt.submitted.connect(self.send)
        self.prompt.stop_requested.connect(self.stop)
        self.prompt.files_dropped.connect(self.attach_files)
        self.send_button = QPushButton("Send")
        self.send_button.setDefault(True)
        self.send_button.clicked.connect(self.send)
        self.stop_button = QPushButton("Stop")
        self.stop_button.clicked.connect(self.stop)
        self.attach_button = QPushButton("Attach…")
        self.attach_button.setToolTip("Put text files (code, notes, logs) into your message, each as a block "
                                      "under its name; or drop them on the message box")
        self.attach_button.clicked.connect(lambda: self.attach_files())
        # Esc stops wherever the focus is (the prompt box handles it too, for when it has the focus).
        QShortcut(QKeySequence(Qt.Key.Key_Escape), self, self.stop)
        shortcuts.install(self)
        buttons = QVBoxLayout()
        buttons.addWidget(self.send_button)
        buttons.addWidget(self.stop_button)
        buttons.addStretch()
        buttons.addWidget(self.attach_button)
        row = QHBoxLayout()
        row.addWidget(self.prompt, 1)
        row.addLayout(buttons)
        chat_layout = QVBoxLayout()
        chat_layout.setContentsMargins(6, 6, 6, 6)
        chat_layout.addWidget(self.system_prompt)
        chat_layout.addWidget(self.notice)
        chat_layout.addWidget(self.transcript, 1)
        chat_layout.addWidget(self.chat_actions)
        chat_layout.addLayout(row)
        chat = QWidget()
        chat.setLayout(chat_layout)

        self.sidebar = ConversationSidebar(self.store)
        self.sidebar.read_messages = self._messages  # (export: an answer not written yet, as it is)
        self.sidebar.selected.connect(self.open_conversation)
        self.sidebar.new_requested.connect(self.new_conversation)
        self.sidebar.deleted.connect(self._on_deleted)
        self.splitter = ChatSplitter()
        self.splitter.addWidget(self.sidebar)
        self.splitter.addWidget(chat)
        self.splitter.setStretchFactor(1, 1)
        # The list as wide as its buttons need, all four shown; a narrow window takes it down to "New" and
        # "⋯" before the chat gets cramped (app.overflow).
        self.splitter.set_list_width(max(230, self.sidebar.sizeHint().width()))
        self.setCentralWidget(self.splitter)

        self.stats_dock = StatsDock(self)
        self.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, self.stats_dock)
        self.resizeDocks([self.stats_dock], [300], Qt.Orientation.Horizontal)
        # Tabbed with the stats and hidden until asked for: it probes the GPU while it is visible.
        self.hardware_dock = HardwareDock(self)
        self.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, self.hardware_dock)
        self.tabifyDockWidget(self.stats_dock, self.hardware_dock)
        self.hardware_dock.hide()
        toolbar.addSeparator()
        hardware_action = self.hardware_dock.toggleViewAction()
        hardware_action.setText("Hardware")
        hardware_action.setToolTip("GPUs, memory, measured speeds and the plan for the loaded model")
        toolbar.addAction(hardware_action)
        # Downloads belong to the window, not the dock: they go on when the dock is closed.
        self.model_manager = ModelManager(self)
        self.models_dock = ModelsDock(self.model_manager, self.hardware_dock, self)
        self.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, self.models_dock)
        self.tabifyDockWidget(self.stats_dock, self.models_dock)
        self.models_dock.hide()
        for dock in (self.stats_dock, self.hardware_dock, self.models_dock):
            theme.style_dock(dock)  # its float and close buttons readable on a dark window too
        models_action = self.models_dock.toggleViewAction()
        models_action.setText("Models")
        models_action.setToolTip("Download, import, convert and delete models")
        toolbar.addAction(models_action)
        toolbar.addSeparator()
        self.api = ApiSwitch(toolbar, self.statusBar(), self.host, self.settings)
        self.api.failed.connect(self._on_api_failed)
        # API requests decode like the chat: SubSpec with its tree when the switch is on.
        self.method.changed.connect(lambda: self.api.set_decoding(self.method.params()))
        self.api.set_decoding(self.method.params())
        self.conversation_menu = add_conversation_menu(self)  # Ctrl+N is its "New conversation"
        self.model_menu = self.menuBar().addMenu("&Model")
        self.unload_action = self.model_menu.addAction("Unload model")
        self.unload_action.setObjectName("unload_model")
        self.unload_action.setToolTip("Let the model go and free its memory (RAM, and VRAM for other programs); "
                                      "load one again from the model menu")
        self.unload_action.triggered.connect(self.unload_model)
        self.view_menu = add_view_menu(self, self.settings)
        self.help_menu = add_help_menu(self)

        self.model_label = QLabel("No model loaded")
        self.model_label.setContentsMargins(6, 0, 0, 0)
        self.stats_label = QLabel("")
        self.stats_label.setContentsMargins(0, 0, 6, 0)
        self.load_progress = QProgressBar()
        self.load_progress.setRange(0, 0)  # a load reports steps in words, not a fraction: a busy bar
        self.load_progress.setMaximumWidth(120)
        self.load_progress.hide()
        self.statusBar().addWidget(self.model_label, 1)
        self.statusBar().addWidget(self.load_progress)
        self.context_meter = ContextMeter()
        self.statusBar().addPermanentWidget(self.context_meter)
        self.statusBar().addPermanentWidget(self.stats_label)
        self.prompt.setFocus()

    def _restore(self) -> None:
        # An edited (or damaged) settings file must not stop the app from starting: Qt takes only bytes
        # here, and SQLite only 64-bit ids.
        geometry = self.settings.value("geometry")
        if isinstance(geometry, QByteArray):
            self.restoreGeometry(geometry)
        state = self.settings.value("state")
        if isinstance(state, QByteArray):
            self.restoreState(state)
        splitter = self.settings.value("splitter")  # the sidebar's width (saveState covers only the docks)
        if isinstance(splitter, QByteArray):
            self.splitter.restoreState(splitter)
        try:
            last = int(self.settings.value("last_conversation", 0))
        except (TypeError, ValueError):
            last = 0
        if not 0 < last < 2**63:
            last = 0
        if last and self.store.get(last) is not None:
            self.open_conversation(last)
        else:
            self.new_conversation()

    # Conversations

    def _on_step_note(self, step: dict) -> None:
        # The engine changed something to keep going (a shallower tree after running out of GPU memory):
        # the user should know why the speed dropped; the answer itself is unaffected.
        if step.get("note"):
            self.statusBar().showMessage(step["note"], 30_000)

    def show_hardware(self) -> None:
        self.hardware_dock.show()
        self.hardware_dock.raise_()  # in front of the stats tab

    def show_models(self) -> None:
        self.models_dock.show()
        self.models_dock.raise_()
        # Before the window is first shown, a restored layout's current tab wins over raise_(); again after.
        QTimer.singleShot(0, self.models_dock, self.models_dock.raise_)

    def _on_store_changed(self, inventory: dict) -> None:
        """A download, import or delete changed the store: the menu lists what is there now."""
        if not inventory.get("error"):
            self.picker.set_models([m["name"] for m in inventory["models"]])

    def new_conversation(self) -> None:
        if self.busy:
            return
        self.cancel_edit()  # an edit of another conversation's message would land in this one
        self.conversation = None
        self.history = []
        self.transcript.clear()
        defaults = new_conversation_defaults(self.settings)
        self.system_prompt.setText(defaults.pop("system_prompt"))
        self.sampling.set_values(**defaults)
        self.sidebar.refresh(None)
        self.settings.remove("last_conversation")
        self.context_meter.show_usage(None)
        self.prompt.setFocus()
        self._update_controls()

    def import_conversation(self, path: str | None = None) -> None:
        """Conversation > Import…: a JSON file (this app's export, or an OpenAI-style message list) becomes a
        new conversation, opened. A file it cannot take says why and adds nothing."""
        if self.busy:
            self.statusBar().showMessage("Import a conversation when the answer in progress is done", 10_000)
            return
        path = path or dialogs.choose_file(self, "Import conversation", "JSON (*.json);;All files (*)")
        if not path:
            return
        try:
            imported = import_chat.read(path)
        except (OSError, ValueError) as exc:
            self._report("Import failed", f"Could not import {Path(path).name}: {getattr(exc, 'strerror', None) or exc}."
                                          f" Nothing was added.")
            return
        try:
            cid = self.store.import_conversation(imported.title, imported.system_prompt, imported.settings,
                                                 imported.messages)
        except sqlite3.Error as exc:
            self._report("Could not save", f"The conversation could not be imported: "
                                           f"{why_not_saved(self.store, exc)}. Nothing was added.")
            return
        self.open_conversation(cid)
        self.sidebar.refresh(cid)
        self.statusBar().showMessage(f"Imported “{imported.title}”: {len(imported.messages)} messages", 10_000)

    def branch_conversation(self, mid: int | None = None) -> None:
        """An answer's Branch (Conversation > Branch: the last message): a new conversation holding the open
        one up to that answer, with its settings, opened to go on from there another way (a new question, a
        regenerated answer). The open conversation stays as it is."""
        if self.conversation is None:
            return
        if self.busy:
            self.statusBar().showMessage("Branch when the answer in progress is done", 10_000)
            return
        self._write_unsaved(now=True)
        saved = self._saved()
        if mid is None and saved:
            mid = saved[-1].id
        if mid is None or mid not in {m.id for m in saved}:
            self.statusBar().showMessage("Nothing to branch from: this conversation has no such message", 10_000)
            return
        if any(m.id in self._unsaved for m in saved if m.id <= mid):
            self.statusBar().showMessage("This answer is not saved yet (the disk refused it); branch once it "
                                         "is", 10_000)
            return
        try:
            cid = self.store.branch(self.conversation.id, mid)
        except sqlite3.Error as exc:
            self._report("Could not save", f"The branch could not be saved: {why_not_saved(self.store, exc)}. "
                                           f"Nothing was added.")
            return
        title = self.store.get(cid).title
        self.open_conversation(cid)
        self.statusBar().showMessage(f"Branched into “{title}”; the original is unchanged", 10_000)

    def use_settings_for_new(self) -> None:
        save_new_conversation_defaults(self.settings, {"system_prompt": self.system_prompt.text(),
                                                       **self.sampling.values()})
        self.statusBar().showMessage("New conversations will start with these settings", 10_000)

    def reset_new_defaults(self) -> None:
        reset_new_conversation_defaults(self.settings)
        self.statusBar().showMessage("New conversations will start with the app's default settings", 10_000)

    def _replay(self, messages: list) -> list[dict]:
        """The open conversation's messages into the (cleared) transcript: its latest SHOWN_MESSAGES, unless
        "Show them" asked for all; returns them all as the model's history."""
        everything = self.conversation is not None and self._show_all == self.conversation.id
        versions = {}
        if self.conversation is not None:
            try:
                versions = self.store.version_positions(self.conversation.id)
            except sqlite3.Error:
                pass  # (drawn without the arrows: the answers themselves are what matters)
        return replay(self.transcript, messages, None if everything else self.SHOWN_MESSAGES, versions)

    def _show_earlier(self) -> None:
        if self.busy or self.conversation is None:
            return  # (the link is not followed mid-answer: the transcript is being written)
        self._show_all = self.conversation.id
        self.transcript.clear()
        self.history = self._replay(self._saved())
        self.transcript.verticalScrollBar().setValue(0)  # where the link was: the oldest message

    def open_conversation(self, cid: int) -> None:
        conv = self.store.get(cid)
        if self.busy or conv is None:
            self.sidebar.refresh(self.conversation.id if self.conversation else None)
            return
        self.cancel_edit()  # an edit of another conversation's message would land in this one
        self.conversation = conv
        self._show_all = None  # opened again: from its latest messages
        self.transcript.clear()
        messages = self._messages(cid)
        self.history = self._replay(messages)
        self.context_meter.show_latest(messages)
        self.sampling.set_values(conv.preset, conv.temperature, conv.top_p,
                                 **{name: getattr(conv, name) for name in MORE_DEFAULTS})
        self.system_prompt.setText(conv.system_prompt)
        self.sidebar.refresh(cid)
        self.settings.setValue("last_conversation", cid)
        self._update_controls()

    def focus_search(self) -> None:
        self.sidebar.search.setFocus()
        self.sidebar.search.selectAll()

    def focus_prompt(self) -> None:
        self.prompt.setFocus()

    def attach_files(self, paths: list[str] | None = None) -> None:
        """Text files into the message box (Attach… asks which; a drop gives them): what will be sent is
        there to read and edit before sending. Files that cannot be attached are said, the others go in."""
        if paths is None:
            paths = dialogs.choose_files(self, "Attach text files")
        if not paths:
            return
        text, refused = attach(self.prompt.toPlainText(), paths)
        if text != self.prompt.toPlainText():
            replace_text(self.prompt, text)  # Ctrl+Z takes the files out again
        self.prompt.setFocus()
        if refused:
            dialogs.show_error(self, "Attach", "\n".join(refused))

    def _on_deleted(self, cid: int) -> None:
        if self.conversation and self.conversation.id == cid:
            self.new_conversation()

    def _save_conversation_settings(self) -> None:
        if self.conversation is not None:
            try:
                self.store.update(self.conversation.id, system_prompt=self.system_prompt.text(),
                                  **self.sampling.values())
            except sqlite3.Error as exc:
                self._background_write_failed(exc)

    # Models

    def load_model(self, model: str, options: dict | None = None) -> None:
        """`options`: load options (app.backend.TorchBackend's resident_layers, reserve_gb, context) on top of
        the hardware panel's; without any, what this model was last loaded with (kept across starts, as
        LM Studio keeps a model's load settings), else the panel's."""
        self._load_saved_options = False
        if options is None:
            options = load_options_for(self.settings, self._model_key(model))
            self._load_saved_options = options is not None
        self.api.pause()  # it serves the loaded model: the port closes, and opens again on the next one
        self.model_name = None
        self.loading = True
        self._requested_model = model
        self.model_label.setText(f"Loading {model} …")
        self.hardware_dock.set_model(None)  # the old model's plan is no longer the loaded one
        self.load_progress.show()
        self._update_controls()
        self.host.load(model, options if options is not None else self.hardware_dock.load_options())

    def reload_model(self, options: dict) -> None:
        """The hardware panel's Reload: the same model with another layout. The conversation stays: a load
        touches neither the transcript nor the history."""
        if self.busy or self.loading or self.model_name is None:
            return
        self.load_model(self._requested_model or self.model_name, options)

    def switch_model(self, name: str) -> None:
        if self.busy or self.loading:
            self.picker.set_current(self.model_name)  # the menu goes back to what is really loaded
            return
        self.load_model(name)

    def unload_model(self) -> None:
        """Model > Unload: the conversation stays; sending waits until a model is loaded again."""
        if self.busy or self.loading or self.model_name is None:
            return
        self.api.pause()  # it serves the loaded model: serving resumes when one is loaded again
        # Load again asks for what was asked before (a folder's path, not its display name), with the
        # layout it was loaded with (the hardware panel forgets it with the model).
        self._unloaded = (self.model_name, dict(self.hardware_dock.loaded_options))
        self.model_name = None
        self.loading = True  # until the worker says the memory is free: nothing else may start meanwhile
        self.model_label.setText("Unloading …")
        self.hardware_dock.set_model(None)
        self._update_controls()
        self.host.unload()

    def _on_unloaded(self) -> None:
        self._load_failed()  # the same state: no model, the menu free to pick one
        self.models_dock.set_loaded_model(None)
        self.notice.show_notice(f"{self._unloaded[0]} is unloaded and its memory free. Pick a model in the "
                                f"menu, or load it again.", "Load again")

    @staticmethod
    def _model_key(model: str) -> str:
        """How a model is named in the settings: a store name as it is, a folder by its absolute path (a
        relative one means nothing from another working folder)."""
        if names_a_path(model):
            return str(Path(model).expanduser().resolve())
        return model

    def startup_model(self) -> str:
        """The model to load at start: the one loaded last time while it is still installed, else the default."""
        last = self.settings.value("last_model", "")
        if not isinstance(last, str) or not last:
            return DEFAULT_MODEL
        if model_available(last):
            return last
        self.settings.remove("last_model")
        self.statusBar().showMessage(f"{last}, the model loaded last time, is no longer installed: loading "
                                     f"{DEFAULT_MODEL}", 30_000)
        return DEFAULT_MODEL

    def _on_loaded(self, name: str) -> None:
        self._unloaded = None
        # What was asked for (a folder's path, or a store name), loaded: the next start loads it again.
        if self.remember_model:
            self.settings.setValue("last_model", self._model_key(self._requested_model or name))
        self.remember_model = True  # (main's --model load is not remembered; every later one is)
        if self._requested_model:  # the layout it was loaded with (the panel's Reload too): the next load's
            save_load_options(self.settings, self._model_key(self._requested_model),
                              self.hardware_dock.loaded_options)
        self.model_name = name
        self.loading = False
        self.load_progress.hide()
        self.notice.hide()
        self.picker.set_current(name, self._requested_model)
        self.model_label.setText(name)
        self._update_controls()

    def _load_failed(self) -> None:
        """The old model is gone (it was released before the load); the menu can pick another."""
        self.remember_model = True  # (a failed --model load: the next one picked is remembered)
        self.thinking.apply_capabilities({})  # no model: no switch
        if self._load_saved_options and self._requested_model:
            # Its saved settings may be why (less free VRAM now, another model under that name): forgotten,
            # so the next load of it takes the panel's settings instead of failing the same way again.
            self._load_saved_options = False
            forget_load_options(self.settings, self._model_key(self._requested_model))
            self.statusBar().showMessage(f"{self._requested_model} did not load with the settings it was last "
                                         f"loaded with; they are forgotten: the next load uses the Hardware "
                                         f"panel's", 30_000)
        self.loading = False
        self.load_progress.hide()
        self.picker.set_current(None)
        self.model_label.setText("No model loaded")
        self._update_controls()

    def _on_missing_model(self, message: str) -> None:
        self._load_failed()
        self.model_label.setText("No model installed")
        self.notice.show_notice(
            "<b>No model is installed yet.</b> Download or import one in the Models panel (toolbar), or "
            "from a terminal with <code>subspec models import PATH</code> (PATH: a Hugging Face model folder "
            "or a .gguf file), "
            "then press Try again.", "Try again")
        if self._on_error:  # an unattended run cannot wait for someone to install a model
            self._on_error("No model", message, "")

    def _retry_load(self) -> None:
        if not self.loading and not self.busy:
            self.notice.hide()
            options, self._unloaded = (self._unloaded[1] if self._unloaded else None), None
            self.load_model(self._requested_model or DEFAULT_MODEL, options)

    def _update_controls(self) -> None:
        ready = self.model_name is not None
        idle = not self.busy
        self.send_button.setEnabled(ready and idle)
        self.stop_button.setEnabled(self.busy)
        # Switching chats mid-answer would mix two conversations' turns.
        self.sidebar.setEnabled(idle)
        self.picker.combo.setEnabled(idle and not self.loading)
        saved = self._saved() if idle else []
        answered = bool(saved) and saved[-1].role == "assistant"
        self.chat_actions.regenerate.setEnabled(ready and answered)
        self.chat_actions.continue_.setEnabled(ready and answered)
        self.chat_actions.compare.setEnabled(ready and answered and self.method.toggle.isEnabled())
        self.chat_actions.edit.setEnabled(idle and any(m.role == "user" for m in saved))
        self.chat_actions.edit_answer.setEnabled(answered and not getattr(self.store, "read_only", False))
        self.hardware_dock.set_engine_busy(self.busy or self.loading)
        self.api.set_available(ready and idle and not self.loading)
        self.unload_action.setEnabled(ready and idle and not self.loading)

    def _on_api_failed(self, title: str, message: str) -> None:
        if self._on_error:
            self._on_error(title, message, "")
        else:
            dialogs.show_error(self, title, message)

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        self.prompt.fit_height()  # its cap is a share of the window's height

    def changeEvent(self, event: QEvent) -> None:
        # The system switched between light and dark while the app follows it: restyle what we color.
        if event.type() in (QEvent.Type.PaletteChange, QEvent.Type.ApplicationPaletteChange,
                            QEvent.Type.ThemeChange):
            theme.refresh()
        super().changeEvent(event)

    def previous_version(self) -> None:
        self._step_last_answer(-1)

    def next_version(self) -> None:
        self._step_last_answer(1)

    def _step_last_answer(self, step: int) -> None:
        saved = self._saved() if not self.busy else []
        if saved and saved[-1].role == "assistant":
            self.switch_version(saved[-1].id, step)

    def switch_version(self, mid: int, step: int) -> None:
        """The last answer's ‹ or ›: its previous or next version becomes the answer (and what the model sees
        from now on)."""
        if self.busy or self.conversation is None:
            return
        self._write_unsaved(now=True)
        saved = self._saved()  # (no model needed: a load may be under way)
        if not saved or saved[-1].id != mid:  # (drawn inactive when the transcript is redrawn)
            self.statusBar().showMessage("Versions can be switched on the last answer only: later turns were "
                                         "answered after the version shown", 10_000)
            return
        if mid in self._unsaved:  # its text is not in the store yet: a swap now would lose it
            self.statusBar().showMessage("This answer is not saved yet (the disk refused it); versions can be "
                                         "switched once it is", 10_000)
            return
        try:
            moved = self.store.step_version(mid, step)
        except sqlite3.Error as exc:
            self._background_write_failed(exc)
            return
        if moved:
            self._measured.pop(mid, None)  # (the comparison's speed was the other version's)
            self._redraw_in_place()
            self._after_request()

    def toggle_thinking(self) -> None:
        """An answer's Show/Hide: every answer's thinking shows or hides (kept across starts), drawn again
        where the transcript was (after the answer, when one is streaming)."""
        self.transcript.show_thinking = not self.transcript.show_thinking
        self.settings.setValue("show_thinking", "true" if self.transcript.show_thinking else "false")
        self._redraw_in_place()

    def _redraw_in_place(self) -> None:
        """The conversation drawn again from the store (the history with it), where the transcript was
        scrolled to; mid-answer, once the answer ends (_on_theme_changed waits for it)."""
        bar = self.transcript.verticalScrollBar()
        at = bar.value()
        self._on_theme_changed()
        if not self.busy:
            bar.setValue(min(at, bar.maximum()))

    def _on_theme_changed(self, _colors=None) -> None:
        """The transcript was drawn in the old colors: draw the conversation again (after the answer, when
        one is streaming: a redraw now would lose its open state)."""
        if self.busy:
            self._restyle_pending = True
            return
        self._restyle_pending = False
        self.transcript.restyle()
        errors = list(self.transcript.trailing_errors)  # not in the store: kept across the redraw
        self.transcript.clear()
        if self.conversation is not None:
            self.history = self._replay(self._saved())
        for error in errors:
            self.transcript.add_error(error)

    def closeEvent(self, event: QCloseEvent) -> None:
        self._write_unsaved(now=True)  # a last try for an answer the disk refused
        self.settings.setValue("geometry", self.saveGeometry())
        self.settings.setValue("state", self.saveState())
        self.settings.setValue("splitter", self.splitter.saveState())
        if self.writer is not None:
            self.writer.flush()  # kept as far as it got, marked incomplete (complete=0)
            self.writer = None
            self.busy = False
        self._compare = None  # a comparison's last run may still report after this; nothing waits for it
        self.api.stop()  # before the worker ends: a request it runs is cancelled, waiting ones answer 503
        self.model_manager.shutdown()  # downloads pause (their files stay for a resume); threads joined
        self.host.shutdown()
        self.hardware_dock.shutdown()
        self.settings.sync()
        super().closeEvent(event)
