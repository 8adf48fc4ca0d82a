"""Live decoding statistics: step events go into ring buffers; a 5 Hz timer redraws the plots.

A redraw per token would cost more than the token itself on a fast GPU (hundreds of steps a second), so
events only append to the buffers and mark them dirty; the timer runs only while there is news, and only
while the dock is on screen. Painting four plots costs tens of milliseconds (their axes most of it): at
20 Hz it took most of the GUI thread whatever the token rate, so the plots are redrawn 5 times a second,
their x range grows in powers of two (x_range) and their y range only changes when its ceiling does (a
range change repaints the axes).
"""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QDockWidget, QLabel, QVBoxLayout, QWidget

from . import theme

REDRAW_MS = 200
X_CHUNK = 64  # once the buffer is full, the x axis moves this many steps at a time
SPEEDUP_TITLE = "Speedup over plain"
CAPACITY = 1024  # the last this many decode steps are plotted


class RingBuffer:
    """A fixed-size float buffer: appends overwrite the oldest value once full."""

    def __init__(self, capacity: int = CAPACITY):
        self._data = np.zeros(capacity)
        self._count = 0

    def append(self, value: float) -> None:
        self._data[self._count % len(self._data)] = value
        self._count += 1

    def values(self) -> np.ndarray:
        """Oldest first (a copy, so a plot keeps its data when the buffer moves on)."""
        n = len(self._data)
        if self._count <= n:
            return self._data[: self._count].copy()
        start = self._count % n
        return np.concatenate((self._data[start:], self._data[:start]))

    def clear(self) -> None:
        self._count = 0

    def __len__(self) -> int:
        return min(self._count, len(self._data))


class StepStats:
    """One answer's numbers, per decode step (the prefill step only counts as the first token).

    Accepted length is the draft tokens accepted plus the target's own token, as in `summarize`'s tau;
    tok/s is decode tokens over the steps' own time, so it is independent of how late events arrive.
    Speedup is that tok/s over `baseline`, plain decoding's last measured tok/s for the model (None: no
    measurement yet, and no speedup series). `depth` is the draft tree depth of the latest SubSpec pass (0: a
    plain pass, which auto depth may choose), None while no SubSpec pass came."""

    def __init__(self, capacity: int = CAPACITY):
        self.iteration = RingBuffer(capacity)
        self.accepted = RingBuffer(capacity)
        self.tau = RingBuffer(capacity)
        self.tokens_per_s = RingBuffer(capacity)
        self.speedup = RingBuffer(capacity)
        self.reset()

    def reset(self, baseline: float | None = None) -> None:
        for buf in (self.iteration, self.accepted, self.tau, self.tokens_per_s, self.speedup):
            buf.clear()
        self.baseline = baseline if baseline and baseline > 0 else None
        self.steps = 0
        self.accepted_total = 0
        self.decode_tokens = 0
        self.decode_ms = 0.0
        self.depth: int | None = None

    def add(self, step: dict) -> None:
        if step["iteration"] == 0:
            return
        length = step["accepted"] + 1
        self.steps += 1
        self.accepted_total += length
        self.decode_tokens += len(step["token_ids"])
        self.decode_ms += step["step_ms"]
        # A SubSpec pass verifies at least its root (tree_nodes >= 1, depth 0 included); plain decoding's
        # steps carry no tree.
        if step.get("tree_nodes", 0) > 0:
            self.depth = int(step.get("depth", 0))
        self.iteration.append(step["iteration"])
        self.accepted.append(length)
        self.tau.append(self.accepted_total / self.steps)
        tps = self.decode_tokens / (self.decode_ms / 1e3) if self.decode_ms > 0 else 0.0
        self.tokens_per_s.append(tps)
        if self.baseline:
            self.speedup.append(tps / self.baseline)

    def summary(self) -> str:
        if not self.steps:
            return "No decode steps yet"
        text = (f"τ {self.tau.values()[-1]:.2f} · {self.tokens_per_s.values()[-1]:.1f} tok/s · "
                f"{self.steps} steps")
        if self.depth is not None:
            text += f" · {depth_text(self.depth)}"
        if self.baseline:
            text += f" · {self.speedup.values()[-1]:.1f}x plain"
        return text


def ceiling(value: float, floor: float = 1.5) -> float:
    """A round top for a y axis at least `value` (1, 1.5, 2, 3, 4, 5, 6, 8 times a power of ten): it stays
    put while the data moves a little."""
    value = max(value, floor)
    scale = 10 ** np.floor(np.log10(value))
    for step in (1, 1.5, 2, 3, 4, 5, 6, 8, 10):
        if step * scale >= value:
            return float(step * scale)
    return float(10 * scale)


