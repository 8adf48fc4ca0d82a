"""The user's data when the disk or the files misbehave: a full disk while sending or mid-answer, a damaged
or newer conversations file, an unwritable one, and a settings file with garbage in it. The app starts
and nothing typed or written is lost without the user being told."""

import sqlite3

import pytest
from app_fakes import PROMPT, recorded_answer
from PySide6.QtCore import Qt

from app import conversations
from app.conversations import AnswerWriter, ConversationStore, open_store

FULL = sqlite3.OperationalError("database or disk is full")


def send(qtbot, window, text=PROMPT):
    qtbot.keyClicks(window.prompt, text)
    qtbot.keyClick(window.prompt, Qt.Key.Key_Return)


def failing(monkeypatch, store, name, when=lambda: True):
    """Makes store.<name> raise "disk full" while `when()` holds."""
    real = getattr(store, name)

    def write(*args, **kwargs):
        if when():
            raise FULL
        return real(*args, **kwargs)
    monkeypatch.setattr(store, name, write)


# ---------------------------------------------------------------- a full disk


def test_a_message_that_cannot_be_saved_stays_in_the_box(qtbot, make_window, dialogs, monkeypatch):
    window = make_window()
    failing(monkeypatch, window.store, "add_message")
    send(qtbot, window, "my long careful question")
    assert window.prompt.toPlainText() == "my long careful question"  # the box was emptied before the write
    assert not window.busy and window.send_button.isEnabled()
    [shown] = dialogs.shown
    assert shown["title"] == "Could not save" and "database or disk is full" in shown["text"]
    assert "still in the box" in shown["text"]
    assert window.store.conversations() == [] and window.conversation is None  # nothing half-made left
    monkeypatch.undo()  # the disk has room again: the same message goes
    with qtbot.waitSignal(window.host.finished, timeout=5000):
        qtbot.keyClick(window.prompt, Qt.Key.Key_Return)
    assert [m.role for m in window.store.messages(window.conversation.id)] == ["user", "assistant"]


@pytest.mark.parametrize("write", ["save_version", "renew_message"])  # the old answer kept; its row renewed
def test_a_regenerate_that_cannot_be_saved_changes_nothing(qtbot, make_window, dialogs, monkeypatch, write):
    window = make_window()
    with qtbot.waitSignal(window.host.finished, timeout=5000):
        send(qtbot, window)
    before = window.store.messages(window.conversation.id)
    failing(monkeypatch, window.store, write)
    window.chat_actions.regenerate.click()
    assert not window.busy and dialogs.shown[-1]["title"] == "Could not save"
    assert window.store.messages(window.conversation.id) == before  # the old answer was put back
    assert window.store.version_positions(window.conversation.id) == {}
    assert recorded_answer() in window.transcript.toPlainText()


def test_a_full_disk_mid_answer_shows_all_of_it_says_so_once_and_frees_the_window(qtbot, make_window, dialogs,
                                                                                 monkeypatch):
    window = make_window()
    window.ANSWER_SAVE_INTERVAL_S = 0  # a write per token: every one of them fails
    window.RETRY_WRITES_S = 0  # (the kept answer is written again at the next read, not 5 s later)
    failing(monkeypatch, conversations.ConversationStore, "update_message", lambda: True)
    with qtbot.waitSignal(window.host.finished, timeout=5000):
        send(qtbot, window)
    assert recorded_answer() in window.transcript.toPlainText()  # every token reached the screen
    assert dialogs.shown == []  # said in the status bar, once; not a dialog per token
    assert "could not be saved" in window.transcript.toPlainText()  # and at its end, under the answer
    assert window.writer is None and not window.busy and window.send_button.isEnabled()
    # Kept while the app runs: in the model's history, and through a redraw from the store.
    assert window.history[-1] == {"role": "assistant", "content": recorded_answer()}
    window._on_theme_changed()
    assert recorded_answer() in window.transcript.toPlainText()
    cid = window.conversation.id
    began = window.store.get(cid).updated  # when the answer's row was added
    monkeypatch.undo()  # writing works again: the next read of the conversation writes it
    window.open_conversation(cid)
    assert window.store.messages(cid)[-1].content == recorded_answer() and window._unsaved == {}
    assert window.store.get(cid).updated > began  # finished now, as a write that worked at once would say
    with qtbot.waitSignal(window.host.finished, timeout=5000):
        send(qtbot, window, "again")
    assert window.store.messages(window.conversation.id)[-1].content == recorded_answer()


