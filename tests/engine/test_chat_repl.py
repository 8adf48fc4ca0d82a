"""`subspec chat`: the read-answer loop on a fake model (commands, several-line messages, Ctrl+C, the
context), then once for real on the default model."""

import io
import os
import subprocess
import sys

import pytest

from engine.chat_repl import ChatSession, run_chat
from engine.events import StepEvent


def reader(lines):
    """input() replaced: each line in turn, then Ctrl+D (EOFError); a KeyboardInterrupt instance is raised."""
    it = iter(lines)

    def read(_prompt):
        line = next(it, EOFError())
        if isinstance(line, BaseException):
            raise line
        return line
    return read


def fake_session(interrupt_after=None, **kw):
    """Each answer says "Answer n." token by token; the prompt is one id per character of the messages."""
    calls = []

    def encode(messages):
        return [0] * sum(len(m["content"]) + 4 for m in messages)

    def decode(ids, room, progress=None):
        calls.append((len(ids), room))
        n = len(calls)
        for i, text in enumerate(["Answer", f" {n}", "."]):
            if interrupt_after is not None and i == interrupt_after:
                raise KeyboardInterrupt
            yield StepEvent(i, (i,), text, finish_reason="eos" if i == 2 else None)
    session = ChatSession(encode, decode, **{"context": 4096, **kw})
    session.calls = calls
    return session


def chat(session, lines):
    out, err = io.StringIO(), io.StringIO()
    code = run_chat(session, reader(lines), out, err)
    return code, out.getvalue(), err.getvalue()


def test_a_conversation_goes_on_and_each_answer_sees_the_ones_before():
    session = fake_session(system="Be brief.")
    code, out, err = chat(session, ["Hi", "", "And then?", "/bye", "never read"])
    assert code == 0 and out == "Answer 1.\nAnswer 2.\n"
    assert session.history == [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Answer 1."},
                               {"role": "user", "content": "And then?"},
                               {"role": "assistant", "content": "Answer 2."}]
    assert session.messages("x")[0] == {"role": "system", "content": "Be brief."}
    assert err.count("tok/s") == 2 and "vanilla" in err  # a stats line after each answer


def test_commands_and_a_message_of_several_lines():
    session = fake_session()
    code, _out, err = chat(session, ['"""', "line one", "", "line three", '"""', "/system Answer in French.",
                                     "/clear", "/nope", "/help"])
    assert code == 0  # Ctrl+D leaves
    assert session.history == [] and session.system == "Answer in French."  # /clear kept the system prompt
    assert "unknown command /nope" in err and "/clear" in err  # (the help)
    session = fake_session()
    chat(session, ['"""', "line one", "", "line three", '"""'])
    assert session.history[0]["content"] == "line one\n\nline three"


def test_ctrl_c_stops_an_answer_and_what_it_wrote_stays():
    session = fake_session(interrupt_after=2)
    code, out, err = chat(session, ["Hi", KeyboardInterrupt(), "/bye"])  # (and Ctrl+C at the prompt: a new line)
    assert code == 0 and out.startswith("Answer 1\n") and "[stopped]" in err
    assert session.history[-1] == {"role": "assistant", "content": "Answer 1"}


def test_a_long_conversation_keeps_its_latest_turns_and_an_answer_keeps_room():
    session = fake_session(context=120, max_new_tokens=100)
    _code, _out, err = chat(session, ["x" * 20, "y" * 20, "z" * 20])
    assert "its first 2 messages are left out" in err
    prompt, room = session.calls[-1]
    assert prompt <= 60 and room == 120 - prompt  # the answer keeps at most half the context
    _code, _out, err = chat(fake_session(context=40), ["w" * 60])
    assert "fills the model's context of 40 tokens" in err


