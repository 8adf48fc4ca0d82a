"""How a finished or saved turn looks in the transcript, and what a redo (regenerate, edit, continue)
replaces in the store, so a failed one can be put back as it was."""

from __future__ import annotations

from dataclasses import dataclass, field

from .compare import format_comparison
from .conversations import ConversationStore, Message
from .thinking import answer_text, split_thinking
from .widgets import Transcript

END_NOTES = {"stopped": "stopped", "length": "cut at the length limit", "interrupted": "interrupted"}


def format_stats(summary: dict) -> str:
    # What the kept KV cache saved the prefill (engine.kv_cache.PromptCache): why a long chat's first token
    # still comes quickly.
    cached = f", {summary['cached_tokens']} cached tokens" if summary.get("cached_tokens") else ""
    return (f"{summary['new_tokens']} tokens · {summary['tokens_per_s']:.1f} tok/s · "
            f"TTFT {summary['ttft_s']:.2f} s{cached}")


def method_label(stats: dict) -> str:
    if stats.get("method") == "subspec":
        if stats.get("auto"):  # answers saved before auto depth existed have no "auto": a fixed depth
            return f"SubSpec auto D≤{stats.get('depth')} W{stats.get('width')}"
        return f"SubSpec D{stats.get('depth')} W{stats.get('width')}"
    return "plain"


def format_answer_stats(stats: dict) -> str:
    seed = f" · seed {stats['seed']}" if stats.get("seed") is not None else ""  # sampled: to have it again
    return f"{format_stats(stats)} · τ {stats.get('tau', 1.0):.2f} · {method_label(stats)}{seed}"


def end_answer(transcript: Transcript, finish_reason: str | None, stats: dict | None, text: str = "",
               version: tuple[int, int, int, bool] | None = None, branch: int | None = None) -> None:
    """`version`: (message id, the shown version's number, how many, whether they may be switched now) of an
    answer with other versions (Regenerate keeps them); `branch`: the saved answer's id, for its Branch link."""
    if finish_reason == "length" and not split_thinking(text).done:
        # A reasoning model's thinking often outruns the default answer length: say what to do about it.
        transcript.add_note("cut at the length limit while still thinking: Continue goes on, and More > Answer "
                            "length lets answers be longer")
    elif finish_reason in END_NOTES:
        transcript.add_note(END_NOTES[finish_reason])
    for note in (stats or {}).get("notes", []):  # what the engine changed to answer (e.g. a rolling context)
        transcript.add_note(note)
    measured = bool(stats and "new_tokens" in stats)  # an edited or imported answer has no token counts
    if measured or version is not None or branch is not None:
        # Copy copies the answer, not a reasoning model's thinking before it.
        transcript.add_stats(format_answer_stats(stats) if measured else "", copy_text=answer_text(text) or None,
                             version=version, branch=branch)
    if stats and "compare" in stats:
        transcript.add_stats("Compared: " + format_comparison(stats["compare"]))
    transcript.end_answer()


def replay(transcript: Transcript, messages: list[Message], keep: int | None = None,
           versions: dict[int, tuple[int, int]] | None = None) -> list[dict]:
    """Shows saved messages (the last `keep` of them, with a line offering the earlier ones); returns all
    of them as the model's history. An answer cut off by a crash (never marked complete) is shown, and kept
    in the history, as far as it got. `versions`: ConversationStore.version_positions; the last answer's
    may be switched (as Regenerate acts on the last answer only)."""
    versions = versions or {}
    first = 0 if keep is None else max(len(messages) - keep, 0)
    if 0 < first < len(messages) and messages[first].role == "assistant":
        first -= 1  # from the question of the first answer shown
    shown = messages[first:]
    with transcript.batch():  # laid out once, not edit by edit
        if len(shown) < len(messages):
            transcript.add_earlier(len(messages) - len(shown))
        for m in shown:
            if m.role == "user":
                transcript.add_user(m.content)
            else:
                stats = m.stats or {}
                transcript.begin_assistant(stats.get("model", "Assistant"), m.content)
                position = versions.get(m.id)
                end_answer(transcript, stats.get("finish_reason") if m.complete else "interrupted", stats,
                           m.content, (m.id, *position, m is messages[-1]) if position else None, branch=m.id)
    return history_of(messages)


def history_of(messages: list[Message]) -> list[dict]:
    return [{"role": m.role, "content": m.content} for m in messages]


@dataclass
class Turn:
    """What one request changed in the store: undo() puts the conversation back as it was before."""

    kind: str  # "send", "edit", "regenerate" or "continue"
    text: str = ""  # send and edit: the user's text, back into the box if the turn fails
    created: bool = False  # the turn created the conversation
    user_id: int | None = None  # the user message it added
    removed: list[Message] = field(default_factory=list)  # the messages it replaces
    extended: Message | None = None  # continue: the answer as it was
    # regenerate: the answer it writes anew (in its row), and the version that keeps what it said
    renewed: Message | None = None
    version_id: int | None = None

    def undo(self, store: ConversationStore, cid: int, answer_id: int | None) -> None:
        if self.extended is not None:
            e = self.extended
            store.update_message(e.id, e.content, e.complete, e.stats)
        elif self.renewed is not None:
            store.pop_version(self.renewed.id, self.version_id)
        elif answer_id is not None:
            store.delete_message(answer_id)
        if self.user_id is not None:
            store.delete_message(self.user_id)
        if self.removed:
            store.restore(cid, self.removed)
        if self.created:
            store.delete(cid)


def last_of(messages: list[Message], role: str) -> Message | None:
    return next((m for m in reversed(messages) if m.role == role), None)
