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
        # Both buffers are made before either is swapped in: a failure (out of memory) leaves the cache
        # as it was, never keys of one capacity beside values of another.
        k, v = (old.new_zeros(old.shape[:3] + (grow,) + old.shape[4:]) for old in (self.k, self.v))
        k[:, :, :, : self.length] = self.k[:, :, :, : self.length]
        v[:, :, :, : self.length] = self.v[:, :, :, : self.length]
        self.k, self.v = k, v


class PromptCache:
    """The KV cache an answer leaves behind, kept for the next one with the tokens its committed rows hold,
    so that the next prompt prefills only what follows their longest common prefix: a conversation's earlier
    turns, a shared system prompt (prompt caching, as llama.cpp, Ollama and LM Studio do): on a long
    conversation the prefill's compute is most of the time to the first token (under offloading the weights
    stream once per prefill pass, engine.model.Decoder.prefill_pass, cached or not, for a conversation
    shorter than a pass). One per model, for answers that run one at a time (engine.generate.generate_plain
    and engine.speculative.generate_subspec take it as `prompt_cache`)."""

    def __init__(self, slots: int | None = None):
        """`slots`: on a GPU, the context a new cache is made for (a plan's KV reservation), so that it
        need not grow from turn to turn; None: twice what the answer needs, within the model's context."""
        self.slots = slots
        self.cache: KVCache | None = None
        self.ids: list[int] = []  # the token in each committed row
        self._owner = None  # the decoder whose keys and values these are

    def take(self, decoder, prompt_ids: list[int], needed: int | None = None) -> KVCache | None:
        """The kept cache, its committed rows cut back to their longest common prefix with `prompt_ids` (all
        but the prompt's last token at most: its logits choose the first answer token), for this answer;
        None when there is none for this decoder, or when on a GPU it has fewer than `needed` slots:
        growing it there would need the old and the new at once, beyond what a plan reserves, so it goes
        and a new one is made (the prompt is then prefilled whole). Taken, not shared: until `keep` gives
        it back, an answer that fails midway leaves nothing half-written here."""
        cache, ids = self.cache, self.ids
        owned = self._owner is decoder
        self.drop()
        if cache is None or not owned:
            return None
        if needed is not None and cache.capacity < needed and cache.k.device.type == "cuda":
            return None
        limit = min(cache.length, len(ids), len(prompt_ids) - 1)
        n = 0
        while n < limit and ids[n] == prompt_ids[n]:
            n += 1
        cache.commit(n)
        return cache

    def keep(self, decoder, cache: KVCache, ids: list[int]) -> None:
        """After an answer: `cache` with `ids`, the prompt's and the answer's tokens (its first
        cache.length are in its committed rows)."""
        self.cache, self.ids, self._owner = cache, list(ids)[:cache.length], decoder

    def drop(self) -> None:
        self.cache, self.ids, self._owner = None, [], None
