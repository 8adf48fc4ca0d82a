"""Additive attention masks (0 = visible, dtype-min = hidden), always passed explicitly to the model.

transformers 5 under eager attention silently misreads boolean masks, and SDPA takes additive float masks
as they are, so everything here is float.

Masks grow with the context ([rows, context] each, and Decoder.forward folds them to G times as many rows),
so they are built in place, with no boolean "visible" matrix of the same size beside them (one is made
for a sliding window). engine.planner.mask_bytes counts what remains.
"""

from __future__ import annotations

import torch


def causal_mask(start: int, length: int, dtype: torch.dtype, device: torch.device | str = "cpu",
                sliding_window: int | None = None) -> torch.Tensor:
    """Mask for `length` new tokens at slots/positions [start, start+length) over all slots [0, start+length).

    Returns [length, start+length]."""
    hidden = torch.finfo(dtype).min
    # The future: key k > query q = start + row, i.e. k - row >= start + 1, the upper triangle from there.
    mask = torch.full((length, start + length), hidden, dtype=dtype, device=device).triu_(start + 1)
    if sliding_window is not None:
        q = torch.arange(start, start + length, device=device)[:, None]
        k = torch.arange(start + length, device=device)[None, :]
        mask.masked_fill_(k <= q - sliding_window, hidden)  # out of the window
    return mask
