"""Regenerate, edit-and-resend and continue: what the model is sent, what the transcript shows, what the
database holds afterwards, and that a failed redo puts everything back."""

import itertools
import threading

from app_fakes import PROMPT, FakeBackend, numbered_answers
from PySide6.QtCore import Qt

from engine.errors import SubspecError


def answer(qtbot, window, text=PROMPT):
    with qtbot.waitSignal(window.host.finished, timeout=5000):
        qtbot.keyClicks(window.prompt, text)
        qtbot.keyClick(window.prompt, Qt.Key.Key_Return)


def click(qtbot, window, button, signal="finished"):
    with qtbot.waitSignal(getattr(window.host, signal), timeout=5000):
        button.click()


def saved(window):
    return [(m.role, m.content, m.complete) for m in window.store.messages(window.conversation.id)]


def version_links(window):
    """{arrow: href} of the transcript's version links."""
    out = {}
    block = window.transcript.document().begin()
    while block.isValid():
        it = block.begin()
        while not it.atEnd():
            f = it.fragment()
            if f.charFormat().isAnchor() and f.charFormat().anchorHref().startswith("subspec-version:"):
                out[f.text()] = f.charFormat().anchorHref()
            it += 1
        block = block.next()
    return out


def test_regenerate_replaces_the_last_answer_and_keeps_the_old_one_as_a_version(qtbot, make_window):
    from PySide6.QtCore import QUrl

    window = make_window(FakeBackend(events=numbered_answers()))
    answer(qtbot, window)
    assert "1/1" not in window.transcript.toPlainText()  # one version: no arrows
    assert window.chat_actions.regenerate.isEnabled()
    click(qtbot, window, window.chat_actions.regenerate)
    assert window.backend.calls[1][0] == [{"role": "user", "content": PROMPT}]
    assert saved(window) == [("user", PROMPT, True), ("assistant", "Answer 2.", True)]
    text = window.transcript.toPlainText()
    assert "Answer 2." in text and "Answer 1." not in text and text.count("You\n") == 1
    assert text.rstrip().endswith("‹ 2/2 ›") and set(version_links(window)) == {"‹"}
    assert window.history[-1] == {"role": "assistant", "content": "Answer 2."}

    with qtbot.waitSignal(window.host.unloaded, timeout=5000):
        window.unload_model()  # no model is needed to pick a version
    window.transcript.anchorClicked.emit(QUrl(version_links(window)["‹"]))  # the first version again
    assert saved(window) == [("user", PROMPT, True), ("assistant", "Answer 1.", True)]
    text = window.transcript.toPlainText()
    assert "Answer 1." in text and "Answer 2." not in text and text.rstrip().endswith("‹ 1/2 ›")
    assert window.history[-1] == {"role": "assistant", "content": "Answer 1."}  # what the model sees next
    with qtbot.waitSignal(window.host.loaded, timeout=5000):
        window._retry_load()
    answer(qtbot, window, "And of Italy?")
    assert window.backend.calls[2][0][1] == {"role": "assistant", "content": "Answer 1."}
    window.transcript.anchorClicked.emit(QUrl(version_links(window)["›"]))  # no longer the last answer
    assert window.history[1]["content"] == "Answer 1." and "last answer only" in window.statusBar().currentMessage()
    conversation = window.conversation.id
    window.new_conversation()
    window.open_conversation(conversation)  # kept in the store: the same line when reopened, its arrows inactive
    assert "‹ 1/2 ›" in window.transcript.toPlainText() and version_links(window) == {}


def test_edit_and_resend_replaces_the_last_message_and_what_follows(qtbot, make_window):
    window = make_window(FakeBackend(events=numbered_answers()))
    answer(qtbot, window)
    answer(qtbot, window, "And of Italy?")
    window.chat_actions.edit.click()
    assert window.editing and window.prompt.toPlainText() == "And of Italy?"
    assert window.send_button.text() == "Resend" and not window.chat_actions.edit_label.isHidden()
    window.prompt.clear()
    answer(qtbot, window, "And of Spain?")
    assert not window.editing and window.send_button.text() == "Send"
    assert saved(window) == [("user", PROMPT, True), ("assistant", "Answer 1.", True),
                             ("user", "And of Spain?", True), ("assistant", "Answer 3.", True)]
    assert [m["content"] for m in window.backend.calls[2][0]] == [PROMPT, "Answer 1.", "And of Spain?"]
    text = window.transcript.toPlainText()
    assert "Italy" not in text and "Answer 2." not in text and "And of Spain?" in text


def test_escape_cancels_an_edit(qtbot, make_window):
    window = make_window()
    answer(qtbot, window)
    window.chat_actions.edit.click()
    qtbot.keyClick(window.prompt, Qt.Key.Key_Escape)
    assert not window.editing and window.prompt.toPlainText() == ""
    assert len(saved(window)) == 2


