"""The conversation store on its own (no Qt): round trips, search, the streaming writer, and a process
killed mid-answer."""

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from app.conversations import AnswerWriter, ConversationStore, default_path, title_from

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def store(subspec_home):
    s = ConversationStore()
    yield s
    s.close()


def test_the_database_lives_in_subspec_home_in_wal_mode(store, subspec_home):
    assert store.path == default_path() == subspec_home / "conversations.db"
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_conversation_and_its_messages_round_trip(store):
    conv = store.create("Capitals", "Be brief.", "balanced", 0.7, 0.9)
    store.add_message(conv.id, "user", "What is the capital of France?")
    stats = {"new_tokens": 7, "tau": 3.5, "method": "subspec", "depth": 48, "width": 6}
    store.add_message(conv.id, "assistant", "Paris.", stats=stats)
    store.close()

    reopened = ConversationStore()
    got = reopened.get(conv.id)
    assert (got.title, got.system_prompt, got.preset, got.temperature, got.top_p) == (
        "Capitals", "Be brief.", "balanced", 0.7, 0.9)
    messages = reopened.messages(conv.id)
    assert [(m.role, m.content, m.complete) for m in messages] == [
        ("user", "What is the capital of France?", True), ("assistant", "Paris.", True)]
    assert messages[0].stats is None and messages[1].stats == stats
    reopened.update(conv.id, title="Renamed", preset="custom", temperature=0.3)
    assert reopened.get(conv.id).title == "Renamed" and reopened.get(conv.id).temperature == 0.3
    with pytest.raises(ValueError):
        reopened.update(conv.id, id=5)
    reopened.close()


def test_deleting_a_conversation_deletes_its_messages(store):
    conv = store.create("gone")
    store.add_message(conv.id, "user", "hello")
    store.delete(conv.id)
    assert store.get(conv.id) is None and store.messages(conv.id) == []
    assert store.db.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 0


def test_search_matches_titles_and_message_text_newest_first(store):
    a = store.create("Capitals of Europe")
    b = store.create("Cooking")
    store.add_message(b.id, "user", "How long to boil an egg? 100% sure please")
    c = store.create("Misc")
    store.add_message(a.id, "user", "and Italy?")  # a is now the most recently active
    assert [x.id for x in store.conversations()] == [a.id, c.id, b.id]
    assert [x.id for x in store.conversations("capitals")] == [a.id]
    assert [x.id for x in store.conversations("EGG")] == [b.id]
    assert [x.id for x in store.conversations("100%")] == [b.id]  # % is literal, not a wildcard
    assert [x.id for x in store.conversations("_")] == []
    assert store.conversations("nothing like this") == []


def test_search_ignores_case_beyond_ascii(store):
    a = store.create("Été à Paris")
    b = store.create("Straße")
    store.add_message(b.id, "user", "ΣΟΦΙΑ and Ǆ")
    assert [x.id for x in store.conversations("ÉTÉ")] == [a.id]  # LIKE alone: no match
    assert [x.id for x in store.conversations("STRAẞE")] == [b.id]  # casefold: ẞ and ß are ss
    assert [x.id for x in store.conversations("σοφια")] == [b.id]  # in a message's text
    assert [x.id for x in store.conversations("ǆ")] == [b.id]
    assert store.conversations("été à lyon") == []


def test_titles_come_from_the_first_line_and_are_capped():
    assert title_from("  What is\n the capital?  ") == "What is the capital?"
    long = title_from("word " * 40)
    assert len(long) == 48 and long.endswith("…")


def test_the_writer_saves_a_streaming_answer_about_once_a_second(store):
    conv = store.create("t")
    now = [0.0]
    writer = AnswerWriter(store, conv.id, interval_s=1.0, clock=lambda: now[0])

    def on_disk():
        [m] = store.messages(conv.id)
        return m.content, m.complete

    assert on_disk() == ("", False)
    writer.append("The")
    now[0] = 0.5
    writer.append(" capital")
    assert on_disk() == ("", False)  # not per token
    now[0] = 1.1
    writer.append(" of")
    assert on_disk() == ("The capital of", False)
    writer.append(" France")
    writer.finish(writer.text, {"finish_reason": "stopped"})
    [m] = store.messages(conv.id)
    assert (m.content, m.complete, m.stats) == ("The capital of France", True, {"finish_reason": "stopped"})


