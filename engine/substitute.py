"""The draft: the target itself with the linear layers of chosen decoder layers replaced by low-bit HQQ
substitutes, sharing every other tensor (embeddings, norms, rotary table, lm_head, untouched layers).

hqq is used through this one thin adapter: quantize a weight with HQQLinear's own settings, keep the
packed weight and its metadata as plain tensors that we move explicitly (HQQLinear.to() does nothing).
On CUDA a substitute keeps only those packed tensors and multiplies with our fused low-bit kernel
(engine/lowbit.py), so a draft step reads 4-bit weights; elsewhere (the CPU, no Triton, bit widths the
kernel does not take) it runs as its weight dequantized once.
"""

from __future__ import annotations

import copy
from typing import Callable, Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from . import draft_kernels, lowbit
from .errors import SubspecError
from .model import LINEAR_NAMES, Decoder, DraftRMSNorm, DraftRotary

SUPPORTED_BITS = (2, 3, 4, 8)


def hqq_quantize(weight: torch.Tensor, nbits: int = 4, group_size: int = 64, axis: int = 1,
                 compute_dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, dict]:
    """HQQ-quantize one weight matrix exactly as HQQLinear would with BaseQuantizeConfig(nbits,
    group_size, axis). Returns the packed weight and hqq's metadata (scale, zero, shape...)."""
    from hqq.core.quantize import BaseQuantizeConfig, Quantizer

    if nbits not in SUPPORTED_BITS:
        raise SubspecError(f"substitute bits must be one of {SUPPORTED_BITS}, got {nbits}")
    if group_size < 8 or group_size % 8:
        raise SubspecError(f"HQQ group size must be a positive multiple of 8, got {group_size}")
    if weight.numel() % group_size:
        raise SubspecError(f"group size {group_size} does not divide a weight of shape {tuple(weight.shape)}")
    params = BaseQuantizeConfig(nbits=nbits, group_size=group_size, axis=axis)["weight_quant_params"]
    return Quantizer.quantize(weight.detach(), compute_dtype=compute_dtype, device=str(weight.device), **params)


def hqq_dequantize(packed: torch.Tensor, meta: dict) -> torch.Tensor:
    from hqq.core.quantize import Quantizer

    return Quantizer.dequantize(packed, meta)


def _meta_for(meta: dict, dtype: torch.dtype, device: torch.device | None) -> dict:
    """hqq's metadata with scale and zero in the model's dtype (as HQQLinear keeps them: 16 bits a group
    each in a bf16 model) on `device`, and the model's dtype as compute_dtype, as HQQLinear sets it: hqq
    then dequantizes in that dtype (without it, in float32 for a half model, which is not what HQQLinear
    computes, and keeps the fused kernel off its fast packed-half path). A new dict: the caller's (a
    cache's) is left as it was."""
    out = dict(meta, compute_dtype=dtype)
    for key in ("scale", "zero"):
        out[key] = meta[key].to(device=device if device is not None else meta[key].device, dtype=dtype)
    return out


class _LowBitLinear(nn.Module):
    """What a substitute computes with: `.lowbit` (the fused kernel's packed weight) or, off the fused path,
    a dequantized `.weight`; and `.bias`. `parts`: how many of the target's linears it stands for."""

    parts = 1

    @property
    def fused(self) -> bool:
        return self.lowbit is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.lowbit is not None:
            return lowbit.lowbit_linear(x, self.lowbit, self.bias)
        return F.linear(x, self.weight, self.bias)


