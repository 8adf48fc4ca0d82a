"""Plain (target-only) generation: chunked prefill, then one token per target pass.

This is the baseline every speedup is measured against, so it gets the same care as the fast path:
preallocated cache, no mask on the one-token path, logits only where a token is chosen.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Callable, Iterator

import torch

from .errors import Stopped, SubspecError
from .events import StepEvent
from .kv_cache import KVCache, PromptCache
from .loading import LoadedModel, free_device_memory
from .masks import causal_mask
from .model import Decoder
from .planner import prefill_pass_tokens
from .constrained import constraint_for
from .draft_graph import out_of_memory
from .sampling import History, SamplingParams, row_scores, select_tokens, token_logprobs
from .text import TextStream


# progress(tokens done, tokens in all) while a prompt is prefilled; it may raise engine.errors.Stopped.
PrefillProgress = Callable[[int, int], None]


def prefill(decoder: Decoder, cache: KVCache, ids: list[int], chunk: int = 256,
            pass_tokens: int | None = None, notes: list | None = None, by_pass: bool | None = None,
            progress: PrefillProgress | None = None) -> torch.Tensor:
    """Run the prompt in chunks of `chunk` tokens after the committed length; commit it.

    With streamed layers (engine.offload) the chunks go in passes of `pass_tokens` tokens (default: the
    streamer's, which the plan sized, else engine.planner.prefill_pass_tokens), each pass layer by layer
    (Decoder.prefill_pass): the offloaded weights cross the link once per pass instead of once per
    chunk, and the numbers are the chunks' own. Out of GPU memory (another program took what the plan
    gave the pass), the pass is retried at half its tokens, down to one chunk, and the streamer keeps the
    smaller size for later prompts; `notes` (a list) gets a sentence saying so.
    `by_pass`: passes or a chunk per forward (Decoder.forward); default: passes with streamed layers
    only. The benchmarks set it to compare the two.
    `progress(done, total)`: called after each chunk, and in passes after each layer (a pass's layers done
    counting as that fraction of its tokens). It may raise (engine.errors.Stopped) to end the prefill:
    what was committed stays committed, the rest is as if never run.

    Returns float32 logits [1, V] of the last position only."""
    if chunk < 1:
        raise ValueError("prefill chunk must be >= 1")
    device = decoder.embed_tokens.weight.device
    tokens = torch.tensor(ids, dtype=torch.long, device=device)
    if by_pass is None:
        by_pass = decoder.streamer is not None
    if progress is not None:
        progress = _forward_only(progress)
    if by_pass:
        return _prefill_by_pass(decoder, cache, tokens, chunk, pass_tokens, notes, progress)
    window = decoder.config.sliding_window
    logits = None
    for begin in range(0, len(ids), chunk):
        part = tokens[begin:begin + chunk]
        start = cache.length
        n = part.shape[0]
        positions = torch.arange(start, start + n, device=device)
        # In the model's dtype, and freed before the next chunk's is built: a chunk's mask spans the whole
        # context so far (engine.planner.mask_bytes counts one, with its fold).
        mask = causal_mask(start, n, decoder.embed_tokens.weight.dtype, device, window)
        logits = decoder(part, positions, cache, start, mask, logits_index=slice(n - 1, n))
        del mask
        cache.commit(start + n)
        if progress is not None:
            progress(begin + n, len(ids))
    return logits


def _forward_only(progress: PrefillProgress) -> PrefillProgress:
    """`progress` that never reports less than it did (a pass retried smaller after running out of memory
    starts over from its beginning)."""
    most = 0

    def report(done: int, total: int) -> None:
        nonlocal most
        most = max(most, done)
        progress(most, total)

    return report


def _prefill_by_pass(decoder: Decoder, cache: KVCache, tokens: torch.Tensor, chunk: int,
                     pass_tokens: int | None, notes: list | None, progress: PrefillProgress | None
                     ) -> torch.Tensor:
    streamer = decoder.streamer
    if pass_tokens is None:
        pass_tokens = (streamer.prefill_tokens if streamer is not None else None) or prefill_pass_tokens(
            decoder.config, decoder.embed_tokens.weight.element_size(), chunk)
    pass_tokens = max(chunk, pass_tokens // chunk * chunk)  # whole chunks: each block is a chunk's forward
    begin, total, logits = 0, tokens.shape[0], None
    layers = len(decoder.layers)
    while begin < total:
        part = tokens[begin:begin + pass_tokens]
        n, start = part.shape[0], cache.length
        positions = torch.arange(start, start + n, device=tokens.device)
        # Inside the pass after every layer but the last; after the last, once the pass is committed (a
        # Stop there keeps the whole pass).
        done = None if progress is None else (
            lambda i, begin=begin, n=n: progress(begin + n * (i + 1) // layers, total) if i < layers - 1 else None)
        short_of_memory = False
        try:
            logits = decoder.prefill_pass(part, positions, cache, start, chunk, done)
        except Exception as error:  # noqa: BLE001 (only out of memory is handled; the rest re-raised)
            if isinstance(error, Stopped) or not out_of_memory(error) or n <= chunk:
                raise
            short_of_memory = True
        if short_of_memory:  # (out of the except: the pass's frames went with the exception, and are freed here)
            # Nothing of this pass is committed: it runs again at half its size (its KV rows rewritten).
            free_device_memory()
            pass_tokens = max(chunk, n // 2 // chunk * chunk)
            if streamer is not None:
                streamer.prefill_tokens = pass_tokens
            if notes is not None:
                notes.append(f"Out of GPU memory prefilling the prompt; continuing {pass_tokens} tokens a pass.")
            continue
        cache.commit(start + n)
        begin += n
        if progress is not None:
            progress(begin, total)
    return logits


def decode_mask(decoder: Decoder, position: int) -> torch.Tensor | None:
    """None (all visible) unless a sliding window hides old slots from the token at `position`."""
    window = decoder.config.sliding_window
    if window is None or position < window:
        return None
    return causal_mask(position, 1, torch.float32, decoder.embed_tokens.weight.device, window)


class Emitter:
    """Turns chosen tokens into emitted tokens and text: stops at EOS, at a stop string, at the length
    limit, and says how many of the tokens were kept (what the caller commits). With penalties it keeps the
    answer's `history` (engine.sampling.History), which every emitted token joins."""

    def __init__(self, tokenizer, eos_ids, stop_strings, max_new_tokens: int, history: History | None = None,
                 constraint=None):
        """`constraint`: the answer's JSON mode (engine.constrained), which every emitted token advances."""
        self.stream = TextStream(tokenizer, stop_strings)
        self.eos_ids = set(eos_ids)
        self.remaining = max_new_tokens
        self.finished: str | None = None
        self.history = history
        self.constraint = constraint
        self.emitted: list[int] = []  # every token emitted so far (after the prompt's, what the cache's rows hold)

    def emit(self, token_ids: list[int]) -> tuple[list[int], str]:
        ids = list(token_ids)
        for i, tid in enumerate(ids):
            if tid in self.eos_ids:
                ids, self.finished = ids[:i], "eos"
                break
        if len(ids) >= self.remaining:
            if len(ids) > self.remaining or self.finished is None:
                self.finished = "length"
            ids = ids[: self.remaining]
        kept, text = self.stream.push(ids)
        if self.stream.stopped:
            ids, self.finished = ids[:kept], "stop"
        self.remaining -= len(ids)
        self.emitted.extend(ids)
        if self.history is not None:
            self.history.extend(ids)
        if self.constraint is not None:
            self.constraint.advance(ids)
        if self.finished and self.finished != "stop":
            text += self.stream.flush()
        return ids, text


