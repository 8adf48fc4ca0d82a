"""The chat window on the fake engine: streaming, stop, errors, empty input, clean shutdown."""

import re
import threading

from app_fakes import PROMPT, FakeBackend, endless_events, factory_for, recorded_answer, recorded_events
from PySide6.QtCore import Qt

from engine.errors import SubspecError

STATS = re.compile(r"^(\d+) tokens · \d+\.\d tok/s · TTFT \d+\.\d\d s$")


def send(qtbot, window, text=PROMPT, key=Qt.Key.Key_Return):
    qtbot.keyClicks(window.prompt, text)
    qtbot.keyClick(window.prompt, key)


def test_send_streams_the_answer(qtbot, make_window):
    window = make_window()
    host = window.host
    tokens, steps = [], []
    host.token.connect(tokens.append)
    host.step.connect(steps.append)
    assert window.model_label.text() == "FakeLM-1M"
    with qtbot.waitSignal(host.finished, timeout=5000) as blocker:
        send(qtbot, window)
        assert window.busy and not window.send_button.isEnabled() and window.stop_button.isEnabled()
    summary = blocker.args[0]

    events = recorded_events()
    assert tokens == [e.text for e in events if e.text]
    assert summary["text"] == recorded_answer() == "The capital of France is Paris."
    assert summary["finish_reason"] == "eos" and summary["new_tokens"] == 7
    assert len(steps) == len(events) and steps[-1]["finish_reason"] == "eos"
    assert all(isinstance(s, dict) and isinstance(s["token_ids"], tuple) for s in steps)

    assert "You\nWhat is the capital of France?\n" in window.transcript.toPlainText()
    assert "FakeLM-1M\nThe capital of France is Paris." in window.transcript.toPlainText()
    assert window.history == [{"role": "user", "content": PROMPT},
                              {"role": "assistant", "content": "The capital of France is Paris."}]
    assert window.prompt.toPlainText() == ""
    assert STATS.match(window.stats_label.text()).group(1) == "7"
    assert window.send_button.isEnabled() and not window.stop_button.isEnabled()
    # The engine ran on the worker thread, not on the GUI thread.
    assert window.backend.thread_ids and threading.get_ident() not in window.backend.thread_ids


def test_second_turn_sends_the_whole_conversation(qtbot, make_window):
    window = make_window()
    for text in (PROMPT, "And of Italy?"):
        with qtbot.waitSignal(window.host.finished, timeout=5000):
            send(qtbot, window, text)
    messages, params = window.backend.calls[1]
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert messages[1]["content"] == recorded_answer() and messages[2]["content"] == "And of Italy?"
    assert params["temperature"] == 0.0 and params["max_new_tokens"] > 0


def test_shift_enter_adds_a_line_and_does_not_send(qtbot, make_window):
    window = make_window()
    qtbot.keyClicks(window.prompt, "line one")
    qtbot.keyClick(window.prompt, Qt.Key.Key_Return, Qt.KeyboardModifier.ShiftModifier)
    qtbot.keyClicks(window.prompt, "line two")
    assert window.prompt.toPlainText() == "line one\nline two"
    assert not window.busy and window.history == []
    with qtbot.waitSignal(window.host.finished, timeout=5000):
        qtbot.keyClick(window.prompt, Qt.Key.Key_Enter)  # the keypad's Enter sends too
    assert window.backend.calls[0][0][0]["content"] == "line one\nline two"


def test_empty_message_is_ignored(qtbot, make_window):
    window = make_window()
    with qtbot.assertNotEmitted(window.host._generate, wait=100):
        send(qtbot, window, "   ")
        qtbot.keyClick(window.prompt, Qt.Key.Key_Return)
        window.send_button.click()
    assert window.backend.calls == [] and window.history == []
    assert window.transcript.toPlainText() == "" and not window.busy


def test_escape_stops_mid_answer(qtbot, make_window):
    gate = threading.Event()  # holds the answer after its first token until the test has pressed Esc
    window = make_window(FakeBackend(events=endless_events, gate=gate))
    tokens = []
    window.host.token.connect(tokens.append)
    with qtbot.waitSignal(window.host.token, timeout=5000):
        send(qtbot, window)
    with qtbot.waitSignal(window.host.finished, timeout=5000) as blocker:
        qtbot.keyClick(window.prompt, Qt.Key.Key_Escape)
        gate.set()
    summary = blocker.args[0]
    # Stop is checked between steps, so the step in flight when Esc was pressed usually still lands (the
    # worker may also have seen the flag just before it: 1 token).
    assert summary["finish_reason"] == "stopped" and summary["new_tokens"] == len(tokens) in (1, 2)
    answer = "".join(tokens)
    assert window.history[-1] == {"role": "assistant", "content": answer}
    assert window.transcript.toPlainText().endswith(answer.strip() + " [stopped]\n" + window.stats_label.text()
                                                     + " · τ 1.00 · plain · Copy · Branch")
    assert STATS.match(window.stats_label.text()).group(1) == str(len(tokens))
    assert window.send_button.isEnabled() and not window.stop_button.isEnabled()