@pytest.mark.usefixtures("default_model_folder")
def test_subspec_chat_on_the_default_model():
    r = subprocess.run([sys.executable, "-m", "engine", "chat", "SmolLM2-135M-Instruct", "--max-new-tokens", "8"],
                       input="What is 2+2?\nAnd 3+3?\n/bye\n", capture_output=True, text=True, timeout=300,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr
    assert "chatting with SmolLM2-135M-Instruct (plain decoding)" in r.stderr
    assert r.stderr.count("tok/s") == 2 and r.stdout.count(">>> ") == 3


@pytest.mark.usefixtures("default_model_folder")
def test_generate_reads_the_prompt_from_standard_input():
    base = [sys.executable, "-m", "engine", "generate", "SmolLM2-135M-Instruct", "--max-new-tokens", "6", "--json"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    piped = subprocess.run(base + ["--prompt", "-"], input="What is 2+2?", capture_output=True, text=True,
                           timeout=300, env=env)
    named = subprocess.run(base + ["--prompt", "What is 2+2?"], capture_output=True, text=True, timeout=300, env=env)
    assert piped.returncode == named.returncode == 0, piped.stderr
    import json

    assert json.loads(piped.stdout)["token_ids"] == json.loads(named.stdout)["token_ids"]
    empty = subprocess.run(base + ["--prompt", "-"], input="  \n", capture_output=True, text=True, timeout=300,
                           env=env)
    assert empty.returncode == 2 and "standard input held no prompt" in empty.stderr


def test_ctrl_c_during_an_answer_asks_it_to_stop_at_its_next_step():
    """A SIGINT while an answer runs sets an event the loop checks between steps (a KeyboardInterrupt raised
    anywhere in the model could leave its streaming bookkeeping half-done); at the prompt Ctrl+C is as before."""
    import signal

    session = fake_session()
    original = session.decode

    def decode(ids, room, progress=None):
        for i, ev in enumerate(original(ids, room, progress)):
            if i == 2:  # while the third step is on its way: the first two were written
                signal.raise_signal(signal.SIGINT)  # (delivered to this, the main thread, at once)
            yield ev
    session.decode = decode
    handler = signal.getsignal(signal.SIGINT)
    code, out, err = chat(session, ["Hi", "/bye"])
    assert code == 0 and out.startswith("Answer 1\n") and "[stopped]" in err  # not "Answer 1."
    assert session.history[-1] == {"role": "assistant", "content": "Answer 1"}
    assert signal.getsignal(signal.SIGINT) is handler  # put back after the answer


def test_an_error_in_the_template_or_the_model_leaves_the_conversation_as_it_was():
    session = fake_session()
    chat(session, ["Hi"])
    before = list(session.history)

    def refuse(messages):
        raise ValueError("System role not supported")  # (a Gemma-style template, via jinja's TemplateError)
    session.encode = refuse
    code, _out, err = chat(session, ["/system Be brief.", "Next", "/bye"])
    assert code == 0 and "error: ValueError: System role not supported" in err and session.history == before


def test_input_ending_inside_a_message_of_several_lines_sends_it():
    session = fake_session()
    chat(session, ['"""', "first", "second"])
    assert session.history[0] == {"role": "user", "content": "first\nsecond"}


def test_a_second_ctrl_c_stops_a_long_wait_at_once():
    import signal

    session = fake_session()

    def decode(ids, room, progress=None):
        signal.raise_signal(signal.SIGINT)  # the first asks for a stop at the next step ...
        signal.raise_signal(signal.SIGINT)  # ... which is long in coming (a prefill): the second stops now
        yield StepEvent(0, (0,), "never")
    session.decode = decode
    code, out, err = chat(session, ["Hi", "/bye"])
    assert code == 0 and "never" not in out and "[stopped]" in err


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_long_prompt_shows_how_far_it_is_read_on_one_terminal_line():
    from engine.chat_repl import ReadingLine

    err = Terminal()
    line = ReadingLine(err)
    for done in (256, 768, 1000):
        line(done, 1000)
    first, second = "reading the prompt: 25% (256 of 1,000 tokens) ...", "reading the prompt: 76% (768 of 1,000 tokens) ..."
    assert err.getvalue() == "\r" + first + "\r" + second + "\r" + " " * len(second) + "\r"  # blanked with spaces
    quiet = [Terminal(), io.StringIO()]
    ReadingLine(quiet[0])(100, 300)  # read before anyone could look
    ReadingLine(quiet[1])(100, 1000)  # not a terminal: a pipe or a file gets no carriage returns
    assert [q.getvalue() for q in quiet] == ["", ""]


def test_ctrl_c_while_the_prompt_is_read_stops_the_reading_at_its_next_step():
    import signal

    session = fake_session()
    reached = []

    def decode(ids, room, progress=None):
        progress(512, 2048)
        signal.raise_signal(signal.SIGINT)  # one Ctrl+C: the reading ends at its next step
        progress(1024, 2048)
        reached.append("past the stop")
        yield StepEvent(0, (0,), "never")
    session.decode = decode
    code, out, err = chat(session, ["Hi", "/bye"])
    assert code == 0 and "never" not in out and "[stopped]" in err and reached == []
    assert session.history == []  # stopped before a word was written: as if not sent


def test_a_stopped_reading_leaves_no_line_on_the_terminal():
    import signal

    session = fake_session()

    def decode(ids, room, progress=None):
        progress(512, 2048)
        signal.raise_signal(signal.SIGINT)
        progress(1024, 2048)
        yield StepEvent(0, (0,), "never")
    session.decode = decode
    out, err = io.StringIO(), Terminal()
    run_chat(session, reader(["Hi", "/bye"]), out, err)
    shown = "reading the prompt: 25% (512 of 2,048 tokens) ..."
    assert "\r" + shown + "\r" + " " * len(shown) + "\r[stopped]" in err.getvalue()
