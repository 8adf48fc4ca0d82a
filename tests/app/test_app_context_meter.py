"""The status bar's context meter: the latest answer's prompt plus the answer against the context the
worker reports, kept with the answer so it shows again when the conversation is opened later."""

from app_fakes import PROMPT, FakeBackend, recorded_events
from PySide6.QtCore import Qt

from app.context_meter import context_usage


def send(qtbot, window, text=PROMPT):
    with qtbot.waitSignal(window.host.finished, timeout=5000) as blocker:
        qtbot.keyClicks(window.prompt, text)
        qtbot.keyClick(window.prompt, Qt.Key.Key_Return)
    return blocker.args[0]


def answer_tokens() -> int:
    return sum(len(ev.token_ids) for ev in recorded_events())


def test_the_meter_shows_prompt_and_answer_against_the_context(qtbot, make_window):
    limit = 400
    window = make_window(FakeBackend(context_limit=limit))
    meter = window.context_meter
    assert meter.isHidden()  # nothing said yet: nothing to measure
    summary = send(qtbot, window)
    used = summary["prompt_tokens"] + answer_tokens()
    assert summary["context_tokens"] == limit and summary["new_tokens"] == answer_tokens()
    assert not meter.isHidden() and (meter.value(), meter.maximum()) == (used, limit)
    assert meter.text() == f"Context {used} / {limit}"
    assert f"{used:,} of {limit:,} tokens" in meter.toolTip()
    first = window.conversation.id
    window.new_conversation()
    assert meter.isHidden()
    window.open_conversation(first)  # kept with the answer's stats
    assert not meter.isHidden() and meter.value() == used


def test_a_nearly_full_context_says_so(qtbot, make_window):
    limit = answer_tokens() + 14  # the fake's prompt is 12 tokens
    window = make_window(FakeBackend(context_limit=limit))
    send(qtbot, window)
    assert window.context_meter.text().endswith(" · full")


def test_answers_without_a_context_hide_the_meter(qtbot, make_window):
    """A backend that does not know its context, or answers saved before the meter existed."""
    window = make_window(FakeBackend())
    summary = send(qtbot, window)
    assert "context_tokens" not in summary and window.context_meter.isHidden()
    assert context_usage({"prompt_tokens": 5, "new_tokens": 2}) is None
    assert context_usage({"prompt_tokens": 5, "new_tokens": 2, "context_tokens": 0}) is None
    assert context_usage({"prompt_tokens": 5, "new_tokens": 2, "context_tokens": 100}) == (7, 100)