def test_stop_button_stops_and_the_next_answer_runs_in_full(qtbot, make_window):
    window = make_window(FakeBackend(events=endless_events, delay_s=0.002))
    with qtbot.waitSignal(window.host.token, timeout=5000):
        send(qtbot, window)
    with qtbot.waitSignal(window.host.finished, timeout=5000) as blocker:
        window.stop_button.click()
    assert blocker.args[0]["finish_reason"] == "stopped"
    window.backend.events, window.backend.delay_s = recorded_events, 0.0
    with qtbot.waitSignal(window.host.finished, timeout=5000) as blocker:
        send(qtbot, window, "again")
    assert blocker.args[0]["finish_reason"] == "eos"  # the old stop request does not leak into this one


def test_engine_error_shows_a_dialog_and_the_app_stays_usable(qtbot, make_window, dialogs):
    window = make_window(FakeBackend(fail_on_call={0}, fail_after=2,
                                     fail_error=SubspecError("CUDA out of memory; try a smaller model")))
    with qtbot.waitSignal(window.host.failed, timeout=5000):
        send(qtbot, window)
    [shown] = dialogs.shown
    assert shown["title"] == "Engine error" and "CUDA out of memory" in shown["text"]
    assert "SubspecError" in shown["details"] and shown["parent"] is window
    assert "\N{WARNING SIGN} CUDA out of memory" in window.transcript.toPlainText()
    assert window.history == [] and window.prompt.toPlainText() == PROMPT  # ready to retry
    assert window.send_button.isEnabled() and not window.busy

    with qtbot.waitSignal(window.host.finished, timeout=5000):
        qtbot.keyClick(window.prompt, Qt.Key.Key_Return)
    assert [m["role"] for m in window.history] == ["user", "assistant"]
    assert len(dialogs.shown) == 1


def test_load_error_shows_a_dialog_and_sending_stays_off(qtbot, make_window, dialogs):
    window = make_window(load_error=SubspecError("no model named 'nope' in the store"), wait_loaded=False)
    qtbot.waitUntil(lambda: len(dialogs.shown) == 1, timeout=5000)
    assert dialogs.shown[0]["text"] == "no model named 'nope' in the store"
    assert window.model_label.text() == "No model loaded"
    assert not window.send_button.isEnabled()
    send(qtbot, window)
    assert window.history == [] and window.prompt.toPlainText() == PROMPT


def test_unexpected_load_error_carries_the_traceback(qtbot, make_window, dialogs):
    make_window(load_error=RuntimeError("boom"), wait_loaded=False)
    qtbot.waitUntil(lambda: len(dialogs.shown) == 1, timeout=5000)
    assert dialogs.shown[0]["text"] == "Unexpected error: RuntimeError: boom"
    assert "Traceback" in dialogs.shown[0]["details"]


def test_send_waits_for_the_model(qtbot, make_window):
    release = threading.Event()
    backend = FakeBackend()
    inner = factory_for(backend)

    def slow_factory(model, progress):
        release.wait(5)
        return inner(model, progress)

    window = make_window(factory=slow_factory, wait_loaded=False)
    assert window.model_label.text() == "Loading fake-model …"
    assert not window.send_button.isEnabled()
    send(qtbot, window)
    assert window.history == []  # not sent, and the text is kept
    with qtbot.waitSignal(window.host.loaded, timeout=5000):
        release.set()
    with qtbot.waitSignal(window.host.finished, timeout=5000):
        qtbot.keyClick(window.prompt, Qt.Key.Key_Return)
    assert window.history[0]["content"] == PROMPT


def test_closing_mid_answer_stops_and_joins_the_thread(qtbot, make_window):
    window = make_window(FakeBackend(events=endless_events, delay_s=0.002))
    thread = window.host.thread
    with qtbot.waitSignal(window.host.token, timeout=5000):
        send(qtbot, window)
    window.close()
    assert thread.isFinished() and not thread.isRunning()
    assert window.host.stop_event.is_set()


