"""Parameter offloading: the linear weights of offloaded decoder layers live in (pinned) host memory, one
flat buffer per layer, and stream into a few device slots just before each layer computes.

Fencing, per slot: a copy into a slot waits for the compute that last read it (an event recorded after
that layer ran), and the compute waits for the copy that filled it (an event recorded after the copy).
No global synchronize. Prefetch is cyclic over the offloaded layers, so after the last offloaded layer
of a pass the first ones of the next pass are already on their way while the draft runs.

The same code runs with the CPU as the "device" (copies are then plain memcpys), which is how the test
suite proves an offloaded forward equals the resident one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import streamed_layers
from .errors import SubspecError
from .model import LINEAR_NAMES, Decoder


class StreamedLinear(nn.Module):
    """An nn.Linear whose weight is a view into whichever device slot holds its layer right now."""

    def __init__(self, host_weight: torch.Tensor, bias: nn.Parameter | None):
        super().__init__()
        self.out_features, self.in_features = host_weight.shape
        self.host_weight = host_weight  # a view into the layer's flat host buffer (substitutes are built from it)
        self.bias = bias  # small: stays resident
        self.weight: torch.Tensor | None = None  # set by the streamer before the layer runs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class LayerStreamer:
    def __init__(self, decoder: Decoder, offloaded: list[int], device: torch.device, slots: int = 2,
                 prefill_tokens: int | None = None):
        """`prefill_tokens`: prompt tokens per prefill pass (engine.generate.prefill; the plan's
        prefill_pass_tokens, which fit the memory it left), None for engine.planner.prefill_pass_tokens."""
        if slots < 2:
            raise SubspecError("streaming needs at least 2 device slots (one computing, one loading)")
        self.device = torch.device(device)
        self.order = sorted(set(offloaded))
        self.slots_count = min(slots, max(len(self.order), 1))
        self.bytes_moved = 0
        self.prefill_tokens = prefill_tokens
        cuda = self.device.type == "cuda"
        _move_resident(decoder, self.device, set(self.order))
        # One flat host buffer per offloaded layer: a layer is one copy.
        self.layout: list[tuple[str, int, tuple[int, int]]] = []
        self.host: dict[int, torch.Tensor] = {}
        self.modules: dict[int, list[StreamedLinear]] = {}
        for i in self.order:
            self.host[i], self.modules[i] = self._pack_layer(decoder.layers[i], pin=cuda)
        numel = self.host[self.order[0]].numel() if self.order else 0
        dtype = decoder.embed_tokens.weight.dtype
        self.slots = [torch.empty(numel, dtype=dtype, device=self.device) for _ in range(self.slots_count)]
        self.slot_layer: list[int | None] = [None] * self.slots_count
        self.copy_stream = torch.cuda.Stream(self.device) if cuda else None
        self.copied = [torch.cuda.Event() if cuda else None for _ in self.slots]
        self.computed = [torch.cuda.Event() if cuda else None for _ in self.slots]
        self.queue: list[int] = []  # slots in the order their layers will be used
        self.cursor = 0  # position in self.order of the next layer to fetch
        for _ in range(self.slots_count):
            self._fetch_next()
        decoder.streamer = self

    @property
    def layer_bytes(self) -> int:
        return self.slots[0].numel() * self.slots[0].element_size() if self.slots else 0

    def _pack_layer(self, layer: nn.Module, pin: bool) -> tuple[torch.Tensor, list[StreamedLinear]]:
        linears, layout = [], []
        offset = 0
        for name in LINEAR_NAMES:
            owner_name, leaf = name.split(".")
            owner = getattr(layer, owner_name)
            linears.append((owner, leaf, getattr(owner, leaf)))
            shape = tuple(linears[-1][2].weight.shape)
            layout.append((name, offset, shape))
            offset += shape[0] * shape[1]
        if not self.layout:
            self.layout = layout
        elif layout != self.layout:
            raise SubspecError("offloaded layers must all have the same shapes")
        flat = torch.cat([lin.weight.detach().reshape(-1).cpu() for _o, _l, lin in linears])
        if pin:
            flat = flat.pin_memory()
        streamed = []
        for (owner, leaf, linear), (_name, off, shape) in zip(linears, layout):
            sl = StreamedLinear(flat[off: off + shape[0] * shape[1]].view(shape), linear.bias)
            setattr(owner, leaf, sl)  # the original full weight is released here
            streamed.append(sl)
        return flat, streamed

    def _fetch_next(self) -> None:
        """Start copying the next layer (cyclic order) into the slot that was used longest ago."""
        if not self.order:
            return
        layer = self.order[self.cursor]
        self.cursor = (self.cursor + 1) % len(self.order)
        slot = self.queue[-1] + 1 if self.queue else 0
        slot %= self.slots_count
        if self.copy_stream is not None:
            with torch.cuda.stream(self.copy_stream):
                self.copy_stream.wait_event(self.computed[slot])  # nobody reads the slot any more
                self.slots[slot].copy_(self.host[layer], non_blocking=True)
                self.copied[slot].record(self.copy_stream)
        else:
            self.slots[slot].copy_(self.host[layer])
        self.slot_layer[slot] = layer
        self.queue.append(slot)
        self.bytes_moved += self.host[layer].numel() * self.host[layer].element_size()

    def before_layer(self, index: int) -> None:
        if index not in self.host:
            return
        slot = self.queue[0]
        if self.slot_layer[slot] != index:
            self._restart_at(index)
            slot = self.queue[0]
        if self.copy_stream is not None:
            torch.cuda.current_stream(self.device).wait_event(self.copied[slot])
        buf = self.slots[slot]
        for sl, (_name, offset, shape) in zip(self.modules[index], self.layout):
            sl.weight = buf[offset: offset + shape[0] * shape[1]].view(shape)

    def after_layer(self, index: int) -> None:
        if index not in self.host:
            return
        slot = self.queue.pop(0)
        if self.copy_stream is not None:
            self.computed[slot].record(torch.cuda.current_stream(self.device))
        for sl in self.modules[index]:
            sl.weight = None  # the slot is about to be refilled: no stale view may outlive this layer
        self._fetch_next()

    def _restart_at(self, index: int) -> None:
        """A pass began somewhere the prefetch did not expect (e.g. after an interrupted forward):
        drain and refill the slots starting from `index`."""
        if self.copy_stream is not None:
            self.copy_stream.synchronize()
            # An interrupted layer's kernels may still be reading its slot: no refill before they finish.
            self.copy_stream.wait_stream(torch.cuda.current_stream(self.device))
        self.queue.clear()
        self.slot_layer = [None] * self.slots_count
        self.cursor = self.order.index(index)
        for _ in range(self.slots_count):
            self._fetch_next()


def _move_resident(decoder: Decoder, device: torch.device, offloaded: set[int]) -> None:
    """Move every tensor except offloaded layers' linear weights to the device, in place (`.data`), so
    modules shared with the draft keep pointing at the same parameters."""
    streamed = set()
    for i in offloaded:
        for name in LINEAR_NAMES:
            streamed.add(f"layers.{i}.{name}.weight")
    for name, p in decoder.named_parameters():
        if name not in streamed and p.device != device:
            p.data = p.data.to(device)
    for module in decoder.modules():
        for key, buf in list(module._buffers.items()):
            if buf is not None and buf.device != device:
                module._buffers[key] = buf.to(device)


def offload(decoder: Decoder, resident_layers: int, device: torch.device | str, slots: int = 2,
            prefill_tokens: int | None = None) -> LayerStreamer | None:
    """Keep the last `resident_layers` decoder layers resident on `device` and stream the others
    (engine.config.streamed_layers says why the last), a prompt's prefill `prefill_tokens` at a time
    (LayerStreamer)."""
    streamed = streamed_layers(len(decoder.layers), resident_layers)
    device = torch.device(device)
    if not streamed:
        _move_resident(decoder, device, set())
        return None
    return LayerStreamer(decoder, streamed, device, slots, prefill_tokens)
