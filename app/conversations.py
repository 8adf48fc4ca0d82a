"""Conversations on disk: one SQLite file in the user data folder, used from the GUI thread only.

WAL mode and one committed transaction per write: a process killed at any moment leaves a readable file
holding everything committed before the kill. synchronous=NORMAL is enough for that (in WAL mode it can
only lose the last transactions on a power cut, never corrupt the file) and keeps each write cheap.
"""

from __future__ import annotations

import datetime
import json
import math
import sqlite3
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Callable

DB_NAME = "conversations.db"
TITLE_CHARS = 48

SCHEMA = """
CREATE TABLE IF NOT EXISTS conversations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    title TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL,
    updated REAL NOT NULL,
    system_prompt TEXT NOT NULL DEFAULT '',
    preset TEXT NOT NULL DEFAULT 'greedy',
    temperature REAL NOT NULL DEFAULT 0.0,
    top_p REAL NOT NULL DEFAULT 1.0,
    top_k INTEGER NOT NULL DEFAULT 0,
    min_p REAL NOT NULL DEFAULT 0.0,
    repetition_penalty REAL NOT NULL DEFAULT 1.0,
    max_new_tokens INTEGER NOT NULL DEFAULT 512,
    penalty_last_n INTEGER NOT NULL DEFAULT 64,
    seed INTEGER NOT NULL DEFAULT -1,
    stop TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    conversation_id INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    role TEXT NOT NULL,
    content TEXT NOT NULL,
    created REAL NOT NULL,
    stats_json TEXT,
    complete INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX IF NOT EXISTS messages_by_conversation ON messages(conversation_id, id);
-- An answer's other versions (Regenerate keeps the one it replaces): the messages row holds the version
-- shown, which is the one the model sees in the history. A table of its own, so an older app reading the
-- file sees each answer once.
CREATE TABLE IF NOT EXISTS answer_versions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id INTEGER NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    content TEXT NOT NULL,
    created REAL NOT NULL,
    stats_json TEXT,
    complete INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX IF NOT EXISTS versions_by_message ON answer_versions(message_id, id);
"""

# PRAGMA user_version of the schema above. A file from a newer app (a higher number) is opened read-only: its
# tables may mean more than this version knows, and writing to them could break that app's data.
# Columns added since (ADDED_COLUMNS: the conversation's top-k, min-p, repetition penalty, answer length,
# penalty window, seed, stop strings, answer format and schema) are added to an older file at open and do
# not change the version: they have defaults and conversations are read and written by named columns, so an
# app that does not know them still reads and writes the file as before.
SCHEMA_VERSION = 1
ADDED_COLUMNS = {"top_k": "INTEGER NOT NULL DEFAULT 0", "min_p": "REAL NOT NULL DEFAULT 0.0",
                 "repetition_penalty": "REAL NOT NULL DEFAULT 1.0", "max_new_tokens": "INTEGER NOT NULL DEFAULT 512",
                 "penalty_last_n": "INTEGER NOT NULL DEFAULT 64", "seed": "INTEGER NOT NULL DEFAULT -1",
                 "stop": "TEXT NOT NULL DEFAULT ''", "answer_format": "TEXT NOT NULL DEFAULT 'text'",
                 "answer_schema": "TEXT NOT NULL DEFAULT ''"}

# How the conversation's answers are decoded: the toolbar's sampling controls and its "More" menu.
DECODING = ("preset", "temperature", "top_p", "top_k", "min_p", "repetition_penalty", "max_new_tokens",
            "penalty_last_n", "seed", "stop", "answer_format", "answer_schema")
# json: JSON mode, every answer one JSON object; schema: one that follows answer_schema (engine.constrained)
ANSWER_FORMATS = ("text", "json", "schema")
SETTINGS = ("title", "system_prompt", *DECODING)


@dataclass(frozen=True)
class Conversation:
    id: int
    title: str
    created: float
    updated: float
    system_prompt: str
    preset: str = "greedy"
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    max_new_tokens: int = 512  # what version 1 answered with (the app's fixed length then)
    # The repetition penalty's window: the context's last n tokens (0: all of it). 64 as llama.cpp, Ollama and
    # LM Studio default to: over a whole long conversation a penalty would weigh on every common word.
    penalty_last_n: int = 64
    seed: int = -1  # sampled answers' seed; -1: a new one for each answer (kept with the answer's stats)
    stop: str = ""  # stop strings as typed (comma-separated, with escapes: app.controls.parse_stops)
    answer_format: str = "text"  # one of ANSWER_FORMATS
    answer_schema: str = ""  # the JSON schema answers follow when answer_format is "schema", as typed


