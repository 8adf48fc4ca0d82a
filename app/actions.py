"""The row of actions under the transcript (redo the last turn, compare speeds) and the edit-mode line."""

from __future__ import annotations

from PySide6.QtWidgets import QHBoxLayout, QLabel, QPushButton, QWidget

from . import theme


def _button(text: str, tip: str) -> QPushButton:
    b = QPushButton(text)
    b.setToolTip(tip)
    b.setFlat(True)
    b.setMinimumWidth(40)  # may be squeezed (text clipped) rather than force a wide window
    return b


class ChatActions(QWidget):
    def __init__(self, parent=None):
        super().__init__(parent)
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
        layout = QHBoxLayout()
        layout.setContentsMargins(0, 0, 0, 0)
        for b in self.buttons():
            layout.addWidget(b)
        layout.addStretch()
        layout.addWidget(self.edit_label)
        self.setLayout(layout)

    def buttons(self) -> list[QPushButton]:
        return [self.regenerate, self.edit, self.edit_answer, self.continue_, self.compare]
