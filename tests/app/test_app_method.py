"""Plain decoding or SubSpec: defaults from what the worker reports, what goes to the engine, and the
stats under each answer; sampling presets."""

from types import SimpleNamespace

import pytest
from app_fakes import FakeBackend, answer, subspec_events

from app.backend import TorchBackend
from app.controls import preset_for
from app.turns import format_answer_stats
from app.worker import EngineWorker

GPU = {"cuda": True, "subspec": True}
CPU = {"cuda": False, "subspec": True}


def test_on_a_gpu_subspec_is_on_with_a_48_by_6_tree(qtbot, make_window):
    window = make_window(FakeBackend(events=subspec_events, capabilities=GPU))
    m = window.method
    assert m.toggle.isEnabled() and m.toggle.isChecked()
    assert (m.depth.value(), m.width.value()) == (48, 6) and m.depth.isEnabled()
    summary = answer(qtbot, window)
    _messages, params = window.backend.calls[0]
    assert (params["method"], params["depth"], params["width"]) == ("subspec", 48, 6)
    assert (summary["method"], summary["depth"], summary["width"]) == ("subspec", 48, 6)
    assert summary["tau"] == pytest.approx(2.0)
    assert window.transcript.toPlainText().endswith(" · τ 2.00 · SubSpec D48 W6 · Copy")
    stats = window.store.messages(window.conversation.id)[1].stats
    assert stats["method"] == "subspec" and stats["depth"] == 48


def test_on_a_cpu_plain_decoding_is_the_default_but_subspec_can_be_chosen(qtbot, make_window):
    window = make_window(FakeBackend(capabilities=CPU))
    m = window.method
    assert m.toggle.isEnabled() and not m.toggle.isChecked() and not m.depth.isEnabled()
    answer(qtbot, window)
    assert window.backend.calls[0][1]["method"] == "vanilla"
    assert window.transcript.toPlainText().endswith(" · τ 1.00 · plain · Copy")
    m.toggle.setChecked(True)
    m.depth.setValue(16)
    m.width.setValue(4)
    answer(qtbot, window, "again")
    params = window.backend.calls[1][1]
    assert (params["method"], params["depth"], params["width"]) == ("subspec", 16, 4)


def test_a_backend_that_cannot_draft_keeps_subspec_off(qtbot, make_window):
    window = make_window(FakeBackend(capabilities={"cuda": True, "subspec": False}))
    assert not window.method.toggle.isEnabled() and window.method.params() == {"method": "vanilla"}


def test_the_worker_reports_capabilities_as_plain_data_before_loaded(qapp):
    w = EngineWorker(lambda model, progress: FakeBackend(capabilities={"cuda": 1, "subspec": True}))
    order = []
    w.capabilities.connect(lambda caps: order.append(("caps", caps)))
    w.loaded.connect(lambda name: order.append(("loaded", name)))
    w.load("m")
    assert order == [("caps", {"cuda": True, "subspec": True}), ("loaded", "FakeLM-1M")]


def test_a_backend_without_capabilities_is_plain_only(qapp):
    backend = FakeBackend()
    del backend.capabilities
    w = EngineWorker(lambda model, progress: backend)
    got = []
    w.capabilities.connect(got.append)
    w.load("m")
    assert got == [{"cuda": False, "subspec": False}]


def test_the_draft_is_built_once_per_model_with_progress():
    built, progress = [], []

    def build_draft(bits, group_size, progress):
        built.append((bits, group_size))
        for i in (1, 2):
            progress(i, 2)
        return "draft"

    backend = TorchBackend.__new__(TorchBackend)  # no model: only the lazy draft is under test
    backend.name, backend.draft, backend.progress = "tiny", None, progress.append
    backend.lm = SimpleNamespace(build_draft=build_draft)
    assert backend.get_draft() == "draft" and backend.get_draft() == "draft"
    assert built == [(4, 64)]
    assert progress == ["Building the SubSpec draft: layer 1/2 …", "Building the SubSpec draft: layer 2/2 …",
                        "tiny"]


def test_answer_stats_line():
    stats = {"new_tokens": 120, "tokens_per_s": 85.25, "ttft_s": 0.031, "tau": 4.5, "method": "subspec",
             "depth": 48, "width": 6}
    assert format_answer_stats(stats) == "120 tokens · 85.2 tok/s · TTFT 0.03 s · τ 4.50 · SubSpec D48 W6"
    assert format_answer_stats({**stats, "method": "vanilla", "tau": 1.0}).endswith("τ 1.00 · plain")


def test_presets_set_the_values_and_edits_make_them_custom(qtbot, make_window):
    s = make_window().sampling
    assert s.values() == {"preset": "greedy", "temperature": 0.0, "top_p": 1.0}
    s.preset.setCurrentText("creative")
    assert s.values() == {"preset": "creative", "temperature": 1.0, "top_p": 0.95}
    s.top_p.setValue(0.8)
    assert s.values() == {"preset": "custom", "temperature": 1.0, "top_p": 0.8}
    s.temperature.setValue(0.7)
    s.top_p.setValue(0.9)
    assert s.values()["preset"] == "balanced"  # values that match a preset are that preset
    assert preset_for(0.5, 0.5) == "custom"
