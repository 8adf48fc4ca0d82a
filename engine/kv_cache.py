"""Static, preallocated KV cache with a committed length.

Rows past `length` are scratch: a forward may write there (prefill chunks, tree nodes), and whatever is
not committed is simply overwritten by the next write. Rejected draft tokens therefore need no rollback
code, and accepting a path is one gather (`compact`).
"""

from __future__ import annotations

import torch


class KVCache:
    def __init__(self, num_layers: int, num_kv_heads: int, head_dim: int, capacity: int,
                 dtype: torch.dtype, device: torch.device | str = "cpu"):
        shape = (num_layers, 1, num_kv_heads, capacity, head_dim)  # [layers, B, H_kv, slots, D]
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.length = 0
        self.grow_limit: int | None = None  # the slots its request can ever need (engine.generate.ensure_room)

    @property
    def capacity(self) -> int:
        return self.k.shape[3]

    @property
    def nbytes(self) -> int:
        return self.k.numel() * self.k.element_size() * 2

    def write(self, layer: int, start: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store one layer's keys/values for slots [start, start + T). k, v: [B, H_kv, T, D]."""
        end = start + k.shape[2]
        if end > self.capacity:
            raise IndexError(f"KV cache full: slot {end} > capacity {self.capacity}")
        self.k[layer, :, :, start:end] = k
        self.v[layer, :, :, start:end] = v

    def write_at(self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store one layer's keys/values at arbitrary slots (a device tensor [T]): the form a captured CUDA
        graph can replay, since nothing about it depends on host-side numbers."""
        self.k[layer].index_copy_(2, slots, k)
        self.v[layer].index_copy_(2, slots, v)

    def view(self, layer: int, end: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys/values of slots [0, end) of one layer, without copying."""
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def commit(self, length: int) -> None:
        """Mark slots [0, length) as the committed context (grow after a forward, shrink to roll back)."""
        if not 0 <= length <= self.capacity:
            raise ValueError(f"length {length} outside [0, {self.capacity}]")
        self.length = length

    def compact(self, slots: torch.Tensor) -> None:
        """Move the rows at `slots` (an accepted path among scratch rows) to right after the committed
        length and commit them: one gather per tensor, for all layers at once."""
        n = int(slots.numel())
        dst = slice(self.length, self.length + n)
        self.k[:, :, :, dst] = self.k[:, :, :, slots]
        self.v[:, :, :, dst] = self.v[:, :, :, slots]
        self.length += n

    def ensure_capacity(self, needed: int, at_most: int | None = None) -> None:
        """Grow (by copying into a larger buffer) when a request needs more slots than allocated: to twice
        the capacity, but not past `at_most` (what the request can ever need) unless `needed` is more."""
        if needed <= self.capacity:
            return
        doubled = 2 * self.capacity if at_most is None else min(2 * self.capacity, at_most)
        grow = max(needed, doubled)
        for name in ("k", "v"):
            old = getattr(self, name)
            new = old.new_zeros(old.shape[:3] + (grow,) + old.shape[4:])
            new[:, :, :, : self.length] = old[:, :, :, : self.length]
            setattr(self, name, new)
