"""The Hardware dock: this machine's GPUs, CPU and RAM (refreshed live), measured link and matmul speeds,
and the planner's layout for the loaded model, with a reserve slider and a resident-layers override.

The plan is engine.planner.make_plan over the model's config.json and the profile, the same call
`subspec plan` makes; it is pure arithmetic (about a millisecond), so it runs on the GUI thread. Probing and
measuring run on the hardware thread (app.hardware_host).
"""

from __future__ import annotations

from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import (QDockWidget, QFormLayout, QGroupBox, QHBoxLayout, QLabel, QProgressBar,
                               QPushButton, QScrollArea, QSlider, QSpinBox, QVBoxLayout, QWidget)

from engine.errors import SubspecError

from . import hardware_text as text
from .hardware_host import HardwareHost, Prober

REFRESH_MS = 2000
CONTEXT = 4096  # `subspec plan`'s default, so the panel and the CLI agree for the same inputs
RESERVE_STEP_GB = 0.25
RESERVE_MAX_GB = 4.0
DEFAULT_RESERVE_GB = 0.5  # make_plan's and `subspec plan`'s default
AUTO = -1  # the resident-layers spin box's "let the planner choose"


def _label(rich: bool = False) -> QLabel:
    label = QLabel()
    label.setWordWrap(True)
    label.setTextFormat(Qt.TextFormat.RichText if rich else Qt.TextFormat.PlainText)
    label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    return label


