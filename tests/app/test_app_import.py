"""Conversation > Import…: this app's JSON export comes back as it was (settings, stats, versions aside);
an OpenAI-style message list from another tool becomes a conversation; a file it cannot take says why and
adds nothing."""

import json

import pytest
from app_fakes import PROMPT, FakeBackend, recorded_answer
from PySide6.QtCore import Qt

from app import export, import_chat


def answer(qtbot, window, text=PROMPT):
    with qtbot.waitSignal(window.host.finished, timeout=5000):
        qtbot.keyClicks(window.prompt, text)
        qtbot.keyClick(window.prompt, Qt.Key.Key_Return)


def test_an_export_comes_back_as_it_was(qtbot, make_window, tmp_path):
    window = make_window(FakeBackend())
    window.system_prompt.setText("Answer in one word.")
    window.sampling.preset.setCurrentText("balanced")
    window.sampling.top_k.setValue(40)
    answer(qtbot, window)
    with qtbot.waitSignal(window.host.finished, timeout=5000):
        window.chat_actions.regenerate.click()  # the first answer kept as a version
    conv = window.store.get(window.conversation.id)
    before = window.store.messages(conv.id)
    kept = window.store.versions(before[1].id)
    path = export.export(conv, before, tmp_path / "chat.json", {before[1].id: kept})
    window.new_conversation()
    window.import_conversation(str(path))
    copy = window.store.get(window.conversation.id)
    assert copy.id != conv.id and (copy.title, copy.system_prompt, copy.preset, copy.top_k, copy.temperature) == \
        (conv.title, "Answer in one word.", "balanced", 40, 0.7)
    after = window.store.messages(copy.id)
    assert [(m.role, m.content, m.created, m.stats, m.complete) for m in after] == \
        [(m.role, m.content, m.created, m.stats, m.complete) for m in before]
    assert recorded_answer() in window.transcript.toPlainText() and window.sampling.top_k.value() == 40
    assert window.store.version_positions(copy.id) == {after[1].id: (2, 2)}  # the version came back too
    assert [(v.content, v.created, v.stats) for v in window.store.versions(after[1].id)] == \
        [(v.content, v.created, v.stats) for v in kept]
    assert "Imported" in window.statusBar().currentMessage()
    assert [c.id for c in window.store.conversations()][0] == copy.id  # listed, newest first


def test_an_openai_message_list_becomes_a_conversation(qtbot, make_window, tmp_path):
    window = make_window(FakeBackend())
    path = tmp_path / "from-elsewhere.json"
    path.write_text(json.dumps([{"role": "system", "content": "Be terse."},
                                {"role": "user", "content": [{"type": "text", "text": "Capital of Italy?"}]},
                                {"role": "assistant", "content": "Rome."}]))
    window.import_conversation(str(path))
    conv = window.store.get(window.conversation.id)
    assert (conv.title, conv.system_prompt, conv.preset) == ("Capital of Italy?", "Be terse.", "greedy")
    assert [(m.role, m.content, m.stats) for m in window.store.messages(conv.id)] == \
        [("user", "Capital of Italy?", None), ("assistant", "Rome.", None)]
    answer(qtbot, window, "And of Spain?")  # it goes on like any conversation
    assert window.backend.calls[-1][0][:3] == [{"role": "system", "content": "Be terse."},
                                               {"role": "user", "content": "Capital of Italy?"},
                                               {"role": "assistant", "content": "Rome."}]


@pytest.mark.parametrize("content, why", [
    (b"\xff\xfe not text", "not UTF-8"),
    (b"{not json", "not JSON"),
    (b'{"title": "x"}', "no messages"),
    (b'[{"role": "tool", "content": "42"}]', "has role 'tool'"),
    (b'[{"role": "user", "content": "hi"}, {"role": "system", "content": "late"}]', "after the conversation began"),
    (b'[{"role": "user", "content": 5}]', "not text"),
])
def test_a_file_it_cannot_take_says_why_and_adds_nothing(qtbot, make_window, tmp_path, dialogs, content, why):
    window = make_window(FakeBackend())
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    window.import_conversation(str(path))
    [shown] = dialogs.shown
    assert shown["title"] == "Import failed" and why in shown["text"] and "Nothing was added" in shown["text"]
    assert window.store.conversations() == [] and window.conversation is None


def test_parse_needs_no_window():
    imported = import_chat.parse({"messages": [{"role": "developer", "content": "Rules."},
                                               {"role": "user", "content": "hi"}]})
    assert imported.system_prompt == "Rules." and imported.title == "hi" and imported.settings == {}


def test_the_sidebars_json_export_carries_the_versions(qtbot, make_window, tmp_path, monkeypatch):
    from app import dialogs as app_dialogs

    window = make_window(FakeBackend())
    answer(qtbot, window)
    with qtbot.waitSignal(window.host.finished, timeout=5000):
        window.chat_actions.regenerate.click()
    path = tmp_path / "out.json"
    monkeypatch.setattr(app_dialogs, "ask_save_path", lambda *a: (str(path), "JSON (*.json)"))
    window.sidebar.export()
    data = json.loads(path.read_text())
    [_user, answered] = data["messages"]
    assert answered["content"] == recorded_answer() and len(answered["versions"]) == 1
    assert answered["versions"][0]["content"] == recorded_answer() and "stats" in answered["versions"][0]