def test_an_edit_whose_answer_cannot_be_saved_stays_an_edit(qtbot, make_window, dialogs, monkeypatch):
    window = make_window()
    with qtbot.waitSignal(window.host.finished, timeout=5000):
        send(qtbot, window)
    window.chat_actions.edit.click()
    window.prompt.setPlainText("a better question")
    real = window.store.add_message
    monkeypatch.setattr(window.store, "add_message", lambda cid, role, *a, **k:
                        (_ for _ in ()).throw(FULL) if role == "assistant" else real(cid, role, *a, **k))
    window.send()  # the edited question is written; its answer's row is not
    assert window.prompt.toPlainText() == "a better question" and window.editing  # Enter resends it, as an edit
    assert "still in the box" in dialogs.shown[-1]["text"]
    assert [m.content for m in window.store.messages(window.conversation.id)] == [PROMPT, recorded_answer()]


class FlakyStore:
    """Writes fail while `full` is set."""

    def __init__(self):
        self.full, self.rows = False, {}

    def add_message(self, cid, role, content, complete=True, stats=None):
        self.rows[1] = (content, complete)
        return 1

    def update_message(self, mid, content, complete, stats=None, touch=False):
        if self.full:
            raise FULL
        self.rows[mid] = (content, complete)


def test_the_answer_writer_keeps_the_text_until_a_write_works_and_reports_once():
    store, errors, now = FlakyStore(), [], [0.0]
    writer = AnswerWriter(store, 7, interval_s=1.0, clock=lambda: now[0], on_error=errors.append)
    store.full = True
    for i, word in enumerate(["a", "b", "c", "d"]):
        now[0] = i + 1.0
        writer.append(word)
    assert errors == [FULL] and writer.error is FULL and store.rows[1] == ("", False)
    store.full = False
    now[0] = 10.0
    writer.append("e")  # the next try writes everything kept meanwhile
    assert store.rows[1] == ("abcde", False) and writer.error is None
    store.full = True
    assert writer.finish("abcde", {}) is False and len(errors) == 2  # failing again: said again
    store.full = False
    assert writer.finish("abcde", {}) is True and store.rows[1] == ("abcde", True)


# ---------------------------------------------------------------- the conversations file


