"""The row of actions under the transcript (redo the last turn, compare speeds) and the edit-mode line."""

from __future__ import annotations

from PySide6.QtWidgets import QLabel, QPushButton

from . import theme
from .overflow import OverflowRow


def _button(text: str, tip: str) -> QPushButton:
    b = QPushButton(text)
    b.setToolTip(tip)
    b.setFlat(True)
    return b


class ChatActions(OverflowRow):
    """In a narrow window the actions that do not fit wait in a "⋯" menu (app.overflow)."""

    def __init__(self, parent=None):
        self.regenerate = _button("↻ Regenerate", "Write the last answer again; the one it replaces stays as a "
                                                  "version (‹ › under the answer)")
        self.edit = _button("✎ Edit", "Edit your last message and send it again; the answer after "
                                           "it is replaced")
        self.edit_answer = _button("✎ Edit answer", "Rewrite the last answer (the model's stays as a version); "
                                                    "the model sees your text from then on")
        self.continue_ = _button("→ Continue", "Let the model go on writing its last answer")
        self.compare = _button("⚖ Compare",
                               "Compare with plain decoding: run the last prompt again, greedy, with "
                               "SubSpec and without, and show both speeds")
        self.edit_label = QLabel("Editing your last message · Esc cancels")
        theme.set_tone(self.edit_label, "warning")
        self.edit_label.hide()
        super().__init__(self.buttons(), trailing=self.edit_label, parent=parent)

    def buttons(self) -> list[QPushButton]:
        return [self.regenerate, self.edit, self.edit_answer, self.continue_, self.compare]