# Each decoding setting's default: what a new conversation starts with, and what garbage in a file reads as.
DECODING_DEFAULTS = {f.name: f.default for f in fields(Conversation) if f.name in DECODING}


def decoding_settings(values: dict) -> dict:
    """Each of DECODING from `values`, a setting that is missing or not a number of its kind (SQLite and
    QSettings keep whatever a hand-edited file says) as its default: the window would otherwise fail half-way
    through showing a conversation. Ranges are the controls' to clamp."""
    out = {}
    for name, default in DECODING_DEFAULTS.items():
        value = values.get(name)
        if name == "answer_format":
            ok = value in ANSWER_FORMATS
        elif isinstance(default, str):
            ok = isinstance(value, str)
        else:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            value = type(default)(value) if ok else value
        out[name] = value if ok else default
    return out


def _casefold(value):
    return value.casefold() if isinstance(value, str) else value


def _conversation(row: tuple) -> Conversation:
    """A row as a Conversation, its decoding settings read by `decoding_settings`."""
    values = dict(zip((f.name for f in fields(Conversation)), row))
    return Conversation(**{**values, **decoding_settings(values)})


class NewerStoreError(sqlite3.DatabaseError):
    """The file was written by a newer version of the app."""


@dataclass(frozen=True)
class Message:
    id: int
    role: str
    content: str
    created: float
    stats: dict | None
    complete: bool
    # Deleted with its versions (delete_from), so that putting it back (restore) puts them back too.
    versions: tuple[Version, ...] = field(default=(), compare=False, repr=False)


@dataclass(frozen=True)
class Version:
    """One of an answer's other versions (answer_versions)."""

    id: int
    content: str
    created: float
    stats: dict | None
    complete: bool


def default_path() -> Path:
    from engine.store import store_root

    return store_root() / DB_NAME