class SubstituteLinear(_LowBitLinear):
    """A low-bit stand-in for one nn.Linear of the target. The bias (if any) is the target's own tensor.

    `.packed` and `.meta` are hqq's (what a substitute cache saves and gives back as `quantized`). With
    `fused` (default: on CUDA when Triton is there and the kernel takes the format) they are all it keeps
    and the fused kernel reads them; otherwise it keeps their dequantization as `.weight`."""

    def __init__(self, linear: nn.Linear, nbits: int, group_size: int, device: torch.device | None = None,
                 quantized: tuple[torch.Tensor, dict] | None = None, fused: bool | None = None):
        super().__init__()
        # A streamed (offloaded) linear has no device weight; its full weight is in host memory.
        w = getattr(linear, "host_weight", None)
        w = (linear.weight if w is None else w).detach()
        dtype = w.dtype
        self.nbits, self.group_size = nbits, group_size
        if quantized is None:
            # Quantize where the substitute will live: hqq's tensors are moved by us, never by .to().
            w = w.to(device) if device is not None else w
            packed, meta = hqq_quantize(w, nbits, group_size, compute_dtype=dtype)
        else:
            packed, meta = quantized
            if (meta["nbits"], meta["group_size"], tuple(meta["shape"])) != (nbits, group_size, tuple(w.shape)):
                raise SubspecError(f"given substitute is {meta['nbits']}-bit g{meta['group_size']} "
                                   f"{tuple(meta['shape'])}, wanted {nbits}-bit g{group_size} {tuple(w.shape)}")
            packed = packed.to(device) if device is not None else packed
        self.packed, self.meta = packed, _meta_for(meta, dtype, device)
        self.bias = linear.bias
        self.lowbit = None
        reason = lowbit.unsupported(self.meta)
        if fused is None:
            fused = packed.device.type == "cuda" and lowbit.available() and reason is None
        if fused:
            if not lowbit.available():
                raise SubspecError("the fused low-bit path needs Triton (pip install triton)")
            if reason:
                raise SubspecError(f"no fused low-bit path for this substitute: {reason}")
            self.lowbit = lowbit.LowBitWeight.from_hqq(self.packed, self.meta)
        else:
            # No fused kernel on this path: dequantize once, keep it as the draft's weight.
            self.register_buffer("weight", hqq_dequantize(self.packed, self.meta).to(dtype), persistent=False)

    @property
    def packed_bytes(self) -> int:
        """Memory the substitute's packed form takes (on the fused path, all that it keeps)."""
        extra = sum(v.numel() * v.element_size() for v in self.meta.values() if isinstance(v, torch.Tensor))
        return self.packed.numel() * self.packed.element_size() + extra

    @property
    def resident_bytes(self) -> int:
        """Memory the substitute holds now: the packed form, plus the dequantized weight off the fused path."""
        return self.packed_bytes + (0 if self.fused else self.weight.numel() * self.weight.element_size())

    def dequantized(self) -> torch.Tensor:
        """The full weight the substitute stands for (either path: the same numbers)."""
        return self.lowbit.dequantize(self.meta["scale"].dtype) if self.fused else self.weight


class StackedSubstitute(_LowBitLinear):
    """Several substitutes that read the same input (q, k and v; gate and up) as one linear with their
    output rows stacked: one launch of the fused kernel (or one matmul) instead of several. A draft step
    is dozens of small launches a layer, and on a fast GPU their count, not the bytes they read, sets its
    time. `sizes`: each part's output size, in order (split the output with them)."""

    def __init__(self, parts: list[SubstituteLinear]):
        super().__init__()
        self.sizes = tuple(p.lowbit.out_features if p.fused else p.weight.shape[0] for p in parts)
        self.parts = len(parts)
        if len({p.fused for p in parts}) != 1:
            raise SubspecError("substitutes on the fused and the dequantized path do not stack")
        biases = [p.bias for p in parts]
        if all(b is None for b in biases):
            self.bias = None
        else:  # a copy (a few thousand numbers): the target keeps its own per-projection biases
            ref = next(b for b in biases if b is not None)
            self.bias = torch.cat([b.detach() if b is not None else ref.new_zeros(n)
                                   for b, n in zip(biases, self.sizes)])
        self._packed_bytes = sum(p.packed_bytes for p in parts)  # the packed form's size either way
        if parts[0].fused:
            self.lowbit = lowbit.LowBitWeight.concat([p.lowbit for p in parts])
        else:
            self.lowbit = None
            self.register_buffer("weight", torch.cat([p.weight for p in parts]), persistent=False)

    @property
    def packed_bytes(self) -> int:
        """What the packed form takes (on the fused path, all that is kept)."""
        return self._packed_bytes

    @property
    def resident_bytes(self) -> int:
        """Memory held now: the packed stack, or off the fused path only the dequantized one (the parts'
        packed tensors, kept by a SubstituteLinear for saving, are gone)."""
        return self.packed_bytes if self.fused else self.weight.numel() * self.weight.element_size()


def _draft_norms(layer: nn.Module) -> None:
    """A draft layer shell's two norms as DraftRMSNorm (the same weights; one launch each)."""
    layer.input_layernorm = DraftRMSNorm(layer.input_layernorm)
    layer.post_attention_layernorm = DraftRMSNorm(layer.post_attention_layernorm)


