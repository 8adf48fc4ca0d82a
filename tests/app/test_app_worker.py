"""EngineWorker called directly (no thread): what its signals carry."""

import pytest
from app_fakes import PROMPT, FakeBackend, endless_events, factory_for, recorded_events

from app.worker import EngineWorker

MESSAGES = [{"role": "user", "content": PROMPT}]


class Spy:
    def __init__(self, worker):
        self.got = {name: [] for name in ("loaded", "progress", "token", "step", "finished", "failed")}
        for name, sink in self.got.items():
            getattr(worker, name).connect(lambda *args, sink=sink: sink.append(args[0] if len(args) == 1 else args))


@pytest.fixture
def worker(qapp):
    w = EngineWorker(factory_for(FakeBackend()))
    w.spy = Spy(w)
    w.load("fake-model")
    return w


def test_load_reports_progress_then_the_name(worker):
    assert worker.spy.got["progress"] == ["Loading fake-model …"]
    assert worker.spy.got["loaded"] == ["FakeLM-1M"]


def test_generate_emits_tokens_steps_and_a_plain_summary(worker):
    worker.generate(MESSAGES, {"max_new_tokens": 64})
    got = worker.spy.got
    assert "".join(got["token"]) == "The capital of France is Paris."
    assert [s["iteration"] for s in got["step"]] == list(range(8))
    [summary] = got["finished"]
    assert summary["text"] == "The capital of France is Paris."
    assert summary["new_tokens"] == 7 and summary["prompt_tokens"] == 12
    assert summary["finish_reason"] == "eos" and summary["ttft_s"] >= 0 and summary["tokens_per_s"] > 0
    assert "token_ids" not in summary
    assert all(type(v) in (str, int, float, type(None)) for v in summary.values())
    assert got["failed"] == []


def test_a_stop_requested_before_the_start_yields_nothing(worker):
    worker.stop_event.set()
    worker.generate(MESSAGES, {})
    [summary] = worker.spy.got["finished"]
    assert summary["finish_reason"] == "stopped" and summary["new_tokens"] == 0
    assert worker.spy.got["token"] == []


def test_stopping_closes_the_engine_stream(qapp):
    closed = []

    def events():
        try:
            yield from endless_events()
        finally:
            closed.append(True)  # the real engine's generator frees its KV cache here

    w = EngineWorker(factory_for(FakeBackend(events=events)))
    w.load("m")
    tokens, finished = [], []
    w.token.connect(tokens.append)

    def stop_at_three(_text):
        if len(tokens) == 3:
            w.stop_event.set()

    w.token.connect(stop_at_three)
    w.finished.connect(finished.append)
    w.generate(MESSAGES, {})
    assert closed == [True] and len(tokens) == 3
    assert finished[0]["finish_reason"] == "stopped" and finished[0]["text"] == " w0 w1 w2"


def test_generate_before_load_fails_cleanly(qapp):
    w = EngineWorker(factory_for(FakeBackend()))
    failed = []
    w.failed.connect(lambda m, d: failed.append((m, d)))
    w.generate(MESSAGES, {})
    assert failed == [("No model is loaded.", "")]


def test_an_error_mid_answer_is_reported_not_raised(qapp):
    w = EngineWorker(factory_for(FakeBackend(fail_on_call={0}, fail_after=3)))
    spy = Spy(w)
    w.load("m")
    w.generate(MESSAGES, {})
    assert len(spy.got["token"]) == 3 and spy.got["finished"] == []
    [(message, details)] = spy.got["failed"]
    assert "context of 8192 tokens" in message and "Traceback" in details


def test_recorded_events_end_with_eos():
    events = recorded_events()
    assert events[-1].finish_reason == "eos" and all(e.finish_reason is None for e in events[:-1])


def test_a_long_answer_does_not_exhaust_true(qapp):
    """PySide6 6.12.0 on Python 3.11 drops a reference to True on every emit() and aborts the interpreter
    after a few thousand tokens; requirements.lock pins 6.11.3 and pyproject excludes 6.12.0. This answer
    is the regression test: it emits far more signals than that."""
    from itertools import islice

    w = EngineWorker(factory_for(FakeBackend(events=lambda: islice(endless_events(), 30_000))))
    w.load("m")
    finished = []
    w.finished.connect(finished.append)
    w.generate(MESSAGES, {})
    assert finished[0]["new_tokens"] == 30_000
