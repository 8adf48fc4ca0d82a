"""A long prompt is read (prefilled) for seconds before the first token, under offloading or on a CPU: the
stats line says how far the reading is, and Stop ends it there, as an answer stopped (no error), what was
read kept for the next answer (engine.errors.Stopped from the backend's prompt_progress)."""

import threading

from app_fakes import PROMPT, FakeBackend
from PySide6.QtCore import Qt

from engine.errors import prompt_reading
from engine.events import reading_text


class ReadingBackend(FakeBackend):
    """Reads a `total`-token prompt in eight steps before its answer, as TorchBackend's stream does through
    engine.generate.prefill's progress, and holds after step `hold_at` until `gate` is set."""

    stop_event = None  # set by the worker, as on TorchBackend
    prompt_progress = None

    def __init__(self, total=2048, hold_at=3, **kwargs):
        super().__init__(**kwargs)
        self.total, self.hold_at = total, hold_at
        self.release = threading.Event()
        self.held = threading.Event()

    def stream(self, messages, params):
        count, events = super().stream(messages, params)
        return count, self._read_then(events)

    def _read_then(self, events):
        progress = prompt_reading(self.stop_event, self.prompt_progress)
        step = self.total // 8
        for done in range(step, self.total + 1, step):
            progress(done, self.total)
            if done == self.hold_at * step:
                self.held.set()
                self.release.wait(5)
        yield from events


def _send(qtbot, window):
    qtbot.keyClicks(window.prompt, PROMPT)
    qtbot.keyClick(window.prompt, Qt.Key.Key_Return)


def test_the_stats_line_says_how_much_of_a_long_prompt_is_read(qtbot, make_window):
    backend = ReadingBackend()
    window = make_window(backend)
    _send(qtbot, window)
    assert backend.held.wait(5)
    qtbot.waitUntil(lambda: window.stats_label.text() == reading_text(768, 2048), timeout=5000)
    assert window.stats_label.text() == "reading the prompt: 37% (768 of 2,048 tokens) …"
    with qtbot.waitSignal(window.host.finished, timeout=5000) as done:
        backend.release.set()
    assert done.args[0]["finish_reason"] != "stopped" and done.args[0]["new_tokens"] > 0
    assert "reading the prompt" not in window.stats_label.text()


def test_stop_while_a_long_prompt_is_read_ends_the_answer_as_stopped(qtbot, make_window, dialogs):
    backend = ReadingBackend()
    window = make_window(backend)
    _send(qtbot, window)
    assert backend.held.wait(5)
    with qtbot.waitSignal(window.host.finished, timeout=5000) as done:
        window.stop()
        backend.release.set()  # the next step's progress sees the Stop
    summary = done.args[0]
    assert summary["finish_reason"] == "stopped" and summary["new_tokens"] == 0 and dialogs.shown == []
    assert summary["notes"] == ["stopped while the prompt was read (what was read is kept for the next answer)"]
    assert not window.busy and window.send_button.isEnabled()
    assert window.store.messages(window.conversation.id)[0].content == PROMPT  # the question stays


def test_a_short_prompt_shows_no_percentage(qtbot, make_window):
    backend = ReadingBackend(total=256)
    window = make_window(backend)
    seen = []
    with qtbot.waitSignal(window.host.prompt_progress, timeout=5000,
                          check_params_cb=lambda done, total: done == 96):  # the step it holds at
        _send(qtbot, window)
    seen.append(window.stats_label.text())
    with qtbot.waitSignal(window.host.finished, timeout=5000):
        backend.release.set()
    assert seen == ["generating …"]
