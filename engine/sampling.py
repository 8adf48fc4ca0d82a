"""Token selection: greedy argmax, or one draw from the warped distribution (temperature, top-k, top-p,
min-p).

The warping order (temperature, then top-k, top-p, min-p) is transformers' order, so a sampled answer is a
draw from the same distribution a user of transformers would get.

Draws are keyed by position: the token that follows position p is the inverse-CDF draw at a uniform u_p
that depends only on the seed and p (a counter-based hash, computed on the device). Plain decoding samples
position p once; a tree pass samples every node at p with that same u_p, and the verification walk keeps
the node its path reaches, whose context is exactly plain decoding's. So with a seed, a sampled answer is
the same token for token whichever way it is decoded: plain, SubSpec, any tree, auto depth (as greedy
answers are), and without one it is still an exact draw from the target's distribution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .errors import SubspecError

# Sampling warps this many logits at a time at most (a block of rows); engine.planner mirrors it.
SAMPLE_CHUNK_ELEMENTS = 1 << 21


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0  # 0 means greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 means no top-k cut
    seed: int | None = None
    min_p: float = 0.0  # keep tokens at least this fraction as likely as the likeliest; 0 means no cut

    def __post_init__(self):
        if not self.temperature >= 0 or math.isinf(self.temperature):  # NaN fails every comparison
            raise SubspecError(f"temperature must be a number >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise SubspecError(f"top-p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise SubspecError(f"top-k must be >= 0, got {self.top_k}")
        if not 0 <= self.min_p <= 1:  # (NaN fails too)
            raise SubspecError(f"min-p must be in [0, 1], got {self.min_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def draws(self) -> "Draws | None":
        """The answer's draws: from the seed, or from a fresh random seed; None when greedy."""
        if self.greedy:
            return None
        return Draws(self.seed if self.seed is not None else int(torch.seed() % 2**63))


M32 = 0xFFFFFFFF


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash with full avalanche (int64 tensor of values < 2^32; products stay < 2^59)."""
    x = ((x >> 16) ^ x) * 0x45D9F3B & M32
    x = ((x >> 16) ^ x) * 0x45D9F3B & M32
    return (x >> 16) ^ x


def _mix64(x: int) -> int:
    """splitmix64's finalizer: spreads any seed over 64 bits."""
    x = (x + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return x ^ (x >> 31)


class Draws:
    """Uniforms keyed by (seed, position)."""

    def __init__(self, seed: int):
        self.seed = seed
        mixed = _mix64(seed & 0xFFFFFFFFFFFFFFFF)
        self._a, self._b = mixed & M32, mixed >> 32

    def uniforms(self, positions: torch.Tensor) -> torch.Tensor:
        """u in (0, 1) for each position ([N] int64 on any device), float64, same device."""
        k = _hash32((positions.long() & M32) ^ self._a)
        k = _hash32((k + self._b) & M32)
        return (k.double() + 0.5) / 2.0**32


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


def select_tokens(logits: torch.Tensor, params: SamplingParams, draws: Draws | None,
                  positions: torch.Tensor | None = None) -> torch.Tensor:
    """One token per row of logits [N, V] (float32, or the model's dtype: the same tokens as its float32
    cast), on the logits' device. Returns [N] int64.

    Sampling (not greedy) needs `draws` and the position of each row's input token ([N] int64): the
    token drawn for a row is the one that follows that position."""
    if params.greedy:
        return logits.argmax(-1)
    if draws is None or positions is None:
        raise ValueError("sampling needs the answer's draws and each row's position")
    uniforms = draws.uniforms(positions.to(logits.device))
    tokens = torch.empty(logits.shape[0], dtype=torch.long, device=logits.device)
    # A block of rows at a time: warping makes several [rows, V] temporaries (about 2 GB for a 400-node
    # tree over a 152k vocabulary at once); each row's draw depends on that row alone.
    step = max(1, SAMPLE_CHUNK_ELEMENTS // logits.shape[-1])
    for r in range(0, logits.shape[0], step):
        cdf = warp(logits[r:r + step].float(), params).cumsum(-1)  # logits may come in the model's dtype
        target = uniforms[r:r + step].to(cdf.dtype) * cdf[:, -1]
        # The first token whose cumulative probability exceeds the target: never a zero-probability token.
        tokens[r:r + step] = torch.searchsorted(cdf, target[:, None].contiguous(), right=True)[:, 0]
        del cdf
    return tokens.clamp_(max=logits.shape[-1] - 1)
