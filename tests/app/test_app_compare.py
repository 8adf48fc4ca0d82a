"""'Compare with plain decoding' on the fake's virtual clock, so both speeds are exact numbers; and the
speedup plot it makes possible."""

from dataclasses import asdict

import pytest
from app_fakes import PROMPT, FakeBackend, answer, subspec_events

from app.compare import CompareJob, format_comparison, reusable
from app.stats import StepStats

GPU = {"cuda": True, "subspec": True}
CPU = {"cuda": False, "subspec": True}
# Recorded plain answer: 8 events of 50 ms, the first one the prefill: 6 tokens in 0.35 s. SubSpec: 4
# events of 10 ms: 6 tokens in 0.03 s.
PLAIN_TPS, SUBSPEC_TPS = 6 / 0.35, 6 / 0.03
EXPECTED = "SubSpec 200.0 tok/s vs plain 17.1 tok/s = 11.7x"


def timed_backend(caps):
    return FakeBackend(capabilities=caps, step_ms={"vanilla": 50.0, "subspec": 10.0},
                       method_events={"subspec": subspec_events})


def compare(qtbot, window):
    window.chat_actions.compare.click()
    qtbot.waitUntil(lambda: not window.busy, timeout=5000)


def test_compare_reuses_this_sessions_subspec_answer_and_times_plain(qtbot, make_window):
    window = make_window(timed_backend(GPU))
    summary = answer(qtbot, window)
    assert summary["tokens_per_s"] == pytest.approx(SUBSPEC_TPS, rel=1e-3)
    compare(qtbot, window)
    assert len(window.backend.calls) == 2  # only plain decoding ran again
    messages, params = window.backend.calls[1]
    assert messages == [{"role": "user", "content": PROMPT}]
    assert (params["method"], params["temperature"], params["continue_final"]) == ("vanilla", 0.0, False)
    assert window.backend.calls[0][1]["auto"] is True  # the reused SubSpec answer had auto depth, as the toolbar
    assert window.stats_label.text() == EXPECTED
    assert window.transcript.toPlainText().endswith("Compared: " + EXPECTED)
    assert window.plain_speeds == {"FakeLM-1M": pytest.approx(PLAIN_TPS, rel=1e-3)}  # summaries are rounded
    # The comparison is not a turn: the conversation is as it was, with the result saved on the answer.
    [user, saved] = window.store.messages(window.conversation.id)
    assert saved.content == "The capital of France is Paris."
    assert saved.stats["compare"]["speedup"] == pytest.approx(SUBSPEC_TPS / PLAIN_TPS, rel=1e-3)


def test_compare_times_both_when_the_answer_was_not_timed_with_subspec(qtbot, make_window):
    window = make_window(timed_backend(CPU))  # plain by default on a CPU
    answer(qtbot, window)
    compare(qtbot, window)
    methods = [params["method"] for _m, params in window.backend.calls]
    assert methods == ["vanilla", "subspec", "vanilla"]
    assert all(params["temperature"] == 0.0 for _m, params in window.backend.calls[1:])
    assert window.stats_label.text() == EXPECTED
    cid = window.conversation.id
    window.close()
    again = make_window()  # the saved result shows under the answer when the chat reopens
    assert again.conversation.id == cid and ("Compared: " + EXPECTED) in again.transcript.toPlainText()


def test_a_stop_as_the_first_run_ends_is_not_lost_to_the_second(qtbot, make_window, monkeypatch):
    """Stop pressed while the first run's last step is on its way: that run ends complete, and sending the
    second would clear the worker's Stop. The comparison ends there instead."""
    window = make_window(timed_backend(CPU))
    answer(qtbot, window)
    real = CompareJob.record

    def stop_as_it_ends(job, summary):
        if len(job.runs) == 2:  # the first of the two runs has just ended
            window.stop()
        return real(job, summary)

    monkeypatch.setattr(CompareJob, "record", stop_as_it_ends)
    compare(qtbot, window)
    assert [p["method"] for _m, p in window.backend.calls] == ["vanilla", "subspec"]  # no second run
    assert window.stats_label.text() == "comparison stopped" and "Compared:" not in window.transcript.toPlainText()


