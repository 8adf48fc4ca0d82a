"""The window's requests to the engine: send, edit-and-resend, regenerate, continue, and the speed
comparison; and what their answers or failures do to the transcript and the store.

Each request records what it changed in a `Turn`, so a failure puts the conversation back exactly as it
was; the history the model sees is re-read from the store after every change, so the two never drift.
"""

from __future__ import annotations

import random
import sqlite3
import time

from engine.events import READING_SHOWN_FROM, reading_text

from . import dialogs
from .answer_edit import AnswerEditDialog
from .compare import CompareJob, format_comparison, reusable
from .controls import MAX_SEED, RANDOM_SEED, parse_stops
from .conversations import AnswerWriter, Message, title_from, why_not_saved
from .turns import Turn, end_answer, format_stats, history_of, last_of
from .widgets import replace_text

CONTEXT_ERROR = "exceeds the model's context"
API_WAIT = "waiting for an API request to finish …"


class ChatFlow:
    """Mixed into MainWindow, whose widgets and state (store, conversation, host, …) it uses."""

    # Requests

    def send(self) -> None:
        text = self.prompt.toPlainText().strip()
        if not text or self.busy or self.model_name is None:
            return
        turn = Turn("edit" if self.editing else "send", text=text)
        try:
            if self.editing:
                last_user = last_of(self._saved(), "user")
                if last_user is not None:
                    turn.removed = self.store.delete_from(self.conversation.id, last_user.id)
            turn.created = self.conversation is None
            if turn.created:
                self.conversation = self.store.create(title_from(text), self.system_prompt.text(),
                                                      **self.sampling.values())
            else:
                self._save_conversation_settings()
            turn.user_id = self.store.add_message(self.conversation.id, "user", text)
        except sqlite3.Error as exc:
            # Nothing is lost: the message stays in the box (it is cleared only once saved), and whatever
            # this turn had already changed in the store is put back.
            self._not_saved(turn, exc)
            return
        if turn.created:
            self.settings.setValue("last_conversation", self.conversation.id)
        self.prompt.clear()
        if self.editing:
            self.set_editing(False)
            # The draft set aside when the edit began was not sent: back in the box for the next message.
            replace_text(self.prompt, self._draft)
            self._draft = ""
        if turn.kind == "send":
            self.transcript.add_user(text)  # the rest of the transcript stands: no need to redraw it
        self._start(turn)

    def regenerate(self) -> None:
        """A new answer in the last one's place; the last one is kept as a version (‹ 1/2 › under it)."""
        last = self._last_answer()
        if last is None:
            return
        try:
            version = self.store.save_version(last)
        except sqlite3.Error as exc:
            self._not_saved(None, exc)
            return
        self._start(Turn("regenerate", renewed=last, version_id=version))

    def continue_answer(self) -> None:
        last = self._last_answer()
        if last is None:
            return
        self._start(Turn("continue", extended=last))

    def begin_edit(self) -> None:
        last_user = last_of(self._saved(), "user") if self.conversation and not self.busy else None
        if last_user is None:
            return
        if not self.editing:  # a draft in the box comes back when the edit is cancelled
            self._draft = self.prompt.toPlainText()
        replace_text(self.prompt, last_user.content)
        self.set_editing(True)
        self.prompt.setFocus()

    def edit_answer(self) -> None:
        """Opens the last answer in a dialog (window-modal, not blocking the event loop); OK saves the text
        as the answer, the model's kept as a version."""
        saved = self._saved() if not self.busy else []
        if not saved or saved[-1].role != "assistant":
            return
        dialog = self.answer_dialog = AnswerEditDialog(saved[-1].content, self)
        dialog.finished.connect(lambda _result: self._answer_edited(saved[-1].id, dialog))
        dialog.open()

    def _answer_edited(self, mid: int, dialog: AnswerEditDialog) -> None:
        self.answer_dialog = None
        dialog.deleteLater()
        text = dialog.result_text
        if self.busy or self.conversation is None:
            return
        self._write_unsaved(now=True)
        saved = self._saved()
        if text is None or not saved or saved[-1].id != mid or text == saved[-1].content:
            return  # cancelled, unchanged, or the conversation moved on meanwhile
        if mid in self._unsaved:
            self.statusBar().showMessage("This answer is not saved yet (the disk refused it); it can be edited "
                                         "once it is", 10_000)
            return
        if self.editing:  # a Resend now would replace the answer just written: the edit of the message ends
            self.cancel_edit()
        last = saved[-1]
        stats = {"model": (last.stats or {}).get("model", "Assistant"), "edited": True, "notes": ["edited"]}
        try:
            self.store.rewrite_answer(last, text, stats)
        except sqlite3.Error as exc:
            self._report("Could not save", f"The edited answer could not be saved: {why_not_saved(self.store, exc)}."
                                           f" The answer is as it was.")
            return
        self._measured.pop(mid, None)
        self._redraw_in_place()
        self._after_request()

    def set_editing(self, on: bool) -> None:
        self.editing = on
        self.chat_actions.edit_label.setVisible(on)
        self.send_button.setText("Resend" if on else "Send")

    def compare(self) -> None:
        last = self._last_answer()
        if last is None or not self.method.toggle.isEnabled():
            return
        saved = self._saved()
        subspec = {"method": "subspec", **self.method.tree()}
        job = CompareJob(last.id, self._model_messages(history_of(saved[:-1])), subspec, ["subspec", "vanilla"])
        tps = reusable(self._measured.get(last.id), self.model_name, subspec)
        if tps:
            job.speeds["subspec"] = tps
            job.runs = ["vanilla"]  # the answer on screen already timed SubSpec, greedy, in this session
        self._compare = job
        self.busy = True
        self._update_controls()
        self._run_compare()

    def stop(self) -> None:
        if self.busy:
            if self._compare is not None:
                # (the next run's request would clear the worker's Stop: the job remembers it)
                self._compare.stopped = True
            self.host.stop()
        else:
            self.cancel_edit()

    def cancel_edit(self) -> None:
        """Leave an edit unsent (Esc, or another conversation opened): the box gets back what it held
        before the edit began."""
        if self.editing:
            self.set_editing(False)
            replace_text(self.prompt, self._draft)
            self._draft = ""

    # Answers

    def _start(self, turn: Turn) -> None:
        cid = self.conversation.id
        try:
            self.writer = AnswerWriter(self.store, cid, self.ANSWER_SAVE_INTERVAL_S, extend=turn.extended,
                                       on_error=self._answer_not_saved, renew=turn.renewed)
        except sqlite3.Error as exc:
            self._not_saved(turn, exc)
            return
        self._turn = turn
        self._unsaved.pop(self.writer.id, None)  # (a continued unsaved answer: the writer holds its text now)
        saved = [m for m in self._saved() if m.id != self.writer.id]
        self.history = history_of(saved + ([turn.extended] if turn.extended else []))
        if turn.kind != "send":
            self.transcript.clear()
            self._replay(saved)
        self.transcript.begin_assistant(self.model_name, turn.extended.content if turn.extended else "")
        self.busy = True
        self.stats_dock.begin_answer(self.plain_speeds.get(self.model_name))
        self.sidebar.refresh(cid)
        self._answer_started = False
        # The worker runs one thing at a time: an API request in progress goes first.
        self.stats_label.setText(API_WAIT if self._api_running else "generating …")
        self._update_controls()
        self.prompt.setFocus()  # after a click on a button, typing should go on in the box
        sampling = self.sampling.values()
        params = {**self.params, **{k: v for k, v in sampling.items() if k not in ("preset", "seed", "stop")},
                  **self.method.params(), **self.thinking.params(), "continue_final": turn.kind == "continue",
                  "stop": parse_stops(sampling["stop"])}
        if sampling["temperature"] > 0:
            # Chosen here, not in the engine, so that the answer can say which seed gave it (and be had again).
            params["seed"] = sampling["seed"] if sampling["seed"] != RANDOM_SEED else random.randint(0, MAX_SEED)
        self._request = params
        self.host.generate(self._model_messages(self.history), params)

    def _on_api_busy(self, running: bool) -> None:
        self._api_running = running
        if self.busy and self.stats_label.text() in (API_WAIT, "generating …") and not self._answer_started:
            # (an answer sent just before the request began, or queued behind a second one, waits too)
            self.stats_label.setText(API_WAIT if running else "generating …")

    def _on_prompt_progress(self, done: int, total: int) -> None:
        """A long prompt is being read: how far, so that seconds before the first token do not look like a
        hang (Stop ends the reading; what was read is kept for the next answer)."""
        if not self.busy or self._answer_started or self._compare is not None or total < READING_SHOWN_FROM:
            return
        self.stats_label.setText(reading_text(done, total) if done < total else "generating …")

    def _on_token(self, text: str) -> None:
        self._answer_started = True
        if self.busy and self.writer is not None:
            self.transcript.append_text(text)  # on screen whatever happens to the write
            self.writer.append(text)

    def _on_finished(self, summary: dict) -> None:
        if self._compare is not None:
            self._compare_step(summary)
            return
        if self.writer is None:  # the window was closed mid-answer and has saved what it had
            return
        self.stats_dock.flush()
        self.busy = False
        text = self.writer.text
        stats = {k: v for k, v in summary.items() if k != "text"}
        if self._request.get("seed") is not None:
            stats["seed"] = self._request["seed"]
        if self._turn and self._turn.kind == "continue":
            stats["continued"] = True
            # The stats describe the part just written, but what the engine changed to write the earlier
            # part (a rolling context, a shallower tree) is still true of the answer: keep those notes.
            earlier = (self._turn.extended.stats or {}).get("notes", [])
            notes = earlier + [n for n in stats.get("notes", []) if n not in earlier]
            if notes:
                stats["notes"] = notes
        # A stopped answer is kept, in the history too: the user saw it, so the model should too.
        saved = self.writer.finish(text, stats)
        error = self.writer.error
        if not saved:  # on screen, in the history and in any redraw until it can be written
            self._unsaved[self.writer.id] = Message(self.writer.id, "assistant", text, time.time(), stats, True)
            self._retry_writes_at = time.monotonic() + self.RETRY_WRITES_S
        self._measured[self.writer.id] = {**stats, "temperature": self._request.get("temperature"),
                                          "repetition_penalty": self._request.get("repetition_penalty", 1.0)}
        if stats.get("method") == "vanilla" and stats.get("new_tokens", 0) >= 2 and stats["tokens_per_s"] > 0:
            self.plain_speeds[self.model_name] = stats["tokens_per_s"]
        answer_id = self.writer.id
        self.writer = None
        self._turn = None
        try:  # a regenerated answer's other versions: ‹ 2/2 › under it
            position = self.store.version_positions(self.conversation.id).get(answer_id)
        except sqlite3.Error:
            position = None
        end_answer(self.transcript, summary["finish_reason"], stats, text,
                   (answer_id, *position, True) if position else None, branch=answer_id if saved else None)
        self.history = history_of(self._saved())
        self.stats_label.setText(format_stats(summary))
        self._after_request()
        if not saved:
            self.transcript.add_error(f"This answer could not be saved ({error}). It is kept while the app "
                                      f"runs and saved as soon as writing works again; copy it to be sure.")

    # Saving failed (a full disk, a database another program holds)

    def _not_saved(self, turn: Turn | None, exc: sqlite3.Error) -> None:
        """A request could not be saved before it started: put back what it changed, say so; a typed
        message is still in the box."""
        self._put_back(turn, None)
        self._update_controls()
        why = why_not_saved(self.store, exc)
        if not getattr(self.store, "read_only", False):
            why += ". Free some disk space (or close the program holding the file) and try again"
        kept = " Your message is still in the box." if turn is not None and turn.text else ""
        self._report("Could not save", f"The conversation could not be saved: {why}.{kept}")

    def _answer_not_saved(self, exc: sqlite3.Error) -> None:
        """A write of the answer being written failed: it goes on on screen, and its text is written at the
        next try (once a second) or at its end."""
        self.statusBar().showMessage(f"The answer cannot be saved right now ({exc}); it goes on on screen and "
                                     f"is saved as soon as writing works again.", 60_000)

    def _report(self, title: str, message: str) -> None:
        if self._on_error:
            self._on_error(title, message, "")
        else:
            dialogs.show_error(self, title, message)

    def _on_failed(self, message: str, details: str) -> None:
        self.stats_dock.flush()
        if self.busy:
            self.busy = False
            if self._compare is not None:
                self._compare = None
                self._restyle_now()
                self.transcript.add_error(f"Comparison failed: {message}")
            else:
                self._undo_turn()
                self._restyle_now()  # before the error line, which a later redraw (from the store) would drop
                self.transcript.add_error(self._explain(message))
            self.stats_label.setText("")
            self._after_request()
            if CONTEXT_ERROR in message:
                return  # the user's input, not a fault: the line in the transcript says what to do
        else:
            self._load_failed()
        if self._on_error:
            self._on_error("Engine error", message, details)
        else:
            dialogs.show_error(self, "Engine error", message, details)

    def _restyle_now(self) -> None:
        """The appearance changed during the request: redraw the transcript now that it is over."""
        if self._restyle_pending and not self.busy:
            self._on_theme_changed()

    def _explain(self, message: str) -> str:
        if CONTEXT_ERROR in message:
            # Earlier turns are left out of a prompt that outgrows the context (app.backend); this is the
            # latest message itself not fitting, with room for an answer.
            return (f"This message is too long for {self.model_name}: {message}. Earlier turns are left out "
                    f"when a conversation outgrows the context, but this message (with the system prompt, "
                    f"and the answer being continued, if any) does not fit with room for an answer: "
                    f"shorten it.")
        return message

    def _undo_turn(self) -> None:
        turn, writer = self._turn, self.writer
        self._turn = self.writer = None
        if turn is None or self.conversation is None:
            return
        self._put_back(turn, writer.id if writer else None)

    def _put_back(self, turn: Turn | None, answer_id: int | None) -> None:
        """The conversation as it was before `turn` (its answer row `answer_id`), redrawn, and the turn's text
        back in the box, ready to send again (an edit still an edit). A store refusing writes keeps what it
        has: the window comes back all the same."""
        if turn is not None and self.conversation is not None:
            try:
                turn.undo(self.store, self.conversation.id, answer_id)
            except sqlite3.Error:
                pass
            if turn.created:
                self.conversation = None
                self.settings.remove("last_conversation")
        self.transcript.clear()
        self.history = self._replay(self._saved()) if self.conversation else []
        self.sidebar.refresh(self.conversation.id if self.conversation else None)
        if turn is not None and turn.text:
            self._text_back(turn)

    def _text_back(self, turn: Turn) -> None:
        """A turn that did not happen gives its text back to the box, to send again. What was typed in the
        box meanwhile (it has the focus while an answer runs) is kept too: an unsent edit's as the draft
        that Esc brings back, an unsent message's below it."""
        typed = self.prompt.toPlainText()
        if typed.strip() == turn.text:  # (refused before it was sent: the box still holds it)
            typed = ""
        if turn.kind == "edit":
            if typed.strip():
                self._draft = typed
            replace_text(self.prompt, turn.text)
            self.set_editing(True)
            return
        replace_text(self.prompt, f"{turn.text}\n\n{typed}" if typed.strip() else turn.text)
        if typed.strip():
            self.statusBar().showMessage("The message that was not answered is back in the box, above what you "
                                         "typed since", 30_000)

    def _after_request(self) -> None:
        self.model_label.setText(self.model_name or "No model loaded")  # a draft build may have used it
        self.context_meter.show_latest(self._saved())  # a failed redo put the old answer back
        self._restyle_now()
        self.sidebar.refresh()
        self._update_controls()

    # Comparison

    def _run_compare(self) -> None:
        job = self._compare
        self.stats_dock.begin_answer(self.plain_speeds.get(self.model_name))
        label = "SubSpec" if job.runs[0] == "subspec" else "plain decoding"
        self.stats_label.setText(f"comparing: {label} …")
        self.host.generate(job.messages, job.next_params({**self.params, **self.thinking.params()}))

    def _compare_step(self, summary: dict) -> None:
        job = self._compare
        why = job.record(summary)
        if why is None and not job.done:
            self._run_compare()
            return
        self._compare = None
        self.busy = False
        self.stats_dock.flush()
        if why is not None:
            self.stats_label.setText(why)
        else:
            result = job.result()
            self.plain_speeds[self.model_name] = result["plain_tps"]
            self._save_comparison(job.message_id, result)
            self.transcript.add_stats("Compared: " + format_comparison(result))
            self.stats_label.setText(format_comparison(result))
        self._after_request()

    def _save_comparison(self, message_id: int, result: dict) -> None:
        m = next((m for m in self._saved() if m.id == message_id), None)
        if m is not None:
            try:
                self.store.update_message(m.id, m.content, m.complete, {**(m.stats or {}), "compare": result})
            except sqlite3.Error as exc:
                self._background_write_failed(exc)

    def _background_write_failed(self, exc: sqlite3.Error) -> None:
        """A write the user did not ask for in so many words (a setting, a comparison's numbers) failed:
        said in the status bar; a read-only store was explained at start-up."""
        if not getattr(self.store, "read_only", False):
            self.statusBar().showMessage(f"Could not save: {exc}", 30_000)

    # Helpers

    def _saved(self) -> list[Message]:
        return self._messages(self.conversation.id) if self.conversation else []

    def _messages(self, cid: int) -> list[Message]:
        """A conversation as stored, with the answers that could not be written yet as they really are
        (kept here, and written as soon as writing works again)."""
        self._write_unsaved()
        return [self._unsaved.get(m.id, m) for m in self.store.messages(cid)]

    RETRY_WRITES_S = 5.0  # a locked file makes each try wait (SQLite's busy timeout): not on every read

    def _write_unsaved(self, now: bool = False) -> None:
        if not self._unsaved or (not now and time.monotonic() < self._retry_writes_at):
            return
        for mid, m in list(self._unsaved.items()):
            try:
                self.store.update_message(mid, m.content, m.complete, m.stats, touch=True)  # as finish would have
            except sqlite3.Error:
                self._retry_writes_at = time.monotonic() + self.RETRY_WRITES_S
                return  # still failing: tried again at a later read
            del self._unsaved[mid]

    def _last_answer(self) -> Message | None:
        """The answer a redo acts on: the conversation's last message, when it is one."""
        if self.busy or self.model_name is None or self.conversation is None:
            return None
        saved = self._saved()
        return saved[-1] if saved and saved[-1].role == "assistant" else None

    def _model_messages(self, history: list[dict]) -> list[dict]:
        system = self.system_prompt.text().strip()
        return ([{"role": "system", "content": system}] if system else []) + history
