"""Edit the last answer: the user rewrites what the model said (to steer what comes next, or to fix it and
let Continue go on from there). The answer as the model wrote it is kept as a version (‹ 1/2 ›), as
Regenerate keeps the one it replaces."""

from __future__ import annotations

from PySide6.QtWidgets import QDialog, QDialogButtonBox, QLabel, QPlainTextEdit, QVBoxLayout, QWidget



class AnswerEditDialog(QDialog):
    """The answer's text to edit; `result_text` holds what OK accepted (None: cancelled). OK stays on the
    dialog while the text is empty: an answer with nothing in it is what Regenerate is for."""

    def __init__(self, text: str, parent: QWidget | None = None):
        super().__init__(parent)
        self.setWindowTitle("Edit the answer")
        self.resize(640, 420)
        self.result_text: str | None = None
        self.editor = QPlainTextEdit(text)
        self.editor.setAccessibleName("Answer")
        self.note = QLabel("The model's answer stays as a version (‹ › under it). The model sees your text from "
                           "now on, and Continue goes on from its end.")
        self.note.setWordWrap(True)
        self.error = QLabel("")
        self.error.hide()
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self._accept)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        for widget in (self.note, self.editor, self.error, buttons):
            layout.addWidget(widget)
        self.editor.setFocus()

    def _accept(self) -> None:
        text = self.editor.toPlainText()
        if not text.strip():
            self.error.setText("An answer cannot be empty: Regenerate writes a new one.")
            self.error.show()
            return
        self.result_text = text
        self.accept()
