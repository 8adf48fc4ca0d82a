"""Plain decoding or SubSpec: defaults from what the worker reports, what goes to the engine, auto depth
and the tree kept across runs, and the stats under each answer; sampling presets."""

import json
from types import SimpleNamespace

import pytest
from app_fakes import FakeBackend, answer, subspec_events

from app.backend import TorchBackend
from app.controls import AUTO_MEANING, preset_for
from app.main_window import default_settings
from app.turns import format_answer_stats
from app.worker import EngineWorker

GPU = {"cuda": True, "subspec": True}
CPU = {"cuda": False, "subspec": True}


def test_on_a_gpu_subspec_is_on_with_a_48_by_6_tree(qtbot, make_window):
    window = make_window(FakeBackend(events=subspec_events, capabilities=GPU))
    m = window.method
    assert m.toggle.isEnabled() and m.toggle.isChecked()
    assert (m.depth.value(), m.width.value()) == (48, 6) and m.depth.isEnabled()
    assert m.auto.isChecked() and m.auto.isEnabled()  # fresh settings: auto depth, 48 the deepest tree
    summary = answer(qtbot, window)
    _messages, params = window.backend.calls[0]
    assert (params["method"], params["depth"], params["width"], params["auto"]) == ("subspec", 48, 6, True)
    assert (summary["method"], summary["depth"], summary["width"], summary["auto"]) == ("subspec", 48, 6, True)
    assert summary["tau"] == pytest.approx(2.0)
    assert window.transcript.toPlainText().endswith(" · τ 2.00 · SubSpec auto D≤48 W6 · Copy · Branch")
    stats = window.store.messages(window.conversation.id)[1].stats
    assert stats["method"] == "subspec" and stats["depth"] == 48 and stats["auto"] is True


def test_on_a_cpu_plain_decoding_is_the_default_but_subspec_can_be_chosen(qtbot, make_window):
    window = make_window(FakeBackend(capabilities=CPU))
    m = window.method
    assert m.toggle.isEnabled() and not m.toggle.isChecked() and not m.depth.isEnabled()
    answer(qtbot, window)
    assert window.backend.calls[0][1]["method"] == "vanilla"
    assert window.transcript.toPlainText().endswith(" · τ 1.00 · plain · Copy · Branch")
    m.toggle.setChecked(True)
    m.depth.setValue(16)
    m.width.setValue(4)
    m.auto.setChecked(False)
    answer(qtbot, window, "again")
    params = window.backend.calls[1][1]
    assert (params["method"], params["depth"], params["width"], params["auto"]) == ("subspec", 16, 4, False)
    assert window.transcript.toPlainText().endswith(" · SubSpec D16 W4 · Copy · Branch")


def test_a_backend_that_cannot_draft_keeps_subspec_off(qtbot, make_window):
    window = make_window(FakeBackend(capabilities={"cuda": True, "subspec": False}))
    assert not window.method.toggle.isEnabled() and window.method.params() == {"method": "vanilla"}
    assert not window.method.auto.isEnabled()


def test_auto_depth_says_the_depth_is_an_upper_bound(qtbot, make_window):
    m = make_window(FakeBackend(capabilities=GPU)).method
    assert m._depth_label.text().strip() == "Depth ≤"
    assert AUTO_MEANING in m.depth.toolTip() and AUTO_MEANING in m.auto.toolTip()
    assert AUTO_MEANING == ("the deepest tree; each pass picks the depth that measured fastest, "
                            "plain decoding included")
    m.auto.setChecked(False)
    assert m._depth_label.text().strip() == "Depth" and "fastest" not in m.depth.toolTip()
    assert m.params() == {"method": "subspec", "depth": 48, "width": 6, "auto": False}
    m.auto.setChecked(True)
    assert m.params() == {"method": "subspec", "depth": 48, "width": 6, "auto": True}


def test_the_tree_and_auto_depth_are_kept_across_runs(qtbot, make_window):
    window = make_window(FakeBackend(capabilities=GPU))
    m = window.method
    with qtbot.waitSignal(m.changed):
        m.auto.setChecked(False)
    m.depth.setValue(20)
    m.width.setValue(3)
    assert json.loads(window.settings.value("decoding")) == {"depth": 20, "width": 3, "auto": False}
    window.close()
    again = make_window(FakeBackend(capabilities=GPU)).method
    assert not again.auto.isChecked() and again.params() == {"method": "subspec", "depth": 20, "width": 3,
                                                              "auto": False}
    again.auto.setChecked(True)
    window = make_window(FakeBackend(capabilities=GPU))
    assert window.method.params() == {"method": "subspec", "depth": 20, "width": 3, "auto": True}
    answer(qtbot, window)
    assert window.backend.calls[0][1]["auto"] is True