KILLED_WRITER = textwrap.dedent("""
    import itertools, sys
    from app.conversations import AnswerWriter, ConversationStore
    store = ConversationStore()
    conv = store.create("Before the crash")
    store.add_message(conv.id, "user", "first question")
    store.add_message(conv.id, "assistant", "first answer", stats={"new_tokens": 2})
    store.add_message(conv.id, "user", "second question")
    writer = AnswerWriter(store, conv.id, interval_s=0.01)
    for i in itertools.count():
        writer.append(f" w{i}")
        if i == 100:
            writer.flush()  # so the test knows at least this much is on disk; later flushes are timed
            print("streaming", flush=True)
""")


def test_a_process_killed_mid_answer_leaves_earlier_messages_intact(subspec_home):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "streaming\n", proc.stderr.read()
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(10)
    assert proc.returncode == -signal.SIGKILL

    db = sqlite3.connect(str(subspec_home / "conversations.db"))
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db.close()
    store = ConversationStore()
    [conv] = store.conversations()
    assert conv.title == "Before the crash"
    messages = store.messages(conv.id)
    assert [(m.role, m.content, m.complete) for m in messages[:3]] == [
        ("user", "first question", True), ("assistant", "first answer", True), ("user", "second question", True)]
    assert messages[1].stats == {"new_tokens": 2}
    partial = messages[3]
    assert partial.role == "assistant" and not partial.complete
    assert partial.content.startswith(" w0 w1 w2") and len(partial.content.split()) >= 101
    store.close()


def test_an_answers_versions_are_kept_numbered_and_switched(store, monkeypatch):
    import app.conversations as conversations

    clock = iter(range(100, 200))
    monkeypatch.setattr(conversations.time, "time", lambda: float(next(clock)))
    c = store.create("t")
    store.add_message(c.id, "user", "Q")
    mid = store.add_message(c.id, "assistant", "A1", stats={"n": 1})
    assert store.version_positions(c.id) == {}
    for text in ("A2", "A3"):  # Regenerate twice: the row is written anew, what it said is kept
        [_q, shown] = store.messages(c.id)
        store.save_version(shown)
        store.renew_message(mid)
        assert store.messages(c.id)[1].content == "" and not store.messages(c.id)[1].complete
        store.update_message(mid, text, True, {"n": int(text[1])})
    assert [v.content for v in store.versions(mid)] == ["A1", "A2"]
    assert store.version_positions(c.id) == {mid: (3, 3)}
    assert store.step_version(mid, -1) and store.messages(c.id)[1].content == "A2"
    assert store.version_positions(c.id) == {mid: (2, 3)}
    assert store.step_version(mid, -1) and store.messages(c.id)[1].content == "A1"
    assert store.messages(c.id)[1].stats == {"n": 1}  # each version with its own stats
    assert not store.step_version(mid, -1)  # the first: nothing before it
    assert store.step_version(mid, 1) and store.step_version(mid, 1) and not store.step_version(mid, 1)
    assert store.messages(c.id)[1].content == "A3" and store.version_positions(c.id) == {mid: (3, 3)}

    gone = store.delete_from(c.id, mid)  # an edit-and-resend takes the answer and its versions away ...
    assert store.version_positions(c.id) == {} and store.db.execute(
        "SELECT COUNT(*) FROM answer_versions").fetchone()[0] == 0
    store.restore(c.id, gone)  # ... and a failed one puts them all back
    assert store.version_positions(c.id) == {mid: (3, 3)}
    assert [v.content for v in store.versions(mid)] == ["A1", "A2"]
    store.delete(c.id)
    assert store.db.execute("SELECT COUNT(*) FROM answer_versions").fetchone()[0] == 0


def test_a_regenerate_undone_puts_the_answer_back_as_it_was(store):
    c = store.create("t")
    mid = store.add_message(c.id, "assistant", "kept", stats={"tokens": 3})
    before = store.messages(c.id)
    vid = store.save_version(before[0])
    store.renew_message(mid)
    store.update_message(mid, "half a new one", False)
    store.pop_version(mid, vid)
    assert store.messages(c.id) == before and store.versions(mid) == []
