"""Additive attention masks (0 = visible, dtype-min = hidden), always passed explicitly to the model.

transformers 5 under eager attention silently misreads boolean masks, and SDPA takes additive float masks
as they are, so everything here is float.
"""

from __future__ import annotations

import torch


def causal_mask(start: int, length: int, dtype: torch.dtype, device: torch.device | str = "cpu",
                sliding_window: int | None = None) -> torch.Tensor:
    """Mask for `length` new tokens at slots/positions [start, start+length) over all slots [0, start+length).

    Returns [length, start+length]."""
    q = torch.arange(start, start + length, device=device)[:, None]
    k = torch.arange(start + length, device=device)[None, :]
    visible = k <= q
    if sliding_window is not None:
        visible &= k > q - sliding_window
    mask = torch.zeros(visible.shape, dtype=dtype, device=device)
    return mask.masked_fill_(~visible, torch.finfo(dtype).min)
