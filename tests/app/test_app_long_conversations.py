"""Long conversations open on their latest messages, built in one go: opening 3,000 messages took over 5 s
of edits laid out one by one."""

import contextlib

from app_fakes import PROMPT
from PySide6.QtCore import Qt, QUrl

from app.conversations import Message
from app.turns import replay
from app.widgets import Transcript

MESSAGES = [
    Message(1, "user", "Hi **there**", 0, None, True),
    Message(2, "assistant", "> a quote first\n\n- a\n- b\n\n```python\nx = 1\n```\n\nand `code` [a link](http://x)", 0,
            {"model": "M", "new_tokens": 3, "tokens_per_s": 2.0, "ttft_s": 0.1, "finish_reason": "eos",
             "method": "vanilla", "notes": ["the context rolled"]}, True),
    Message(3, "user", "more", 0, None, True),
    Message(4, "assistant", "```\ncut off by a crash", 0, {"model": "M"}, False),
]


def test_a_replay_built_apart_looks_exactly_like_one_written_edit_by_edit(qapp):
    batched, direct = Transcript(), Transcript()
    direct.batch = lambda: contextlib.nullcontext()  # every edit straight into the view, as before
    assert replay(batched, MESSAGES) == replay(direct, MESSAGES)
    assert batched.toHtml() == direct.toHtml() and batched.copies == direct.copies
    assert "cut off by a crash" in batched.toPlainText() and "[interrupted]" in batched.toPlainText()


def test_a_long_conversation_opens_on_its_latest_messages_and_shows_the_rest_when_asked(qtbot, make_window):
    window = make_window()
    store = window.store
    cid = store.create("long").id
    for i in range(225):
        store.add_message(cid, "user", f"question {i}")
        store.add_message(cid, "assistant", f"answer {i}", stats={"model": "FakeLM-1M"})
    window.open_conversation(cid)
    text = window.transcript.toPlainText()
    assert text.startswith("250 earlier messages not shown · Show them")
    assert "question 125\n" in text and "answer 124\n" not in text and "answer 224" in text
    assert len(window.history) == 450  # the model still sees all of it (as far as its context goes)
    window.transcript._on_anchor(QUrl("subspec-earlier:"))  # "Show them"
    text = window.transcript.toPlainText()
    assert "not shown" not in text and text.startswith("You\nquestion 0\n") and "answer 224" in text
    with qtbot.waitSignal(window.host.finished, timeout=5000):  # a redo redraws: still all of it
        window.chat_actions.regenerate.click()
    assert "question 0\n" in window.transcript.toPlainText()
    window.new_conversation()
    window.open_conversation(cid)  # opened again: from the latest
    assert "250 earlier messages not shown" in window.transcript.toPlainText()
    qtbot.keyClicks(window.prompt, PROMPT)
    with qtbot.waitSignal(window.host.finished, timeout=5000):
        qtbot.keyClick(window.prompt, Qt.Key.Key_Return)
    assert window.transcript.toPlainText().startswith("250 earlier")  # a send adds to what is shown


def test_the_shown_part_starts_with_a_question_not_half_an_exchange(qapp):
    view = Transcript()
    history = replay(view, MESSAGES, keep=3)  # the last 3 would start with an answer: its question comes too
    assert "earlier" not in view.toPlainText() and view.toPlainText().startswith("You\nHi")
    assert history == [{"role": m.role, "content": m.content} for m in MESSAGES]
    view = Transcript()
    replay(view, MESSAGES, keep=1)  # the last one is an answer: shown with its question
    assert view.toPlainText().startswith("2 earlier messages not shown · Show them\nYou\nmore")
