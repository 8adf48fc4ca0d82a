"""The draft: the target itself with the linear layers of chosen decoder layers replaced by low-bit HQQ
substitutes, sharing every other tensor (embeddings, norms, rotary table, lm_head, untouched layers).

hqq is used through this one thin adapter: quantize a weight with HQQLinear's own settings, keep the
packed weight and its metadata as plain tensors that we move explicitly (HQQLinear.to() does nothing).
Where hqq has no fast low-bit kernel (the CPU), a substitute runs as its weight dequantized once.
"""

from __future__ import annotations

import copy
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from .errors import SubspecError
from .model import LINEAR_NAMES, Decoder

SUPPORTED_BITS = (2, 3, 4, 8)


def hqq_quantize(weight: torch.Tensor, nbits: int = 4, group_size: int = 64, axis: int = 1,
                 compute_dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, dict]:
    """HQQ-quantize one weight matrix exactly as HQQLinear would with BaseQuantizeConfig(nbits,
    group_size, axis). Returns the packed weight and hqq's metadata (scale, zero, shape...)."""
    from hqq.core.quantize import BaseQuantizeConfig, Quantizer

    if nbits not in SUPPORTED_BITS:
        raise SubspecError(f"substitute bits must be one of {SUPPORTED_BITS}, got {nbits}")
    if weight.numel() % group_size:
        raise SubspecError(f"group size {group_size} does not divide a weight of shape {tuple(weight.shape)}")
    params = BaseQuantizeConfig(nbits=nbits, group_size=group_size, axis=axis)["weight_quant_params"]
    return Quantizer.quantize(weight.detach(), compute_dtype=compute_dtype, device=str(weight.device), **params)


def hqq_dequantize(packed: torch.Tensor, meta: dict) -> torch.Tensor:
    from hqq.core.quantize import Quantizer

    return Quantizer.dequantize(packed, meta)


class SubstituteLinear(nn.Module):
    """A low-bit stand-in for one nn.Linear of the target. The bias (if any) is the target's own tensor."""

    def __init__(self, linear: nn.Linear, nbits: int, group_size: int, device: torch.device | None = None):
        super().__init__()
        # Quantize where the substitute will live: hqq's tensors are moved by us, never by .to().
        # A streamed (offloaded) linear has no device weight; its full weight is in host memory.
        w = getattr(linear, "host_weight", None)
        w = (linear.weight if w is None else w).detach()
        w = w.to(device) if device is not None else w
        self.nbits, self.group_size = nbits, group_size
        self.packed, self.meta = hqq_quantize(w, nbits, group_size, compute_dtype=w.dtype)
        self.bias = linear.bias
        # No fused low-bit kernel on this path: dequantize once, keep it as the draft's weight.
        self.register_buffer("weight", hqq_dequantize(self.packed, self.meta).to(w.dtype), persistent=False)

    @property
    def packed_bytes(self) -> int:
        """Memory the substitute needs in its packed form (what a GPU keeps resident)."""
        extra = sum(v.numel() * v.element_size() for v in self.meta.values() if isinstance(v, torch.Tensor))
        return self.packed.numel() * self.packed.element_size() + extra

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


def _shell(module: nn.Module) -> nn.Module:
    """A new module object whose children and parameters are the original's (same tensors), so that
    replacing a child in the shell leaves the original untouched."""
    new = copy.copy(module)
    new._modules = dict(module._modules)
    new._parameters = dict(module._parameters)
    new._buffers = dict(module._buffers)
    return new


def build_draft(target: Decoder, nbits: int = 4, group_size: int = 64,
                layers: Iterable[int] | None = None,
                progress: Callable[[int, int], None] | None = None,
                device: torch.device | str | None = None) -> Decoder:
    """The substitute draft of `target`: layers in `layers` (default: all) get HQQ substitutes for every
    linear; everything else is the target's very modules. Substitutes are built on `device` (default:
    where the weights are); build the draft before offloading the target, from the full weights."""
    device = torch.device(device) if device is not None else None
    chosen = sorted(set(range(len(target.layers)) if layers is None else layers))
    draft = _shell(target)
    draft.layers = nn.ModuleList(target.layers)  # same layer objects unless substituted below
    for n, i in enumerate(chosen):
        layer = _shell(target.layers[i])
        layer.self_attn = _shell(layer.self_attn)
        layer.mlp = _shell(layer.mlp)
        for name in LINEAR_NAMES:
            owner_name, leaf = name.split(".")
            owner = getattr(layer, owner_name)
            setattr(owner, leaf, SubstituteLinear(getattr(owner, leaf), nbits, group_size, device))
        draft.layers[i] = layer
        if progress:
            progress(n + 1, len(chosen))
    draft.substituted_layers = tuple(chosen)
    draft.streamer = None  # the draft never streams: its offloaded layers are the substitutes
    return draft
