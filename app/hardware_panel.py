"""The Hardware dock: this machine's GPUs, CPU and RAM (refreshed live), VRAM and RAM graphs, measured link
and matmul speeds, and the planner's layout for the loaded model, with a reserve slider and a resident-layers
override and a context length that "Reload" applies to the loaded model.

The plan is engine.planner.make_plan over the model's config.json and the profile, the same call
`subspec plan` makes; it is pure arithmetic (about a millisecond), so it runs on the GUI thread. Probing and
measuring run on the hardware thread (app.hardware_host), and so does sampling memory for the graphs: the
GUI thread only asks, at most one reading outstanding, and only while the dock is visible.
"""

from __future__ import annotations

import json

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtWidgets import (QComboBox, QDockWidget, QFormLayout, QGroupBox, QHBoxLayout, QLabel,
                               QProgressBar, QPushButton, QScrollArea, QSlider, QSpinBox, QVBoxLayout, QWidget)

from engine.errors import SubspecError

from . import hardware_text as text
from . import theme
from .hardware_graphs import MemoryGraphs
from .hardware_host import HardwareHost, MemorySampler, Prober

REFRESH_MS = 2000
SAMPLE_BUSY_MS = 250  # memory readings while the engine loads or answers: what the graphs are for
SAMPLE_IDLE_MS = 1000
CONTEXT = 4096  # `subspec plan`'s default, so the panel and the CLI agree for the same inputs on a GPU
CONTEXTS = (2048, 4096, 8192, 16384, 32768, 65536, 131072)  # the context box's choices, up to the model's
RESERVE_STEP_GB = 0.25
RESERVE_MAX_GB = 4.0
DEFAULT_RESERVE_GB = 0.5  # make_plan's and `subspec plan`'s default
AUTO = -1  # the resident-layers spin box's "let the planner choose"


LOAD_OPTIONS_KEY = "load_options"  # QSettings: {model as asked for: the options it was last loaded with}
MAX_REMEMBERED = 64  # models whose load options are kept (the most recently loaded)


def load_options_for(settings, model: str) -> dict | None:
    """The options `model` was last loaded with (what app.backend.TorchBackend takes), or None; a value a
    hand-edited file garbled is left out, as if never chosen."""
    saved = _all_load_options(settings).get(model)
    if not isinstance(saved, dict):
        return None
    checks = {"reserve_gb": lambda v: isinstance(v, (int, float)) and 0 <= v <= RESERVE_MAX_GB,
              "resident_layers": lambda v: isinstance(v, int) and v >= 0,
              "context": lambda v: isinstance(v, int) and v >= 1}
    return {k: v for k, v in saved.items() if k in checks and not isinstance(v, bool) and checks[k](v)}


def _all_load_options(settings) -> dict:
    """The saved {model: options}; a file that garbled it reads as none saved."""
    try:
        saved = json.loads(str(settings.value(LOAD_OPTIONS_KEY, "{}")))
    except ValueError:
        return {}
    return saved if isinstance(saved, dict) else {}


def save_load_options(settings, model: str, options: dict) -> None:
    saved = _all_load_options(settings)
    saved.pop(model, None)
    saved[model] = dict(options)  # last: the most recent, kept when the oldest go
    settings.setValue(LOAD_OPTIONS_KEY, json.dumps(dict(list(saved.items())[-MAX_REMEMBERED:])))


def forget_load_options(settings, model: str) -> None:
    saved = _all_load_options(settings)
    if saved.pop(model, None) is not None:
        settings.setValue(LOAD_OPTIONS_KEY, json.dumps(saved))


def _label(rich: bool = False) -> QLabel:
    label = QLabel()
    label.setWordWrap(True)
    label.setTextFormat(Qt.TextFormat.RichText if rich else Qt.TextFormat.PlainText)
    label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    return label