def merges_launches(device: torch.device | str) -> bool:
    """Whether a draft on `device` merges launches by default: on CUDA, where a draft step is hundreds of
    small kernels and their count sets its time. Not on a CPU, where the math does: the stacked matmuls and
    torch's CPU rms_norm measured about 5% slower there (benchmarks/draft_step_launches.py --time)."""
    return torch.device(device).type == "cuda"


def fuses_ops(device: torch.device | str, dtype: torch.dtype, config=None) -> bool:
    """Whether a merged draft on `device` runs engine.draft_kernels' fused elementwise kernels by default:
    on CUDA, once they have been checked there for this model's layout (`draft_kernels.usable`); on a
    CPU they would interpret."""
    if torch.device(device).type != "cuda":
        return False
    shape = draft_kernels.SMALL if config is None else \
        (config.hidden_size, config.num_heads, config.num_kv_heads, config.head_dim)
    return draft_kernels.usable(device, dtype, shape)


def fuse_layer_ops(layer: nn.Module, on: bool = True) -> None:
    """A draft layer shell (with its own attention and MLP shells) on the fused elementwise kernels, or
    back on eager ops: residual add + norm, rotary + KV store, silu * up."""
    layer.fused_ops = layer.self_attn.fused_ops = layer.mlp.fused_ops = on


def merge_launches(layer: nn.Module, fused_ops: bool = False) -> None:
    """Fewer kernel launches in a substituted draft layer (a shell: the target's own layer is untouched):
    q/k/v become one `qkv_proj` and gate/up one `gate_up_proj` (the model's forward uses them when
    present), and its two norms run as torch's fused rms_norm; with `fused_ops`, the elementwise steps
    between them as engine.draft_kernels' kernels. The separate substitutes are dropped, so their memory
    goes; a substitute cache must be written before this."""
    attn, mlp = layer.self_attn, layer.mlp
    groups = ((attn, "qkv_proj", ("q_proj", "k_proj", "v_proj")), (mlp, "gate_up_proj", ("gate_proj", "up_proj")))
    for owner, _, names in groups:  # checked before anything changes: a target's own layer stays untouched
        if not all(isinstance(getattr(owner, n), SubstituteLinear) for n in names):
            raise SubspecError(f"only substitutes stack: {', '.join(names)} of this layer are not all substitutes")
    _draft_norms(layer)
    if fused_ops:
        fuse_layer_ops(layer)
    for owner, stacked, names in groups:
        setattr(owner, stacked, StackedSubstitute([getattr(owner, n) for n in names]))
        for n in names:
            setattr(owner, n, None)


def substitute_paths(draft: nn.Module) -> dict[str, int]:
    """How many of a draft's substitutes (counted as the target's linears they stand for) run fused and
    how many dequantized, and the bytes they hold."""
    subs = [m for m in draft.modules() if isinstance(m, _LowBitLinear)]
    return {"fused": sum(s.parts for s in subs if s.fused), "dequantized": sum(s.parts for s in subs if not s.fused),
            "packed_bytes": sum(s.packed_bytes for s in subs), "resident_bytes": sum(s.resident_bytes for s in subs)}


def _shell(module: nn.Module) -> nn.Module:
    """A new module object whose children and parameters are the original's (same tensors), so that
    replacing a child in the shell leaves the original untouched."""
    new = copy.copy(module)
    new._modules = dict(module._modules)
    new._parameters = dict(module._parameters)
    new._buffers = dict(module._buffers)
    return new


def layer_bits(nbits: int | Mapping[int, int], layers: Iterable[int]) -> dict[int, int]:
    """{layer: bits} for every layer in `layers`: `nbits` is one width for all, or a plan's per-layer
    choice ({layer: bits}, e.g. 8-bit where memory allows: they align far better). Unknown widths and
    layers the mapping leaves out are refused, so a draft is never silently built at another width."""
    layers = list(layers)
    bits = {i: nbits for i in layers} if isinstance(nbits, int) else {i: nbits.get(i) for i in layers}
    missing = sorted(i for i, b in bits.items() if b is None)
    if missing:
        raise SubspecError(f"no substitute bits given for layers {missing}")
    wrong = sorted({b for b in bits.values() if b not in SUPPORTED_BITS})
    if wrong:
        raise SubspecError(f"substitute bits must be one of {SUPPORTED_BITS}, got {wrong[0]}")
    return bits


