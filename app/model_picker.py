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
        self.combo.setAccessibleName("Model")
        self.combo.setToolTip("Model (from the store; add one in the Models panel or with "
                              "`subspec models import PATH`)")
        self.combo.setMinimumContentsLength(18)
        self.combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.combo.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Fixed)
        toolbar.addWidget(QLabel(" Model "))
        toolbar.addWidget(self.combo)
        self.current: str | None = None  # the loaded model
        self._names: list[str] = []
        # Models opened from a folder outside the store this session: their display name -> what loads them
        # (the folder's path). They stay in the menu after another model or an unload replaces them.
        self._opened: dict[str, str] = {}
        # `activated` fires on a user's pick only, never on the programmatic changes made below.
        self.combo.activated.connect(self._activated)
        self._fill()

    def names(self) -> list[str]:
        return [self.combo.itemText(i) for i in range(self.combo.count())]

    def set_models(self, names: list[str]) -> None:
        self._names = list(names)
        self._fill()

    def set_current(self, name: str | None, requested: str | None = None) -> None:
        """`requested`: what was asked to load `name` (a folder's path for a model outside the store)."""
        self.current = name
        if name and requested and requested != name:
            self._opened[name] = requested
        self._fill()

    def _fill(self) -> None:
        names = list(self._names)
        # Models opened from a folder, outside the store (the loaded one even without a path to load it by).
        outside = [n for n in [*self._opened, self.current] if n and n not in names]
        names[:0] = list(dict.fromkeys(outside))
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
            # A store model's name is what loads it; a folder's model by its path.
            self.chosen.emit(name if name in self._names else self._opened.get(name, name))