class HardwareDock(QDockWidget):
    # Reload the loaded model with these load options ({"resident_layers": N, "reserve_gb": R}, each only
    # when it differs from the default); the window keeps the conversation.
    reload_requested = Signal(object)

    def __init__(self, parent=None, prober: Prober | None = None, sampler: MemorySampler | None = None):
        super().__init__("Hardware", parent)
        self.setObjectName("hardware")  # saveState needs a name
        self._prober = prober
        self._sampler = sampler
        self.host: HardwareHost | None = None  # started on first show: most sessions never open the panel
        self.profile: dict | None = None
        self.model_name: str | None = None
        self.config = None  # engine.config.ModelConfig of the loaded model
        self.load_profile: dict | None = None  # what the engine planned the load from, when it says
        self.loaded_options: dict = {}  # what the loaded model was asked to load with (load_options())
        self.loaded_resident: int | None = None  # decoder layers on the device as loaded, when the engine says
        self.load_notes: list[str] = []
        self.plan = None
        self.plan_error = ""
        self.engine_busy = False
        # The context the user picked: loads ask for it even where a model's own is shorter (the box then
        # shows that model's), so the next longer model gets it again. None: the default.
        self.wanted_context: int | None = None
        # (model, resident layers as loaded, method) -> this session's tok/s: a reload with another layout
        # starts a new column, since the plan's prediction changed with it.
        self.measured: dict[tuple[str, int | None, str], list[float]] = {}
        self._build()
        self.timer = QTimer(self)
        self.timer.setInterval(REFRESH_MS)
        self.timer.timeout.connect(self.refresh)
        self.sample_timer = QTimer(self)
        self.sample_timer.setInterval(SAMPLE_IDLE_MS)
        self.sample_timer.timeout.connect(self.sample)
        self.visibilityChanged.connect(self._on_visibility)

    def _build(self) -> None:
        body = QWidget()
        layout = QVBoxLayout(body)
        layout.setContentsMargins(4, 4, 4, 4)

        gpu_group = QGroupBox("GPUs")
        self.gpu_layout = QVBoxLayout(gpu_group)
        self.gpu_labels: list[QLabel] = []
        self.gpu_bars: list[QProgressBar] = []
        self.no_gpu_label = _label()
        theme.set_tone(self.no_gpu_label, "muted")
        self.no_gpu_label.setText("Probing the hardware …")
        self.gpu_layout.addWidget(self.no_gpu_label)
        layout.addWidget(gpu_group)

        system = QGroupBox("System")
        system_layout = QVBoxLayout(system)
        self.cpu_label, self.ram_label, self.measured_label = _label(), _label(), _label()
        self.draft_label = _label()  # which kernels a draft runs on here (fused on CUDA with Triton)
        self.measure_status = _label()
        theme.set_tone(self.measure_status, "warning")
        self.measure_status.hide()
        self.measure_button = QPushButton("Measure")
        self.measure_button.setToolTip("Time host-to-device copies and a bf16 matmul on the GPU (a few seconds); "
                                       "the result is kept for this machine and used by the plan")
        self.measure_button.clicked.connect(self.measure)
        for w in (self.cpu_label, self.ram_label, self.measured_label, self.draft_label):
            system_layout.addWidget(w)
        row = QHBoxLayout()
        row.addWidget(self.measure_button)
        row.addWidget(self.measure_status, 1)
        system_layout.addLayout(row)
        layout.addWidget(system)

        memory = QGroupBox("Memory")
        memory_layout = QVBoxLayout(memory)
        self.graphs = MemoryGraphs()
        memory_layout.addWidget(self.graphs)
        layout.addWidget(memory)

        self.plan_group = QGroupBox("Plan")
        plan_layout = QVBoxLayout(self.plan_group)
        self.reserve_slider = QSlider(Qt.Orientation.Horizontal)
        self.reserve_slider.setAccessibleName("VRAM reserve")
        self.reserve_slider.setRange(0, round(RESERVE_MAX_GB / RESERVE_STEP_GB))
        self.reserve_slider.setValue(round(DEFAULT_RESERVE_GB / RESERVE_STEP_GB))
        self.reserve_slider.setToolTip("VRAM kept free for other programs (desktop, browser)")
        self.reserve_slider.valueChanged.connect(self._replan)
        self.reserve_label = QLabel()
        self.resident_spin = QSpinBox()
        self.resident_spin.setAccessibleName("Resident layers")
        self.resident_spin.setRange(AUTO, 0)
        self.resident_spin.setSpecialValueText("auto")
        self.resident_spin.setToolTip("Force how many decoder layers stay in VRAM in full precision (the last ones, "
                                      "where an exact layer aligns the draft most); checked against the budget")
        self.resident_spin.valueChanged.connect(self._replan)
        self.context_box = QComboBox()
        self.context_box.setAccessibleName("Context length")
        self.context_box.setToolTip("Tokens the model keeps in view, prompt and answer together: on a GPU its KV "
                                    "cache is planned for this many, and a longer context takes VRAM from "
                                    "resident layers. A longer conversation leaves out its oldest turns")
        self._fill_contexts()
        self.context_box.currentIndexChanged.connect(self._replan)
        self.context_box.activated.connect(self._context_picked)
        self.apply_button = QPushButton("Reload")
        self.apply_button.setToolTip("Load the model again with this reserve, these resident layers and this "
                                     "context; the conversation stays")
        self.apply_button.clicked.connect(self.apply)
        controls = QFormLayout()
        reserve_row = QHBoxLayout()
        reserve_row.addWidget(self.reserve_slider, 1)
        reserve_row.addWidget(self.reserve_label)
        controls.addRow("Reserve", reserve_row)
        resident_row = QHBoxLayout()
        resident_row.addWidget(self.resident_spin, 1)
        resident_row.addWidget(self.apply_button)
        controls.addRow("Resident layers", resident_row)
        controls.addRow("Context", self.context_box)
        plan_layout.addLayout(controls)
        self.plan_note = _label()
        theme.set_tone(self.plan_note, "muted")
        plan_layout.addWidget(self.plan_note)
        self.error_label = _label()
        theme.set_tone(self.error_label, "error")
        self.error_label.hide()
        plan_layout.addWidget(self.error_label)
        self.plan_form = QFormLayout()
        self.plan_values: dict[str, QLabel] = {}
        for key, _ in text.plan_rows(_EMPTY_PLAN):
            self.plan_values[key] = _label()
            self.plan_form.addRow(key, self.plan_values[key])
        self.plan_values["VRAM"].setObjectName("memory")
        plan_layout.addLayout(self.plan_form)
        self.speeds_label = _label(rich=True)
        plan_layout.addWidget(self.speeds_label)
        self.reasons_label = _label(rich=True)
        plan_layout.addWidget(self.reasons_label)
        layout.addWidget(self.plan_group)
        layout.addStretch()

        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setWidget(body)
        self.setWidget(scroll)
        self._replan()

    # Probing

    def _ensure_host(self) -> HardwareHost:
        if self.host is None:
            self.host = HardwareHost(self._prober, self, self._sampler)
            self.host.profile.connect(self.set_profile)
            self.host.sampled.connect(self.graphs.add_reading)
            self.host.failed.connect(self._on_failed)
        return self.host

    def _on_visibility(self, visible: bool) -> None:
        # Probing only while someone can see it: NVML calls are cheap, not free, and wake the GPU's driver.
        if visible:
            self.refresh()
            self.sample()
            self.timer.start()
            self.sample_timer.start()
        else:
            self.timer.stop()
            self.sample_timer.stop()

    def refresh(self) -> None:
        self._ensure_host().refresh()

    def sample(self) -> None:
        self._ensure_host().sample()  # skipped while the last reading is still out

    def measure(self) -> None:
        self.measure_status.setText("Measuring … (a few seconds)")
        self.measure_status.show()
        self.measure_button.setEnabled(False)
        self._ensure_host().measure()

    def _on_failed(self, kind: str, message: str) -> None:
        if kind == "sample":
            self.graphs.summary.setText(message)
            return
        self.measure_status.setText(message)
        self.measure_status.show()
        self._update_measure_button()

    def set_profile(self, profile: dict) -> None:
        was_measuring = self.measure_status.text().startswith("Measuring")
        self.profile = profile
        self._show_gpus(profile)
        self.cpu_label.setText(text.cpu_text(profile))
        self.ram_label.setText(text.ram_text(profile))
        self.measured_label.setText(text.measured_text(profile))
        self.draft_label.setText(text.draft_text(profile))
        self.draft_label.setVisible(bool(self.draft_label.text()))
        if was_measuring and not (self.host and self.host.measuring):
            self.measure_status.hide()
        self._update_measure_button()
        self._replan()

    def _show_gpus(self, profile: dict) -> None:
        gpus = profile.get("gpus") or []
        if len(gpus) != len(self.gpu_labels):  # rebuilt only when a GPU comes or goes, not every refresh
            for w in self.gpu_labels + self.gpu_bars:
                self.gpu_layout.removeWidget(w)
                w.deleteLater()
            self.gpu_labels = [_label(rich=True) for _ in gpus]
            self.gpu_bars = [QProgressBar() for _ in gpus]
            for label, bar in zip(self.gpu_labels, self.gpu_bars):
                bar.setRange(0, 100)
                bar.setFormat("VRAM %p% used")
                self.gpu_layout.addWidget(label)
                self.gpu_layout.addWidget(bar)
        for gpu, label, bar in zip(gpus, self.gpu_labels, self.gpu_bars):
            label.setText(text.gpu_html(gpu))
            bar.setValue(text.used_percent(gpu))
        self.no_gpu_label.setVisible(not gpus)
        if not gpus:
            self.no_gpu_label.setText(text.no_gpu_text(profile))

    def set_engine_busy(self, busy: bool) -> None:
        """A measurement while the model decodes (or loads) would time the contention, not the hardware."""
        self.engine_busy = busy
        self.sample_timer.setInterval(SAMPLE_BUSY_MS if busy else SAMPLE_IDLE_MS)
        self._update_measure_button()
        self._update_apply_button()

    def _update_measure_button(self) -> None:
        cuda = bool(self.profile and (self.profile.get("cuda") or {}).get("available"))
        measuring = bool(self.host and self.host.measuring)
        self.measure_button.setEnabled(cuda and not measuring and not self.engine_busy)

    # The plan

    def set_model(self, info: dict | None) -> None:
        """`info`: app.worker.describe_model's {"name", "config" (config.json as a dict, or None),
        "profile" (what the load planned from, or None), "options" (what the load was asked for),
        "resident_layers" (as loaded, or None), "notes"}; None while no model is loaded (a load keeps the
        reserve, a new model starts from "auto" layers)."""
        from engine.config import ModelConfig

        info = info or {}
        self.model_name = info.get("name")
        self.load_profile = info.get("profile")
        self.loaded_options = dict(info.get("options") or {})
        self.loaded_resident = info.get("resident_layers")
        self.load_notes = list(info.get("notes") or [])
        self.config, self.plan_error = None, ""
        if info.get("config") is not None:
            try:
                self.config = ModelConfig.from_dict(info["config"])
            except SubspecError as exc:
                self.plan_error = str(exc)
        # The controls show what the model was loaded with, so the plan shown is the one it runs.
        forced = self.loaded_options.get("resident_layers")
        widgets = (self.resident_spin, self.reserve_slider, self.context_box)
        for w in widgets:
            w.blockSignals(True)  # one replan below, not one per change
        self.resident_spin.setRange(AUTO, self.config.num_layers if self.config else 0)
        self.resident_spin.setValue(AUTO if forced is None else forced)
        if info:
            reserve = self.loaded_options.get("reserve_gb", DEFAULT_RESERVE_GB)
            self.reserve_slider.setValue(round(reserve / RESERVE_STEP_GB))
            self._fill_contexts(self.loaded_options.get("context"))
            self.wanted_context = self.loaded_options.get("context")  # what this load asked for
        for w in widgets:
            w.blockSignals(False)
        self._replan()

    def reserve_gb(self) -> float:
        return self.reserve_slider.value() * RESERVE_STEP_GB

    def _model_context(self) -> int:
        return self.config.max_position_embeddings if self.config else CONTEXTS[-1]

    def default_context(self) -> int:
        return min(CONTEXT, self._model_context())

    def _fill_contexts(self, chosen: int | None = None) -> None:
        """The choices up to the model's own context (which is one of them), `chosen` (or the default)
        selected; a loaded context that is none of them is added."""
        limit = self._model_context()
        chosen = min(chosen or self.default_context(), limit)  # (carried over from a model with a longer one)
        values = sorted({c for c in CONTEXTS if c < limit} | {limit, chosen})
        self.context_box.clear()
        for value in values:
            label = f"{value // 1024}k tokens" if value % 1024 == 0 else f"{value:,} tokens"
            self.context_box.addItem(label + (" (the model's)" if value == limit else ""), value)
        self.context_box.setCurrentIndex(values.index(chosen))

    def _on_cpu(self) -> bool:
        profile = self.planning_profile()
        return profile is not None and not (profile.get("cuda") or {}).get("available")

    def _context_picked(self, _index: int) -> None:
        self.wanted_context = self.context_box.currentData()

    def asked_context(self) -> int:
        """What a load asks for: the user's pick (which the box shows cut to a shorter model's own context;
        that load's plan cuts it too, and says so), else the box's default."""
        return self.wanted_context or self.context()

    def context(self) -> int:
        """The box's choice; on a CPU the model's own context, which a CPU load always has."""
        if self._on_cpu():
            return self._model_context()
        value = self.context_box.currentData()
        return int(value) if value else self.default_context()

    def resident_override(self) -> int | None:
        value = self.resident_spin.value()
        return None if value == AUTO else value

    def planning_profile(self) -> dict | None:
        """The live profile; but once the engine has loaded the model, the free VRAM it planned from (the
        model itself now fills the card), with the live profile's speeds (measured since, perhaps)."""
        if self.load_profile is None or self.profile is None:
            return self.load_profile or self.profile
        return {**self.load_profile, "cuda": self.profile.get("cuda"), "measured": self.profile.get("measured")}

    def plan_arguments(self) -> dict:
        """make_plan's keyword arguments besides the config and the profile: what a test replays."""
        return {"reserve_gb": self.reserve_gb(), "context": self.context(), "resident_layers": self.resident_override()}

    def load_options(self) -> dict:
        """What a load should be asked for (app.backend.TorchBackend's keyword arguments): only what differs
        from the defaults, so a plain load stays a plain load."""
        options = {}
        if self.reserve_slider.value() != round(DEFAULT_RESERVE_GB / RESERVE_STEP_GB):
            options["reserve_gb"] = self.reserve_gb()
        if self.resident_override() is not None:
            options["resident_layers"] = self.resident_override()
        if self.asked_context() != self.default_context() and not self._on_cpu():
            options["context"] = self.asked_context()
        return options

    def pending_reload(self) -> bool:
        """Whether the controls ask for another layout than the loaded one (and it fits). The reserve and the
        context only count on a GPU: a CPU load plans no memory (its context is the model's)."""
        if self.config is None or self.model_name is None or self.plan is None:
            return False
        wanted, loaded = self.load_options(), dict(self.loaded_options)
        if self.plan.device != "cuda":
            for key in ("reserve_gb", "context"):
                wanted.pop(key, None)
                loaded.pop(key, None)
        return wanted != loaded

    def apply(self) -> None:
        if self.pending_reload() and not self.engine_busy:
            self.reload_requested.emit(self.load_options())

    def _update_apply_button(self) -> None:
        self.apply_button.setEnabled(self.pending_reload() and not self.engine_busy)

    def _replan(self) -> None:
        from engine.planner import make_plan

        self.reserve_label.setText(f"{self.reserve_gb():.2f} GB")
        profile = self.planning_profile()
        self.plan = None
        if self.config is not None and profile is not None:
            self.plan_error = ""
            try:
                self.plan = make_plan(self.config, profile, **self.plan_arguments())
            except SubspecError as exc:  # PlanError included: shown inline, the override stays editable
                self.plan_error = str(exc)
        self._show_plan()

    def _show_plan(self) -> None:
        name = self.model_name or "no model"
        self.plan_group.setTitle(f"Plan for {name}")
        if self.config is None:
            note = "Load a model to see its plan." if not self.plan_error else ""
        elif self.planning_profile() is None:
            note = "Waiting for the hardware probe …"
        else:
            lines = []
            if self.loaded_resident is not None:
                lines.append(f"Loaded with {self.loaded_resident} of {self.config.num_layers} layers resident.")
            if self.load_profile is not None:
                lines.append("Budget from the free VRAM when the model was loaded.")
            note = " ".join(lines + self.load_notes)
        self.plan_note.setText(note)
        self.plan_note.setVisible(bool(note))
        self.error_label.setText(self.plan_error)
        self.error_label.setVisible(bool(self.plan_error))
        rows = dict(text.plan_rows(self.plan)) if self.plan else {}
        memory_key = "RAM" if self.plan and self.plan.device == "cpu" else "VRAM"
        self.plan_form.labelForField(self.plan_values["VRAM"]).setText(memory_key)
        for key, label in self.plan_values.items():
            label.setText(rows.get(memory_key if key == "VRAM" else key, "—"))
        self.reasons_label.setText(text.reasons_html(self.plan) if self.plan else "")
        # A CPU load plans no memory: its context is the model's own, which the box shows, greyed out.
        cpu = self._on_cpu()
        self.context_box.setEnabled(not cpu)
        if cpu and self.context_box.count():
            blocked = self.context_box.blockSignals(True)
            self.context_box.setCurrentIndex(self.context_box.count() - 1)
            self.context_box.blockSignals(blocked)
        self._show_speeds()
        self._update_apply_button()

    # Predicted against measured

    def add_answer(self, summary: dict) -> None:
        """One finished answer's stats (the worker's summary): its tok/s counts for its model and method."""
        if summary.get("finish_reason") == "stopped" or not summary.get("new_tokens"):
            return  # a stopped or empty answer's speed says little
        key = (summary.get("model") or self.model_name, self.loaded_resident, summary.get("method", "vanilla"))
        self.measured.setdefault(key, []).append(float(summary.get("tokens_per_s") or 0.0))
        self._show_speeds()

    def measured_for_model(self) -> dict[str, list[float]]:
        """This session's speeds for the loaded model in its loaded layout, by method."""
        return {method: runs for (model, resident, method), runs in self.measured.items()
                if model == self.model_name and resident == self.loaded_resident}

    def _show_speeds(self) -> None:
        if self.plan is None:
            self.speeds_label.setText("")
            return
        cells = "".join(f"<tr><td>{m}</td><td align='right'>{p}</td><td align='right'>{s}</td></tr>"
                        for m, p, s in text.speed_rows(self.plan, self.measured_for_model()))
        self.speeds_label.setText("<table cellspacing='6'><tr><th></th><th>Predicted</th>"
                                  f"<th>Measured here</th></tr>{cells}</table>")

    def shutdown(self) -> None:
        self.timer.stop()
        self.sample_timer.stop()
        self.graphs.timer.stop()
        if self.host is not None:
            self.host.shutdown()


class _EmptyPlan:
    """Stands in for a Plan to list the form's row labels before any plan exists."""

    substitute_bits, device, method = (), "cuda", ""
    resident_layers = offloaded_layers = slots = depth = topk = nodes = kv_length = prefill_pass_tokens = 0
    predicted_vram_bytes = predicted_host_bytes = budget_bytes = 0
    predicted_tokens_per_s = predicted_tau = speedup = 0.0


_EMPTY_PLAN = _EmptyPlan()