def x_range(first: int, last: int, full: bool) -> tuple[float, float]:
    """The x axis (from, to) for steps `first`..`last`: from 0 to the next power of two (a short answer
    fills the plot; the range changes a few times per answer), or, once the ring buffer is `full`, its
    window with both ends on X_CHUNK steps."""
    if full:
        start = X_CHUNK * (first // X_CHUNK)
        return float(start), float(start + CAPACITY + X_CHUNK)
    return 0.0, float(max(8, 1 << (max(last, 1) - 1).bit_length()))


def depth_text(depth: int) -> str:
    """A SubSpec pass's tree depth as the panel shows it."""
    return f"depth {depth}" if depth > 0 else "plain pass"


DEPTH_TIP = ("depth N: the draft tree depth of the latest pass (with auto depth, each pass picks it); "
             "plain pass: the latest pass decoded without drafting")


def style_plot(widget: pg.PlotWidget, title: str | None = None) -> None:
    """Background, title and axis text in the appearance's colors (app.theme); `title`: a new one, else
    the plot's own again (after the appearance changed)."""
    c = theme.colors()
    widget.setBackground(c.plot_background)
    widget.setTitle(widget.plotItem.titleLabel.text if title is None else title, color=c.plot_text, size="9pt")
    for side in ("left", "bottom"):
        widget.getAxis(side).setTextPen(c.plot_text)


PLOT_SERIES = (0, 2, 3, 4)  # the four plots' line colors, as indexes into the appearance's graph colors


def _plot(title: str, series: int) -> tuple[pg.PlotWidget, pg.PlotDataItem]:
    widget = pg.PlotWidget()
    style_plot(widget, title)
    widget.showGrid(x=True, y=True, alpha=0.2)
    widget.setMenuEnabled(False)
    widget.setMouseEnabled(x=False, y=False)
    widget.setMinimumHeight(80)
    widget.plotItem.vb.disableAutoRange()  # set by the dock, in steps (an auto range moves every redraw)
    widget.setXRange(*x_range(1, 1, False), padding=0)
    widget.setYRange(0, ceiling(0), padding=0)
    curve = widget.plot(pen=pg.mkPen(theme.colors().series[series], width=1.5))
    return widget, curve


class StatsDock(QDockWidget):
    def __init__(self, parent=None):
        super().__init__("Decoding stats", parent)
        self.setObjectName("stats")  # saveState needs a name
        self.stats = StepStats()
        self.redraws = 0
        self._dirty = False
        self.summary = QLabel(self.stats.summary())
        self.summary.setContentsMargins(4, 2, 4, 2)
        self.summary.setWordWrap(True)  # a longer line must not widen the dock (and re-lay out the chat)
        self.summary.setToolTip(DEPTH_TIP)
        titles = ("Accepted length per step", "Running τ", "Decode tok/s", SPEEDUP_TITLE)
        plots = [_plot(title, series) for title, series in zip(titles, PLOT_SERIES)]
        self.plots = [widget for widget, _c in plots]
        self.curves = [curve for _w, curve in plots]
        layout = QVBoxLayout()
        layout.setContentsMargins(2, 2, 2, 2)
        layout.addWidget(self.summary)
        for widget, _curve in plots:
            layout.addWidget(widget, 1)
        body = QWidget()
        body.setLayout(layout)
        self.setWidget(body)
        self.timer = QTimer(self)
        self.timer.setInterval(REDRAW_MS)
        self.timer.timeout.connect(self._redraw)
        # Each plot's x from, x to, y top, as last set (set again only when one changes).
        self._ranges: list[tuple] = [(*x_range(1, 1, False), ceiling(0))] * len(self.plots)
        self.visibilityChanged.connect(self._on_visibility)
        theme.notifier.changed.connect(self._restyle)

    def _on_visibility(self, visible: bool) -> None:
        if visible and self._dirty:
            self.timer.start()  # what came while it was hidden (or behind another tab)

    def _restyle(self, _colors=None) -> None:
        for widget, curve, series in zip(self.plots, self.curves, PLOT_SERIES):
            style_plot(widget)
            curve.setPen(pg.mkPen(theme.colors().series[series], width=1.5))

    def begin_answer(self, baseline: float | None = None) -> None:
        """`baseline`: plain decoding's tok/s for this model, when measured, for the speedup plot."""
        self.stats.reset(baseline)
        title = SPEEDUP_TITLE if self.stats.baseline else SPEEDUP_TITLE + " (not measured yet)"
        style_plot(self.plots[3], title)
        self._mark_dirty()

    def add_step(self, step: dict) -> None:
        self.stats.add(step)
        self._mark_dirty()

    def flush(self) -> None:
        """Draws what is pending now (an answer's end: its last steps, not a tick later)."""
        if self._dirty:
            self._redraw()

    def _mark_dirty(self) -> None:
        self._dirty = True
        if not self.timer.isActive():
            self.timer.start()

    def _redraw(self) -> None:
        if not self._dirty or not self.isVisible():
            self.timer.stop()  # idle, or not on screen (shown again: _on_visibility): no wake-ups meanwhile
            return
        self._dirty = False
        self.redraws += 1
        x = self.stats.iteration.values()
        shown = x_range(int(x[0]), int(x[-1]), len(x) == CAPACITY) if len(x) else None
        series = (self.stats.accepted, self.stats.tau, self.stats.tokens_per_s, self.stats.speedup)
        for i, (plot, curve, buf) in enumerate(zip(self.plots, self.curves, series)):
            y = buf.values()
            if len(y) != len(x):  # no baseline for the speedup: nothing to draw
                x_, y = x[:0], y[:0]
            else:
                x_ = x
            curve.setData(x_, y)
            # From 0, so a flat tau of 1 does not fill the plot as if it were a big number.
            ranges = (*(shown or self._ranges[i][:2]), ceiling(float(y.max()) * 1.15 if len(y) else 0.0))
            if ranges != self._ranges[i]:
                plot.setXRange(ranges[0], ranges[1], padding=0)
                plot.setYRange(0, ranges[2], padding=0)
                self._ranges[i] = ranges
        self.summary.setText(self.stats.summary())