def streamed_bytes(decoder: Decoder) -> int:
    """Weight bytes streamed to the device so far (0 when every layer is resident)."""
    return decoder.streamer.bytes_moved if decoder.streamer is not None else 0


def check_context(lm: LoadedModel, prompt_len: int, max_new_tokens: int, extra: int = 0) -> None:
    if prompt_len == 0:
        raise SubspecError("the prompt is empty")
    limit = lm.config.max_position_embeddings
    if prompt_len + max_new_tokens + extra > limit:
        raise SubspecError(
            f"prompt ({prompt_len} tokens) + max new tokens ({max_new_tokens}) exceeds the model's "
            f"context of {limit} tokens"
        )


def new_emitter(lm: LoadedModel, sampling: SamplingParams, stop_strings, max_new_tokens: int,
                prompt_ids: list[int]) -> Emitter:
    """The answer's emitter, with the penalties' history when the sampling has penalties and its JSON
    constraint when it asks for one."""
    history = History(sampling, prompt_ids) if sampling.penalized else None
    eos = lm.eos_token_ids()
    return Emitter(lm.tokenizer, eos, stop_strings, max_new_tokens, history,
                   constraint_for(sampling, lm.tokenizer, eos, lm.config.vocab_size))


def constrain(token: torch.Tensor, logits: torch.Tensor, sampling: SamplingParams, draws,
              positions: torch.Tensor, emitter: Emitter) -> torch.Tensor:
    """A one-row selection ([1]) under the answer's constraint, if it has one: the token itself when
    allowed, else the allowed one the selection ranks highest (engine.constrained)."""
    c = emitter.constraint
    if c is None:
        return token
    picked = int(token.item())
    chosen = c.choose(c.state, picked, lambda: row_scores(logits, 0, sampling, draws, positions, emitter.history))
    return token if chosen == picked else torch.tensor([chosen], device=token.device)


