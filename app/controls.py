"""Toolbar controls: the decoding method (plain or SubSpec, with the tree's depth and width, and auto depth)
and the conversation's sampling preset."""

from __future__ import annotations

import json

from PySide6.QtCore import QObject, Signal
from PySide6.QtWidgets import (QCheckBox, QComboBox, QDoubleSpinBox, QFormLayout, QLabel, QLineEdit, QMenu,
                               QPlainTextEdit, QSpinBox, QToolBar, QToolButton, QWidget, QWidgetAction)

from .conversations import DECODING_DEFAULTS

PRESETS = {"greedy": (0.0, 1.0), "balanced": (0.7, 0.9), "creative": (1.0, 0.95)}
CUSTOM = "custom"
DEFAULT_PRESET = "greedy"  # lossless decoding is easiest to check, and fastest, when it is greedy
# The settings behind "More" and their defaults (off, and the answer length the app always had): the
# conversation's. Presets leave them alone (they set temperature and top-p).
MORE_DEFAULTS = {name: DECODING_DEFAULTS[name] for name in ("top_k", "min_p", "repetition_penalty",
                                                            "penalty_last_n", "max_new_tokens", "seed", "stop",
                                                            "answer_format", "answer_schema")}
FORMAT_LABELS = {"text": "Text", "json": "JSON object", "schema": "JSON schema"}
RANDOM_SEED = -1  # the seed box's "new for each answer"
MAX_SEED = 2**31 - 1  # a QSpinBox holds an int32
STOP_ESCAPES = {"n": "\n", "t": "\t", "\\": "\\", ",": ","}
MAX_ANSWER_TOKENS = 1 << 17  # the box's top; the model's context bounds an answer anyway
DEFAULT_DEPTH, DEFAULT_WIDTH = 48, 6
# Fresh settings measure the depth (engine.depth_control); a tree saved before auto depth existed keeps the
# fixed depth it had, so nothing changes under a user's feet.
DEFAULT_AUTO = True
DEPTH_TIP = "Draft tree depth: draft steps per target pass"
AUTO_MEANING = "the deepest tree; each pass picks the depth that measured fastest, plain decoding included"
MAX_DEPTH_TIP = f"Draft tree depth, up to: {AUTO_MEANING}"
AUTO_TIP = (f"Auto depth: the depth box is {AUTO_MEANING}. What it measured is kept while the model stays "
            f"loaded, so later answers start from it")


def parse_stops(text: str) -> tuple[str, ...]:
    """The stop strings typed in the "More" menu: separated by commas, each trimmed of the spaces around it;
    \\n is a new line, \\t a tab, \\, a comma and \\\\ a backslash (a new line or a comma is a common stop
    string: "\\n\\n, User:" stops at a blank line or at "User:"). A backslash before anything else is kept."""
    stops, part, escaped = [], [], False
    for ch in text:
        if escaped:
            part.append(STOP_ESCAPES.get(ch, "\\" + ch))
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == ",":
            stops.append(part)
            part = []
        else:
            part.append(ch)
    if escaped:
        part.append("\\")
    stops.append(part)
    # Trim the typed spaces around each, not the escaped white space inside (a stop of "\\n" is a new line).
    out = []
    for chars in stops:
        joined = "".join(chars)
        if joined.strip(" "):
            out.append(joined.strip(" "))
    return tuple(dict.fromkeys(out))


def preset_for(temperature: float, top_p: float) -> str:
    for name, values in PRESETS.items():
        if abs(values[0] - temperature) < 1e-6 and abs(values[1] - top_p) < 1e-6:
            return name
    return CUSTOM


def _spin(minimum: float, maximum: float, step: float, tip: str) -> QDoubleSpinBox:
    box = QDoubleSpinBox()
    box.setRange(minimum, maximum)
    box.setSingleStep(step)
    box.setDecimals(2)
    box.setToolTip(tip)
    return box


