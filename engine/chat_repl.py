"""`subspec chat`: a conversation in the terminal, as `ollama run` and `lms chat` offer.

Answers stream as they are decoded (plain or SubSpec); Ctrl+C stops an answer (what was written stays in
the conversation, as in the app), Ctrl+D or /bye leaves. A conversation longer than the model's context goes
on on its latest turns (engine.context_window), and says so. Lines starting with a slash are commands;
\"\"\" opens and closes a message of several lines.
"""

from __future__ import annotations

import signal
import sys
import threading
from dataclasses import dataclass, field
from typing import Callable, Iterator

from .context_window import ROOM_AFTER_DROPPING, fit_conversation
from .errors import Stopped, SubspecError, prompt_reading
from .events import READING_SHOWN_FROM, StepEvent, reading_text, summarize

HELP = """commands:
  /bye            leave (Ctrl+D too)
  /clear          start the conversation over (the system prompt stays)
  /system TEXT    set the system prompt (/system alone removes it)
  /help           this list
  \"\"\"             a message of several lines: end it with \"\"\" on a line of its own
Ctrl+C stops an answer; what it wrote stays in the conversation."""
MULTILINE = '"""'


@dataclass
class ChatSession:
    """The conversation and how to answer in it. `decode(prompt_ids, max_new_tokens, progress)` gives the
    answer's events (plain decoding or SubSpec, with the session's sampling and stop strings); `progress`
    is its prompt_progress (engine.generate.prefill's: the prompt's reading, which it may stop)."""

    encode: Callable[[list[dict]], list[int]]
    decode: Callable[[list[int], int, Callable[[int, int], None]], Iterator[StepEvent]]
    context: int
    max_new_tokens: int = 512
    system: str = ""
    method: str = "vanilla"
    history: list[dict] = field(default_factory=list)

    def messages(self, text: str) -> list[dict]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.history + [{"role": "user", "content": text}]

    def prompt(self, text: str) -> tuple[list[int], int, int]:
        """(prompt ids, messages left out, the answer's room): the answer keeps at most half the context."""
        ids, dropped = fit_conversation(self.encode, self.messages(text),
                                        self.context - min(self.max_new_tokens, self.context // 2),
                                        slack=ROOM_AFTER_DROPPING)
        room = self.context - len(ids)
        if room < 1:
            raise SubspecError(f"this message ({len(ids)} tokens with the system prompt) fills the model's "
                               f"context of {self.context} tokens: shorten it")
        return ids, dropped, min(self.max_new_tokens, room)


def run_chat(session: ChatSession, read: Callable[[str], str] = input, out=sys.stdout, err=sys.stderr) -> int:
    """The read-answer loop; returns the exit code (0: the user left)."""
    while True:
        try:
            text = _read_message(read, err)
        except EOFError:
            print(file=out)
            return 0
        except KeyboardInterrupt:  # at the prompt: a fresh line, as a shell does
            print(file=out)
            continue
        if text is None:
            continue
        if text.startswith("/"):
            if _command(session, text, err):
                return 0
            continue
        try:
            _answer(session, text, out, err)
        except SubspecError as exc:
            print(f"error: {exc}", file=err)
        except Exception as exc:  # noqa: BLE001 - a template refusing the messages, out of memory: the chat goes on
            print(f"error: {type(exc).__name__}: {exc} (the conversation is as it was)", file=err)


def _read_message(read: Callable[[str], str], err) -> str | None:
    line = read(">>> ")
    if line.strip() != MULTILINE:
        return line.strip() or None
    lines = []
    while True:
        try:
            line = read("... ")
        except EOFError:  # input ended inside the message: it is sent as far as it goes
            line = MULTILINE
        if line.strip() == MULTILINE:
            return "\n".join(lines).strip() or None
        lines.append(line)


def _command(session: ChatSession, text: str, err) -> bool:
    """Runs a slash command; True when it is the one that leaves."""
    name, _, rest = text.partition(" ")
    if name in ("/bye", "/exit", "/quit"):
        return True
    if name == "/clear":
        session.history.clear()
        print("(the conversation starts over)", file=err)
    elif name == "/system":
        session.system = rest.strip()
        print(f"(system prompt {'set' if session.system else 'removed'})", file=err)
    elif name in ("/help", "/?"):
        print(HELP, file=err)
    else:
        print(f"unknown command {name}: /help lists them", file=err)
    return False


class _StopOnCtrlC:
    """While an answer runs, Ctrl+C asks it to stop at its next step (as the app's Stop does) instead of
    raising KeyboardInterrupt wherever the model happens to be (between two steps of streaming bookkeeping,
    say). Only on the main thread, where Python delivers signals; elsewhere KeyboardInterrupt still stops."""

    _UNSET = object()

    def __init__(self):
        self.event = threading.Event()
        self._previous = self._UNSET

    def _handle(self, _sig, _frame) -> None:
        if self.event.is_set():  # a second Ctrl+C: the step it waits for is long (a prefill): stop now
            raise KeyboardInterrupt
        self.event.set()

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self.event

    def __exit__(self, *exc):
        if self._previous is not self._UNSET:
            # (None: a handler not set from Python; Python's own is the one to give back)
            signal.signal(signal.SIGINT, self._previous if self._previous is not None else signal.default_int_handler)
        return False


class ReadingLine:
    """How far a long prompt is read, on one terminal line that each step rewrites and the end clears
    (nothing when `err` is no terminal, or for a prompt read before anyone could look)."""

    def __init__(self, err):
        self.err = err
        self.shown = 0  # the length of the line on screen
        isatty = getattr(err, "isatty", None)
        self.terminal = bool(isatty and isatty())

    def __call__(self, done: int, total: int) -> None:
        if not self.terminal or total < READING_SHOWN_FROM:
            return
        if done < total:
            line = reading_text(done, total, "...")
            self.err.write("\r" + line.ljust(self.shown))
            self.shown = len(line)
            self.err.flush()
        else:
            self.clear()

    def clear(self) -> None:
        """Blank the line (spaces, which every console takes), so that what comes next starts where it was."""
        if self.shown:
            self.err.write("\r" + " " * self.shown + "\r")
            self.err.flush()
            self.shown = 0


def _answer(session: ChatSession, text: str, out, err) -> None:
    with _StopOnCtrlC() as stop:
        _answer_until(session, text, out, err, stop)


def _answer_until(session: ChatSession, text: str, out, err, stop: threading.Event) -> None:
    ids, dropped, room = session.prompt(text)
    if stop.is_set():  # Ctrl+C before anything was written: as if not sent
        print("[stopped]", file=err)
        return
    if dropped:
        print(f"(the conversation is longer than the context of {session.context} tokens: its first {dropped} "
              f"messages are left out of this answer's prompt)", file=err)
    parts: list[str] = []
    stopped = False
    # Ctrl+C while a long prompt is read ends the reading at its next step (engine.errors.Stopped).
    reading = ReadingLine(err)
    events = session.decode(ids, room, prompt_reading(stop, reading))

    def echo(evs):
        nonlocal stopped
        for ev in evs:
            if stop.is_set():
                stopped = True
                return
            parts.append(ev.text)
            out.write(ev.text)
            out.flush()
            if ev.note:
                print(f"\nnote: {ev.note}", file=err)
            yield ev

    result = None
    try:
        result = summarize(echo(events), len(ids), session.method)
    except (KeyboardInterrupt, Stopped):
        stopped = True
    finally:
        reading.clear()  # a reading stopped or failed leaves no line behind
        close = getattr(events, "close", None)
        if close:
            close()  # ends the answer now (its KV cache kept for the next turn)
    if stopped and not parts:  # stopped before a word was written (the prompt still being read): as if not sent
        print("[stopped]", file=err)
        return
    print(file=out)
    answer = "".join(parts)
    # What was shown stays in the conversation, a stopped answer too: the user read it, so the model should.
    session.history += [{"role": "user", "content": text}, {"role": "assistant", "content": answer}]
    if stopped:
        print("[stopped]", file=err)
    elif result is not None:
        print(f"[{result.new_tokens} tokens, {result.tokens_per_s:.1f} tok/s, tau {result.tau:.2f}, "
              f"{result.method}{', cut at the length limit' if result.finish_reason == 'length' else ''}]",
              file=err)