def test_closing_when_idle_joins_the_thread(qtbot, make_window):
    window = make_window()
    window.close()
    assert window.host.thread.isFinished()
    window.host.shutdown()  # idempotent: the app's aboutToQuit calls it again


def test_escape_stops_wherever_the_focus_is(qtbot, make_window):
    window = make_window(FakeBackend(events=endless_events, delay_s=0.002))
    window.activateWindow()
    qtbot.waitUntil(window.isActiveWindow, timeout=2000)
    with qtbot.waitSignal(window.host.token, timeout=5000):
        send(qtbot, window)
    window.transcript.setFocus()
    with qtbot.waitSignal(window.host.finished, timeout=5000) as blocker:
        qtbot.keyClick(window.transcript, Qt.Key.Key_Escape)
    assert blocker.args[0]["finish_reason"] == "stopped"


def test_an_engine_note_shows_in_the_status_bar(qtbot, make_window):
    """The engine backed off (a shallower tree after running out of GPU memory): the user sees why."""
    from dataclasses import replace

    note = "Out of GPU memory with a D48 K6 tree; continuing with D24 K6."

    def events():
        evs = recorded_events()
        return evs[:2] + [replace(evs[2], note=note)] + evs[3:]

    window = make_window(FakeBackend(events=events))
    with qtbot.waitSignal(window.host.finished, timeout=5000) as blocker:
        send(qtbot, window)
    assert window.statusBar().currentMessage() == note
    assert blocker.args[0]["text"] == recorded_answer()  # the answer itself is untouched
    # The note stays with the answer: under it now, and again when the conversation is opened later.
    assert blocker.args[0]["notes"] == [note]
    assert f"[{note}]" in window.transcript.toPlainText()
    conversation = window.conversation.id
    window.new_conversation()
    assert f"[{note}]" not in window.transcript.toPlainText()
    window.open_conversation(conversation)
    assert f"[{note}]" in window.transcript.toPlainText()


def test_the_message_box_grows_with_what_is_typed_up_to_a_share_of_the_window(qtbot, make_window):
    window = make_window()
    window.resize(1000, 800)
    box = window.prompt
    assert box.height() == box.MIN_HEIGHT
    box.setPlainText("one line")
    assert box.height() == box.MIN_HEIGHT
    box.setPlainText("\n".join(f"line {i}" for i in range(8)))
    eight = box.height()
    assert eight > box.MIN_HEIGHT
    box.setPlainText("\n".join(f"line {i}" for i in range(200)))  # a long paste: capped, then it scrolls
    assert eight < box.height() <= 0.4 * window.height() and box.verticalScrollBar().maximum() > 0
    window.resize(1000, 500)
    assert box.height() <= 0.4 * 500
    box.clear()
    assert box.height() == box.MIN_HEIGHT


def test_the_system_prompt_takes_several_lines_and_is_saved_when_left(qtbot, make_window):
    from app_fakes import PROMPT

    window = make_window()
    box = window.system_prompt
    one_line = box.height()
    qtbot.keyClicks(box, "You are terse.")
    qtbot.keyClick(box, Qt.Key.Key_Return)  # a new line, not a send
    qtbot.keyClicks(box, "Answer in French.")
    assert box.text() == "You are terse.\nAnswer in French." and box.height() > one_line
    box.setPlainText("\n".join(f"rule {i}" for i in range(20)))
    assert box.height() < 8 * box.fontMetrics().lineSpacing()  # up to six lines, then it scrolls
    box.setText("Be brief.\nUse lists.")
    with qtbot.waitSignal(window.host.finished, timeout=5000):
        qtbot.keyClicks(window.prompt, PROMPT)
        qtbot.keyClick(window.prompt, Qt.Key.Key_Return)
    assert window.backend.calls[-1][0][0] == {"role": "system", "content": "Be brief.\nUse lists."}
    # In a conversation that exists: an edit is saved when the focus leaves the box, before anything is sent.
    box.setFocus()
    qtbot.keyClick(box, Qt.Key.Key_End, Qt.KeyboardModifier.ControlModifier)
    qtbot.keyClicks(box, " Cite sources.")
    writes = []
    window.store.update = lambda cid, **settings: writes.append(settings["system_prompt"])
    window.prompt.setFocus()
    qtbot.waitUntil(lambda: writes == ["Be brief.\nUse lists. Cite sources."], timeout=2000)
    box.setFocus()
    window.prompt.setFocus()  # left again unchanged: nothing to write
    qtbot.wait(50)
    assert writes == ["Be brief.\nUse lists. Cite sources."]