class ThinkingSwitch(QObject):
    """"Think": whether a reasoning model whose chat template has the switch (Qwen3's enable_thinking)
    thinks before it answers. Shown only for such a model; kept across starts (on: the model's default)."""

    def __init__(self, toolbar: QToolBar, settings):
        super().__init__(toolbar)
        self.settings = settings
        self.box = QCheckBox("Think")
        self.box.setToolTip("Let the model think before it answers (its thinking folds above the answer). Off: "
                            "it answers at once, shorter and sooner")
        self.box.setChecked(str(settings.value("thinking", "true")).lower() != "false")
        self.box.toggled.connect(lambda on: self.settings.setValue("thinking", "true" if on else "false"))
        self.action = toolbar.addWidget(self.box)
        self.available = False
        self.apply_capabilities({})

    def apply_capabilities(self, caps: dict) -> None:
        self.available = bool(caps.get("thinking"))
        self.action.setVisible(self.available)

    def params(self) -> dict:
        return {"thinking": self.box.isChecked()} if self.available else {}


class MethodControls(QObject):
    """The SubSpec toggle and the tree shape. Off, and disabled, until a model says it can draft."""

    changed = Signal()  # params() may differ now

    def __init__(self, toolbar: QToolBar):
        super().__init__(toolbar)
        # A check box rather than a checkable tool button: its state reads at a glance.
        self.toggle = QCheckBox("SubSpec")
        self.toggle.setToolTip("Lossless speculative decoding with the substitute draft "
                               "(the draft is built on first use)")
        self.depth = QSpinBox()
        self.depth.setAccessibleName("Draft tree depth")
        self.depth.setRange(1, 256)
        self.depth.setValue(DEFAULT_DEPTH)
        self.depth.setToolTip("Draft tree depth: draft steps per target pass")
        self.width = QSpinBox()
        self.width.setAccessibleName("Draft tree width")
        self.width.setRange(1, 32)
        self.width.setValue(DEFAULT_WIDTH)
        self.width.setToolTip("Draft tree width: nodes kept per draft step")
        self.auto = QCheckBox("Auto depth")
        self.auto.setToolTip(AUTO_TIP)
        self.auto.setChecked(DEFAULT_AUTO)
        toolbar.addWidget(self.toggle)
        self._depth_label = QLabel(" Depth ")
        self._width_label = QLabel(" Width ")
        for widget in (self.auto, self._depth_label, self.depth, self._width_label, self.width):
            toolbar.addWidget(widget)
        self.toggle.toggled.connect(self._sync_enabled)
        self.auto.toggled.connect(self._sync_auto)
        self.depth.valueChanged.connect(self.changed)
        self.width.valueChanged.connect(self.changed)
        self._sync_auto(emit=False)
        self.apply_capabilities({"cuda": False, "subspec": False})

    def apply_capabilities(self, caps: dict) -> None:
        self.toggle.setEnabled(bool(caps.get("subspec")))
        # On a CPU the draft is as slow as the target, so plain decoding is the sensible default there.
        self.toggle.setChecked(bool(caps.get("subspec") and caps.get("cuda")))
        self._sync_enabled()

    def _sync_enabled(self) -> None:
        on = self.toggle.isEnabled() and self.toggle.isChecked()
        for widget in (self.auto, self._depth_label, self.depth, self._width_label, self.width):
            widget.setEnabled(on)
        self.changed.emit()

    def _sync_auto(self, _checked=None, emit: bool = True) -> None:
        """With auto depth the depth box is an upper bound: its label and tooltip say so."""
        auto = self.auto.isChecked()
        self._depth_label.setText(" Depth ≤ " if auto else " Depth ")
        for widget in (self._depth_label, self.depth):
            widget.setToolTip(MAX_DEPTH_TIP if auto else DEPTH_TIP)
        if emit:
            self.changed.emit()

    def params(self) -> dict:
        if self.toggle.isEnabled() and self.toggle.isChecked():
            return {"method": "subspec", **self.tree()}
        return {"method": "vanilla"}

    def tree(self) -> dict:
        """The tree settings whether or not SubSpec is on (what is saved, and what a comparison runs)."""
        return {"depth": self.depth.value(), "width": self.width.value(), "auto": self.auto.isChecked()}

    def set_tree(self, tree: dict) -> None:
        """Shows saved tree settings. A tree saved before auto depth existed has no "auto": it stays a
        fixed-depth tree."""
        self.depth.setValue(_bounded(tree.get("depth", DEFAULT_DEPTH), self.depth))
        self.width.setValue(_bounded(tree.get("width", DEFAULT_WIDTH), self.width))
        auto = tree.get("auto", False)
        self.auto.setChecked(auto is True or auto in (1, "true"))  # ("no" is a true string)

    def save(self, settings, key: str = "decoding") -> None:
        """Into QSettings, as JSON (an INI file would hand booleans back as strings)."""
        settings.setValue(key, json.dumps(self.tree()))

    def restore(self, settings, key: str = "decoding") -> None:
        """From QSettings; nothing saved (or something unreadable) keeps the defaults: auto depth on."""
        try:
            tree = json.loads(settings.value(key) or "null")
        except (TypeError, ValueError):
            return
        if isinstance(tree, dict):
            try:
                self.set_tree(tree)
            except (TypeError, ValueError, OverflowError):
                pass


