"""Substitute speculative decoding: the draft grows a deep beam tree over the shared KV cache, the target
verifies every node in one pass, and the verification walk emits only tokens the target itself chose.

One iteration (a "target pass"):
1. grow_tree: `depth` draft steps; each runs the newest `topk` nodes and keeps the global top-`topk`
   children by cumulative float32 log-probability of the sharpened draft distribution (when sampling, of the
   draft's guess at the target's draw: its own distribution perturbed by the answer's Gumbel noise).
2. verify: one target forward over all nodes with the tree mask; the target's token at every node
   (argmax, or one draw from its warped distribution) is chosen on the device; only N ids come back.
3. walk: accept while the target's token is a child; the first mismatch (or the leaf's token) is the bonus.
4. commit: the KV rows of the root and the accepted path are gathered behind the committed prefix.
The draft never prefills: it reads the target's committed KV; rows the draft writes past the committed
length are overwritten by the target's pass, and rejected rows are simply left behind.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import Callable, Iterator

import torch

from .errors import SubspecError
from .events import StepEvent
from .depth_control import DepthControl, control_for
from .draft_graph import draft_span, draft_step_for, release_steps
from .constrained import constrained_walk
from .generate import (Emitter, PrefillProgress, check_context, ensure_room, joined, new_emitter, prefill_step,
                       reported, start_cache, streamed_bytes)
from .kv_cache import KVCache, PromptCache
from .loading import LoadedModel, free_device_memory
from .model import Decoder
from .sampling import Draws, History, SamplingParams, row_scores, select_tokens
from .tree import Tree, path_members, prune, tree_mask, walk


# When sampling, a draft step weighs each frontier node's likeliest tokens only (its guess at the target's draw
# needs their noise, not the whole vocabulary's): a token outside them is drawn rarely, and missing one costs
# acceptance, never correctness.
DRAFT_CANDIDATES = 64


@dataclass(frozen=True)
class TreeShape:
    depth: int = 48
    topk: int = 6
    draft_temperature: float = 0.2
    # Nodes verified per pass. None: the whole beam (1 + depth * topk). Smaller: a wider beam is grown
    # and only its `budget` most likely nodes are verified, so width goes where the draft is unsure.
    budget: int | None = None
    # Auto depth: `depth` is the deepest tree allowed and every pass uses the depth that measured draft and
    # verify times and the recent acceptance say is fastest (engine.depth_control), plain decoding included.
    auto: bool = False

    def __post_init__(self):
        if self.depth < 0 or self.topk < 1:
            raise SubspecError(f"depth must be >= 0 and width >= 1, got depth {self.depth}, width {self.topk}")
        if not 0 < self.draft_temperature < math.inf:  # NaN fails every comparison
            raise SubspecError(f"draft temperature must be a number > 0, got {self.draft_temperature}")
        if self.budget is not None and self.budget < 1:
            raise SubspecError(f"tree budget must be >= 1 node (0 on the command line: the whole beam), "
                               f"got {self.budget}")

    @property
    def grown(self) -> int:
        return 1 + self.depth * self.topk

    @property
    def nodes(self) -> int:
        return min(self.grown, self.budget or self.grown)

    @property
    def label(self) -> str:
        return (f"D{self.depth} K{self.topk}" + (f" B{self.budget}" if self.nodes < self.grown else "")
                + (" auto" if self.auto else ""))


def shallower(shape: TreeShape) -> TreeShape:
    """The tree to fall back to after running out of memory: half as deep (depth 0 is plain decoding)."""
    if shape.depth == 0:
        raise SubspecError("out of GPU memory even with plain decoding: close other programs using the GPU, "
                           "or reload with fewer resident layers")
    return replace(shape, depth=shape.depth // 2)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def grow_tree(draft: Decoder, cache: KVCache, root_token: torch.Tensor, shape: TreeShape,
              depth: int, timer: list[float], fixed_shapes: bool | None = None,
              history: History | None = None, sampling: SamplingParams | None = None,
              draws: Draws | None = None) -> Tree:
    """Beam tree of `depth` levels below the root. Its wall time (ms, draft forwards and beam selection)
    accumulates into timer[0]; the device is synchronized once, at the end, not per step, so the host
    can queue step d+1 while the device still runs step d.

    `fixed_shapes` (default: on CUDA) runs every step as one replay of a captured fixed-shape step
    (engine.draft_graph): the root's (one row) and the others' (`topk` rows); the result is the same tree.
    The root's step is captured too: launched op by op it would cost the host a few milliseconds a tree
    while the GPU, just synchronized by the last verification, waits.

    With penalties (`history`), the draft's logits are penalized as the target's will be, each node with
    its own path: the draft then guesses what the penalized target chooses (acceptance, not correctness).
    When sampling (`sampling` not greedy, with the answer's `draws`), children are ranked by `sampled_children`:
    the draft's guess at what the target will draw there."""
    L = cache.length
    device = root_token.device
    if fixed_shapes is None:
        fixed_shapes = device.type == "cuda"
    tree = Tree.with_root(root_token, 1 + depth * shape.topk, device)
    dtype = draft.embed_tokens.weight.dtype  # masks in the model's dtype: no converted copy per step
    frontier = slice(0, 1)
    scores = torch.zeros(1, device=device)
    sampled = sampling is not None and not sampling.greedy
    if sampled and draws is None:
        raise ValueError("a sampled tree needs the answer's draws")
    steps = {}  # rows -> captured step (captured before the clock starts: once per span, not per tree)
    if fixed_shapes and depth > 0:
        span = draft_span(L + 1 + depth * shape.topk, cache.capacity)
        for rows in {1, shape.topk} if depth > 1 else {1}:
            steps[rows] = draft_step_for(draft, cache, rows, span)
    t0 = time.perf_counter()
    for _ in range(depth):
        mask = tree_mask(tree.ancestors, frontier, L, tree.size, dtype, tree.depths, draft.config.sliding_window)
        rows = frontier.stop - frontier.start
        step = steps.get(rows)
        if step is not None:
            slots = torch.arange(L + frontier.start, L + frontier.stop, device=device)
            logits = step(tree.tokens[frontier], L + tree.depths[frontier], slots, mask)
        else:
            logits = draft(tree.tokens[frontier], L + tree.depths[frontier], cache, L + frontier.start, mask)
        if history is not None:
            logits = history.penalize(logits, path_members(tree, frontier))
        if sampled:
            logp, ids = sampled_children(logits, sampling, draws, L + tree.depths[frontier], shape)
        else:
            # Sharpening (draft temperature < 1) keeps a confident wrong branch from crowding the beam.
            logp, ids = torch.log_softmax(logits / shape.draft_temperature, dim=-1), None  # float32
        logp = logp + scores[:, None]
        width = logp.shape[1]
        top = torch.topk(logp.flatten(), shape.topk)
        children = top.indices % width if ids is None else ids.flatten()[top.indices]
        frontier = tree.add(frontier.start + top.indices // width, children, top.values)
        scores = top.values
    tree = prune(tree, shape.nodes)
    _sync(device)
    timer[0] += (time.perf_counter() - t0) * 1e3
    return tree


def sampled_children(logits: torch.Tensor, sampling: SamplingParams, draws: Draws, positions: torch.Tensor,
                     shape: TreeShape) -> tuple[torch.Tensor, torch.Tensor]:
    """The draft's guess at the target's draw after each row ([rows, V] logits, penalized if the answer is;
    `positions`: each row's input position): (log-scores, token ids), both [rows, M] for the M likeliest
    tokens (DRAFT_CANDIDATES, or the tree's width if wider: a root alone fills the beam).

    The target draws argmax(log p + g) with the answer's Gumbel noise g (engine.sampling); the draft ranks its
    likeliest tokens by log q + g, warped as the target's are (temperature, top-k, top-p, min-p), so its first
    guess is the target's draw whenever q is close to p. Sharpened by the draft temperature as greedy trees
    are, so that a clear guess keeps the beam and a near tie spends width on the runner-up."""
    logq = torch.log_softmax(logits.float() / sampling.temperature, dim=-1)
    vals, ids = torch.topk(logq, min(max(DRAFT_CANDIDATES, shape.topk), logq.shape[-1]), dim=-1)  # likeliest first
    cut = float("-inf")
    top_k = 0 < sampling.top_k < vals.shape[-1]  # a top-k cut among the candidates (a wider one cuts none)
    if top_k:
        vals[:, sampling.top_k:] = cut
    if sampling.top_p < 1.0:
        probs = torch.softmax(vals, dim=-1) if top_k else vals.exp()  # (renormalized over top-k, as warp does)
        vals = vals.masked_fill(probs.cumsum(-1) - probs >= sampling.top_p, cut)
    if sampling.min_p > 0:
        vals = vals.masked_fill(vals < vals[:, :1] + math.log(sampling.min_p), cut)
    guess = (vals + draws.gumbels(positions, ids)) / shape.draft_temperature
    # A cut token stays a (hopeless) candidate with a finite score: a beam of scores never meets -inf - -inf.
    return torch.log_softmax(guess, dim=-1).clamp_(min=-1e9), ids


def verify(target: Decoder, cache: KVCache, tree: Tree, sampling: SamplingParams,
           draws: Draws | None, history: History | None = None, keep: dict | None = None) -> torch.Tensor:
    """The target's token at every node of the tree, in one pass: [N] on the device. With penalties
    (`history`) each node's logits are penalized with its own path, as plain decoding would have there.
    `keep` (a constrained answer's walk ranks a node's other tokens; an answer reporting log-probabilities
    reads the accepted nodes' rows): receives `rescore(node)` and the tree's `logits`."""
    L, n = cache.length, tree.size
    # In the model's dtype: a float32 mask would be held beside its converted fold for the whole pass
    # (the largest mask of all: n rows over the whole context; engine.planner.mask_bytes counts it).
    mask = tree_mask(tree.ancestors, slice(0, n), L, n, target.embed_tokens.weight.dtype, tree.depths,
                     target.config.sliding_window)
    positions = L + tree.depths[:n]
    # In the model's dtype: argmax is the same on it, and sampling casts a block of rows at a time
    logits = target(tree.tokens[:n], positions, cache, L, mask, float_logits=False)
    paths = path_members(tree, slice(0, n)) if history is not None else None
    if keep is not None:
        keep["rescore"] = lambda node: row_scores(logits, node, sampling, draws, positions, history, paths)
        keep["logits"] = logits
    return select_tokens(logits, sampling, draws, positions, history, paths)


# (target, cache, tree, sampling, draws, history) -> the target's token at each node; a JSON-mode answer, or one
# reporting log-probabilities, also passes keep= (a dict), where a verifier that can puts "rescore" and
# "logits" (see verify).
Verifier = Callable[..., torch.Tensor]


def generate_subspec(lm: LoadedModel, draft: Decoder, prompt_ids: list[int], max_new_tokens: int = 256,
                     sampling: SamplingParams = SamplingParams(), stop_strings=(),
                     shape: TreeShape = TreeShape(), prefill_chunk: int = 256,
                     verifier: Verifier = verify, cache: KVCache | None = None,
                     control: DepthControl | None = None,
                     prompt_cache: PromptCache | None = None,
                     prompt_progress: PrefillProgress | None = None) -> Iterator[StepEvent]:
    """Speculative decoding with the substitute draft; output identical to `generate_plain`'s.

    `cache` (optional) is used instead of a fresh one, so a caller can inspect or continue it.
    `control` (with `shape.auto`): the depth controller to use and update, so that a conversation keeps what
    earlier answers measured; a new one when it is None or was made for another shape.
    `prompt_cache` (instead of `cache`): prefill only what the prompt does not share with the last answer's
    cache, and keep this answer's for the next (engine.kv_cache.PromptCache).
    `prompt_progress`: as generate_plain's."""
    if cache is not None and prompt_cache is not None:
        raise ValueError("pass a cache or a prompt cache, not both")
    try:
        yield from _generate_subspec(lm, draft, prompt_ids, max_new_tokens, sampling, stop_strings, shape,
                                     prefill_chunk, verifier, cache, control, prompt_cache, prompt_progress)
    finally:
        # The captured draft steps hold this answer's KV cache and their graphs' memory: they go with the
        # answer (finished, stopped or failed), so that an idle app or a plain answer after this one does
        # not keep them in VRAM (nor keep a kept prompt cache alive that has to give way to a new one). A
        # cache the caller passed keeps its steps, for its next answer.
        release_steps(draft, keep=cache)


def _generate_subspec(lm, draft, prompt_ids, max_new_tokens, sampling, stop_strings, shape, prefill_chunk,
                      verifier, cache, control, prompt_cache, prompt_progress=None) -> Iterator[StepEvent]:
    check_context(lm, len(prompt_ids), max_new_tokens)
    target = lm.decoder
    if max_new_tokens <= 0:
        yield StepEvent(0, (), "", finish_reason="length")
        return
    release_steps(draft, keep=cache)  # the last answer's captured steps hold its cache: free it first
    cache, max_new_tokens, note, reused = start_cache(target, prompt_ids, max_new_tokens, shape.grown + 1, cache,
                                                      prompt_cache)
    emitter = new_emitter(lm, sampling, stop_strings, max_new_tokens, prompt_ids)
    try:
        yield from _decode_subspec(lm, draft, cache, prompt_ids, reused, sampling, shape, prefill_chunk, verifier,
                                   control, note, emitter, prompt_progress)
    finally:
        if prompt_cache is not None:
            prompt_cache.keep(target, cache, list(prompt_ids) + emitter.emitted)


def _decode_subspec(lm, draft, cache, prompt_ids, reused, sampling, shape, prefill_chunk, verifier, control, note,
                    emitter: Emitter, prompt_progress=None) -> Iterator[StepEvent]:
    """generate_subspec's loop, after the prompt's first `reused` tokens, which the cache holds."""
    target = lm.decoder
    device = lm.device
    history = emitter.history
    gen = sampling.draws()
    context = lm.config.max_position_embeddings
    # What the verification walk reads besides the target's tokens: JSON mode ranks a node's other tokens,
    # log-probabilities read the accepted nodes' rows (engine.speculative.verify keeps both in `keep`).
    needed = ({"rescore"} if emitter.constraint is not None else set()) | (
        {"logits"} if sampling.logprobs is not None else set())

    root, event = prefill_step(target, cache, prompt_ids[reused:], prefill_chunk, sampling, gen, emitter,
                               prompt_progress)
    yield replace(event, cached_tokens=reused, note=joined(note, event.note))

    iteration = 0
    note = ""  # the prefill's event carried the cache's note
    control = control_for(shape, control)
    while not emitter.finished:
        iteration += 1
        t0 = time.perf_counter()
        moved = streamed_bytes(target)
        L = cache.length
        ensure_room(cache, L + shape.grown + 1)  # the tree's rows, behind the committed ones
        # No deeper than the tokens still wanted or the positions the model has.
        wanted = control.choose().depth if control else shape.depth
        depth = max(0, min(wanted, emitter.remaining - 1, context - L - 1))
        timer = [0.0]
        try:
            tree = grow_tree(draft, cache, root, shape, depth, timer, history=history, sampling=sampling, draws=gen)
            t1 = time.perf_counter()
            keep = {} if needed else None
            target_tokens = (verifier(target, cache, tree, sampling, gen, history) if keep is None
                             else verifier(target, cache, tree, sampling, gen, history, keep=keep))
            _sync(device)
        except torch.OutOfMemoryError:
            # Another program took VRAM, or a long context left too little for this tree. Nothing was
            # committed this iteration (draft and verify rows lie past cache.length), so the same step is
            # simply run again with a shallower tree: the output stays exactly the target's.
            tree = target_tokens = keep = None  # (keep holds the tree's logits: they go too)
            release_steps(draft)  # the captured steps' graph memory too (recaptured for the next tree)
            free_device_memory()
            smaller = shallower(shape)
            note = (f"{note} " if note else "") + \
                f"Out of GPU memory with a {shape.label} tree; continuing with {smaller.label}."
            shape, iteration = smaller, iteration - 1
            if control:
                control.limit(shape.depth)
            continue
        verify_ms = (time.perf_counter() - t1) * 1e3
        n = tree.size
        tokens, parents, chosen = torch.stack((tree.tokens[:n], tree.parents[:n], target_tokens)).tolist()
        if keep is not None and not needed <= keep.keys():
            missing = ", ".join(f"keep['{k}']" for k in sorted(needed - keep.keys()))
            raise TypeError(f"this answer needs a verifier that fills {missing} (JSON mode reads 'rescore', "
                            f"log-probabilities 'logits'; engine.speculative.verify fills both)")
        if emitter.constraint is None:
            path, bonus = walk(tokens, parents, chosen)
        else:  # JSON mode: the target's choice among the allowed tokens, node by node along the path
            path, bonus = constrained_walk(tokens, parents, chosen, emitter.constraint, keep["rescore"])
        kept, text = emitter.emit([tokens[i] for i in path] + [bonus])
        # The k-th kept token is the target's choice at the root (k = 0) or at the path's (k-1)-th node.
        logprobs = (() if sampling.logprobs is None
                    else reported(keep["logits"], ([0] + path)[:len(kept)], kept, sampling))
        keep = None  # the tree's logits go now, not after the next tree is drawn
        # Commit the KV of the root and of every kept token but the last, which becomes the next root.
        slots = torch.tensor([0] + path[: max(len(kept) - 1, 0)], device=device) + L
        cache.compact(slots)
        root = torch.tensor([bonus], device=device)
        ms = (time.perf_counter() - t0) * 1e3
        if control:
            control.observe(depth, len(path), n, timer[0], verify_ms, ms)
        yield StepEvent(iteration, tuple(kept), text, accepted=len(path), tree_nodes=n, depth=depth,
                        draft_ms=timer[0], verify_ms=verify_ms, step_ms=ms, bytes_moved=streamed_bytes(target) - moved,
                        finish_reason=emitter.finished, note=note, logprobs=logprobs)
        note = ""