def prefill_step(decoder: Decoder, cache: KVCache, prompt_ids: list[int], prefill_chunk: int,
                 sampling: SamplingParams, draws, emitter: Emitter, progress: PrefillProgress | None = None
                 ) -> tuple[torch.Tensor, StepEvent]:
    """The prefill pass and the first token it yields: how every generation loop starts. `prompt_ids`: the
    prompt's tokens after those the cache holds already (engine.kv_cache.PromptCache), at least one.
    `progress`: prefill's. Returns the token (on the device, [1]) and its event (iteration 0)."""
    t0 = time.perf_counter()
    moved = streamed_bytes(decoder)
    notes = []
    logits = prefill(decoder, cache, prompt_ids, prefill_chunk, notes=notes, progress=progress)
    last = torch.tensor([cache.length - 1], device=logits.device)  # the last prompt token's position
    token = constrain(select_tokens(logits, sampling, draws, last, emitter.history), logits, sampling, draws,
                      last, emitter)
    ids, text = emitter.emit(token.tolist())
    ms = (time.perf_counter() - t0) * 1e3
    return token, StepEvent(0, tuple(ids), text, prefill_ms=ms, step_ms=ms,
                            bytes_moved=streamed_bytes(decoder) - moved, finish_reason=emitter.finished,
                            logprobs=reported(logits, [0] * len(ids), ids, sampling),
                            note=notes[-1] if notes else "")  # the pass size it came down to


def joined(*notes: str) -> str:
    """Notes for one event, in order, the empty ones left out."""
    return " ".join(n for n in notes if n)


def reported(logits: torch.Tensor, rows: list[int], ids: list[int], sampling: SamplingParams) -> tuple:
    """The emitted tokens' log-probabilities when the answer asked for them (engine.sampling.token_logprobs)."""
    return () if sampling.logprobs is None else token_logprobs(logits, rows, ids, sampling.logprobs)


# On the CPU a cache starts with room for this many answer tokens and grows as the answer does (doubling:
# engine.kv_cache.KVCache.ensure_capacity): an answer length of 100k tokens must not take RAM for all of them
# before its first token. On a GPU the whole answer's cache is made up front, as the plan reserved it: growing
# there would need the old and the new cache at once, and an answer that cannot finish should not start.
FIRST_ANSWER_SLOTS_CPU = 1024