def title_from(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= TITLE_CHARS else line[: TITLE_CHARS - 1].rstrip() + "…"


class ConversationStore:
    def __init__(self, path: str | Path | None = None, read_only: bool = False):
        """`read_only`: open an existing file without ever writing to it (a newer app's, or one this user
        cannot write). Raises sqlite3.DatabaseError for a file that is not a readable database
        (NewerStoreError for a newer app's); `open_store` decides what to do then."""
        self.path = Path(path) if path else default_path()
        self.read_only = read_only
        self._column_list: str | None = None
        if read_only:
            self.db = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True)
            self._check_readable()
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(self.path))
        try:
            version = self.db.execute("PRAGMA user_version").fetchone()[0]  # before anything writes to it
            if version > SCHEMA_VERSION:
                raise NewerStoreError(f"{self.path} was written by a newer version of SubSpec Studio "
                                      f"(format {version}; this one knows {SCHEMA_VERSION})")
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.execute("PRAGMA foreign_keys=ON")
            with self.db:
                self.db.executescript(SCHEMA)
                for name, declaration in ADDED_COLUMNS.items():  # an older file's table, brought up to date
                    if name not in self._table_columns():
                        self.db.execute(f"ALTER TABLE conversations ADD COLUMN {name} {declaration}")
                if version < SCHEMA_VERSION:
                    self.db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            self._check_readable()
        except BaseException:
            self.db.close()
            raise

    def _table_columns(self) -> set[str]:
        return {row[1] for row in self.db.execute("PRAGMA table_info(conversations)")}

    @property
    def _columns(self) -> str:
        """What a conversation is read as. Named, not SELECT *: a newer app may add columns. An older file
        opened read-only (it cannot be brought up to date) reads its missing settings as their defaults."""
        if self._column_list is None:
            have = self._table_columns()
            self._column_list = ", ".join(f.name if f.name in have else f"{f.default!r} AS {f.name}"
                                          for f in fields(Conversation))
        return self._column_list

    def _check_readable(self) -> None:
        """A damaged file (a disk error, a copy cut short) can open and fail only when a page is read; this
        finds that now, at start-up, rather than as an error in the middle of a conversation."""
        problem = self.db.execute("PRAGMA quick_check(1)").fetchone()[0]
        if problem != "ok":
            raise sqlite3.DatabaseError(f"database disk image is malformed ({problem})")

    def close(self) -> None:
        self.db.close()

    # Conversations

    def create(self, title: str = "", system_prompt: str = "", preset: str = "greedy", temperature: float = 0.0,
               top_p: float = 1.0, **sampling) -> Conversation:
        """`sampling`: more of DECODING (top-k, min-p, repetition penalty, answer length; the others keep
        their defaults)."""
        unknown = set(sampling) - set(DECODING)
        if unknown:
            raise ValueError(f"not a sampling setting: {sorted(unknown)}")
        now = time.time()
        with self.db:
            cid = self._insert_conversation({"title": title, "created": now, "updated": now,
                                             "system_prompt": system_prompt, "preset": preset,
                                             "temperature": temperature, "top_p": top_p, **sampling})
        return self.get(cid)

    def _insert_conversation(self, values: dict) -> int:
        """A conversations row from named columns (inside the caller's transaction); its id."""
        return self.db.execute(f"INSERT INTO conversations ({', '.join(values)})"
                               f" VALUES ({', '.join('?' * len(values))})", tuple(values.values())).lastrowid

    def import_conversation(self, title: str, system_prompt: str, settings: dict, messages: list[dict]) -> int:
        """A whole conversation in one transaction (app.import_chat's): a failure leaves nothing half made.
        `settings`: DECODING's; messages: role, content, complete, stats and created (None: now)."""
        now = time.time()
        with self.db:
            cid = self._insert_conversation({"title": title, "created": now, "updated": now,
                                             "system_prompt": system_prompt,
                                             **{k: v for k, v in settings.items() if k in DECODING}})
            for m in messages:
                mid = self.db.execute(
                    "INSERT INTO messages (conversation_id, role, content, created, stats_json, complete)"
                    " VALUES (?, ?, ?, ?, ?, ?)", (cid, m["role"], m["content"], m.get("created") or now,
                                                   _json(m.get("stats")), int(m.get("complete", True)))).lastrowid
                self.db.executemany(
                    "INSERT INTO answer_versions (message_id, content, created, stats_json, complete)"
                    " VALUES (?, ?, ?, ?, ?)", [(mid, v["content"], v.get("created") or now, _json(v.get("stats")),
                                                 int(v.get("complete", True))) for v in m.get("versions", ())])
        return cid

    def branch(self, cid: int, upto: int) -> int:
        """A new conversation holding conversation `cid` up to and including message `upto` (its messages,
        their stats, times and other versions, its system prompt and decoding settings), to go on from there
        another way; the original is left as it is. One transaction (import_conversation's); the new id."""
        conv = self.get(cid)
        kept = [m for m in self.messages(cid) if m.id <= upto]
        if conv is None or not kept or kept[-1].id != upto:
            raise ValueError(f"conversation {cid} has no message {upto}")
        messages = [{"role": m.role, "content": m.content, "complete": m.complete, "stats": m.stats,
                     "created": m.created,
                     "versions": [{"content": v.content, "created": v.created, "stats": v.stats,
                                   "complete": v.complete} for v in self.versions(m.id)]} for m in kept]
        title = f"{conv.title or title_from(kept[0].content)} (branch)"
        return self.import_conversation(title, conv.system_prompt,
                                        {name: getattr(conv, name) for name in DECODING}, messages)

    def get(self, cid: int) -> Conversation | None:
        row = self.db.execute(f"SELECT {self._columns} FROM conversations WHERE id = ?", (cid,)).fetchone()
        return _conversation(row) if row else None

    def conversations(self, search: str = "") -> list[Conversation]:
        """Newest activity first; `search` matches titles and message text, case-insensitively."""
        if not search.strip():
            rows = self.db.execute(f"SELECT {self._columns} FROM conversations ORDER BY updated DESC, id DESC")
        elif not search.strip().isascii():
            # SQLite's LIKE ignores case for ASCII letters only ("ÉTÉ" would not find "été"): Python's casefold
            # for such a search, kept off ASCII searches, which LIKE answers many times faster.
            self.db.create_function("casefold", 1, _casefold, deterministic=True)
            rows = self.db.execute(
                f"SELECT {self._columns} FROM conversations c WHERE instr(casefold(c.title), ?1) OR EXISTS ("
                " SELECT 1 FROM messages m WHERE m.conversation_id = c.id AND instr(casefold(m.content), ?1))"
                " ORDER BY updated DESC, id DESC", (search.strip().casefold(),))
        else:
            pattern = "%" + search.strip().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            rows = self.db.execute(
                f"SELECT {self._columns} FROM conversations c WHERE c.title LIKE ?1 ESCAPE '\\' OR EXISTS ("
                " SELECT 1 FROM messages m WHERE m.conversation_id = c.id AND m.content LIKE ?1 ESCAPE '\\')"
                " ORDER BY updated DESC, id DESC", (pattern,))
        return [_conversation(row) for row in rows]

    def update(self, cid: int, **settings) -> None:
        unknown = set(settings) - set(SETTINGS)
        if unknown:
            raise ValueError(f"not a conversation setting: {sorted(unknown)}")
        if not settings:
            return
        columns = ", ".join(f"{k} = ?" for k in settings)
        with self.db:
            self.db.execute(f"UPDATE conversations SET {columns} WHERE id = ?", (*settings.values(), cid))

    def delete(self, cid: int) -> None:
        with self.db:
            self.db.execute("DELETE FROM conversations WHERE id = ?", (cid,))

    # Messages

    def add_message(self, cid: int, role: str, content: str, complete: bool = True,
                    stats: dict | None = None) -> int:
        now = time.time()
        with self.db:
            cur = self.db.execute(
                "INSERT INTO messages (conversation_id, role, content, created, stats_json, complete)"
                " VALUES (?, ?, ?, ?, ?, ?)", (cid, role, content, now, _json(stats), int(complete)))
            self.db.execute("UPDATE conversations SET updated = ? WHERE id = ?", (now, cid))
        return cur.lastrowid

    def update_message(self, mid: int, content: str, complete: bool, stats: dict | None = None,
                       touch: bool = False) -> None:
        """`touch`: the message's conversation was active now (a finished answer), in the same transaction."""
        with self.db:
            self.db.execute("UPDATE messages SET content = ?, complete = ?, stats_json = ? WHERE id = ?",
                            (content, int(complete), _json(stats), mid))
            if touch:
                self.db.execute("UPDATE conversations SET updated = ? WHERE id = "
                                "(SELECT conversation_id FROM messages WHERE id = ?)", (time.time(), mid))

    def delete_message(self, mid: int) -> None:
        with self.db:
            self.db.execute("DELETE FROM messages WHERE id = ?", (mid,))

    def delete_from(self, cid: int, mid: int) -> list[Message]:
        """Deletes message `mid` and every later one of the conversation, in one transaction; returns
        them, so a failed redo can put them back (restore)."""
        gone = [m for m in self.messages(cid) if m.id >= mid]
        gone = [replace(m, versions=tuple(self.versions(m.id))) if m.role == "assistant" else m for m in gone]
        with self.db:
            self.db.execute("DELETE FROM messages WHERE conversation_id = ? AND id >= ?", (cid, mid))
        return gone

    def restore(self, cid: int, messages: list[Message]) -> None:
        """Puts deleted messages back with their ids, so they keep their place in the conversation."""
        with self.db:
            self.db.executemany(
                "INSERT OR REPLACE INTO messages (id, conversation_id, role, content, created, stats_json,"
                " complete) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(m.id, cid, m.role, m.content, m.created, _json(m.stats), int(m.complete)) for m in messages])
            self.db.executemany(
                "INSERT OR REPLACE INTO answer_versions (id, message_id, content, created, stats_json, complete)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                [(v.id, m.id, v.content, v.created, _json(v.stats), int(v.complete)) for m in messages
                 for v in m.versions])

    # Versions of an answer (Regenerate keeps the one it replaces)

    def save_version(self, m: Message) -> int:
        """Keeps answer `m` as it is now as one of its versions (before its row is written anew)."""
        with self.db:
            return self._keep_as_version(m)

    def _keep_as_version(self, m: Message) -> int:
        """Answer `m` as it is now into answer_versions (inside the caller's transaction); the version's id."""
        return self.db.execute("INSERT INTO answer_versions (message_id, content, created, stats_json, complete)"
                               " VALUES (?, ?, ?, ?, ?)", (m.id, m.content, m.created, _json(m.stats),
                                                           int(m.complete))).lastrowid

    def rewrite_answer(self, m: Message, text: str, stats: dict) -> None:
        """Answer `m` says `text` from now on (the user edited it); what it said is kept as a version. One
        transaction: a failure leaves the answer and its versions as they were."""
        now = time.time()
        with self.db:
            self._keep_as_version(m)
            self.db.execute("UPDATE messages SET content = ?, complete = 1, stats_json = ?, created = ? WHERE id = ?",
                            (text, _json(stats), max(now, m.created), m.id))
            self.db.execute("UPDATE conversations SET updated = ? WHERE id = "
                            "(SELECT conversation_id FROM messages WHERE id = ?)", (now, m.id))

    def renew_message(self, mid: int) -> None:
        """The row begins again, empty and incomplete, as of now: a regenerated answer is written into it."""
        with self.db:
            self.db.execute("UPDATE messages SET content = '', complete = 0, stats_json = NULL, created = ?"
                            " WHERE id = ?", (time.time(), mid))

    def versions(self, mid: int) -> list[Version]:
        """Answer `mid`'s other versions, oldest first."""
        rows = self.db.execute("SELECT id, content, created, stats_json, complete FROM answer_versions"
                               " WHERE message_id = ? ORDER BY created, id", (mid,))
        return [Version(i, c, t, json.loads(st) if st else None, bool(done)) for i, c, t, st, done in rows]

    def version_positions(self, cid: int) -> dict[int, tuple[int, int]]:
        """{answer id: (the shown version's number, how many there are)} for the conversation's answers that
        have other versions, numbered oldest first (on a tie the shown one last); one query for a whole
        conversation."""
        rows = self.db.execute(
            "SELECT v.message_id, COUNT(*), SUM(v.created <= m.created)"
            " FROM answer_versions v JOIN messages m ON m.id = v.message_id WHERE m.conversation_id = ?"
            " GROUP BY v.message_id", (cid,))
        return {mid: (int(older) + 1, int(count) + 1) for mid, count, older in rows}

    def show_version(self, mid: int, vid: int) -> None:
        """Version `vid` becomes what answer `mid` says (and what the model sees); the one shown until now
        becomes a version, in one transaction."""
        with self.db:
            row = self.db.execute("SELECT content, created, stats_json, complete FROM messages WHERE id = ?",
                                  (mid,)).fetchone()
            version = self.db.execute("SELECT content, created, stats_json, complete FROM answer_versions"
                                      " WHERE id = ? AND message_id = ?", (vid, mid)).fetchone()
            if row is None or version is None:
                raise sqlite3.IntegrityError(f"no version {vid} of message {mid}")
            self.db.execute("UPDATE messages SET content = ?, created = ?, stats_json = ?, complete = ? WHERE id = ?",
                            (*version, mid))
            self.db.execute("UPDATE answer_versions SET content = ?, created = ?, stats_json = ?, complete = ?"
                            " WHERE id = ?", (*row, vid))

    def step_version(self, mid: int, step: int) -> bool:
        """Shows the answer's previous (`step` -1) or next (+1) version, in the order version_positions
        numbers them; False when there is none that way."""
        row = self.db.execute("SELECT created FROM messages WHERE id = ?", (mid,)).fetchone()
        if row is None:
            return False
        versions = self.versions(mid)
        shown = sum(v.created <= row[0] for v in versions)  # the shown one's index among them all
        order = versions[:shown] + [None] + versions[shown:]
        target = shown + step
        if not 0 <= target < len(order):
            return False
        self.show_version(mid, order[target].id)
        return True

    def pop_version(self, mid: int, vid: int) -> None:
        """Version `vid` back into answer `mid`'s row, and no longer a version: a failed regenerate undone."""
        self.show_version(mid, vid)
        with self.db:
            self.db.execute("DELETE FROM answer_versions WHERE id = ?", (vid,))

    def messages(self, cid: int) -> list[Message]:
        rows = self.db.execute("SELECT id, role, content, created, stats_json, complete FROM messages"
                               " WHERE conversation_id = ? ORDER BY id", (cid,))
        return [Message(i, role, content, created, json.loads(stats) if stats else None, bool(complete))
                for i, role, content, created, stats, complete in rows]


