"""One draft step with fixed shapes, captured once as a CUDA graph and replayed for every step.

A deep tree means ~48 draft steps per target pass; launched op by op, each step costs more CPU time to
launch its ~1,500 kernels than the GPU spends running them (measured on an H100: 26 ms a step against
about 9 ms of GPU work). With fixed shapes -- the newest `width` nodes, KV written at slots given as a
device tensor, attention over the first `span` cache slots under a [width, span] mask -- the step is one
replay. The same function runs eagerly on a CPU, which is how the tests check it equals the ordinary forward.

The span is the context plus the tree rounded up to a power of two (`draft_span`), not the whole cache:
attention reads every slot it spans, masked or not, so a step over a 32k-slot cache would read all of it
(1.8 GB of KV for a Qwen2.5-7B, more than half of what its substitutes weigh) however short the chat.
A step is captured per span and width in use (a tree's root step has one row, the others `topk`); the
four most recent are kept.
"""

from __future__ import annotations

import torch

from .kv_cache import KVCache
from .model import Decoder


class DraftStep:
    """Fixed-shape draft step for `width` nodes over `cache` (graph-captured on CUDA)."""

    def __init__(self, draft: Decoder, cache: KVCache, width: int, use_graph: bool | None = None,
                 span: int | None = None):
        self.draft, self.cache, self.width = draft, cache, width
        self.span = cache.capacity if span is None else span
        if not width <= self.span <= cache.capacity:
            raise ValueError(f"a draft step spans {width}..{cache.capacity} slots, not {self.span}")
        device = cache.k.device
        # Warm-up and capture write KV at the last slots of the span, which are scratch while drafting.
        self.tokens = torch.zeros(width, dtype=torch.long, device=device)
        self.positions = torch.zeros(width, dtype=torch.long, device=device)
        self.slots = torch.arange(self.span - width, self.span, device=device)
        # Attention spans the mask's columns (engine.model.Attention with `slots`).
        self.mask = torch.zeros(width, self.span, dtype=torch.float32, device=device)
        self.graph = None
        self.key = self.key_for(cache, width, self.span)
        if use_graph if use_graph is not None else device.type == "cuda":
            self._capture()

    @staticmethod
    def key_for(cache: KVCache, width: int, span: int) -> tuple:
        return (width, span, cache.capacity, cache.k.data_ptr(), cache.v.data_ptr())

    def _run(self) -> torch.Tensor:
        return self.draft(self.tokens, self.positions, self.cache, 0, self.mask, slots=self.slots)

    def _capture(self) -> None:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):  # warm-up: lazy initialisation must not happen inside the capture
                self._run()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        self.logits = capture(graph, self._run)
        self.graph = graph

    def __call__(self, tokens: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor,
                 mask: torch.Tensor) -> torch.Tensor:
        """tokens/positions/slots [width]; mask [width, n] additive over slots [0, n), n <= span."""
        self.tokens.copy_(tokens)
        self.positions.copy_(positions)
        self.slots.copy_(slots)
        self.mask.fill_(torch.finfo(torch.float32).min)
        self.mask[:, : mask.shape[1]].copy_(mask)
        if self.graph is None:
            return self._run()
        self.graph.replay()
        return self.logits


def capture(graph, fn):
    """fn() captured into `graph` (torch.cuda.graph), its result returned. Running out of memory inside a
    capture can surface as the capture's own failure (ending a broken capture raises anew): it is raised as
    torch.OutOfMemoryError, so the caller backs off to a shallower tree instead of failing the answer."""
    try:
        with torch.cuda.graph(graph):
            return fn()
    except Exception as e:
        if out_of_memory(e) and not isinstance(e, torch.OutOfMemoryError):
            raise torch.OutOfMemoryError(f"out of GPU memory while capturing a draft step: {e}") from e
        raise


def out_of_memory(error: BaseException) -> bool:
    """Whether `error`, or any error it arose from, is CUDA running out of memory."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower():
            return True
        error = error.__cause__ or error.__context__
    return False


MIN_SPAN = 256
KEPT_STEPS = 4  # a tree's two widths (its root's one row, then topk) at the current span and the last


def draft_span(needed: int, capacity: int) -> int:
    """The slots a draft step attends over when `needed` are in use (context plus tree): the next power of
    two, at least MIN_SPAN, at most the cache's capacity. Powers of two keep the captures few (one more
    each time the context doubles) and the slots read at most twice those in use."""
    span = MIN_SPAN
    while span < needed:
        span *= 2
    return min(span, capacity)


def release_steps(draft: Decoder, keep: KVCache | None = None) -> None:
    """Drop a draft's captured steps except those bound to `keep`: each holds its cache (and its graph's
    memory) alive, so an answer that makes a new cache must drop the last answer's steps before
    allocating, or for a while both KV caches would sit in VRAM (1.8 GB each for a Qwen2.5-7B at 32k)."""
    steps = draft.__dict__.get("_draft_steps")
    if steps:
        for key in [k for k, step in steps.items() if keep is None or step.cache is not keep]:
            del steps[key]


def draft_step_for(draft: Decoder, cache: KVCache, width: int, span: int | None = None) -> DraftStep:
    """The captured step for this draft, cache, width and span (default: the whole cache): captured once,
    and again only if the cache was reallocated or the step was dropped for newer spans."""
    steps = draft.__dict__.setdefault("_draft_steps", {})
    key = DraftStep.key_for(cache, width, cache.capacity if span is None else span)
    if key in steps:
        steps[key] = steps.pop(key)  # most recently used last
        return steps[key]
    for old in [k for k in steps if k[2:] != key[2:]]:
        del steps[old]  # an old cache's graphs point at freed memory
    while len(steps) >= KEPT_STEPS:
        del steps[next(iter(steps))]  # the least recently used span: its graph's memory goes with it
    steps[key] = DraftStep(draft, cache, width, span=span)
    return steps[key]