def test_continue_extends_the_last_answer_in_place(qtbot, make_window):
    window = make_window(FakeBackend(events=numbered_answers()))
    answer(qtbot, window)
    answer_id = window.store.messages(window.conversation.id)[1].id
    click(qtbot, window, window.chat_actions.continue_)
    messages, params = window.backend.calls[1]
    assert params["continue_final"] is True
    assert messages == [{"role": "user", "content": PROMPT}, {"role": "assistant", "content": "Answer 1."}]
    [_user, extended] = window.store.messages(window.conversation.id)
    assert (extended.id, extended.content, extended.complete) == (answer_id, "Answer 1.Answer 2.", True)
    assert extended.stats["continued"] is True
    text = window.transcript.toPlainText()
    assert text.count("FakeLM-1M\n") == 1 and "Answer 1.Answer 2." in text
    assert window.backend.calls[0][1]["continue_final"] is False  # an ordinary send does not continue


def test_a_failed_regenerate_or_continue_puts_the_answer_back(qtbot, make_window, dialogs):
    window = make_window(FakeBackend(events=numbered_answers(), fail_on_call={1, 2}, fail_after=1,
                                     fail_error=SubspecError("the GPU fell over")))
    answer(qtbot, window)
    before = window.store.messages(window.conversation.id)
    for button in (window.chat_actions.regenerate, window.chat_actions.continue_):
        click(qtbot, window, button, "failed")
        assert window.store.messages(window.conversation.id) == before
        text = window.transcript.toPlainText()
        assert "Answer 1." in text and "Answer 2" not in text and "\N{WARNING SIGN} the GPU fell over" in text
        assert window.history[-1]["content"] == "Answer 1." and not window.busy
        assert window.store.version_positions(window.conversation.id) == {}  # no version of a failed one
        assert "1/2" not in text
    assert len(dialogs.shown) == 2


def test_a_failed_edit_restores_the_old_turn_and_keeps_the_new_text(qtbot, make_window, dialogs):
    window = make_window(FakeBackend(events=numbered_answers(), fail_on_call={1}, fail_after=1,
                                     fail_error=SubspecError("the GPU fell over")))
    answer(qtbot, window)
    window.chat_actions.edit.click()
    window.prompt.clear()
    with qtbot.waitSignal(window.host.failed, timeout=5000):
        qtbot.keyClicks(window.prompt, "Rephrased")
        qtbot.keyClick(window.prompt, Qt.Key.Key_Return)
    assert saved(window) == [("user", PROMPT, True), ("assistant", "Answer 1.", True)]
    assert window.prompt.toPlainText() == "Rephrased" and window.editing  # Enter retries the edit
    answer(qtbot, window, "")
    assert saved(window) == [("user", "Rephrased", True), ("assistant", "Answer 3.", True)]


def test_redo_buttons_follow_the_conversation(qtbot, make_window):
    window = make_window()
    actions = window.chat_actions
    assert not any(b.isEnabled() for b in actions.buttons())  # nothing to redo in an empty chat
    answer(qtbot, window)
    assert all(b.isEnabled() for b in actions.buttons())
    window.new_conversation()
    assert not any(b.isEnabled() for b in actions.buttons())


def test_continue_keeps_the_notes_of_the_part_it_continues(qtbot, make_window):
    """The first part was written with earlier turns left out; continuing it does not make that untrue."""
    from dataclasses import replace

    first_note = "2 earlier messages were left out: the conversation is longer than the context."
    calls = itertools.count()

    def events():
        evs = numbered_answers()()
        if next(calls) == 0:
            evs[1] = replace(evs[1], note=first_note)
        return evs

    window = make_window(FakeBackend(events=events))
    answer(qtbot, window)
    click(qtbot, window, window.chat_actions.continue_)
    [_user, extended] = window.store.messages(window.conversation.id)
    assert extended.stats["continued"] is True and extended.stats["notes"] == [first_note]
    conversation = window.conversation.id
    window.new_conversation()
    window.open_conversation(conversation)
    assert f"[{first_note}]" in window.transcript.toPlainText()


def test_an_edit_keeps_the_draft_it_replaced_and_undo_works(qtbot, make_window):
    """Edit (Ctrl+Shift+E) with a half-typed message in the box: Esc cancels the edit and gives the draft
    back; and the replaced text is one Ctrl+Z away (it was gone for good)."""
    window = make_window(FakeBackend(events=numbered_answers()))
    answer(qtbot, window)
    qtbot.keyClicks(window.prompt, "half a thought")
    window.chat_actions.edit.click()
    assert window.editing and window.prompt.toPlainText() == PROMPT
    window.prompt.undo()
    assert window.prompt.toPlainText() == "half a thought"
    window.prompt.redo()
    qtbot.keyClick(window.prompt, Qt.Key.Key_Escape)
    assert not window.editing and window.prompt.toPlainText() == "half a thought"