def _bounded(value, box) -> int:
    """A saved number for a spin box, clamped to its range (an edited settings file may say 1e999)."""
    number = float(value)  # TypeError/ValueError: unreadable, left to the caller
    if number != number:
        raise ValueError("NaN")
    return int(min(max(number, box.minimum()), box.maximum()))


class SamplingControls(QObject):
    """A preset menu and its two values (editing a value turns the preset into "custom"), and behind "More"
    the conversation's top-k, min-p, repetition penalty and its window, answer length, seed, stop strings and
    answer format (text, or JSON mode)."""

    changed = Signal()

    def __init__(self, toolbar: QToolBar):
        super().__init__(toolbar)
        self.preset = QComboBox()
        self.preset.setAccessibleName("Sampling preset")
        self.preset.addItems([*PRESETS, CUSTOM])
        self.preset.setToolTip("Sampling preset of this conversation")
        self.temperature = _spin(0.0, 2.0, 0.05, "Temperature (0: greedy)")
        self.top_p = _spin(0.01, 1.0, 0.05, "Top-p: sample from the smallest set of tokens this likely")
        self.temperature.setAccessibleName("Temperature")
        self.top_p.setAccessibleName("Top-p")
        self.more = self._more_menu()
        for widget in (QLabel(" Preset "), self.preset, QLabel(" Temp "), self.temperature,
                       QLabel(" Top-p "), self.top_p, self.more):
            toolbar.addWidget(widget)
        self._quiet = False
        self.preset.currentTextChanged.connect(self._preset_picked)
        self.temperature.valueChanged.connect(self._value_edited)
        self.top_p.valueChanged.connect(self._value_edited)
        for box in (self.top_k, self.min_p, self.repetition_penalty, self.penalty_last_n, self.max_new_tokens,
                    self.seed):
            box.valueChanged.connect(self._more_edited)
        self.stop.textChanged.connect(self._more_edited)
        self.answer_format.currentIndexChanged.connect(self._more_edited)
        self.answer_schema.textChanged.connect(self._more_edited)
        self.set_values(DEFAULT_PRESET, *PRESETS[DEFAULT_PRESET])

    def _more_menu(self) -> QToolButton:
        """A button whose menu holds the less used settings: the toolbar has no room for three more boxes."""
        self.top_k = QSpinBox()
        self.top_k.setRange(0, 1000)
        self.top_k.setSpecialValueText("off")
        self.top_k.setToolTip("Top-k: sample from the k likeliest tokens only (off: all)")
        self.min_p = _spin(0.0, 1.0, 0.01, "Min-p: drop tokens less likely than this fraction of the likeliest "
                                           "(off: none)")
        self.min_p.setSpecialValueText("off")
        self.repetition_penalty = _spin(0.5, 2.0, 0.05, "Repetition penalty: above 1, every token in the "
                                                        "penalty window is less likely (1: off; 1.1 is usual). "
                                                        "Applies to greedy answers too; SubSpec stays lossless")
        self.penalty_last_n = QSpinBox()
        self.penalty_last_n.setRange(0, MAX_ANSWER_TOKENS)
        self.penalty_last_n.setSingleStep(64)
        self.penalty_last_n.setSuffix(" tokens")
        self.penalty_last_n.setSpecialValueText("whole conversation")
        self.penalty_last_n.setToolTip("Penalty window: the repetition penalty looks at the conversation's last "
                                       "this many tokens (the prompt's included). Over a whole long "
                                       "conversation it would weigh on every common word")
        self.max_new_tokens = QSpinBox()
        self.max_new_tokens.setRange(16, MAX_ANSWER_TOKENS)
        self.max_new_tokens.setSingleStep(256)
        self.max_new_tokens.setSuffix(" tokens")
        self.max_new_tokens.setToolTip("Answer length: the most tokens an answer may have (Continue goes on from "
                                       "there). The model's context bounds it too: a conversation keeps at "
                                       "least half the context for itself")
        self.seed = QSpinBox()
        self.seed.setRange(RANDOM_SEED, MAX_SEED)
        self.seed.setSpecialValueText("new for each answer")
        self.seed.setToolTip("Seed of sampled answers: the same seed and settings give the same answer, with "
                             "SubSpec or plain decoding alike. Each sampled answer shows the seed it used")
        self.stop = QLineEdit()
        self.stop.setPlaceholderText("none")
        self.stop.setToolTip("Stop strings: the answer ends where one appears (it is not shown). Separate them "
                             "with commas; \\n is a new line, \\t a tab, \\, a comma: \\n\\n, User: stops at a "
                             "blank line or at User:")
        self.answer_format = QComboBox()
        for value, label in FORMAT_LABELS.items():
            self.answer_format.addItem(label, value)
        self.answer_format.setToolTip("JSON object: every answer is one JSON object (JSON mode: tokens that would "
                                      "break it are never chosen; ask for the keys you want in your message). "
                                      "JSON schema: every answer follows the schema below. SubSpec stays lossless")
        self.answer_schema = QPlainTextEdit()
        self.answer_schema.setPlaceholderText('{"type": "object", "properties": {"name": {"type": "string"}}, '
                                              '"required": ["name"]}')
        self.answer_schema.setToolTip("The JSON schema answers follow (type, properties, required, items, enum, "
                                      "$ref, anyOf ...); one this app cannot enforce is refused with the reason")
        self.answer_schema.setFixedHeight(90)
        self.answer_schema.setTabChangesFocus(True)
        for box, name in ((self.top_k, "Top-k"), (self.min_p, "Min-p"),
                          (self.repetition_penalty, "Repetition penalty"), (self.penalty_last_n, "Penalty window"),
                          (self.max_new_tokens, "Answer length"), (self.seed, "Seed"), (self.stop, "Stop strings"),
                          (self.answer_format, "Answer format"), (self.answer_schema, "JSON schema")):
            box.setAccessibleName(name)
        panel = QWidget()
        form = QFormLayout(panel)
        form.addRow("Top-k", self.top_k)
        form.addRow("Min-p", self.min_p)
        form.addRow("Repetition penalty", self.repetition_penalty)
        form.addRow("Penalty window", self.penalty_last_n)
        form.addRow("Answer length", self.max_new_tokens)
        form.addRow("Seed", self.seed)
        form.addRow("Stop strings", self.stop)
        form.addRow("Answer format", self.answer_format)
        form.addRow("JSON schema", self.answer_schema)
        self._schema_row = form
        button = QToolButton()
        button.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        button.setAccessibleName("More sampling settings")
        button.setToolTip("Top-k, min-p, repetition penalty and its window, answer length, seed, stop strings and "
                          "answer format of this conversation")
        menu = QMenu(button)
        action = QWidgetAction(menu)
        action.setDefaultWidget(panel)
        menu.addAction(action)
        button.setMenu(menu)
        return button

    def more_values(self) -> dict:
        return {"top_k": self.top_k.value(), "min_p": round(self.min_p.value(), 2),
                "repetition_penalty": round(self.repetition_penalty.value(), 2),
                "penalty_last_n": self.penalty_last_n.value(), "max_new_tokens": self.max_new_tokens.value(),
                "seed": self.seed.value(), "stop": self.stop.text(),
                "answer_format": self.answer_format.currentData(),
                "answer_schema": self.answer_schema.toPlainText()}

    def values(self) -> dict:
        return {"preset": self.preset.currentText(), "temperature": round(self.temperature.value(), 2),
                "top_p": round(self.top_p.value(), 2), **self.more_values()}

    def set_values(self, preset: str, temperature: float, top_p: float, **more) -> None:
        """Shows a conversation's settings without reporting them as edits; those of `more` (MORE_DEFAULTS'
        names) not given show their defaults."""
        if set(more) - set(MORE_DEFAULTS):
            raise TypeError(f"not a 'More' setting: {sorted(set(more) - set(MORE_DEFAULTS))}")
        more = {**MORE_DEFAULTS, **more}
        self._quiet = True
        try:
            self.temperature.setValue(temperature)
            self.top_p.setValue(top_p)
            self.preset.setCurrentText(preset if preset in (*PRESETS, CUSTOM) else CUSTOM)
            self.top_k.setValue(_bounded(more["top_k"], self.top_k))
            self.min_p.setValue(more["min_p"])
            self.repetition_penalty.setValue(more["repetition_penalty"])
            self.penalty_last_n.setValue(_bounded(more["penalty_last_n"], self.penalty_last_n))
            self.max_new_tokens.setValue(_bounded(more["max_new_tokens"], self.max_new_tokens))
            self.seed.setValue(_bounded(more["seed"], self.seed))
            self.stop.setText(str(more["stop"]))
            index = self.answer_format.findData(more["answer_format"])
            self.answer_format.setCurrentIndex(max(index, 0))
            if self.answer_schema.toPlainText() != str(more["answer_schema"]):
                self.answer_schema.setPlainText(str(more["answer_schema"]))
        finally:
            self._quiet = False
        self._label_more()

    def _label_more(self) -> None:
        """"More" says how many of its settings differ from their defaults, so that a penalty is not
        forgotten behind a closed menu. The penalty's window does nothing (and is not counted) without one."""
        values = self.more_values()
        penalized = values["repetition_penalty"] != 1.0
        self.penalty_last_n.setEnabled(penalized)
        schema = values["answer_format"] == "schema"
        self._schema_row.setRowVisible(self.answer_schema, schema)  # the schema box only where it applies
        on = sum(value != MORE_DEFAULTS[name] for name, value in values.items()
                 if (penalized or name != "penalty_last_n") and (schema or name != "answer_schema"))
        self.more.setText(f"More ({on})" if on else "More")
        self.more.setAccessibleName(f"More sampling settings ({on} changed)" if on else "More sampling settings")

    def _more_edited(self) -> None:
        self._label_more()
        if not self._quiet:
            self.changed.emit()

    def _preset_picked(self, name: str) -> None:
        if self._quiet:
            return
        if name in PRESETS:
            self._quiet = True
            try:
                self.temperature.setValue(PRESETS[name][0])
                self.top_p.setValue(PRESETS[name][1])
            finally:
                self._quiet = False
        self.changed.emit()

    def _value_edited(self) -> None:
        if self._quiet:
            return
        self._quiet = True
        try:
            self.preset.setCurrentText(preset_for(self.temperature.value(), self.top_p.value()))
        finally:
            self._quiet = False
        self.changed.emit()