def test_a_tree_saved_before_auto_depth_keeps_its_fixed_depth(qtbot, make_window):
    old = default_settings()
    old.setValue("decoding", json.dumps({"depth": 24, "width": 4}))  # no "auto": saved by an older version
    old.sync()
    window = make_window(FakeBackend(capabilities=GPU))
    m = window.method
    assert not m.auto.isChecked() and m._depth_label.text().strip() == "Depth"
    assert m.params() == {"method": "subspec", "depth": 24, "width": 4, "auto": False}
    answer(qtbot, window)
    assert window.backend.calls[0][1]["auto"] is False


def test_unreadable_saved_settings_keep_the_defaults(qtbot, make_window):
    bad = default_settings()
    bad.setValue("decoding", "{not json")
    bad.sync()
    m = make_window(FakeBackend(capabilities=GPU)).method
    assert m.params() == {"method": "subspec", "depth": 48, "width": 6, "auto": True}


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

    def build_draft(bits, group_size, progress, cancel=None):
        built.append((bits, group_size))
        for i in (1, 2):
            progress(i, 2)
        return "draft"

    backend = TorchBackend.__new__(TorchBackend)  # no model: only the lazy draft is under test
    backend.name, backend.draft, backend.progress = "tiny", None, progress.append
    backend.lm = SimpleNamespace(build_draft=build_draft)
    assert backend.get_draft() == "draft" and backend.get_draft() == "draft"
    assert built == [(None, 64)]  # None: the load's widths (the plan's per layer, else 4-bit)
    assert progress == ["Building the SubSpec draft: layer 1/2 …", "Building the SubSpec draft: layer 2/2 …",
                        "tiny"]


def test_answer_stats_line():
    stats = {"new_tokens": 120, "tokens_per_s": 85.25, "ttft_s": 0.031, "tau": 4.5, "method": "subspec",
             "depth": 48, "width": 6}
    assert format_answer_stats(stats) == "120 tokens · 85.2 tok/s · TTFT 0.03 s · τ 4.50 · SubSpec D48 W6"
    # An answer saved before auto depth existed has no "auto" and reads as it always did.
    assert format_answer_stats({**stats, "auto": False}).endswith("· SubSpec D48 W6")
    assert format_answer_stats({**stats, "auto": True}).endswith("· SubSpec auto D≤48 W6")
    assert format_answer_stats({**stats, "method": "vanilla", "tau": 1.0}).endswith("τ 1.00 · plain")
    assert format_answer_stats({**stats, "seed": 1234}).endswith("· SubSpec D48 W6 · seed 1234")  # sampled
    # What the kept KV cache saved the prefill (a conversation's later turns)
    assert format_answer_stats({**stats, "cached_tokens": 612}).startswith(
        "120 tokens · 85.2 tok/s · TTFT 0.03 s, 612 cached tokens · τ 4.50")


def test_presets_set_the_values_and_edits_make_them_custom(qtbot, make_window):
    s = make_window().sampling
    off = {"top_k": 0, "min_p": 0.0, "repetition_penalty": 1.0, "penalty_last_n": 64, "max_new_tokens": 512,
           "seed": -1, "stop": "", "answer_format": "text", "answer_schema": ""}
    assert s.values() == {"preset": "greedy", "temperature": 0.0, "top_p": 1.0, **off}
    s.preset.setCurrentText("creative")
    assert s.values() == {"preset": "creative", "temperature": 1.0, "top_p": 0.95, **off}
    s.top_p.setValue(0.8)
    assert s.values() == {"preset": "custom", "temperature": 1.0, "top_p": 0.8, **off}
    s.temperature.setValue(0.7)
    s.top_p.setValue(0.9)
    assert s.values()["preset"] == "balanced"  # values that match a preset are that preset
    assert preset_for(0.5, 0.5) == "custom"


