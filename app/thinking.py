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
    templates put the <think> in the prompt, so an answer may hold only the closing tag; one holding
    neither has no thinking (nor does an answer whose "<think>" comes after some text: it is quoting)."""
    lead = len(text) - len(text.lstrip())
    if text.startswith(THINK_OPEN, lead):
        body = lead + len(THINK_OPEN)
        end = text.find(THINK_CLOSE, body)
        if end < 0:
            return Thinking(text[body:].strip(), False, len(text))
        after = end + len(THINK_CLOSE)
        return Thinking(text[body:end].strip(), True, after + len(text[after:]) - len(text[after:].lstrip()))
    end = text.find(THINK_CLOSE)
    if end >= 0 and THINK_OPEN not in text[:end]:
        after = end + len(THINK_CLOSE)
        return Thinking(text[:end].strip(), True, after + len(text[after:]) - len(text[after:].lstrip()))
    return Thinking(None, True, 0)


def answer_text(text: str) -> str:
    """An answer without its thinking: what Copy copies."""
    return split_thinking(text).answer(text)
