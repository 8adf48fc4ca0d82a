"""The chat window: transcript, prompt box, Send/Stop, and a status bar with the model and speed."""

from __future__ import annotations

from typing import Callable

from PySide6.QtCore import Qt
from PySide6.QtGui import QCloseEvent, QKeySequence, QShortcut
from PySide6.QtWidgets import QHBoxLayout, QLabel, QMainWindow, QPushButton, QVBoxLayout, QWidget

from . import dialogs
from .backend import DEFAULT_PARAMS
from .widgets import PromptEdit, Transcript
from .worker import EngineHost

ErrorHandler = Callable[[str, str, str], None]  # title, message, details


def format_stats(summary: dict) -> str:
    return (f"{summary['new_tokens']} tokens · {summary['tokens_per_s']:.1f} tok/s · "
            f"TTFT {summary['ttft_s']:.2f} s")


class MainWindow(QMainWindow):
    def __init__(self, host: EngineHost, params: dict | None = None, on_error: ErrorHandler | None = None):
        super().__init__()
        self.host = host
        self.params = {**DEFAULT_PARAMS, **(params or {})}
        self.history: list[dict] = []  # the conversation as the model sees it
        self.model_name: str | None = None
        self.busy = False
        self._answer: list[str] = []
        self._on_error = on_error
        self.setWindowTitle("SubSpec Studio")
        self.resize(880, 620)
        self._build()
        host.loaded.connect(self._on_loaded)
        host.progress.connect(self.model_label.setText)
        host.token.connect(self._on_token)
        host.finished.connect(self._on_finished)
        host.failed.connect(self._on_failed)
        self._update_controls()

    def _build(self) -> None:
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
        buttons = QVBoxLayout()
        buttons.addWidget(self.send_button)
        buttons.addWidget(self.stop_button)
        buttons.addStretch()
        row = QHBoxLayout()
        row.addWidget(self.prompt, 1)
        row.addLayout(buttons)
        layout = QVBoxLayout()
        layout.addWidget(self.transcript, 1)
        layout.addLayout(row)
        central = QWidget()
        central.setLayout(layout)
        self.setCentralWidget(central)
        self.model_label = QLabel("No model loaded")
        self.model_label.setContentsMargins(6, 0, 0, 0)
        self.stats_label = QLabel("")
        self.stats_label.setContentsMargins(0, 0, 6, 0)
        self.statusBar().addWidget(self.model_label, 1)
        self.statusBar().addPermanentWidget(self.stats_label)
        self.prompt.setFocus()

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
        self.history.append({"role": "user", "content": text})
        self.transcript.add_user(text)
        self.transcript.begin_assistant(self.model_name)
        self._answer = []
        self.busy = True
        self.stats_label.setText("generating …")
        self._update_controls()
        self.prompt.setFocus()  # after a click on Send, typing should go on in the box
        self.host.generate(self.history, self.params)

    def stop(self) -> None:
        if self.busy:
            self.host.stop()

    def _on_loaded(self, name: str) -> None:
        self.model_name = name
        self.model_label.setText(name)
        self._update_controls()

    def _on_token(self, text: str) -> None:
        if self.busy:
            self._answer.append(text)
            self.transcript.append_text(text)

    def _on_finished(self, summary: dict) -> None:
        self.busy = False
        text = "".join(self._answer)
        if summary["finish_reason"] == "stopped":
            self.transcript.add_note("stopped")
        elif summary["finish_reason"] == "length":
            self.transcript.add_note("cut at the length limit")
        # A stopped answer stays in the history: the user saw it, so the model should too.
        self.history.append({"role": "assistant", "content": text})
        self.stats_label.setText(format_stats(summary))
        self._update_controls()

    def _on_failed(self, message: str, details: str) -> None:
        if self.busy:
            self.busy = False
            self.transcript.add_error(message)
            # The failed turn leaves the history so the next request is well formed; the text goes back
            # into the box to be sent again.
            turn = self.history.pop()
            if not self.prompt.toPlainText().strip():
                self.prompt.setPlainText(turn["content"])
            self.stats_label.setText("")
        elif self.model_name is None:
            self.model_label.setText("No model loaded")
        self._update_controls()
        if self._on_error:
            self._on_error("Engine error", message, details)
        else:
            dialogs.show_error(self, "Engine error", message, details)

    def _update_controls(self) -> None:
        ready = self.model_name is not None
        self.send_button.setEnabled(ready and not self.busy)
        self.stop_button.setEnabled(self.busy)

    def closeEvent(self, event: QCloseEvent) -> None:
        self.host.shutdown()
        super().closeEvent(event)
