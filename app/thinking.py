"""A reasoning model's answer: its thinking and the answer proper. No Qt (export uses it too)."""

from __future__ import annotations

from dataclasses import dataclass

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


@dataclass(frozen=True)
class Thinking:
    """A reasoning model's answer split: its thinking (None: it has none), whether the thinking is over,
    and where the answer proper starts in the text (its length while the thinking goes on)."""

    text: str | None
    done: bool
    answer_start: int

    def answer(self, whole: str) -> str:
        return whole[self.answer_start:]


def split_thinking(text: str) -> Thinking:
    """Qwen3, QwQ and the DeepSeek-R1 distills think first, between <think> and </think>. Some chat
    templates (QwQ's, the R1 distills') put the <think> in the prompt, so an answer may hold only the
    closing tag, which these models write on a line of its own; one holding neither has no thinking (nor
    does an answer whose "<think>" comes after some text: it is quoting, as is a "</think>" inside a line:
    any model may write about the tags, "`</think>` ends it")."""
    lead = len(text) - len(text.lstrip())
    if text.startswith(THINK_OPEN, lead):
        body = lead + len(THINK_OPEN)
        end = text.find(THINK_CLOSE, body)
        if end < 0:
            return Thinking(text[body:].strip(), False, len(text))
        after = end + len(THINK_CLOSE)
        return Thinking(text[body:end].strip(), True, after + len(text[after:]) - len(text[after:].lstrip()))
    end = _closing_line(text)
    if end >= 0 and THINK_OPEN not in text[:end]:
        after = end + len(THINK_CLOSE)
        return Thinking(text[:end].strip(), True, after + len(text[after:]) - len(text[after:].lstrip()))
    return Thinking(None, True, 0)


def _closing_line(text: str) -> int:
    """Where the first "</think>" standing alone on its line starts, or -1."""
    end = text.find(THINK_CLOSE)
    while end >= 0:
        before = text[:end].rstrip(" \t")
        after = text[end + len(THINK_CLOSE):].lstrip(" \t")
        if (not before or before.endswith("\n")) and (not after or after.startswith(("\n", "\r"))):
            return end
        end = text.find(THINK_CLOSE, end + 1)
    return -1


def answer_text(text: str) -> str:
    """An answer without its thinking: what Copy copies."""
    return split_thinking(text).answer(text)
