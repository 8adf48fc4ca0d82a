"""How full the model's context is: the latest answer's prompt plus the answer, against the context it was
written in. A conversation that outgrows the context goes on with its oldest turns left out
(engine.context_window), so this is what tells the user that is near, or happening."""

from __future__ import annotations

from PySide6.QtWidgets import QProgressBar

NEARLY_FULL = 0.9  # from here on the next answers may leave early turns out


def context_usage(stats: dict | None) -> tuple[int, int] | None:
    """(tokens used, context tokens) from an answer's stats; None for an answer saved without them (before
    the meter existed, or by a backend that does not know its context)."""
    stats = stats or {}
    try:
        used = int(stats["prompt_tokens"]) + int(stats["new_tokens"])
        limit = int(stats["context_tokens"])
    except (KeyError, TypeError, ValueError):
        return None
    return (used, limit) if limit > 0 else None


class ContextMeter(QProgressBar):
    def __init__(self):
        super().__init__()
        self.setTextVisible(True)
        self.show_usage(None)

    def show_latest(self, messages) -> None:
        """From a conversation's messages (app.conversations.Message): its last answer's usage."""
        last = next((m for m in reversed(messages) if m.role == "assistant"), None)
        self.show_usage(last.stats if last else None)

    def show_usage(self, stats: dict | None) -> None:
        usage = context_usage(stats)
        if usage is None:
            self.hide()
            return
        used, limit = usage
        self.setRange(0, limit)
        self.setValue(min(used, limit))
        share = used / limit
        text = f"Context {used:,} / {limit:,}" + (" · full" if share >= NEARLY_FULL else "")
        self.setFormat(text)
        self.setMinimumWidth(self.fontMetrics().horizontalAdvance(text) + 24)  # on one line, never wrapped
        tip = (f"{used:,} of {limit:,} tokens ({share:.0%}): the latest prompt (system prompt, earlier turns) "
               f"and its answer. "
               f"A conversation longer than the context goes on with its oldest turns left out.")
        if stats and stats.get("notes"):
            tip += "\n\n" + "\n".join(stats["notes"])
        self.setToolTip(tip)
        self.show()