def test_a_failed_answer_gives_its_message_back_above_what_was_typed_since(qtbot, make_window, dialogs):
    """The box has the focus while an answer runs: the next message may be half typed when this one fails.
    Both are kept (the failed one used to come back only into an empty box, and was otherwise lost)."""
    gate = threading.Event()
    window = make_window(FakeBackend(events=numbered_answers(), fail_on_call={0}, fail_after=2, gate=gate,
                                     fail_error=SubspecError("the GPU fell over")))
    with qtbot.waitSignal(window.host.failed, timeout=5000):
        qtbot.keyClicks(window.prompt, PROMPT)
        qtbot.keyClick(window.prompt, Qt.Key.Key_Return)
        assert window.busy and window.prompt.toPlainText() == ""
        qtbot.keyClicks(window.prompt, "And of Italy?")
        gate.set()
    assert window.prompt.toPlainText() == f"{PROMPT}\n\nAnd of Italy?" and not window.editing
    assert window.conversation is None and "above what you typed" in window.statusBar().currentMessage()


def test_resending_an_edit_gives_back_the_draft_it_set_aside(qtbot, make_window, dialogs):
    window = make_window(FakeBackend(events=numbered_answers(), fail_on_call={2}, fail_after=1,
                                     fail_error=SubspecError("the GPU fell over")))
    answer(qtbot, window)
    qtbot.keyClicks(window.prompt, "half a thought")
    window.chat_actions.edit.click()
    window.prompt.clear()
    answer(qtbot, window, "Rephrased")
    assert saved(window) == [("user", "Rephrased", True), ("assistant", "Answer 2.", True)]
    assert window.prompt.toPlainText() == "half a thought" and not window.editing  # it was dropped
    # An edit that fails while the draft is back in the box: the edit is ready to retry, the draft behind Esc.
    window.chat_actions.edit.click()
    window.prompt.clear()
    with qtbot.waitSignal(window.host.failed, timeout=5000):
        qtbot.keyClicks(window.prompt, "Third try")
        qtbot.keyClick(window.prompt, Qt.Key.Key_Return)
    assert window.prompt.toPlainText() == "Third try" and window.editing
    assert saved(window) == [("user", "Rephrased", True), ("assistant", "Answer 2.", True)]
    qtbot.keyClick(window.prompt, Qt.Key.Key_Escape)
    assert window.prompt.toPlainText() == "half a thought" and not window.editing


def test_leaving_a_conversation_mid_edit_cancels_the_edit(qtbot, make_window):
    """The edited text belonged to the conversation left: sent in another, it would have replaced that
    one's last message. The box gets its draft back instead."""
    window = make_window(FakeBackend(events=numbered_answers()))
    answer(qtbot, window)
    first = window.conversation.id
    window.new_conversation()
    answer(qtbot, window, "Second chat")
    qtbot.keyClicks(window.prompt, "draft")
    window.chat_actions.edit.click()
    assert window.prompt.toPlainText() == "Second chat"
    window.open_conversation(first)
    assert not window.editing and window.prompt.toPlainText() == "draft"
    window.chat_actions.edit.click()
    assert window.prompt.toPlainText() == PROMPT
    window.new_conversation()
    assert not window.editing and window.prompt.toPlainText() == "draft"


def test_the_last_answer_can_be_rewritten_and_the_models_stays_a_version(qtbot, make_window, dialogs):
    from PySide6.QtCore import QUrl
    from PySide6.QtWidgets import QDialogButtonBox

    window = make_window(FakeBackend(events=numbered_answers()))
    answer(qtbot, window)
    assert window.chat_actions.edit_answer.isEnabled()

    def edit_to(text, button=QDialogButtonBox.StandardButton.Ok):
        window.chat_actions.edit_answer.click()
        dialog = window.answer_dialog
        assert dialog.isVisible() and dialog.editor.toPlainText() in ("Answer 1.", "Paris, of course.")
        dialog.editor.setPlainText(text)
        dialog.findChild(QDialogButtonBox).button(button).click()
        return dialog

    edit_to("Changed my mind", QDialogButtonBox.StandardButton.Cancel)
    assert saved(window) == [("user", PROMPT, True), ("assistant", "Answer 1.", True)]
    dialog = edit_to("   ")  # empty: refused, the dialog stays with the reason
    assert dialog.isVisible() and "cannot be empty" in dialog.error.text()
    dialog.reject()
    edit_to("Paris, of course.")
    assert saved(window) == [("user", PROMPT, True), ("assistant", "Paris, of course.", True)]
    text = window.transcript.toPlainText()
    assert "Paris, of course. [edited]" in text and text.rstrip().endswith("‹ 2/2 ›")
    assert window.history[-1] == {"role": "assistant", "content": "Paris, of course."}  # what the model sees
    with qtbot.waitSignal(window.host.finished, timeout=5000):
        window.chat_actions.continue_.click()  # and goes on from
    assert window.backend.calls[-1][0][-1] == {"role": "assistant", "content": "Paris, of course."}
    window.transcript.anchorClicked.emit(QUrl(version_links(window)["‹"]))
    assert saved(window)[-1][1] == "Answer 1." and "3 tokens" in window.transcript.toPlainText()  # its stats too
