"""The welcome dialog of the first interactive run: this machine's hardware (engine.hardware.probe), the
model recommended for it (app.recommend, through the planner) with its size and predicted speed, and that
the offline default model works right away.

Shown once: a marker file in the user config folder (app.paths.config_dir()) records that it was seen, and
Help > Welcome shows it again. app.main never shows it in a --screenshot run. The dialog is non-modal to
the event loop (open(), not exec()), and the probe, which imports torch (seconds), runs on its own thread:
the window paints and the default model loads while the dialog fills in.
"""

from __future__ import annotations

import datetime
import logging
import threading
from html import escape
from pathlib import Path
from typing import Callable

from PySide6.QtCore import QObject, Qt, Signal
from PySide6.QtWidgets import QDialog, QDialogButtonBox, QHBoxLayout, QLabel, QVBoxLayout, QWidget

from engine.store import DEFAULT_MODEL

from .dialogs import app_icon
from .hardware_text import cpu_text, gib, no_gpu_text, ram_text
from .paths import config_dir
from .recommend import MIN_TOKENS_PER_S, Recommendation, recommend

MARKER = "first-run-done"
log = logging.getLogger("subspec.app")
Prober = Callable[[], dict]


def marker_path() -> Path:
    return config_dir() / MARKER


def is_first_run() -> bool:
    return not marker_path().exists()


def mark_done() -> None:
    path = marker_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"welcome shown {datetime.datetime.now().isoformat(timespec='seconds')}\n")
    except OSError as exc:  # a read-only config folder costs a second welcome next time, nothing more
        log.warning("could not write %s: %s", path, exc)


def real_probe() -> dict:
    from engine import hardware

    return hardware.probe(measure=False)


# Words (plain functions: the tests read them against make_plan's numbers).


def hardware_html(profile: dict) -> str:
    gpus = profile.get("gpus") or []
    lines = [f"GPU {g.get('index', 0)}: {escape(str(g.get('name')))}, {gib(g.get('total_bytes'))} VRAM "
             f"({gib(g.get('free_bytes'))} free)" for g in gpus] or [escape(no_gpu_text(profile))]
    lines += [escape(cpu_text(profile)), escape(ram_text(profile))]
    return "<br>".join(lines)


def recommendation_html(rec: Recommendation | None) -> str:
    if rec is None:
        return (f"No larger model is predicted to reach {MIN_TOKENS_PER_S:g} tokens/s on this computer: "
                f"{DEFAULT_MODEL} is the one to use here.")
    plan = rec.plan
    head = (f"<b>{escape(rec.name)}</b> ({rec.parameters / 1e9:.1f}B parameters, "
            f"{gib(rec.size_bytes)} download)<br>")
    speed = f"predicted <b>{plan.predicted_tokens_per_s:.1f} tokens/s</b>"
    layers = plan.resident_layers + plan.offloaded_layers
    if plan.method == "subspec":
        how = (f"{speed} with SubSpec, {plan.speedup:.1f}x plain offloaded decoding: {plan.resident_layers} of "
               f"{layers} layers stay on the GPU, the others stream from RAM while their 4-bit substitutes "
               f"draft.")
    elif plan.device == "cuda":
        how = f"{speed}: the whole model fits in VRAM, with plain decoding."
    else:
        how = f"{speed} with plain decoding on the CPU."
    get = (f"<br>Download it from the <b>Models</b> panel (toolbar), or with "
           f"<code>subspec models download {escape(rec.repo)}</code>; downloads resume if interrupted.")
    return head + how[0].upper() + how[1:] + get


def default_html() -> str:
    return (f"<b>{DEFAULT_MODEL}</b> comes with the app and works right away, offline: it loads now (the very "
            f"first time it is unpacked into the model store, about 20 s). Type a message and press Enter.")


class _ProbeResult(QObject):
    """Carries the probe's answer from its thread to the GUI thread (a queued signal)."""

    done = Signal(object)
    failed = Signal(str)


