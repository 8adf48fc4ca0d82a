"""The stats dock: ring buffers fed by step events, plots redrawn by a timer rather than per token."""

from dataclasses import asdict

import numpy as np
import pytest
from app_fakes import PROMPT, FakeBackend, recorded_events, subspec_events
from PySide6.QtCore import Qt

from app.stats import REDRAW_MS, RingBuffer, StatsDock, StepStats
from engine.events import StepEvent


def test_the_ring_buffer_keeps_the_newest_values_in_order():
    buf = RingBuffer(4)
    assert len(buf) == 0 and buf.values().tolist() == []
    for v in range(3):
        buf.append(v)
    assert buf.values().tolist() == [0, 1, 2]
    for v in range(3, 10):
        buf.append(v)
    assert len(buf) == 4 and buf.values().tolist() == [6, 7, 8, 9]
    snapshot = buf.values()
    buf.append(10)
    assert snapshot.tolist() == [6, 7, 8, 9]  # a copy: a plot's data does not move under it
    buf.clear()
    assert buf.values().tolist() == []


def test_step_stats_from_subspec_events():
    stats = StepStats()
    for ev in subspec_events(accepted=(2, 0, 3)):
        stats.add(asdict(ev))
    # Steps after the prefill accept 2, 0, then the last 2 tokens (1 accepted + the target's own).
    assert stats.iteration.values().tolist() == [1, 2, 3]
    assert stats.accepted.values().tolist() == [3, 1, 2]
    assert np.allclose(stats.tau.values(), [3, 2, 2])
    assert np.allclose(stats.tokens_per_s.values(), [300, 200, 200])  # tokens over the steps' 10 ms each
    assert stats.summary() == "τ 2.00 · 200.0 tok/s · 3 steps · depth 48"


def test_plain_decoding_has_tau_one():
    stats = StepStats()
    for ev in recorded_events():
        stats.add(asdict(ev))
    assert len(stats.accepted) == 7 and set(stats.accepted.values()) == {1}
    assert stats.tau.values()[-1] == 1.0
    assert stats.depth is None and "depth" not in stats.summary() and "plain" not in stats.summary()


def auto_depth_events(depths):
    """SubSpec passes of the given tree depths (auto depth picks one per pass; 0 is a plain pass, which
    still verifies the root), one token accepted per deep pass."""
    out = [StepEvent(0, (1,), "a", prefill_ms=20.0, step_ms=20.0)]
    for i, depth in enumerate(depths, 1):
        accepted = 1 if depth else 0
        out.append(StepEvent(i, tuple(range(accepted + 1)), "b" * (accepted + 1), accepted=accepted,
                             tree_nodes=1 + depth * 6, depth=depth, step_ms=10.0,
                             finish_reason="eos" if i == len(depths) else None))
    return out


def test_the_summary_shows_the_depth_of_the_latest_pass():
    stats = StepStats()
    for ev in auto_depth_events([12, 0]):
        stats.add(asdict(ev))
    assert stats.depth == 0 and stats.summary().endswith(" · 2 steps · plain pass")
    stats.add(asdict(auto_depth_events([3, 12])[2]))
    assert stats.depth == 12 and stats.summary().endswith(" · 3 steps · depth 12")
    stats.reset(baseline=50.0)
    assert stats.depth is None
    stats.add(asdict(auto_depth_events([12])[1]))
    assert stats.summary().endswith(" · 1 steps · depth 12 · 4.0x plain")


@pytest.mark.parametrize("depths, shown", [([4, 12], "depth 12"), ([12, 0], "plain pass")])
def test_the_dock_shows_the_depth_auto_depth_used(qtbot, make_window, depths, shown):
    window = make_window(FakeBackend(events=lambda: auto_depth_events(depths),
                                     capabilities={"cuda": True, "subspec": True}))
    with qtbot.waitSignal(window.host.finished, timeout=5000):
        qtbot.keyClicks(window.prompt, PROMPT)
        qtbot.keyClick(window.prompt, Qt.Key.Key_Return)
    qtbot.waitUntil(lambda: window.stats_dock.summary.text().endswith(" · " + shown), timeout=2000)
    assert "latest pass" in window.stats_dock.summary.toolTip()


@pytest.fixture
def dock(qtbot):
    d = StatsDock()
    qtbot.addWidget(d)
    d.show()  # (a dock off screen does not redraw)
    return d


