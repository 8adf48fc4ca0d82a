"""The model menu in the toolbar. The worker lists the store and loads; this only shows and asks."""

from __future__ import annotations

from PySide6.QtCore import QObject, Signal
from PySide6.QtWidgets import QComboBox, QLabel, QSizePolicy, QToolBar

NONE = "(no model)"


class ModelPicker(QObject):
    chosen = Signal(str)  # the user picked another model

    def __init__(self, toolbar: QToolBar):
        super().__init__(toolbar)
        self.combo = QComboBox()
        self.combo.setToolTip("Model (from the store; add one in the Models panel or with "
                              "`subspec models import PATH`)")
        self.combo.setMinimumContentsLength(18)
        self.combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.combo.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Fixed)
        toolbar.addWidget(QLabel(" Model "))
        toolbar.addWidget(self.combo)
        self.current: str | None = None  # the loaded model
        self._names: list[str] = []
        # `activated` fires on a user's pick only, never on the programmatic changes made below.
        self.combo.activated.connect(self._activated)
        self._fill()

    def names(self) -> list[str]:
        return [self.combo.itemText(i) for i in range(self.combo.count())]

    def set_models(self, names: list[str]) -> None:
        self._names = list(names)
        self._fill()

    def set_current(self, name: str | None) -> None:
        self.current = name
        self._fill()

    def _fill(self) -> None:
        names = list(self._names)
        if self.current and self.current not in names:
            names.insert(0, self.current)  # a model opened from a folder, outside the store
        self.combo.blockSignals(True)
        try:
            self.combo.clear()
            self.combo.addItems(names or [NONE])
            if self.current in names:
                self.combo.setCurrentText(self.current)
            elif names:
                self.combo.setCurrentIndex(-1)  # nothing loaded: no name pretends to be
        finally:
            self.combo.blockSignals(False)

    def _activated(self, index: int) -> None:
        name = self.combo.itemText(index)
        if name and name != NONE and name != self.current:
            self.chosen.emit(name)
