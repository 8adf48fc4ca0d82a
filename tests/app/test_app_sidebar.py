"""The conversations sidebar: new, open, rename, delete (with confirmation), search."""

import threading

import pytest
from app_fakes import PROMPT, FakeBackend, endless_events, recorded_answer
from PySide6.QtCore import Qt

from app import dialogs as app_dialogs


def answer(qtbot, window, text):
    with qtbot.waitSignal(window.host.finished, timeout=5000):
        qtbot.keyClicks(window.prompt, text)
        qtbot.keyClick(window.prompt, Qt.Key.Key_Return)


@pytest.fixture
def two_chats(qtbot, make_window):
    """A window with two conversations: "France" (older) and "Italy" (current)."""
    window = make_window()
    answer(qtbot, window, PROMPT)
    france = window.conversation.id
    window.sidebar.new_button.click()
    answer(qtbot, window, "What is the capital of Italy?")
    italy = window.conversation.id
    return window, france, italy


def select(window, cid):
    row = window.sidebar.ids().index(cid)
    window.sidebar.list.setCurrentRow(row)


def test_new_starts_an_empty_chat_and_the_list_shows_newest_first(qtbot, two_chats):
    window, france, italy = two_chats
    assert france != italy
    assert window.sidebar.ids() == [italy, france] and window.sidebar.current_id() == italy
    assert window.history[0]["content"] == "What is the capital of Italy?"
    window.sidebar.new_button.click()
    assert window.conversation is None and window.history == [] and window.transcript.toPlainText() == ""
    assert window.sidebar.current_id() is None
    assert window.sampling.values()["preset"] == "greedy" and window.system_prompt.text() == ""


def test_selecting_a_conversation_opens_it(qtbot, two_chats):
    window, france, _italy = two_chats
    select(window, france)
    assert window.conversation.id == france
    assert window.history == [{"role": "user", "content": PROMPT},
                              {"role": "assistant", "content": recorded_answer()}]
    assert "What is the capital of Italy?" not in window.transcript.toPlainText()
    assert window.settings.value("last_conversation") in (france, str(france))


def test_rename(qtbot, two_chats, monkeypatch):
    window, france, _italy = two_chats
    select(window, france)
    asked = []

    def ask_text(_parent, _title, _label, text=""):
        asked.append(text)
        return "  Paris  "

    monkeypatch.setattr(app_dialogs, "ask_text", ask_text)
    window.sidebar.rename_button.click()
    assert asked == [PROMPT]
    assert window.store.get(france).title == "Paris"
    assert window.sidebar.list.currentItem().text().startswith("Paris\n")
    monkeypatch.setattr(app_dialogs, "ask_text", lambda *_a, **_k: None)  # cancelled
    window.sidebar.rename_button.click()
    assert window.store.get(france).title == "Paris"


def test_delete_asks_first(qtbot, two_chats, monkeypatch):
    window, france, italy = two_chats
    questions = []
    monkeypatch.setattr(app_dialogs, "confirm", lambda _p, _t, q: questions.append(q) or False)
    window.sidebar.delete_button.click()
    assert window.store.get(italy) is not None and "capital of Italy" in questions[0]

    monkeypatch.setattr(app_dialogs, "confirm", lambda *_a: True)
    window.sidebar.delete_button.click()
    assert window.store.get(italy) is None and window.store.messages(italy) == []
    assert window.sidebar.ids() == [france]
    assert window.conversation is None and window.transcript.toPlainText() == ""  # it was the open one


def test_deleting_another_conversation_keeps_the_open_one(qtbot, two_chats, monkeypatch):
    window, france, italy = two_chats
    monkeypatch.setattr(app_dialogs, "confirm", lambda *_a: True)
    window.sidebar.list.blockSignals(True)  # highlight without opening, as a right-click would
    select(window, france)
    window.sidebar.list.blockSignals(False)
    window.sidebar.delete_button.click()
    assert window.sidebar.ids() == [italy] and window.conversation.id == italy