def test_stop_strings_as_typed():
    from app.controls import parse_stops

    assert parse_stops("") == () and parse_stops(" , ,") == ()
    assert parse_stops("\\n\\n, User:") == ("\n\n", "User:")  # a blank line, or the next turn's name
    assert parse_stops(" a ,b,a") == ("a", "b")  # trimmed, once each
    assert parse_stops("x\\, y, \\t") == ("x, y", "\t")  # an escaped comma is part of the string
    assert parse_stops("C:\\path\\\\") == ("C:\\path\\",)  # unknown escapes are kept as typed
    assert parse_stops("end\\") == ("end\\",)


def test_the_think_switch_shows_for_models_that_have_one_and_is_kept(qtbot, make_window):
    from app_fakes import PROMPT, FakeBackend
    from PySide6.QtCore import Qt

    def ask(window):
        with qtbot.waitSignal(window.host.finished, timeout=5000):
            qtbot.keyClicks(window.prompt, PROMPT)
            qtbot.keyClick(window.prompt, Qt.Key.Key_Return)
        return window.backend.calls[-1][1]

    plain = make_window()
    assert not plain.thinking.action.isVisible() and ask(plain).get("thinking") is None  # no switch: none asked
    plain.close()
    window = make_window(FakeBackend(capabilities={"cuda": False, "subspec": True, "thinking": True}))
    assert window.thinking.action.isVisible() and window.thinking.box.isChecked()  # on: the model's default
    assert ask(window)["thinking"] is True
    window.thinking.box.setChecked(False)
    assert ask(window)["thinking"] is False
    window.close()
    again = make_window(FakeBackend(capabilities={"cuda": False, "subspec": True, "thinking": True}))
    assert not again.thinking.box.isChecked()  # kept across starts


def test_a_draft_build_stopped_ends_the_answer_as_stopped_without_an_error(qtbot, make_window, dialogs):
    from app_fakes import PROMPT, FakeBackend
    from PySide6.QtCore import Qt

    from engine.convert import ConvertCancelled

    window = make_window(FakeBackend(fail_on_call={0}, fail_after=0,
                                     fail_error=ConvertCancelled("conversion cancelled after 3/28 layers; "
                                                                 "those stay cached")))
    with qtbot.waitSignal(window.host.finished, timeout=5000) as done:
        qtbot.keyClicks(window.prompt, PROMPT)
        qtbot.keyClick(window.prompt, Qt.Key.Key_Return)
    assert done.args[0]["finish_reason"] == "stopped" and dialogs.shown == []
    assert "stopped while building the SubSpec draft: conversion cancelled after 3/28 layers" in \
        window.transcript.toPlainText()
    assert not window.busy and window.send_button.isEnabled()


def test_the_answer_format_is_the_conversations_and_reaches_the_engine(qtbot, make_window):
    window = make_window(FakeBackend())
    fmt = window.sampling.answer_format
    assert fmt.currentData() == "text" and window.sampling.more.text() == "More"
    fmt.setCurrentIndex(fmt.findData("json"))
    assert window.sampling.more.text() == "More (1)"  # a changed setting behind a closed menu is counted
    answer(qtbot, window)
    assert window.backend.calls[-1][1]["answer_format"] == "json"
    first = window.conversation.id
    window.new_conversation()
    assert fmt.currentData() == "text"  # another conversation, its own format
    window.open_conversation(first)
    assert fmt.currentData() == "json" and window.store.get(first).answer_format == "json"


def test_a_json_schema_answer_format_carries_its_schema(qtbot, make_window):
    window = make_window(FakeBackend())
    s = window.sampling
    assert not s._schema_row.isRowVisible(s.answer_schema)  # the box shows only for the schema format
    s.answer_schema.setPlainText('{"type": "object"}')
    assert s.more.text() == "More"  # (a schema typed under another format changes nothing)
    s.answer_format.setCurrentIndex(s.answer_format.findData("schema"))
    assert s._schema_row.isRowVisible(s.answer_schema) and s.more.text() == "More (2)"
    answer(qtbot, window)
    params = window.backend.calls[-1][1]
    assert (params["answer_format"], params["answer_schema"]) == ("schema", '{"type": "object"}')
    first = window.conversation.id
    window.new_conversation()
    assert s.answer_schema.toPlainText() == "" and s.answer_format.currentData() == "text"
    window.open_conversation(first)
    assert s.answer_schema.toPlainText() == '{"type": "object"}' and window.store.get(first).answer_schema