def dialog_about_conversations(qtbot, dialogs) -> str:
    qtbot.waitUntil(lambda: any(d["title"] == "Conversations" for d in dialogs.shown), timeout=3000)
    return next(d["text"] for d in dialogs.shown if d["title"] == "Conversations")


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_damaged_conversations_file_is_kept_aside_and_a_new_one_begun(qtbot, make_window, dialogs,
                                                                       subspec_home, damage):
    db = subspec_home / conversations.DB_NAME
    if damage == "garbage":
        subspec_home.mkdir(parents=True)
        db.write_bytes(b"this is not a database" * 100)
    else:  # a copy cut short: it opens, and fails when a lost page is read
        store = ConversationStore(db)
        for i in range(300):
            store.add_message(store.create(f"chat {i}").id, "user", "x" * 2000)
        store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        store.close()
        with open(db, "r+b") as f:
            f.truncate(db.stat().st_size // 2)
    original = db.read_bytes()
    window = make_window()
    text = dialog_about_conversations(qtbot, dialogs)
    [aside] = subspec_home.glob(f"{conversations.DB_NAME}.broken-*")
    assert str(aside) in text and aside.read_bytes() == original  # kept, for whoever can recover it
    with qtbot.waitSignal(window.host.finished, timeout=5000):
        send(qtbot, window)  # and the app works on a new file
    assert len(ConversationStore(db).conversations()) == 1


def test_a_newer_apps_file_is_read_but_never_written(qtbot, make_window, dialogs, subspec_home, monkeypatch):
    db = subspec_home / conversations.DB_NAME
    store = ConversationStore(db)
    store.add_message(store.create("from the newer app").id, "user", "hello")
    store.db.execute("ALTER TABLE conversations ADD COLUMN folder TEXT")  # what a newer version might add
    store.db.execute("PRAGMA user_version = 99")
    store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.close()
    original = db.read_bytes()
    window = make_window()
    assert "newer version" in dialog_about_conversations(qtbot, dialogs)
    assert [c.title for c in window.store.conversations()] == ["from the newer app"]  # readable
    window.new_conversation()
    send(qtbot, window, "a new question")
    assert dialogs.shown[-1]["title"] == "Could not save" and "read-only" in dialogs.shown[-1]["text"]
    assert window.prompt.toPlainText() == "a new question"
    [conv] = window.store.conversations()
    window.open_conversation(conv.id)
    window.sampling.temperature.setValue(0.7)  # a setting's save: skipped without a word (said at start-up)
    window.system_prompt.setText("be brief")
    window.system_prompt.editingFinished.emit()
    import app.dialogs

    monkeypatch.setattr(app.dialogs, "ask_text", lambda *_a, **_k: "renamed")
    window.sidebar.rename()
    assert "could not be renamed" in dialogs.shown[-1]["text"] and "read-only" in dialogs.shown[-1]["text"]
    window.close()
    assert db.read_bytes() == original


def test_an_unwritable_file_is_opened_read_only_and_failing_that_kept_in_memory(tmp_path, monkeypatch):
    path = tmp_path / conversations.DB_NAME
    ConversationStore(path).create("kept")
    real = ConversationStore.__init__

    def no_writes(self, path=None, read_only=False):
        if not read_only and str(path) != ":memory:":
            raise sqlite3.OperationalError("attempt to write a readonly database")
        real(self, path, read_only)
    monkeypatch.setattr(ConversationStore, "__init__", no_writes)
    store, problem = open_store(path)
    assert store.read_only and [c.title for c in store.conversations()] == ["kept"]
    assert "cannot be written" in problem and "nothing new is saved" in problem
    store, problem = open_store(tmp_path / "elsewhere" / conversations.DB_NAME)  # not even readable
    assert store.path.name == ":memory:" and "memory only" in problem
    store.create("this session's")  # still usable
    assert len(store.conversations()) == 1


VERSION_1 = """
CREATE TABLE conversations (id INTEGER PRIMARY KEY AUTOINCREMENT, title TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL, updated REAL NOT NULL, system_prompt TEXT NOT NULL DEFAULT '',
    preset TEXT NOT NULL DEFAULT 'greedy', temperature REAL NOT NULL DEFAULT 0.0, top_p REAL NOT NULL DEFAULT 1.0);
CREATE TABLE messages (id INTEGER PRIMARY KEY AUTOINCREMENT,
    conversation_id INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE, role TEXT NOT NULL,
    content TEXT NOT NULL, created REAL NOT NULL, stats_json TEXT, complete INTEGER NOT NULL DEFAULT 1);
INSERT INTO conversations (title, created, updated, preset, temperature, top_p) VALUES ('old', 1, 2, 'custom', 0.4, 0.8);
INSERT INTO messages (conversation_id, role, content, created) VALUES (1, 'user', 'from version 1', 1);
PRAGMA user_version = 1;
"""


def _version_1_file(path):
    db = sqlite3.connect(path)
    db.executescript(VERSION_1)
    db.close()


def test_a_version_1_file_gains_the_new_settings_and_keeps_everything(tmp_path):
    """Columns added since are added at open; the version stays 1, so the previous app still reads and
    writes the file (by named columns, the new ones taking their defaults)."""
    path = tmp_path / conversations.DB_NAME
    _version_1_file(path)
    store = ConversationStore(path)
    [old] = store.conversations()
    assert (old.title, old.preset, old.temperature, old.top_p) == ("old", "custom", 0.4, 0.8)
    assert (old.top_k, old.min_p, old.repetition_penalty, old.max_new_tokens, old.penalty_last_n) == \
        (0, 0.0, 1.0, 512, 64)  # what version 1 answered with
    assert [m.content for m in store.messages(old.id)] == ["from version 1"]
    store.update(old.id, repetition_penalty=1.2, top_k=30)
    assert store.get(old.id).repetition_penalty == 1.2
    store.close()
    assert ConversationStore(path).get(old.id).top_k == 30  # opened again: nothing added twice
    db = sqlite3.connect(path)  # what the previous app does with it: its own columns, by name
    assert db.execute("PRAGMA user_version").fetchone()[0] == conversations.SCHEMA_VERSION == 1
    with db:
        db.execute("INSERT INTO conversations (title, created, updated, system_prompt, preset, temperature, top_p)"
                   " VALUES ('from the previous app', 3, 3, '', 'greedy', 0.0, 1.0)")
    db.close()
    assert ConversationStore(path).conversations()[0].repetition_penalty == 1.0


def test_a_version_1_file_opened_read_only_reads_the_new_settings_as_their_defaults(tmp_path):
    path = tmp_path / conversations.DB_NAME
    _version_1_file(path)
    original = path.read_bytes()
    [old] = ConversationStore(path, read_only=True).conversations()
    assert (old.title, old.temperature, old.top_k, old.min_p, old.repetition_penalty, old.max_new_tokens,
            old.penalty_last_n) == ("old", 0.4, 0, 0.0, 1.0, 512, 64)
    assert path.read_bytes() == original


def test_garbage_in_a_conversations_settings_reads_as_the_defaults(qtbot, make_window, subspec_home):
    """A hand-edited file with text where a number belongs: the conversation opens with those settings at
    their defaults (it used to fail half-way, leaving the previous conversation's system prompt in the box
    to be saved into this one)."""
    store = ConversationStore(subspec_home / conversations.DB_NAME)
    a = store.create("A", "A prompt")
    b = store.create("B", "B prompt", "custom", 0.3, 0.9, top_k=40, repetition_penalty=1.2)
    with store.db:
        store.db.execute("UPDATE conversations SET min_p = 'x', temperature = 'hot', top_k = X'00', "
                         "max_new_tokens = 'lots', preset = 5, penalty_last_n = 1e999, seed = 'lucky', stop = X'00', "
                         "answer_format = 'xml' "
                         "WHERE id = ?", (b.id,))
    store.close()
    window = make_window()
    window.open_conversation(a.id)
    window.open_conversation(b.id)
    assert window.conversation.id == b.id and window.system_prompt.text() == "B prompt"
    assert window.sampling.values() == {"preset": "custom", "temperature": 0.0, "top_p": 0.9, "top_k": 0,
                                        "min_p": 0.0, "repetition_penalty": 1.2, "penalty_last_n": 64,
                                        "max_new_tokens": 512, "seed": -1, "stop": "", "answer_format": "text",
                                        "answer_schema": ""}


# ---------------------------------------------------------------- settings


@pytest.mark.parametrize("ini", [
    "geometry=not a geometry",
    "geometry=12345\nstate=@Invalid()",
    "last_conversation=99999999999999999999",
    'decoding="{\\"depth\\": 5e9, \\"width\\": 1e999}"',
    'decoding="{\\"depth\\": 1e400, \\"auto\\": \\"no\\"}"',
    'decoding="{\\"depth\\": 100000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000}"',
])
def test_a_settings_file_with_garbage_does_not_stop_the_app(qtbot, make_window, subspec_home, ini):
    subspec_home.mkdir(parents=True)
    (subspec_home / "studio.ini").write_text("[General]\n" + ini + "\n", encoding="utf-8")
    window = make_window()
    assert window.isVisible() and window.conversation is None
    method = window.method
    assert method.depth.minimum() <= method.depth.value() <= method.depth.maximum()
    assert method.width.minimum() <= method.width.value() <= method.width.maximum()
    if '"auto": "no"' in ini.replace('\\"', '"'):
        assert not method.auto.isChecked()


def test_a_kept_answer_continued_is_saved_whole_and_tries_are_spaced(qtbot, make_window, monkeypatch):
    """A continued answer that could not be written: the writer carries its text, so the kept copy must not
    be written back over the whole answer afterwards; and while the disk refuses, reads do not each try
    again (a locked file makes every try wait seconds)."""
    window = make_window()
    tries = []
    full = [True]
    real = ConversationStore.update_message

    def update(self, *a, **k):
        tries.append(a[0])
        if full[0]:
            raise FULL
        return real(self, *a, **k)
    monkeypatch.setattr(ConversationStore, "update_message", update)
    with qtbot.waitSignal(window.host.finished, timeout=5000):
        send(qtbot, window)
    answer_id = window.store.messages(window.conversation.id)[-1].id
    assert answer_id in window._unsaved
    before = len(tries)
    for _ in range(5):
        window._saved()  # reads within RETRY_WRITES_S: no new try
    assert len(tries) == before
    full[0] = False
    with qtbot.waitSignal(window.host.finished, timeout=5000):
        window.chat_actions.continue_.click()
    window._retry_writes_at = 0.0
    saved = window._saved()[-1].content
    assert saved == window.store.messages(window.conversation.id)[-1].content == recorded_answer() * 2