class WelcomeDialog(QDialog):
    """With `profile` it shows that profile at once (tests pass fakes); without, it probes on a thread."""

    def __init__(self, parent: QWidget | None = None, profile: dict | None = None, prober: Prober | None = None):
        super().__init__(parent)
        self.setWindowTitle("Welcome to SubSpec Studio")
        self.setWindowIcon(app_icon())
        self.setMinimumWidth(560)
        self.profile: dict | None = None
        self.recommendation: Recommendation | None = None
        self.probed = False  # the probe answered (a profile or an error)

        icon = QLabel()
        icon.setPixmap(app_icon().pixmap(64, 64))
        icon.setAlignment(Qt.AlignmentFlag.AlignTop)
        title = QLabel("<h2>Welcome to SubSpec Studio</h2>Chat with language models larger than your GPU's "
                       "memory: the answers are exactly the model's own, only faster.")
        title.setWordWrap(True)
        top = QHBoxLayout()
        top.addWidget(icon)
        top.addWidget(title, 1)

        self.hardware = self._section("Detecting the hardware …")
        self.recommended = self._section("")
        self.recommended.setOpenExternalLinks(True)
        self.ready = self._section(default_html())
        buttons = QDialogButtonBox()
        self.start = buttons.addButton("Start chatting", QDialogButtonBox.ButtonRole.AcceptRole)
        buttons.accepted.connect(self.accept)

        layout = QVBoxLayout(self)
        layout.addLayout(top)
        for heading, label in (("This computer", self.hardware), ("Recommended for it", self.recommended),
                               ("Ready now", self.ready)):
            layout.addWidget(QLabel(f"<b>{heading}</b>"))
            layout.addWidget(label)
        layout.addStretch()
        layout.addWidget(buttons)

        self._result = _ProbeResult()
        self._result.done.connect(self.set_profile)
        self._result.failed.connect(self._probe_failed)
        if profile is not None:
            self.set_profile(profile)
        else:
            self._probe_thread(prober or real_probe)

    @staticmethod
    def _section(text: str) -> QLabel:
        label = QLabel(text)
        label.setWordWrap(True)
        label.setTextInteractionFlags(Qt.TextInteractionFlag.TextBrowserInteraction)
        label.setContentsMargins(12, 0, 0, 8)
        return label

    def _probe_thread(self, prober: Prober) -> None:
        result = self._result

        def run() -> None:
            try:
                profile = prober()
            except Exception as exc:  # noqa: BLE001 - the welcome still says the default model works
                log.exception("hardware probe failed")
                message = f"{type(exc).__name__}: {exc}"
                try:
                    result.failed.emit(message)
                except RuntimeError:  # the dialog (and its relay) is gone already
                    pass
                return
            try:
                result.done.emit(profile)
            except RuntimeError:
                pass

        threading.Thread(target=run, name="welcome-probe", daemon=True).start()

    def set_profile(self, profile: dict) -> None:
        self.probed = True
        self.profile = profile
        self.recommendation = recommend(profile)
        self.hardware.setText(hardware_html(profile))
        self.recommended.setText(recommendation_html(self.recommendation))
        self._fit()
        log.info("welcome: hardware %s; recommended %s", hardware_html(profile).replace("<br>", "; "),
                 self.recommendation.name if self.recommendation else "the default model")

    def _probe_failed(self, message: str) -> None:
        self.probed = True
        self.hardware.setText(f"The hardware probe failed ({escape(message)}).")
        self.recommended.setText(f"Without a hardware profile there is no recommendation: {DEFAULT_MODEL} "
                                 f"is the safe choice.")
        self._fit()

    def _fit(self) -> None:
        """Grow to the new text: a shown dialog keeps its size, and wrapped labels would be cut off."""
        layout = self.layout()
        layout.activate()
        height = layout.totalHeightForWidth(self.width())
        if height > self.height():
            self.resize(self.width(), height)


def show_welcome(parent: QWidget | None = None, prober: Prober | None = None) -> WelcomeDialog:
    """Open the dialog without blocking (the first run, Help > Welcome); the marker is written when it
    closes, so a run that crashes before then welcomes again."""
    dialog = WelcomeDialog(parent, prober=prober)
    dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
    dialog.finished.connect(lambda _code: mark_done())
    dialog.open()
    return dialog
