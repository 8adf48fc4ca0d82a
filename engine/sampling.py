"""Token selection: greedy argmax, or one draw from the warped distribution (temperature, top-k, top-p).

The warping order (temperature, then top-k, then top-p) is transformers' order, so a sampled answer is a
draw from the same distribution a user of transformers would get.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import SubspecError


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0  # 0 means greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 means no top-k cut
    seed: int | None = None

    def __post_init__(self):
        if self.temperature < 0:
            raise SubspecError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise SubspecError(f"top-p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise SubspecError(f"top-k must be >= 0, got {self.top_k}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def generator(self, device: torch.device | str = "cpu") -> torch.Generator | None:
        if self.greedy:
            return None
        g = torch.Generator(device=device)
        g.manual_seed(self.seed if self.seed is not None else int(torch.seed() % 2**63))
        return g


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
    return probs


def select_tokens(logits: torch.Tensor, params: SamplingParams,
                  generator: torch.Generator | None) -> torch.Tensor:
    """One token per row of logits [N, V], on the logits' device. Returns [N] int64."""
    if params.greedy:
        return logits.argmax(-1)
    return torch.multinomial(warp(logits, params), 1, generator=generator)[:, 0]
