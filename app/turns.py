"""How a finished or saved turn looks in the transcript: the note on how it ended and the stats line."""

from __future__ import annotations

from .conversations import Message
from .widgets import Transcript

END_NOTES = {"stopped": "stopped", "length": "cut at the length limit", "interrupted": "interrupted"}


def format_stats(summary: dict) -> str:
    return (f"{summary['new_tokens']} tokens · {summary['tokens_per_s']:.1f} tok/s · "
            f"TTFT {summary['ttft_s']:.2f} s")


def method_label(stats: dict) -> str:
    if stats.get("method") == "subspec":
        return f"SubSpec D{stats.get('depth')} W{stats.get('width')}"
    return "plain"


def format_answer_stats(stats: dict) -> str:
    return f"{format_stats(stats)} · τ {stats.get('tau', 1.0):.2f} · {method_label(stats)}"


def end_answer(transcript: Transcript, finish_reason: str | None, stats: dict | None) -> None:
    if finish_reason in END_NOTES:
        transcript.add_note(END_NOTES[finish_reason])
    if stats and "new_tokens" in stats:
        transcript.add_stats(format_answer_stats(stats))


def replay(transcript: Transcript, messages: list[Message]) -> list[dict]:
    """Shows saved messages; returns them as the model's history. An answer cut off by a crash (never
    marked complete) is shown, and kept in the history, as far as it got."""
    history = []
    for m in messages:
        if m.role == "user":
            transcript.add_user(m.content)
        else:
            stats = m.stats or {}
            transcript.begin_assistant(stats.get("model", "Assistant"))
            transcript.append_text(m.content)
            end_answer(transcript, stats.get("finish_reason") if m.complete else "interrupted", stats)
        history.append({"role": m.role, "content": m.content})
    return history