def allocate_cache(decoder: Decoder, prompt_tokens: int, max_new_tokens: int, scratch: int = 0,
                   cache: KVCache | None = None, reserve: int = 0) -> tuple[KVCache, int, str]:
    """A KV cache for the prompt, the answer and `scratch` rows (a draft tree's), new or grown from `cache`
    (on the CPU, for the answer's first FIRST_ANSWER_SLOTS_CPU tokens: `ensure_room` grows it later).
    `reserve`: on a GPU, a new cache gets at least this many slots (a kept prompt cache's context, so that
    it need not grow from turn to turn); the first thing given up when memory is short.
    Out of GPU memory (a long conversation, another program's VRAM), a kept cache with committed rows
    (engine.kv_cache.PromptCache) gives way to a fresh one, and then the answer's token budget is halved
    until the cache fits: the context gets shorter, the tokens stay exactly the target's. Returns the
    cache, the budget it holds and a note saying what changed ("" when nothing did)."""
    budget, note = max_new_tokens, ""
    on_cpu = decoder.embed_tokens.weight.device.type == "cpu"
    while True:
        needed = prompt_tokens + (min(budget, FIRST_ANSWER_SLOTS_CPU) if on_cpu else budget) + scratch
        try:
            if cache is None:
                cache = decoder.new_cache(needed if on_cpu else max(needed, reserve))
            else:
                cache.ensure_capacity(needed, at_most=prompt_tokens + budget + scratch)
            cache.grow_limit = prompt_tokens + budget + scratch  # ensure_room grows no further
            return cache, budget, note
        except torch.OutOfMemoryError:
            if cache is not None and cache.length:
                # A kept cache goes (start_cache hands it over held by no other name, so it is freed here):
                # growing it needs the old and the new at once, a fresh one only the new. Its prompt is then
                # prefilled whole.
                cache = None
            free_device_memory()
            if reserve:
                reserve = 0
                continue
            if budget <= 1:
                raise SubspecError(f"out of GPU memory for the KV cache of a {prompt_tokens}-token prompt: "
                                   f"shorten the conversation, close other GPU programs, or reload with "
                                   f"fewer resident layers") from None
            budget = max(1, budget // 2)
            note = (f"Out of GPU memory for a {prompt_tokens + max_new_tokens}-token context; this answer is "
                    f"limited to {budget} new tokens.")


def ensure_room(cache: KVCache, slots: int) -> None:
    """Room for `slots` cache slots before a pass writes them (a CPU cache grows with its answer, doubling,
    up to what allocate_cache said the answer can need)."""
    if cache.capacity < slots:
        cache.ensure_capacity(slots, at_most=cache.grow_limit)


def start_cache(decoder: Decoder, prompt_ids: list[int], max_new_tokens: int, scratch: int = 0,
                cache: KVCache | None = None, prompt_cache: PromptCache | None = None
                ) -> tuple[KVCache, int, str, int]:
    """The answer's KV cache (allocate_cache): `cache` emptied, or with `prompt_cache` its kept cache cut
    back to what this prompt shares with it (engine.kv_cache.PromptCache.take). Returns allocate_cache's
    three and how many of the prompt's tokens are in the cache already (0 when nothing was kept, or it had
    to give way to a fresh one)."""
    if prompt_cache is None:
        if cache is not None:
            cache.commit(0)
        cache, budget, note = allocate_cache(decoder, len(prompt_ids), max_new_tokens, scratch, cache)
        return cache, budget, note, 0
    needed = len(prompt_ids) + max_new_tokens + scratch
    reserve = min(prompt_cache.slots + scratch if prompt_cache.slots else 2 * needed,
                  decoder.config.max_position_embeddings + scratch)
    # The kept cache goes straight in, held by no name here: if it has to give way, it is freed at once.
    cache, budget, note = allocate_cache(decoder, len(prompt_ids), max_new_tokens, scratch,
                                         prompt_cache.take(decoder, prompt_ids, needed), reserve)
    return cache, budget, note, cache.length


def generate_plain(lm: LoadedModel, prompt_ids: list[int], max_new_tokens: int = 256,
                   sampling: SamplingParams = SamplingParams(), stop_strings=(),
                   prefill_chunk: int = 256, prompt_cache: PromptCache | None = None,
                   prompt_progress: PrefillProgress | None = None) -> Iterator[StepEvent]:
    """Target-only decoding, yielding one event per target pass. `prompt_cache`: prefill only what the
    prompt does not share with the last answer's cache, and keep this answer's for the next
    (engine.kv_cache.PromptCache). `prompt_progress(done, total)`: the prefill's progress over the tokens
    it reads (engine.generate.prefill); raising engine.errors.Stopped from it ends the answer there."""
    check_context(lm, len(prompt_ids), max_new_tokens)
    decoder = lm.decoder
    if max_new_tokens <= 0:
        yield StepEvent(0, (), "", finish_reason="length")
        return
    cache, max_new_tokens, note, reused = start_cache(decoder, prompt_ids, max_new_tokens, prompt_cache=prompt_cache)
    emitter = new_emitter(lm, sampling, stop_strings, max_new_tokens, prompt_ids)
    try:
        yield from _decode_plain(lm, cache, prompt_ids, reused, sampling, prefill_chunk, note, emitter,
                                 prompt_progress)
    finally:
        if prompt_cache is not None:
            prompt_cache.keep(decoder, cache, list(prompt_ids) + emitter.emitted)


def _decode_plain(lm, cache, prompt_ids, reused, sampling, prefill_chunk, note, emitter: Emitter,
                  prompt_progress: PrefillProgress | None = None) -> Iterator[StepEvent]:
    """generate_plain's loop, after the prompt's first `reused` tokens, which the cache holds."""
    decoder = lm.decoder
    history = emitter.history
    gen = sampling.draws()

    token, event = prefill_step(decoder, cache, prompt_ids[reused:], prefill_chunk, sampling, gen, emitter,
                                prompt_progress)
    yield replace(event, cached_tokens=reused, note=joined(note, event.note))

    iteration = 0
    while not emitter.finished:
        iteration += 1
        t0 = time.perf_counter()
        moved = streamed_bytes(decoder)
        pos = cache.length
        ensure_room(cache, pos + 1)
        positions = torch.tensor([pos], device=lm.device)
        logits = decoder(token, positions, cache, pos, decode_mask(decoder, pos))
        cache.commit(pos + 1)
        token = constrain(select_tokens(logits, sampling, gen, positions, history), logits, sampling, gen,
                          positions, emitter)
        new = token.tolist()
        verify_ms = (time.perf_counter() - t0) * 1e3
        ids, text = emitter.emit(new)
        ms = (time.perf_counter() - t0) * 1e3
        yield StepEvent(iteration, tuple(ids), text, verify_ms=verify_ms, step_ms=ms,
                        bytes_moved=streamed_bytes(decoder) - moved, finish_reason=emitter.finished,
                        logprobs=reported(logits, [0] * len(ids), ids, sampling))