def test_search_filters_by_title_and_content(qtbot, two_chats):
    window, france, italy = two_chats
    window.sidebar.search.setText("italy")
    assert window.sidebar.ids() == [italy]
    window.sidebar.search.setText("Paris")  # only in the answers
    assert window.sidebar.ids() == [italy, france]
    window.sidebar.search.setText("no such words")
    assert window.sidebar.ids() == []
    window.sidebar.search.clear()
    assert window.sidebar.ids() == [italy, france]
    assert window.conversation.id == italy  # filtering does not switch conversations


def test_the_sidebar_is_locked_while_answering(qtbot, make_window):
    gate = threading.Event()
    window = make_window(FakeBackend(events=endless_events, gate=gate))
    with qtbot.waitSignal(window.host.token, timeout=5000):
        qtbot.keyClicks(window.prompt, PROMPT)
        qtbot.keyClick(window.prompt, Qt.Key.Key_Return)
    assert not window.sidebar.isEnabled()
    window.new_conversation()  # Ctrl+N mid-answer is ignored
    assert window.conversation is not None
    with qtbot.waitSignal(window.host.finished, timeout=5000):
        window.stop()
        gate.set()
    assert window.sidebar.isEnabled()


def test_export_writes_markdown_or_json_and_a_failure_is_a_dialog(qtbot, two_chats, monkeypatch, tmp_path, dialogs):
    import json

    window, france, _italy = two_chats
    select(window, france)
    window.store.update(france, system_prompt="Answer in one sentence.")
    asked = []

    def save_to(path, chosen="Markdown (*.md)"):
        def ask(_parent, _title, name, filters):
            asked.append((name, filters))
            return str(path), chosen
        return ask

    monkeypatch.setattr(app_dialogs, "ask_save_path", save_to(tmp_path / "france"))
    window.sidebar.export_button.click()
    assert asked[-1][0] == "What-is-the-capital-of-France.md" and "*.json" in asked[-1][1]
    md = (tmp_path / "france.md").read_text()  # no suffix given: Markdown
    assert md.startswith(f"# {PROMPT}\n") and "**System prompt**\n\nAnswer in one sentence." in md
    assert f"## You\n\n{PROMPT}\n" in md and f"## FakeLM-1M\n\n{recorded_answer()}\n" in md
    assert "7 tokens at" in md and "plain decoding" in md

    monkeypatch.setattr(app_dialogs, "ask_save_path", save_to(tmp_path / "france.json"))
    window.sidebar.export_button.click()
    data = json.loads((tmp_path / "france.json").read_text())
    assert [(m["role"], m["content"]) for m in data["messages"]] == [
        ("system", "Answer in one sentence."), ("user", PROMPT), ("assistant", recorded_answer())]
    assert data["messages"][2]["stats"]["new_tokens"] == 7 and data["settings"]["preset"] == "greedy"

    # No suffix typed with the JSON filter chosen: JSON; the file that suffix names exists, so asked first.
    monkeypatch.setattr(app_dialogs, "ask_save_path", save_to(tmp_path / "france", "JSON (*.json)"))
    questions = []
    monkeypatch.setattr(app_dialogs, "confirm", lambda _p, _t, q: questions.append(q) or False)
    window.sidebar.export_button.click()
    assert questions == ["france.json exists already. Replace it?"]
    (tmp_path / "france.json").unlink()
    window.sidebar.export_button.click()
    assert json.loads((tmp_path / "france.json").read_text())["title"] == PROMPT and len(questions) == 1

    monkeypatch.setattr(app_dialogs, "ask_save_path", save_to(tmp_path / "missing" / "x.md"))
    window.sidebar.export_button.click()
    assert dialogs.shown and "Export failed" in str(dialogs.shown[-1])
    assert not (tmp_path / "missing").exists()
    monkeypatch.setattr(app_dialogs, "ask_save_path", lambda *_a: None)  # cancelled: nothing happens
    window.sidebar.export_button.click()