def bits_label(bits: int | Mapping[int, int]) -> str:
    """"4-bit" (one width, or a map of one), or "8/4-bit" for a mixed draft (widest first)."""
    if isinstance(bits, int):
        return f"{bits}-bit"
    return "/".join(str(b) for b in sorted(set(bits.values()), reverse=True)) + "-bit" if bits else "no"


def build_draft(target: Decoder, nbits: int | Mapping[int, int] = 4, group_size: int = 64,
                layers: Iterable[int] | None = None,
                progress: Callable[[int, int], None] | None = None,
                device: torch.device | str | None = None,
                quantized: Mapping[tuple[int, str], tuple[torch.Tensor, dict]] | None = None,
                fused: bool | None = None, merge: bool | None = None, fused_ops: bool | None = None) -> Decoder:
    """The substitute draft of `target`: layers in `layers` (default: all) get HQQ substitutes for every
    linear; everything else is the target's very modules. `nbits`: one width for all, or {layer: bits}
    (`layer_bits`). Substitutes are built on `device` (default: where the weights are); build the draft
    before offloading the target, from the full weights.

    `quantized`: hqq tensors already made, {(layer index, linear name in LINEAR_NAMES): (packed, meta)}
    (e.g. a substitute cache's); those linears are not quantized again. `fused`: None picks the fused
    low-bit path where it runs (CUDA with Triton), False forces the dequantized one, True requires the
    fused one (on CPU tensors that is Triton's interpreter: slow, for tests). `merge`: each substituted layer
    runs with fewer launches (`merge_launches`: stacked q/k/v and gate/up, fused norms), and so do the
    full-precision layers' norms; off, every linear keeps its own SubstituteLinear (what a substitute cache
    saves). None: merge on CUDA (`merges_launches`). `fused_ops` (merged drafts only): every layer's
    elementwise steps as engine.draft_kernels' fused kernels; None: on CUDA once checked there (`fuses_ops`),
    True on a CPU runs them in Triton's interpreter (tests). The draft's `fused_ops` says what was chosen."""
    device = torch.device(device) if device is not None else None
    where = device if device is not None else target.embed_tokens.weight.device
    if merge is None:
        merge = merges_launches(where)
    if fused_ops is None:
        fused_ops = merge and fuses_ops(where, target.embed_tokens.weight.dtype, target.config)
    elif fused_ops and not merge:
        raise SubspecError("the fused elementwise kernels run in merged drafts only (merge=True)")
    elif fused_ops and not draft_kernels.available():
        raise SubspecError("the fused elementwise kernels need Triton (pip install triton)")
    chosen = sorted(set(range(len(target.layers)) if layers is None else layers))
    bits = layer_bits(nbits, chosen)
    quantized = quantized or {}
    draft = _shell(target)
    draft.layers = nn.ModuleList(target.layers)  # same layer objects unless substituted below
    if merge:
        # Layers kept at full precision are the target's own linears and attention, in a shell whose norms
        # take one launch each (DraftRMSNorm, same weights); so is the final norm.
        draft.norm = DraftRMSNorm(target.norm)
        if fused_ops:
            draft.rotary = DraftRotary(target.rotary)  # the same inv_freq, one launch a step
        for i in set(range(len(target.layers))) - set(chosen):
            draft.layers[i] = _shell(target.layers[i])
            _draft_norms(draft.layers[i])
            if fused_ops:  # the target's own attention and MLP, in shells that carry the draft's flags
                draft.layers[i].self_attn = _shell(target.layers[i].self_attn)
                draft.layers[i].mlp = _shell(target.layers[i].mlp)
                fuse_layer_ops(draft.layers[i])
    for n, i in enumerate(chosen):
        layer = _shell(target.layers[i])
        layer.self_attn = _shell(layer.self_attn)
        layer.mlp = _shell(layer.mlp)
        for name in LINEAR_NAMES:
            owner_name, leaf = name.split(".")
            owner = getattr(layer, owner_name)
            setattr(owner, leaf, SubstituteLinear(getattr(owner, leaf), bits[i], group_size, device,
                                                  quantized.get((i, name)), fused))
        if merge:
            merge_launches(layer, fused_ops)
        draft.layers[i] = layer
        if progress:
            progress(n + 1, len(chosen))
    draft.substituted_layers = tuple(chosen)
    draft.substitute_bits = bits
    draft.fused_ops = fused_ops
    draft.streamer = None  # the draft never streams: its offloaded layers are the substitutes
    return draft