def test_steps_do_not_redraw_the_timer_does(qtbot, dock, monkeypatch):
    drawn = []
    for curve in dock.curves:
        monkeypatch.setattr(curve, "setData", lambda *a, drawn=drawn: drawn.append(a))
    dock.begin_answer()
    for i in range(1, 2001):  # far more steps than a redraw interval could hold
        dock.add_step({"iteration": i, "token_ids": (1, 2), "accepted": 1, "step_ms": 5.0})
    assert dock.redraws == 0 and drawn == []  # not one redraw while the events came in
    assert dock.timer.isActive() and dock.timer.interval() == REDRAW_MS
    qtbot.waitUntil(lambda: dock.redraws == 1, timeout=2000)
    assert len(drawn) == 4  # one setData per plot, with the whole buffer
    x, y = drawn[0]
    assert drawn[3][1].tolist() == []  # no plain speed measured: no speedup series
    assert x.tolist() == list(range(977, 2001)) and set(y.tolist()) == {2}
    assert dock.summary.text() == "τ 2.00 · 400.0 tok/s · 2000 steps"
    qtbot.waitUntil(lambda: not dock.timer.isActive(), timeout=2000)  # idle: the timer stops
    assert dock.redraws == 1


def test_the_window_feeds_the_dock_from_step_events(qtbot, make_window):
    window = make_window(FakeBackend(events=subspec_events))
    window.method.toggle.setChecked(True)
    with qtbot.waitSignal(window.host.finished, timeout=5000):
        qtbot.keyClicks(window.prompt, PROMPT)
        qtbot.keyClick(window.prompt, Qt.Key.Key_Return)
    stats = window.stats_dock.stats
    assert stats.accepted.values().tolist() == [3, 1, 2, 2][: stats.steps] and stats.steps == 3
    assert window.stats_dock.redraws <= 3  # a few timer ticks, not one per step
    x, y = window.stats_dock.curves[0].getData()
    assert x.tolist() == [1, 2, 3] and y.tolist() == [3, 1, 2]  # all of it at the answer's end, not a tick later
    assert window.stats_dock.summary.text().endswith("3 steps · depth 48")

    with qtbot.waitSignal(window.host.finished, timeout=5000):  # a new answer starts a fresh plot
        qtbot.keyClicks(window.prompt, "again")
        qtbot.keyClick(window.prompt, Qt.Key.Key_Return)
    assert stats.iteration.values().tolist() == [1, 2, 3]


def test_a_dock_off_screen_does_not_redraw_and_catches_up_when_shown(qtbot, dock):
    """Painting the plots is most of the GUI thread's work while an answer streams: none of it while the
    dock is closed or behind another tab."""
    dock.hide()
    dock.begin_answer()
    for i in range(1, 50):
        dock.add_step({"iteration": i, "token_ids": (1, 2), "accepted": 1, "step_ms": 5.0})
    qtbot.wait(3 * REDRAW_MS)
    assert dock.redraws == 0 and not dock.timer.isActive()
    dock.show()
    qtbot.waitUntil(lambda: dock.redraws == 1, timeout=2000)
    assert dock.curves[0].getData()[0].tolist() == list(range(1, 50))


def test_axis_ranges_move_in_steps_not_every_redraw(qtbot, dock, monkeypatch):
    """A range change repaints the axes, the costliest part of a plot: the x range grows in powers of two
    (a short answer still fills the plot) and the y range only moves when its round ceiling does."""
    from app.stats import CAPACITY, X_CHUNK, ceiling, x_range

    assert [ceiling(v) for v in (0, 1.2, 1.6, 2.5, 7, 9.9, 10, 23, 260)] == [1.5, 1.5, 2, 3, 8, 10, 10, 30, 300]
    assert [x_range(1, last, False) for last in (1, 7, 8, 9, 100)] == [(0, 8), (0, 8), (0, 8), (0, 16), (0, 128)]
    assert x_range(977, 2000, True) == (960, 960 + CAPACITY + X_CHUNK)  # a full buffer's window slides
    changes = []
    for plot in dock.plots:
        monkeypatch.setattr(plot, "setXRange", lambda *a, **k: changes.append(a))
        monkeypatch.setattr(plot, "setYRange", lambda *a, **k: changes.append(a))
    dock.begin_answer()
    rng = np.random.default_rng(0)
    for i in range(1, 301):
        dock.add_step({"iteration": i, "token_ids": (1,) * int(rng.integers(1, 4)), "accepted": 1,
                       "step_ms": float(rng.uniform(20, 30))})
        dock._redraw()  # a redraw per step: the worst case
    assert dock.redraws == 300
    assert len(changes) <= 2 * 4 * 12  # per plot: each power of two (about 6), a few ceilings; not 300
