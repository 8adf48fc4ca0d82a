"""A conversation written out for elsewhere: Markdown to read or share, JSON (an OpenAI-style message list
with each answer's settings and speed) to feed another tool. No Qt: the sidebar asks where, this writes."""

from __future__ import annotations

import json
import time
from pathlib import Path

from engine.files import replace

from .conversations import DECODING, Conversation, Message, Version
from .thinking import split_thinking

UNTITLED = "Untitled conversation"


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts))


def to_markdown(conv: Conversation, messages: list[Message]) -> str:
    lines = [f"# {conv.title or UNTITLED}", "", f"*{_when(conv.created)}*", ""]
    if conv.system_prompt:
        lines += ["**System prompt**", "", conv.system_prompt, ""]
    for m in messages:
        stats = m.stats or {}
        who = "You" if m.role == "user" else stats.get("model") or "Assistant"
        content = m.content
        if m.role == "assistant":
            thinking = split_thinking(content)
            if thinking.text:  # a reasoning model's: quoted above the answer (raw tags would vanish as HTML)
                quoted = "\n".join(f"> {line}".rstrip() for line in thinking.text.split("\n"))
                content = f"> *Thinking*\n>\n{quoted}\n\n{thinking.answer(content)}"
            elif thinking.text is not None:  # an empty thought: just the answer
                content = thinking.answer(content)
        lines += [f"## {who}", "", content, ""]
        if m.role == "assistant":
            facts = []
            if "new_tokens" in stats:
                facts.append(f"{stats['new_tokens']} tokens at {stats.get('tokens_per_s', 0):.1f} tok/s")
            if stats.get("method"):
                facts.append("SubSpec" if stats["method"] == "subspec" else "plain decoding")
            if not m.complete:
                facts.append("incomplete")
            facts += stats.get("notes", [])
            if facts:
                lines += [f"*{' · '.join(facts)}*", ""]
    return "\n".join(lines).rstrip() + "\n"


def to_json(conv: Conversation, messages: list[Message], versions: dict[int, list[Version]] | None = None) -> str:
    """`versions`: an answer's other versions (ConversationStore.versions), kept under it so Import brings
    them back; a tool reading the message list sees the version shown."""
    versions = versions or {}

    def entry(m: Message) -> dict:
        out = {"role": m.role, "content": m.content, "created": m.created, "complete": m.complete,
               **({"stats": m.stats} if m.stats else {})}
        if versions.get(m.id):
            out["versions"] = [{"content": v.content, "created": v.created, "complete": v.complete,
                                **({"stats": v.stats} if v.stats else {})} for v in versions[m.id]]
        return out

    data = {"title": conv.title, "created": conv.created, "updated": conv.updated,
            "system_prompt": conv.system_prompt,
            "settings": {name: getattr(conv, name) for name in DECODING},
            "messages": ([{"role": "system", "content": conv.system_prompt}] if conv.system_prompt else [])
            + [entry(m) for m in messages]}
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def target(path: str | Path, chosen_filter: str = "") -> Path:
    """The file an export writes: `path` as given, or with the chosen filter's suffix when it has none
    (.json for the JSON filter, else .md)."""
    path = Path(path)
    if not path.suffix:
        path = path.with_suffix(".json" if "json" in chosen_filter.lower() else ".md")
    return path


def export(conv: Conversation, messages: list[Message], path: str | Path,
           versions: dict[int, list[Version]] | None = None) -> Path:
    """Write the conversation to `path`: JSON for a .json name, else Markdown. Written to a temporary
    name and renamed, so a failed write never leaves half a file; text that cannot be UTF-8 (a lone
    surrogate pasted in) is replaced, not a failure."""
    path = Path(path)
    text = to_json(conv, messages, versions) if path.suffix.lower() == ".json" else to_markdown(conv, messages)
    tmp = path.with_name(path.name + ".part")
    try:
        tmp.write_text(text, encoding="utf-8", errors="replace")
        replace(tmp, path)  # engine.files: waits out an editor or a scanner holding the old file (Windows)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def default_name(conv: Conversation) -> str:
    """A file name from the title: letters, digits, spaces and dashes kept, at most 60 characters."""
    title = "".join(c if c.isalnum() or c in " -_" else " " for c in (conv.title or "conversation"))
    return "-".join(title.split())[:60] or "conversation"
