"""Token selection: greedy argmax, or one draw from the warped distribution (temperature, top-k, top-p,
min-p), after the optional repetition, presence and frequency penalties.

The warping order (temperature, then top-k, top-p, min-p) is transformers' order, so a sampled answer is a
draw from the same distribution a user of transformers would get.

Penalties (vLLM's definitions and order, before any warping, greedy included): the repetition penalty
divides a positive logit (multiplies a negative one) of every token the context holds, prompt included, as
transformers' RepetitionPenaltyLogitsProcessor does; the frequency and presence penalties (OpenAI's) subtract
`frequency x count` and `presence` for every token the answer holds so far. What a token's context holds
depends on the tokens before it, so a tree pass penalizes each node with its own path (engine.tree's
ancestors): every node's logits are then those plain decoding would have penalized at that point, and the
answer stays the target's, token for token.

Draws are keyed by position: the token that follows position p is the Gumbel-max draw
argmax_x(log p(x) + g(p, x)), with Gumbel noise g that depends only on the seed, p and the token x (a
counter-based hash, computed on the device). Plain decoding samples position p once; a tree pass samples every
node at p with that same noise, and the verification walk keeps the node its path reaches, whose context is
exactly plain decoding's. So with a seed, a sampled answer is the same token for token whichever way it is
decoded: plain, SubSpec, any tree, auto depth (as greedy answers are), and without one it is still an exact
draw from the target's distribution. Gumbel-max rather than an inverse-CDF draw because the draft can use the
same noise: the draft's own perturbed argmax is the target's choice whenever the two distributions are close
(the coupling misses with probability at most about their total variation distance), so a sampled answer is
drafted nearly as well as a greedy one (engine.speculative.grow_tree). An inverse-CDF draw over the vocabulary's
order couples poorly: every token before the drawn one shifts the cumulative sum.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .errors import SubspecError
from .events import TokenLogprob

# The most alternatives a token's log-probability is reported with (OpenAI's limit).
MAX_TOP_LOGPROBS = 20

# Sampling warps this many logits at a time at most (a block of rows); engine.planner mirrors it.
SAMPLE_CHUNK_ELEMENTS = 1 << 21


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0  # 0 means greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 means no top-k cut
    seed: int | None = None
    min_p: float = 0.0  # keep tokens at least this fraction as likely as the likeliest; 0 means no cut
    repetition_penalty: float = 1.0  # > 1 makes every token of the context (prompt too) less likely
    presence_penalty: float = 0.0  # subtracted from the logit of every token the answer holds
    frequency_penalty: float = 0.0  # subtracted once per time the answer holds the token
    penalty_last_n: int = 0  # penalties look at the context's last n tokens only; 0: all of it
    json: bool = False  # JSON mode: the answer is one JSON object (engine.constrained)
    json_schema: str | None = None  # with json: the schema (its JSON text) the answer follows; None: any object
    # Not a choice but a report: each emitted token's log-probability with this many alternatives
    # (engine.events.TokenLogprob); None: none reported.
    logprobs: int | None = None

    def __post_init__(self):
        if not self.temperature >= 0 or math.isinf(self.temperature):  # NaN fails every comparison
            raise SubspecError(f"temperature must be a number >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise SubspecError(f"top-p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise SubspecError(f"top-k must be >= 0, got {self.top_k}")
        if not 0 <= self.min_p <= 1:  # (NaN fails too)
            raise SubspecError(f"min-p must be in [0, 1], got {self.min_p}")
        if not 0.01 <= self.repetition_penalty <= 100:  # beyond, float32 logits turn infinite or vanish
            raise SubspecError(f"repetition penalty must be a number from 0.01 to 100 (1 means none), got "
                               f"{self.repetition_penalty}")
        if isinstance(self.penalty_last_n, bool) or not (isinstance(self.penalty_last_n, int)
                                                         and self.penalty_last_n >= 0):
            raise SubspecError(f"the penalties' window must be a whole number of tokens >= 0 (0: the whole "
                               f"context), got {self.penalty_last_n}")
        if self.logprobs is not None and (isinstance(self.logprobs, bool) or not isinstance(self.logprobs, int)
                                          or not 0 <= self.logprobs <= MAX_TOP_LOGPROBS):
            raise SubspecError(f"top logprobs must be a whole number from 0 to {MAX_TOP_LOGPROBS}, got {self.logprobs}")
        for name in ("presence", "frequency"):
            if not math.isfinite(getattr(self, f"{name}_penalty")):
                raise SubspecError(f"{name} penalty must be a number (0 means none), got "
                                   f"{getattr(self, f'{name}_penalty')}")

    @property
    def penalized(self) -> bool:
        return self.repetition_penalty != 1 or self.presence_penalty != 0 or self.frequency_penalty != 0

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def draws(self) -> "Draws | None":
        """The answer's draws: from the seed, or from a fresh random seed; None when greedy."""
        if self.greedy:
            return None
        return Draws(self.seed if self.seed is not None else int(torch.seed() % 2**63))


