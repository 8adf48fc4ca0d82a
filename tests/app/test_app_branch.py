"""Branch: an answer's link (or Conversation > Branch, at the last message) copies the conversation up to that
answer into a new one, with its settings and versions, and opens it; the original stays as it was."""

from app_fakes import PROMPT, FakeBackend, answer, numbered_answers
from PySide6.QtCore import Qt, QUrl
from PySide6.QtGui import QAction


def branch_links(window):
    """The transcript's Branch links' hrefs, top to bottom."""
    out = []
    block = window.transcript.document().begin()
    while block.isValid():
        it = block.begin()
        while not it.atEnd():
            f = it.fragment()
            if f.charFormat().isAnchor() and f.charFormat().anchorHref().startswith("subspec-branch:"):
                assert f.text() == "Branch"
                out.append(f.charFormat().anchorHref())
            it += 1
        block = block.next()
    return out


def contents(window, cid):
    return [(m.role, m.content, m.created, m.stats, m.complete) for m in window.store.messages(cid)]


def test_an_answers_branch_link_copies_the_conversation_up_to_it(qtbot, make_window):
    window = make_window(FakeBackend(events=numbered_answers()))
    window.system_prompt.setText("Be brief.")
    window.sampling.preset.setCurrentText("balanced")
    window.sampling.top_k.setValue(40)
    answer(qtbot, window)
    with qtbot.waitSignal(window.host.finished, timeout=5000):
        window.chat_actions.regenerate.click()  # "Answer 1." kept as a version of the first answer
    answer(qtbot, window, "And then?")
    original = window.conversation
    before = contents(window, original.id)
    first_answer = window.store.messages(original.id)[1]
    links = branch_links(window)
    assert links == [f"subspec-branch:{first_answer.id}", f"subspec-branch:{window.store.messages(original.id)[3].id}"]

    window.transcript.anchorClicked.emit(QUrl(links[0]))
    copy = window.conversation
    assert copy.id != original.id and copy.title == f"{original.title} (branch)"
    assert (copy.system_prompt, copy.preset, copy.top_k, copy.temperature) == ("Be brief.", "balanced", 40, 0.7)
    assert contents(window, copy.id) == before[:2]  # up to the answer, with its stats and times
    kept = window.store.messages(copy.id)[1]
    assert [v.content for v in window.store.versions(kept.id)] == ["Answer 1."]  # its versions came along
    assert window.store.version_positions(copy.id) == {kept.id: (2, 2)}
    assert contents(window, original.id) == before  # the original is as it was
    assert "And then?" not in window.transcript.toPlainText() and "Answer 2." in window.transcript.toPlainText()
    assert window.history == [{"role": "user", "content": PROMPT}, {"role": "assistant", "content": "Answer 2."}]
    assert "Branched" in window.statusBar().currentMessage()
    assert [c.id for c in window.store.conversations()][0] == copy.id  # at the top of the list

    answer(qtbot, window, "Another way?")  # it goes on from the branch point, with the branch's settings
    assert window.backend.calls[-1][0][-3:] == [{"role": "user", "content": PROMPT},
                                                {"role": "assistant", "content": "Answer 2."},
                                                {"role": "user", "content": "Another way?"}]
    assert window.backend.calls[-1][0][0] == {"role": "system", "content": "Be brief."}
    assert contents(window, original.id) == before


def test_the_menus_branch_copies_the_whole_conversation(qtbot, make_window):
    window = make_window(FakeBackend(events=numbered_answers()))
    answer(qtbot, window)
    original = window.conversation
    window.findChild(QAction, "branch_conversation").trigger()
    assert window.conversation.id != original.id
    assert contents(window, window.conversation.id) == contents(window, original.id)


def test_branch_waits_for_the_answer_in_progress(qtbot, make_window):
    import threading

    gate = threading.Event()
    gate.set()
    window = make_window(FakeBackend(events=numbered_answers(), gate=gate))
    answer(qtbot, window)
    link = branch_links(window)[0]
    gate.clear()  # the next answer waits mid-stream
    qtbot.keyClicks(window.prompt, "Second")
    qtbot.keyClick(window.prompt, Qt.Key.Key_Return)
    qtbot.waitUntil(lambda: window.busy, timeout=5000)
    original = window.conversation.id
    count = len(window.store.conversations())
    window.transcript.anchorClicked.emit(QUrl(link))
    assert window.conversation.id == original and len(window.store.conversations()) == count
    assert "Branch when the answer in progress is done" in window.statusBar().currentMessage()
    with qtbot.waitSignal(window.host.finished, timeout=5000):
        gate.set()


def test_a_branch_the_disk_refuses_adds_nothing(qtbot, make_window, dialogs):
    window = make_window(FakeBackend(events=numbered_answers()))
    answer(qtbot, window)
    original = window.conversation.id
    count = len(window.store.conversations())
    rows = window.store.db.execute("SELECT COUNT(*) FROM messages").fetchone()
    # The write fails half-way, after the new conversation's row: the transaction must take that back too.
    window.store.db.execute("CREATE TEMP TRIGGER refuse BEFORE INSERT ON messages BEGIN"
                            " SELECT RAISE(ABORT, 'database or disk is full'); END")
    window.transcript.anchorClicked.emit(QUrl(branch_links(window)[0]))
    window.store.db.execute("DROP TRIGGER refuse")
    assert window.conversation.id == original and len(window.store.conversations()) == count
    assert window.store.db.execute("SELECT COUNT(*) FROM messages").fetchone() == rows
    assert "could not be saved" in dialogs.shown[-1]["text"] and "Nothing was added" in dialogs.shown[-1]["text"]


def test_store_branch_refuses_a_message_of_another_conversation(tmp_path):
    import pytest

    from app.conversations import ConversationStore

    store = ConversationStore(tmp_path / "c.db")
    a, b = store.create("a"), store.create("b")
    store.add_message(a.id, "user", "hi")
    other = store.add_message(b.id, "user", "there")
    with pytest.raises(ValueError):
        store.branch(a.id, other)
    assert len(store.conversations()) == 2
