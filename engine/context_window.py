"""A conversation longer than the model's context: its oldest turns are left out of the prompt (a rolling
window, what Ollama does and LM Studio offers), the system message always kept, instead of refusing the
next message. Turns go whole, from a user message on, so the template still sees user and assistant
alternate. The caller says how many messages were left out, so the user is told."""

from __future__ import annotations

from typing import Callable


def fit_conversation(encode: Callable[[list[dict]], list[int]], messages: list[dict], budget: int
                     ) -> tuple[list[int], int]:
    """(prompt ids, messages left out): the ids of `messages` when they fit `budget` tokens; else of the
    system message (if first) and the longest tail that starts at a user message and fits. When not even
    the last turn fits, the whole conversation's ids come back (the caller's context check then says how
    long it is) and nothing counts as left out. A binary search over the turn starts: O(log n) encodings."""
    ids = encode(messages)
    if len(ids) <= budget:
        return ids, 0
    head = 1 if messages and messages[0].get("role") == "system" else 0
    starts = [i for i in range(head + 1, len(messages)) if messages[i].get("role") == "user"]
    # Later starts are shorter prompts: find the earliest start whose prompt fits.
    lo, hi, best = 0, len(starts) - 1, None
    while lo <= hi:
        mid = (lo + hi) // 2
        candidate = encode(messages[:head] + messages[starts[mid]:])
        if len(candidate) <= budget:
            best, hi = (candidate, starts[mid]), mid - 1
        else:
            lo = mid + 1
    if best is None:
        return ids, 0
    return best[0], best[1] - head