def test_compare_needs_an_answer_and_subspec(qtbot, make_window):
    window = make_window(FakeBackend(capabilities={"cuda": True, "subspec": False}))
    answer(qtbot, window)
    assert window.chat_actions.regenerate.isEnabled() and not window.chat_actions.compare.isEnabled()


def test_compare_job_and_reuse_rules():
    sub = {"method": "subspec", "depth": 48, "width": 6}
    job = CompareJob(1, [], sub, ["subspec", "vanilla"])
    assert job.next_params({"max_new_tokens": 64, "temperature": 0.7})["temperature"] == 0.0
    assert job.record({"tokens_per_s": 30.0, "new_tokens": 50, "finish_reason": "eos"}) is None
    assert job.next_params({})["method"] == "vanilla"
    assert job.record({"tokens_per_s": 10.0, "new_tokens": 50, "finish_reason": "eos"}) is None
    assert job.done and format_comparison(job.result()) == "SubSpec 30.0 tok/s vs plain 10.0 tok/s = 3.0x"
    stopped = CompareJob(1, [], sub, ["vanilla"])
    assert stopped.record({"tokens_per_s": 5.0, "new_tokens": 3, "finish_reason": "stopped"}) == "comparison stopped"
    measured = {"model": "m", "method": "subspec", "temperature": 0.0, "new_tokens": 9, "tokens_per_s": 12.0,
                "depth": 48, "width": 6}
    assert reusable(measured, "m", sub) == 12.0
    assert reusable({**measured, "temperature": 0.7}, "m", sub) is None  # sampled: not comparable
    assert reusable({**measured, "width": 4}, "m", sub) is None
    assert reusable(measured, "other", sub) is None
    # Auto depth is another tree: an answer timed with it does not stand for a fixed depth, nor the reverse;
    # a tree without "auto" (from before auto depth existed) is a fixed one.
    auto = {**sub, "auto": True}
    assert reusable({**measured, "auto": True}, "m", auto) == 12.0
    assert reusable({**measured, "auto": True}, "m", sub) is None
    assert reusable(measured, "m", auto) is None
    assert reusable({**measured, "auto": False}, "m", sub) == 12.0
    assert job.result()["auto"] is False
    assert CompareJob(1, [], auto, ["subspec"]).next_params({})["auto"] is True


def test_speedup_series_is_tok_s_over_the_plain_baseline():
    stats = StepStats()
    stats.reset(baseline=50.0)
    for ev in subspec_events(accepted=(2, 0, 3)):
        stats.add(asdict(ev))
    assert stats.speedup.values().tolist() == pytest.approx([6.0, 4.0, 4.0])  # 300, 200, 200 tok/s over 50
    assert stats.summary().endswith(" · 4.0x plain")
    stats.reset()
    stats.add(asdict(subspec_events()[1]))
    assert stats.speedup.values().tolist() == [] and "plain" not in stats.summary()


def test_after_a_comparison_the_next_answer_plots_its_speedup(qtbot, make_window):
    window = make_window(timed_backend(GPU))
    answer(qtbot, window)
    dock = window.stats_dock
    assert len(dock.stats.speedup) == 0 and "not measured" in dock.plots[3].plotItem.titleLabel.text
    compare(qtbot, window)
    answer(qtbot, window, "again")
    speedup = dock.stats.speedup.values()
    assert len(speedup) == dock.stats.steps == 3
    assert speedup.tolist() == pytest.approx((dock.stats.tokens_per_s.values() / PLAIN_TPS).tolist(), rel=1e-3)
    qtbot.waitUntil(lambda: dock.curves[3].getData()[1] is not None and len(dock.curves[3].getData()[1]) == 3,
                    timeout=2000)
    assert "not measured" not in dock.plots[3].plotItem.titleLabel.text