class HardwareDock(QDockWidget):
    def __init__(self, parent=None, prober: Prober | None = None):
        super().__init__("Hardware", parent)
        self.setObjectName("hardware")  # saveState needs a name
        self._prober = prober
        self.host: HardwareHost | None = None  # started on first show: most sessions never open the panel
        self.profile: dict | None = None
        self.model_name: str | None = None
        self.config = None  # engine.config.ModelConfig of the loaded model
        self.load_profile: dict | None = None  # what the engine planned the load from, when it says
        self.plan = None
        self.plan_error = ""
        self.engine_busy = False
        self.measured: dict[tuple[str, str], list[float]] = {}  # (model, method) -> this session's tok/s
        self._build()
        self.timer = QTimer(self)
        self.timer.setInterval(REFRESH_MS)
        self.timer.timeout.connect(self.refresh)
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
        self.no_gpu_label.setStyleSheet("color: #555;")
        self.no_gpu_label.setText("Probing the hardware …")
        self.gpu_layout.addWidget(self.no_gpu_label)
        layout.addWidget(gpu_group)

        system = QGroupBox("System")
        system_layout = QVBoxLayout(system)
        self.cpu_label, self.ram_label, self.measured_label = _label(), _label(), _label()
        self.measure_status = _label()
        self.measure_status.setStyleSheet("color: #8a6d00;")
        self.measure_status.hide()
        self.measure_button = QPushButton("Measure")
        self.measure_button.setToolTip("Time host-to-device copies and a bf16 matmul on the GPU (a few seconds); "
                                       "the result is kept for this machine and used by the plan")
        self.measure_button.clicked.connect(self.measure)
        for w in (self.cpu_label, self.ram_label, self.measured_label):
            system_layout.addWidget(w)
        row = QHBoxLayout()
        row.addWidget(self.measure_button)
        row.addWidget(self.measure_status, 1)
        system_layout.addLayout(row)
        layout.addWidget(system)

        self.plan_group = QGroupBox("Plan")
        plan_layout = QVBoxLayout(self.plan_group)
        self.reserve_slider = QSlider(Qt.Orientation.Horizontal)
        self.reserve_slider.setRange(0, round(RESERVE_MAX_GB / RESERVE_STEP_GB))
        self.reserve_slider.setValue(round(DEFAULT_RESERVE_GB / RESERVE_STEP_GB))
        self.reserve_slider.setToolTip("VRAM kept free for other programs (desktop, browser)")
        self.reserve_slider.valueChanged.connect(self._replan)
        self.reserve_label = QLabel()
        self.resident_spin = QSpinBox()
        self.resident_spin.setRange(AUTO, 0)
        self.resident_spin.setSpecialValueText("auto")
        self.resident_spin.setToolTip("Force how many decoder layers stay in VRAM; checked against the budget")
        self.resident_spin.valueChanged.connect(self._replan)
        controls = QFormLayout()
        reserve_row = QHBoxLayout()
        reserve_row.addWidget(self.reserve_slider, 1)
        reserve_row.addWidget(self.reserve_label)
        controls.addRow("Reserve", reserve_row)
        controls.addRow("Resident layers", self.resident_spin)
        plan_layout.addLayout(controls)
        self.plan_note = _label()
        self.plan_note.setStyleSheet("color: #555;")
        plan_layout.addWidget(self.plan_note)
        self.error_label = _label()
        self.error_label.setStyleSheet("color: #b00020;")
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
            self.host = HardwareHost(self._prober, self)
            self.host.profile.connect(self.set_profile)
            self.host.failed.connect(self._on_failed)
        return self.host

    def _on_visibility(self, visible: bool) -> None:
        # Probing only while someone can see it: NVML calls are cheap, not free, and wake the GPU's driver.
        if visible:
            self.refresh()
            self.timer.start()
        else:
            self.timer.stop()

    def refresh(self) -> None:
        self._ensure_host().refresh()

    def measure(self) -> None:
        self.measure_status.setText("Measuring … (a few seconds)")
        self.measure_status.show()
        self.measure_button.setEnabled(False)
        self._ensure_host().measure()

    def _on_failed(self, kind: str, message: str) -> None:
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
        self._update_measure_button()

    def _update_measure_button(self) -> None:
        cuda = bool(self.profile and (self.profile.get("cuda") or {}).get("available"))
        measuring = bool(self.host and self.host.measuring)
        self.measure_button.setEnabled(cuda and not measuring and not self.engine_busy)

    # The plan

    def set_model(self, info: dict | None) -> None:
        """`info`: {"name", "config" (config.json as a dict, or None), "profile" (what the load planned
        from, or None)}; None while no model is loaded."""
        from engine.config import ModelConfig

        info = info or {}
        self.model_name = info.get("name")
        self.load_profile = info.get("profile")
        self.config, self.plan_error = None, ""
        if info.get("config") is not None:
            try:
                self.config = ModelConfig.from_dict(info["config"])
            except SubspecError as exc:
                self.plan_error = str(exc)
        self.resident_spin.blockSignals(True)  # one replan below, not one per range change
        self.resident_spin.setRange(AUTO, self.config.num_layers if self.config else 0)
        self.resident_spin.setValue(AUTO)
        self.resident_spin.blockSignals(False)
        self._replan()

    def reserve_gb(self) -> float:
        return self.reserve_slider.value() * RESERVE_STEP_GB

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
        return {"reserve_gb": self.reserve_gb(), "context": CONTEXT, "resident_layers": self.resident_override()}

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
        elif self.load_profile is not None:
            note = "Budget from the free VRAM when the model was loaded."
        else:
            note = ""
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
        self._show_speeds()

    # Predicted against measured

    def add_answer(self, summary: dict) -> None:
        """One finished answer's stats (the worker's summary): its tok/s counts for its model and method."""
        if summary.get("finish_reason") == "stopped" or not summary.get("new_tokens"):
            return  # a stopped or empty answer's speed says little
        key = (summary.get("model") or self.model_name, summary.get("method", "vanilla"))
        self.measured.setdefault(key, []).append(float(summary.get("tokens_per_s") or 0.0))
        self._show_speeds()

    def measured_for_model(self) -> dict[str, list[float]]:
        return {method: runs for (model, method), runs in self.measured.items() if model == self.model_name}

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
        if self.host is not None:
            self.host.shutdown()


class _EmptyPlan:
    """Stands in for a Plan to list the form's row labels before any plan exists."""

    substitute_bits, device, method = (), "cuda", ""
    resident_layers = offloaded_layers = slots = depth = topk = nodes = kv_length = 0
    predicted_vram_bytes = predicted_host_bytes = budget_bytes = 0
    predicted_tokens_per_s = predicted_tau = speedup = 0.0


_EMPTY_PLAN = _EmptyPlan()
