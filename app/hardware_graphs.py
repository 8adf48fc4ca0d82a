"""Live VRAM and RAM graphs for the Hardware dock: readings (app.hardware_host.MemorySampler) go into ring
buffers; a ~20 Hz timer redraws, and only when a reading arrived since the last redraw, as app.stats does.
"""

from __future__ import annotations

from html import escape

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import QLabel, QVBoxLayout, QWidget

from . import theme
from .hardware_text import GIB, gib
from .stats import RingBuffer, style_plot

REDRAW_MS = 50
PLOT_HEIGHT = 110
CAPACITY = 480  # two minutes of readings at the busy rate (app.hardware_panel.SAMPLE_BUSY_MS)
PROCESS, SYSTEM = "this app", "system"
RAM_SERIES = {PROCESS: 3, SYSTEM: 7}  # which of the appearance's graph colors (app.theme) each RAM line takes


def gpu_color(index: int) -> str:
    series = theme.colors().series
    return series[index % len(series)]


def ram_color(name: str) -> str:
    return theme.colors().series[RAM_SERIES[name]]


class Series:
    """One line: (time, GiB) pairs in two ring buffers, so a GPU that shows up late has its own x values."""

    def __init__(self, capacity: int):
        self.t = RingBuffer(capacity)
        self.gib = RingBuffer(capacity)

    def append(self, t: float, nbytes: int) -> None:
        self.t.append(t)
        self.gib.append(nbytes / GIB)


class MemoryHistory:
    """The readings as plottable series: VRAM used per GPU (keyed by NVML index), and RAM used by this
    process and by the whole system. Plain numpy, no Qt, so a test can check the numbers directly."""

    def __init__(self, capacity: int = CAPACITY):
        self.capacity = capacity
        self.vram: dict[int, Series] = {}
        self.vram_total: dict[int, int] = {}
        self.ram: dict[str, Series] = {PROCESS: Series(capacity), SYSTEM: Series(capacity)}
        self.ram_total = 0
        self.latest: dict | None = None

    def add(self, reading: dict) -> None:
        t = float(reading["t"])
        for gpu in reading.get("gpus") or []:
            index = int(gpu["index"])
            self.vram.setdefault(index, Series(self.capacity)).append(t, gpu["used_bytes"])
            self.vram_total[index] = int(gpu["total_bytes"])
        self.ram[PROCESS].append(t, reading["process_bytes"])
        self.ram[SYSTEM].append(t, reading["ram_used_bytes"])
        self.ram_total = int(reading["ram_total_bytes"])
        self.latest = reading

    def points(self, series: Series) -> tuple[np.ndarray, np.ndarray]:
        """x: seconds relative to the newest reading (<= 0), so the graph scrolls left as time passes."""
        now = float(self.latest["t"]) if self.latest else 0.0
        return series.t.values() - now, series.gib.values()

    def summary_parts(self) -> list[tuple[str | None, str]]:
        """(line color or None, words) for the newest reading: the graphs' legend, with the numbers."""
        r = self.latest
        if r is None:
            return [(None, "Waiting for the first reading …")]
        parts = [(gpu_color(g["index"]), f"GPU {g['index']}: {gib(g['used_bytes'])} of {gib(g['total_bytes'])} VRAM")
                 for g in r["gpus"]]
        parts.append((ram_color(SYSTEM), f"RAM: {gib(r['ram_used_bytes'])} of {gib(r['ram_total_bytes'])} used"))
        parts.append((ram_color(PROCESS), f"{gib(r['process_bytes'])} by this app"))
        return parts

    def summary(self) -> str:
        return " · ".join(words for _color, words in self.summary_parts())

    def summary_html(self) -> str:
        return "<br>".join((f"<span style='color:{color}'>&#9632;</span> " if color else "") + escape(words)
                           for color, words in self.summary_parts())


def _plot(title: str) -> pg.PlotWidget:
    widget = pg.PlotWidget()
    style_plot(widget, title)
    widget.showGrid(x=True, y=True, alpha=0.2)
    widget.setMenuEnabled(False)
    widget.setMouseEnabled(x=False, y=False)
    widget.setFixedHeight(PLOT_HEIGHT)  # the dock scrolls; a plot stretched to fill it says nothing more
    return widget


class MemoryGraphs(QWidget):
    def __init__(self, parent=None, capacity: int = CAPACITY):
        super().__init__(parent)
        self.history = MemoryHistory(capacity)
        self.redraws = 0
        self._dirty = False
        self.summary = QLabel(self.history.summary_html())  # the legend too: a colored mark per line
        self.summary.setTextFormat(Qt.TextFormat.RichText)
        self.summary.setWordWrap(True)
        self.vram_plot = _plot("VRAM used (GiB) vs seconds")
        self.vram_plot.hide()  # until a reading has a GPU: a CPU-only machine shows RAM alone
        self.ram_plot = _plot("RAM used (GiB) vs seconds")
        self.vram_curves: dict[int, pg.PlotDataItem] = {}
        self.ram_curves = {name: self.ram_plot.plot(pen=pg.mkPen(ram_color(name), width=1.5))
                           for name in RAM_SERIES}
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.summary)
        layout.addWidget(self.vram_plot)
        layout.addWidget(self.ram_plot)
        self.timer = QTimer(self)
        self.timer.setInterval(REDRAW_MS)
        self.timer.timeout.connect(self._redraw)
        theme.notifier.changed.connect(self._restyle)

    def _restyle(self, _colors=None) -> None:
        for widget in (self.vram_plot, self.ram_plot):
            style_plot(widget)
        for index, curve in self.vram_curves.items():
            curve.setPen(pg.mkPen(gpu_color(index), width=1.5))
        for name, curve in self.ram_curves.items():
            curve.setPen(pg.mkPen(ram_color(name), width=1.5))
        self.summary.setText(self.history.summary_html())  # its legend marks

    def add_reading(self, reading: dict) -> None:
        self.history.add(reading)
        self._dirty = True
        if not self.timer.isActive():
            self.timer.start()

    def _redraw(self) -> None:
        if not self._dirty:
            self.timer.stop()  # idle: no wake-ups until the next reading
            return
        self._dirty = False
        self.redraws += 1
        history = self.history
        for index, series in history.vram.items():
            if index not in self.vram_curves:
                self.vram_curves[index] = self.vram_plot.plot(pen=pg.mkPen(gpu_color(index), width=1.5))
            self.vram_curves[index].setData(*history.points(series))
        self.vram_plot.setVisible(bool(history.vram))
        if history.vram_total:
            self.vram_plot.setYRange(0, max(history.vram_total.values()) / GIB, padding=0.02)
        for name, curve in self.ram_curves.items():
            curve.setData(*history.points(history.ram[name]))
        # VRAM to the card's size: how full it is is the point. RAM to a bit above what was used, capped at
        # the total: this app's few GiB would be a flat line at the bottom of a 64 GiB scale.
        peak = max((float(s.gib.values().max()) for s in history.ram.values() if len(s.gib)), default=0.0)
        if history.ram_total:
            self.ram_plot.setYRange(0, min(history.ram_total / GIB, max(peak * 1.25, 1.0)), padding=0.02)
        span = max((-float(s.t.values()[0]) + float(history.latest["t"]) for s in
                    [*history.vram.values(), *history.ram.values()] if len(s.t)), default=0.0)
        for plot in (self.vram_plot, self.ram_plot):
            plot.setXRange(-max(span, 10.0), 0, padding=0)
        self.summary.setText(history.summary_html())