def open_store(path: str | Path | None = None) -> tuple[ConversationStore, str | None]:
    """The conversations, and what the user must be told about them (None: nothing). The app starts
    whatever the file's state: a damaged file is moved aside (kept, for recovery) and a new one begun; a
    newer app's file, or one that cannot be written, is opened read-only; failing even that, this session's
    conversations live in memory."""
    path = Path(path) if path else default_path()
    try:
        return ConversationStore(path), None
    except NewerStoreError as exc:
        why = f"{exc}. Your conversations can be read here, but nothing new is saved; use the newer version."
    except sqlite3.OperationalError as exc:  # cannot be written or opened (permissions, a full disk, a lock)
        why = f"{path} cannot be written ({exc}). Your conversations can be read, but nothing new is saved."
    except sqlite3.DatabaseError as exc:  # not a database, or a damaged one
        aside = path.with_name(f"{path.name}.broken-{datetime.datetime.now():%Y%m%d-%H%M%S}")
        try:
            for suffix in ("", "-wal", "-shm"):  # the write-ahead log belongs to the file it was written for
                part = path.with_name(path.name + suffix)
                if part.exists():
                    part.rename(aside.with_name(aside.name + suffix))
            return ConversationStore(path), (f"The conversations file was damaged ({exc}) and could not be "
                                             f"read. It was kept as {aside} and a new one begun.")
        except (OSError, sqlite3.Error) as again:
            why = f"{path} is damaged ({exc}) and could not be set aside ({again})."
    try:
        return ConversationStore(path, read_only=True), why
    except (sqlite3.Error, OSError):
        return ConversationStore(":memory:"), (why.split(". Your")[0] + ". This session's conversations are "
                                               "kept in memory only and are lost when the app closes.")