M32 = 0xFFFFFFFF


def _hash32_(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash with full avalanche, in place (an int64 tensor of values < 2^32, which it owns;
    products stay < 2^59): one temporary at a time, however large x is."""
    for _ in range(2):
        x ^= x >> 16
        x *= 0x45D9F3B
        x &= M32
    x ^= x >> 16
    return x


def _mix64(x: int) -> int:
    """splitmix64's finalizer: spreads any seed over 64 bits."""
    x = (x + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return x ^ (x >> 31)


class Draws:
    """Gumbel noise keyed by (seed, position, token)."""

    def __init__(self, seed: int):
        self.seed = seed
        mixed = _mix64(seed & 0xFFFFFFFFFFFFFFFF)
        self._a, self._b = mixed & M32, mixed >> 32

    def gumbels(self, positions: torch.Tensor, tokens: torch.Tensor | int) -> torch.Tensor:
        """g(p, x) for each position p ([N] int64, any device) and token x: `tokens` is the vocabulary's size
        (every token, [N, V]) or the token ids themselves ([N, M] or [M]). float32 on positions' device.

        Built in place (one int64 value and one temporary at a time): at a block of 2M values this is what
        sampling holds beside the warped probabilities (engine.planner.SAMPLING_BYTES_PER_VALUE)."""
        device = positions.device
        row = _hash32_((positions.long() & M32) ^ self._a)
        row = _hash32_((row + self._b) & M32)[:, None]
        if isinstance(tokens, int):
            tokens = torch.arange(tokens, device=device)
        x = tokens.to(device=device, dtype=torch.long) * 0x9E3779B1 & M32  # ids < 2^31: products < 2^63
        x = x ^ row  # [N, V] or [N, M]: a new tensor, which the hash then works on in place
        for _ in range(2):
            _hash32_(x)
            x += self._b
            x &= M32
        u = x.double()
        del x
        # u in (0, 1): never 0 or 1, so the noise is finite. float64 keeps the tail's resolution.
        return u.add_(0.5).div_(2.0**32).log_().neg_().log_().neg_().float()

def warp(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Probabilities [N, V] of the warped distribution for float32 logits [N, V] (not greedy)."""
    logits = logits / params.temperature
    if params.top_k and params.top_k < logits.shape[-1]:
        kth = torch.topk(logits, params.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
        # Drop a token when the tokens strictly more likely already reach top_p; the first always stays.
        before = sorted_probs.cumsum(-1) - sorted_probs
        sorted_probs = sorted_probs.masked_fill(before >= params.top_p, 0.0)
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
        probs = probs / probs.sum(-1, keepdim=True)
    if params.min_p > 0:
        # A token less likely than min_p times the likeliest goes (the likeliest always stays).
        probs = probs.masked_fill(probs < params.min_p * probs.amax(-1, keepdim=True), 0.0)
        probs = probs / probs.sum(-1, keepdim=True)
    return probs


class History:
    """What the penalties of one answer look at: the context's tokens (prompt and answer), or with
    `penalty_last_n` only its last n. The repetition penalty counts every token there; presence and
    frequency the answer's only. `extend` it with every token the answer emits; `penalize` a block of
    logits, each row with its own extra path tokens if given."""

    def __init__(self, params: SamplingParams, prompt_ids: list[int]):
        self.params = params
        self.context = list(prompt_ids)
        self.prompt_len = len(self.context)
        self._start = self._end = 0  # context[_start:_end] is what the device counts hold
        self._all: torch.Tensor | None = None  # [V] float32: each token's count in the window
        self._answer: torch.Tensor | None = None  # [V] float32: the same, the answer's tokens only
        self._window_tokens: tuple | None = None  # (key, the window's tokens on the device)

    def extend(self, token_ids) -> None:
        """The answer's new tokens. The device's counts (and a window's tokens) are brought up to date now,
        where the decoding loops call this: just after they read the pass's tokens back, while the device
        waits anyway. (A copy from a Python list to the device waits for it: in the draft's steps, which
        queue work ahead, that would cost the overlap.)"""
        self.context.extend(int(t) for t in token_ids)
        if self._all is not None:
            self._state(self._all.shape[0], self._all.device)
            if self.params.penalty_last_n:
                self._window_ids(self._window_start(len(self.context)), self._all.device)

    def _window_start(self, length: int) -> int:
        n = self.params.penalty_last_n
        return max(0, length - n) if n else 0

    def _count(self, lo: int, hi: int, sign: float, device: torch.device) -> None:
        """Adds (or takes away) context[lo:hi] to (from) the counts."""
        if hi <= lo:
            return
        ids = torch.tensor(self.context[lo:hi], dtype=torch.long, device=device)
        ones = torch.full((hi - lo,), sign, device=device)
        self._all.index_put_((ids,), ones, accumulate=True)
        first_answer = max(lo, self.prompt_len)
        if first_answer < hi:
            self._answer.index_put_((ids[first_answer - lo:],), ones[first_answer - lo:], accumulate=True)

    def _state(self, vocab: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The window's counts on the device, brought up to date (only what changed is counted)."""
        if self._all is None or self._all.shape[0] != vocab or self._all.device != device:
            self._all = torch.zeros(vocab, dtype=torch.float32, device=device)
            self._answer = torch.zeros(vocab, dtype=torch.float32, device=device)
            self._start = self._end = 0
        start, end = self._window_start(len(self.context)), len(self.context)
        if start >= self._end:  # nothing counted is still in the window
            self._all.zero_()
            self._answer.zero_()
            self._start = self._end = start
        self._count(self._start, start, -1.0, device)
        self._count(self._end, end, 1.0, device)
        self._start, self._end = start, end
        return self._all, self._answer

    def penalize(self, logits: torch.Tensor, paths: tuple[torch.Tensor, ...] | None = None,
                 in_place: bool = False) -> torch.Tensor:
        """Penalized float32 logits [R, V]: a new tensor, or `logits` itself with `in_place` (float32).

        `paths` = (member [R, n] bool, tokens [n], depths [n]): row r's context also holds tokens[j] wherever
        member[r, j] (a tree node's path below the emitted root, itself included; engine.tree.path_members).
        With a window, a row whose path is d tokens long has its window end d tokens later: d of the
        context's oldest tokens leave it (and past n, the path's first ones too)."""
        p = self.params
        rows, vocab = logits.shape
        every, answer = self._state(vocab, logits.device)
        out = logits if in_place and logits.dtype == torch.float32 else logits.float().clone()
        counts = self._row_counts(every, rows, paths, answer_only=False) if p.repetition_penalty != 1 else None
        if counts is not None:
            # transformers' rule: a negative logit times the penalty, any other one divided by it (times and
            # over 1.0 elsewhere, which are exact), bit for bit on the CPU (tested; on CUDA, PyTorch turns
            # transformers' division by a Python number into a product with its reciprocal, which can differ
            # in the last bit). In place: a block's temporaries stay small.
            seen = counts > 0
            del counts
            negative = out < 0
            out.mul_(torch.where(seen & negative, p.repetition_penalty, 1.0))
            out.div_(torch.where(seen & ~negative, p.repetition_penalty, 1.0))
            del seen, negative
        if p.frequency_penalty or p.presence_penalty:
            answered = self._row_counts(answer, rows, paths, answer_only=True)
            if p.frequency_penalty:
                out.sub_(p.frequency_penalty * answered)
            if p.presence_penalty:
                out.sub_(p.presence_penalty * (answered > 0).to(out.dtype))
        return out

    def _window_ids(self, start: int, device: torch.device) -> torch.Tensor:
        """The window's tokens (context[start:]) on the device, made once per tree: a host-to-device copy
        from a list waits for the device, which each draft step must not (engine.speculative.grow_tree)."""
        key = (start, len(self.context), device)
        if self._window_tokens is None or self._window_tokens[0] != key:
            self._window_tokens = (key, torch.tensor(self.context[start:], dtype=torch.long, device=device))
        return self._window_tokens[1]

    def _row_counts(self, base: torch.Tensor, rows: int, paths, answer_only: bool) -> torch.Tensor:
        """Each row's counts [R, V] (or a broadcast view of `base` when the rows have no paths)."""
        if paths is None:
            return base.expand(rows, -1)
        member, tokens, depths = paths
        n = self.params.penalty_last_n
        depth = member.sum(1)  # [R]: each row's path length (its own depth in the tree)
        if n:  # a path longer than the window: only its last n tokens are in it
            member = member & (depths[None, :] > (depth - n)[:, None])
        counts = base.expand(rows, -1).clone()
        counts.scatter_add_(1, tokens.expand(rows, -1), member.to(counts.dtype))  # path tokens: the answer's
        length = len(self.context)
        start = self._window_start(length)
        if n and length + member.shape[1] > n + start:  # some row's window may begin past `start`
            device = counts.device
            ids = self._window_ids(start, device)
            left = (length - n - start + depth).clamp_(min=0)  # [R]: the context's tokens leaving each window
            leaving = torch.arange(ids.numel(), device=device) < left[:, None]
            if answer_only:
                leaving &= torch.arange(start, start + ids.numel(), device=device) >= self.prompt_len
            counts.scatter_add_(1, ids.expand(rows, -1), -leaving.to(counts.dtype))
        return counts

def select_tokens(logits: torch.Tensor, params: SamplingParams, draws: Draws | None,
                  positions: torch.Tensor | None = None, history: History | None = None,
                  paths: tuple[torch.Tensor, ...] | None = None) -> torch.Tensor:
    """One token per row of logits [N, V] (float32, or the model's dtype: the same tokens as its float32
    cast), on the logits' device. Returns [N] int64.

    Sampling (not greedy) needs `draws` and the position of each row's input token ([N] int64): the
    token drawn for a row is the one that follows that position. Penalties (params.penalized) need the
    answer's `history`, and for a tree's rows their `paths` (History.penalize)."""
    if params.penalized and history is None:
        raise ValueError("penalties need the answer's history")
    if params.greedy and not params.penalized:
        return logits.argmax(-1)
    if not params.greedy and (draws is None or positions is None):
        raise ValueError("sampling needs the answer's draws and each row's position")
    if positions is not None:
        positions = positions.to(logits.device)
    tokens = torch.empty(logits.shape[0], dtype=torch.long, device=logits.device)
    # A block of rows at a time: warping makes several [rows, V] temporaries (about 2 GB for a 400-node
    # tree over a 152k vocabulary at once); each row's draw depends on that row alone.
    step = max(1, SAMPLE_CHUNK_ELEMENTS // logits.shape[-1])
    for r in range(0, logits.shape[0], step):
        tokens[r:r + step] = _scores(logits, r, r + step, params, draws, positions, history, paths).argmax(-1)
    return tokens


def _scores(logits: torch.Tensor, lo: int, hi: int, params: SamplingParams, draws: Draws | None,
            positions: torch.Tensor | None, history: History | None, paths) -> torch.Tensor:
    """The scores [hi - lo, V] (float32) whose argmax is select_tokens' choice for rows lo..hi."""
    block = logits[lo:hi].float()  # logits may come in the model's dtype
    if params.penalized:  # in place only on a copy: float32 logits are the caller's
        block = history.penalize(block, None if paths is None else (paths[0][lo:hi], *paths[1:]),
                                 in_place=logits.dtype != torch.float32)
    if params.greedy:
        return block
    scores = warp(block, params).log_()  # a token the warps cut is -inf: never drawn
    del block
    scores += draws.gumbels(positions[lo:hi], logits.shape[-1])
    return scores


def row_scores(logits: torch.Tensor, row: int, params: SamplingParams, draws: Draws | None,
               positions: torch.Tensor | None = None, history: History | None = None,
               paths: tuple[torch.Tensor, ...] | None = None) -> torch.Tensor:
    """Row `row`'s selection scores [V], ranked as select_tokens ranks them (its choice scores highest),
    with the tokens sampling's warps cut after all others in the order of their raw logits: what a
    constraint ranks its candidates by (engine.constrained)."""
    if positions is not None:
        positions = positions.to(logits.device)
    scores = _scores(logits, row, row + 1, params, draws, positions, history, paths)[0]
    cut = torch.isinf(scores) & (scores < 0)
    if cut.any():
        raw = logits[row].float()
        floor = scores[~cut].min() - 1  # (the warps keep at least one token)
        scores = torch.where(cut, floor - (raw.max() - raw), scores)
    return scores


def token_logprobs(logits: torch.Tensor, rows: list[int], tokens: list[int], top: int) -> tuple:
    """The log-probabilities of `tokens`, each chosen at its row of `logits` ([N, V], float32 or the model's
    dtype), with the `top` likeliest tokens there: engine.events.TokenLogprob per token. The model's own
    distribution (log-softmax of the raw logits, in float32), before penalties, temperature or any cut:
    what OpenAI and vLLM report, and the same whichever way the token was decoded, up to rounding."""
    if not tokens:
        return ()
    device = logits.device
    logp = torch.log_softmax(logits[torch.tensor(rows, device=device)].float(), dim=-1)
    chosen = logp.gather(1, torch.tensor(tokens, device=device)[:, None])[:, 0].tolist()
    if top:
        values, ids = (t.tolist() for t in torch.topk(logp, min(top, logp.shape[-1]), dim=-1))
        alternatives = [tuple(zip(i, v)) for i, v in zip(ids, values)]
    else:
        alternatives = [()] * len(tokens)
    return tuple(TokenLogprob(t, lp, alt) for t, lp, alt in zip(tokens, chosen, alternatives))
