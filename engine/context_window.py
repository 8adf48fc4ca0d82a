"""A conversation longer than the model's context: its oldest turns are left out of the prompt (a rolling
window, what Ollama does and LM Studio offers), the system message always kept, instead of refusing the
next message. Turns go whole, from a user message on, so the template still sees user and assistant
alternate. The caller says how many messages were left out, so the user is told."""

from __future__ import annotations

from typing import Callable


# Once turns must go, they go this share of the budget at a time: the turns that follow then fit without
# leaving out more, so the prompt keeps its beginning for a while and the kept KV cache
# (engine.kv_cache.PromptCache) is reused, instead of every turn leaving out one more and prefilling anew.
ROOM_AFTER_DROPPING = 0.25


def fit_conversation(encode: Callable[[list[dict]], list[int]], messages: list[dict], budget: int,
                     slack: float = 0.0) -> tuple[list[int], int]:
    """(prompt ids, messages left out): the ids of `messages` when they fit `budget` tokens; else of the
    system message (if first) and the longest tail that starts at a user message and fits. When not even
    the last turn fits, the whole conversation's ids come back (the caller's context check then says how
    long it is) and nothing counts as left out. A binary search over the turn starts: O(log n) encodings
    (twice that when the rounding below finds nothing).

    `slack` (ROOM_AFTER_DROPPING for a chat), stateless: the tokens left out are at least the excess over
    the budget rounded up to a multiple of `slack * budget`. The turns before a start never change, so the
    tokens that leaving them out saves do not either: the same start keeps being chosen until the
    conversation has grown by another multiple, and in between the prompt only grows at its end."""
    ids = encode(messages)
    if len(ids) <= budget:
        return ids, 0
    head = 1 if messages and messages[0].get("role") == "system" else 0
    starts = [i for i in range(head + 1, len(messages)) if messages[i].get("role") == "user"]
    quantum = int(budget * slack)
    limits = [budget]
    if quantum >= 1:
        excess = len(ids) - budget
        limits.insert(0, len(ids) - -(-excess // quantum) * quantum)  # (<= budget)
    for limit in dict.fromkeys(limits):
        best = _earliest_fitting(encode, messages, head, starts, limit)
        if best is not None:
            return best[0], best[1] - head
    return ids, 0


def _earliest_fitting(encode, messages, head, starts, limit):
    """(ids, start) of the earliest turn start whose tail (after the head) fits `limit`, or None."""
    # Later starts are shorter prompts: find the earliest start whose prompt fits.
    lo, hi, best = 0, len(starts) - 1, None
    while lo <= hi:
        mid = (lo + hi) // 2
        candidate = encode(messages[:head] + messages[starts[mid]:])
        if len(candidate) <= limit:
            best, hi = (candidate, starts[mid]), mid - 1
        else:
            lo = mid + 1
    return best