def why_not_saved(store: ConversationStore, exc: sqlite3.Error) -> str:
    """Why a write the user asked for failed, in words for a dialog."""
    if getattr(store, "read_only", False):
        return "the conversations file is open read-only in this session (see the message at start-up)"
    return str(exc)


def _json(stats: dict | None) -> str | None:
    return json.dumps(stats) if stats is not None else None


class AnswerWriter:
    """A streaming answer's row: created empty with complete=0 and rewritten at most every `interval_s`,
    so a crash loses about a second of text; a per-token write would cost a transaction per token.

    A write that fails (a full disk) loses nothing: the text stays here, the next flush tries again, and
    `on_error` hears of the first failure only (not once per token)."""

    def __init__(self, store: ConversationStore, cid: int, interval_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic, extend: Message | None = None,
                 on_error: Callable[[sqlite3.Error], None] | None = None, renew: Message | None = None):
        """`extend`: a saved answer to continue in place instead of starting a new row; `renew`: a saved
        answer whose row this one is written into anew (Regenerate, which kept what it said as a version)."""
        self.store = store
        self.cid = cid
        self.interval_s = interval_s
        self.clock = clock
        self.on_error = on_error
        self.error: sqlite3.Error | None = None  # the last write that failed, until one succeeds
        if renew is not None:
            store.renew_message(renew.id)
            self.id = renew.id
            self.parts: list[str] = []
        elif extend is None:
            self.id = store.add_message(cid, "assistant", "", complete=False)
            self.parts = []
        else:
            self.id = extend.id
            self.parts = [extend.content]
        self._written = len(self.parts)  # parts already on disk
        self._last = clock()

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def append(self, text: str) -> None:
        self.parts.append(text)
        if self.clock() - self._last >= self.interval_s:
            self.flush()

    def flush(self) -> None:
        self._last = self.clock()  # a failed write waits for the next interval too
        if self._written != len(self.parts):
            self._write(lambda: self.store.update_message(self.id, self.text, complete=False))
            if self.error is None:
                self._written = len(self.parts)

    def finish(self, text: str, stats: dict) -> bool:
        """The whole answer, complete; False when it could not be written (`error` says why)."""
        self._write(lambda: self.store.update_message(self.id, text, complete=True, stats=stats, touch=True))
        return self.error is None

    def _write(self, write: Callable[[], None]) -> None:
        try:
            write()
        except sqlite3.Error as exc:
            first = self.error is None
            self.error = exc
            if first and self.on_error is not None:
                self.on_error(exc)
        else:
            self.error = None

    def discard(self) -> None:
        self.store.delete_message(self.id)
