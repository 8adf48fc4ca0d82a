"""A conversation read back from a file: this app's JSON export (its settings and each answer's stats kept),
or an OpenAI-style message list as other tools write one ([{"role", "content"}, ...], bare or under
"messages"). No Qt: the window asks which file, this reads it. Anything it cannot take is a ValueError that
says what, and nothing is created."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from .conversations import TITLE_CHARS, decoding_settings, title_from

MAX_BYTES = 64 * 1024 * 1024  # a conversation, not a dataset


@dataclass
class Imported:
    title: str
    system_prompt: str = ""
    settings: dict = field(default_factory=dict)  # DECODING's, as decoding_settings reads them
    messages: list[dict] = field(default_factory=list)  # role, content, created, complete, stats


def read(path: str | Path) -> Imported:
    path = Path(path)
    if path.stat().st_size > MAX_BYTES:
        raise ValueError(f"{path.name} is over {MAX_BYTES // 2**20} MB: not a conversation")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ValueError(f"{path.name} is not UTF-8 text") from None
    except ValueError as exc:
        raise ValueError(f"{path.name} is not JSON ({exc})") from None
    return parse(data, path.stem)


def parse(data, name: str = "Imported conversation") -> Imported:
    ours = isinstance(data, dict) and isinstance(data.get("settings"), dict)
    raw = data.get("messages") if isinstance(data, dict) else data
    if not isinstance(raw, list) or not raw:
        raise ValueError("no messages: expected a list of {\"role\", \"content\"} (or this app's JSON export)")
    system, messages = "", []
    for i, m in enumerate(raw):
        if not isinstance(m, dict):
            raise ValueError(f"message {i + 1} is not an object")
        role, content = m.get("role"), _text(m.get("content"), i)
        if role in ("system", "developer"):
            if messages or system:
                raise ValueError(f"message {i + 1}: a system message after the conversation began (only a first "
                                 f"one can be this conversation's system prompt)")
            system = content
            continue
        if role not in ("user", "assistant"):
            raise ValueError(f"message {i + 1} has role {role!r}: a conversation here holds user and assistant "
                             f"messages (and a system prompt)")
        created = m.get("created")
        stats = m.get("stats") if ours and isinstance(m.get("stats"), dict) else None
        messages.append({"role": role, "content": content, "stats": stats,
                         "complete": m.get("complete") is not False, "created": _time(created),
                         "versions": _versions(m.get("versions"), i) if ours and role == "assistant" else []})
    if not messages:
        raise ValueError("no user or assistant messages")
    title = data.get("title") if isinstance(data, dict) else None
    if not isinstance(title, str) or not title.strip():
        first = next((m["content"] for m in messages if m["role"] == "user"), name)
        title = title_from(first) or name
    settings = decoding_settings(data["settings"]) if ours else {}
    return Imported(title.strip()[:TITLE_CHARS * 4], system, settings, messages)


def _time(value) -> float | None:
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) else None


def _versions(value, i: int) -> list[dict]:
    """An exported answer's other versions (Regenerate's, Edit answer's): content, created, complete, stats."""
    if not isinstance(value, list):
        return []
    out = []
    for v in value:
        if not isinstance(v, dict):
            raise ValueError(f"message {i + 1}: a version is not an object")
        out.append({"content": _text(v.get("content"), i), "created": _time(v.get("created")),
                    "complete": v.get("complete") is not False,
                    "stats": v.get("stats") if isinstance(v.get("stats"), dict) else None})
    return out


def _text(value, i: int) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, list) and all(isinstance(p, dict) and isinstance(p.get("text"), str) for p in value):
        return "\n".join(p["text"] for p in value)  # OpenAI's text parts
    raise ValueError(f"message {i + 1}'s content is not text")
