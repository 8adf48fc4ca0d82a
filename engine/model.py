"""One compact decoder for the Llama family (Llama 2/3, Mistral, Qwen2/2.5, Qwen3, SmolLM).

The cache, the position ids and the additive attention mask are explicit arguments, so the same forward
serves chunked prefill, one-token decoding and tree verification. Layers run one by one through
`run_layer`, the seam where an offloader can bring a layer's weights in just before it computes.
Parameter names follow the Hugging Face checkpoints (minus the `model.` prefix) so loading is a rename.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from . import draft_kernels
from .config import ModelConfig
from .kv_cache import KVCache
from .masks import causal_mask


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Statistics in float32 whatever the weights' dtype, as the reference implementations do.
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


class DraftRMSNorm(nn.Module):
    """A target norm (its very weight tensor) computed by torch's rms_norm: one fused kernel on CUDA where
    RMSNorm launches eight (a draft step runs two a layer, 48 steps a tree). It rounds once at the end
    where the reference rounds before the weight multiply: fine for a draft, whose tokens are only
    proposals the target verifies; the target keeps the reference arithmetic."""

    def __init__(self, norm: RMSNorm):
        super().__init__()
        self.weight, self.eps = norm.weight, norm.eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


def rope_inverse_frequencies(config: ModelConfig) -> torch.Tensor:
    """Rotary inverse frequencies with the config's scaling, computed exactly as transformers does."""
    dim = config.head_dim
    inv = 1.0 / (config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    scaling = config.rope_scaling
    kind = scaling.get("rope_type", "default")
    if kind == "linear":
        inv = inv / float(scaling["factor"])
    elif kind == "llama3":
        factor = float(scaling["factor"])
        low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
        original = float(scaling["original_max_position_embeddings"])
        wavelen = 2 * math.pi / inv
        scaled = torch.where(wavelen > original / low, inv / factor, inv)
        smooth = (original / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < original / high) * ~(wavelen > original / low)
        inv = torch.where(medium, smoothed, scaled)
    return inv


class Rotary(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.register_buffer("inv_freq", rope_inverse_frequencies(config), persistent=False)

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and the signed sin `apply_rotary` takes, [T, D] in `dtype`."""
        freqs = positions.float()[:, None] * self.inv_freq[None, :]  # [T, D/2], float32 like the reference
        emb = torch.cat((freqs, freqs), dim=-1)
        sin = emb.sin()
        sin[:, : sin.shape[1] // 2].neg_()  # once per forward, instead of negating half of q and of k per layer
        return emb.cos().to(dtype), sin.to(dtype)


class DraftRotary(nn.Module):
    """A target's Rotary (its very inv_freq) computed by one kernel (draft_kernels.rotary_table) where
    Rotary launches eight: once a draft step. Float32 like the reference; sin and cos may differ from
    torch's in the last bit, which a draft may."""

    def __init__(self, rotary: Rotary):
        super().__init__()
        self.register_buffer("inv_freq", rotary.inv_freq, persistent=False)  # the same tensor

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        return draft_kernels.rotary_table(positions, self.inv_freq, dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """The reference's x * cos + rotate_half(x) * sin, where rotate_half(x) = cat(-x2, x1): roll(x) is
    cat(x2, x1), and the sign sits in the first half of `signed_sin` (negation is exact, so the numbers are
    the reference's bit for bit) -- four launches where the reference takes six. x: [B, H, T, D]."""
    return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * signed_sin


def attend(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Scaled dot-product attention with grouped-query heads: q [B, H, T, D], keys/values [B, Hkv, S, D],
    mask additive [B or 1, 1, T, S] or None; query head h reads KV head h // (H / Hkv), as enable_gqa does.

    With a float mask, SDPA runs enable_gqa only on its math backend, which repeats every KV head for its
    query heads and computes the scores in float32: on CUDA, several kernels and copies of the whole cache
    per layer, in every draft step. Folding the query heads that share a KV head into the query length
    ([B, Hkv, G*T, D], the mask's rows repeated G times) is the same attention with as many query as KV
    heads, which the memory-efficient kernel takes with any additive mask."""
    heads, kv_heads = q.shape[1], keys.shape[1]
    if heads == kv_heads:
        return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
    if mask is None:  # no mask: the flash kernel takes grouped heads as they are
        return F.scaled_dot_product_attention(q, keys, values, enable_gqa=True)
    b, _, t, d = q.shape
    groups = heads // kv_heads
    folded = q.reshape(b, kv_heads, groups * t, d)  # row g*T + t of KV head j is query head j*G + g, token t
    if mask.shape[-2] != groups * t:  # not folded yet (Decoder.forward folds it once for all layers)
        mask = fold_mask(mask, groups)
    out = F.scaled_dot_product_attention(folded, keys, values, attn_mask=mask)
    return out.view(b, heads, t, d)


# SDPA's memory-efficient CUDA kernel wants a mask's rows at a stride that is a multiple of this many
# elements; otherwise every layer's call pads the mask into a copy first (aten's preprocess_mask/pad_bias).
MASK_ALIGN = 8


def fold_mask(mask: torch.Tensor, groups: int, dtype: torch.dtype | None = None, align: int = 1) -> torch.Tensor:
    """An additive mask [..., T, S] for `attend`'s folded query rows: its rows repeated `groups` times
    ([..., G*T, S], row g*T + t is row t), in `dtype` (default: the mask's own), its rows at a stride that
    is a multiple of `align` (MASK_ALIGN on CUDA, so that no layer copies it; 1 elsewhere: the CPU's
    kernels run slower on a strided mask).

    The copy converts as it repeats: one allocation of the folded size, where converting first and then
    repeating would also hold a converted [T, S] copy (the mask grows with the context). Values are
    those of mask.to(dtype), bit for bit."""
    dtype = mask.dtype if dtype is None else dtype
    *lead, t, s = mask.shape
    if groups == 1 and mask.stride(-2) % align == 0:
        return mask.to(dtype)  # the mask itself when it is already in `dtype`
    stride = -(-s // align) * align
    folded = mask.new_empty((*lead, groups, t, stride), dtype=dtype)[..., :s]
    folded.copy_(mask.unsqueeze(-3).expand(folded.shape))
    return folded.view(*lead, groups * t, s)


def _span(mask: torch.Tensor | None, cache: KVCache) -> int:
    """With `slots`, attention covers the first mask.shape[-1] cache slots (engine.draft_graph's span)."""
    return cache.capacity if mask is None else mask.shape[-1]


class Attention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        c = config
        self.num_heads, self.num_kv_heads, self.head_dim = c.num_heads, c.num_kv_heads, c.head_dim
        self.q_proj = nn.Linear(c.hidden_size, c.num_heads * c.head_dim, bias=c.qkv_bias)
        self.k_proj = nn.Linear(c.hidden_size, c.num_kv_heads * c.head_dim, bias=c.qkv_bias)
        self.v_proj = nn.Linear(c.hidden_size, c.num_kv_heads * c.head_dim, bias=c.qkv_bias)
        self.o_proj = nn.Linear(c.num_heads * c.head_dim, c.hidden_size, bias=False)
        if c.qk_norm:
            self.q_norm = RMSNorm(c.head_dim, c.rms_norm_eps)
            self.k_norm = RMSNorm(c.head_dim, c.rms_norm_eps)
        else:
            self.q_norm = self.k_norm = None
        self.qkv_proj = None  # q, k and v stacked: only in draft layers (engine.substitute.merge_launches)
        self.fused_ops = False  # engine.draft_kernels' rotary_store: only in draft layers (merge_launches)

    def forward(self, x, cos, sin, mask, cache: KVCache, layer: int, start: int, slots=None):
        T = x.shape[1]
        H, Hkv, D = self.num_heads, self.num_kv_heads, self.head_dim
        if self.fused_ops and self.q_norm is None:
            # A draft layer: q and k rotated and k and v stored at their slots by one kernel.
            q, k, v = self._qkv(x)
            at = slots
            if at is None:
                if start + T > cache.capacity:
                    raise IndexError(f"KV cache full: slot {start + T} > capacity {cache.capacity}")
                at = torch.arange(start, start + T, device=x.device)
            q = draft_kernels.rotary_store(q, k, v, cos, sin, cache.k[layer], cache.v[layer], at, H, Hkv, D)
            keys, values = cache.view(layer, start + T if slots is None else _span(mask, cache))
            out = attend(q, keys, values, mask)
            return self.o_proj(out.transpose(1, 2).reshape(1, T, self.num_heads * self.head_dim))
        if self.qkv_proj is not None and self.q_norm is None:
            # A draft layer's stacked substitutes: one launch for q, k and v, and q and k lie side by side
            # in its output, so one rotation covers both (the same numbers, half the launches).
            qkv = self.qkv_proj(x)
            qk = apply_rotary(qkv[..., : (H + Hkv) * D].view(1, T, H + Hkv, D).transpose(1, 2), cos, sin)
            q, k = qk[:, :H], qk[:, H:]
            v = qkv[..., (H + Hkv) * D:].view(1, T, Hkv, D).transpose(1, 2)
        else:
            q, k, v = self._qkv(x)
            q, k, v = q.view(1, T, H, D), k.view(1, T, Hkv, D), v.view(1, T, Hkv, D)
            if self.q_norm is not None:
                q, k = self.q_norm(q), self.k_norm(k)
            q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, H, T, D]
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if slots is None:
            cache.write(layer, start, k, v)
            keys, values = cache.view(layer, start + T)
        else:  # static shapes: write where `slots` says, attend over the mask's span (it hides the rest)
            cache.write_at(layer, slots, k, v)
            keys, values = cache.view(layer, _span(mask, cache))
        out = attend(q, keys, values, mask)
        return self.o_proj(out.transpose(1, 2).reshape(1, T, self.num_heads * self.head_dim))

    def _qkv(self, x):
        """q, k and v [1, T, heads * head_dim]: from the stacked substitute (views of its output) or the three
        projections."""
        if self.qkv_proj is not None:
            return self.qkv_proj(x).split(self.qkv_proj.sizes, dim=-1)
        return self.q_proj(x), self.k_proj(x), self.v_proj(x)


class MLP(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.gate_up_proj = None  # gate and up stacked: only in draft layers (merge_launches)
        self.fused_ops = False  # silu(gate) * up in one kernel (engine.draft_kernels): only in draft layers

    def forward(self, x):
        if self.gate_up_proj is not None:
            gate, up = self.gate_up_proj(x).split(self.gate_up_proj.sizes, dim=-1)
        else:
            gate, up = self.gate_proj(x), self.up_proj(x)
        return self.down_proj(draft_kernels.silu_mul(gate, up) if self.fused_ops else F.silu(gate) * up)


class Pending(NamedTuple):
    """A fused draft layer's output with its last residual add still to do: the residual stream and the
    MLP's output. The next fused layer adds them in its first norm's kernel (draft_kernels.add_rms_norm),
    and so does the final norm: one launch fewer a layer. Never seen by the target."""

    h: torch.Tensor
    delta: torch.Tensor


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)
        self.fused_ops = False  # the residual add and the second norm in one kernel: only in draft layers

    def forward(self, h, cos, sin, mask, cache, layer, start, slots=None):
        if self.fused_ops:  # a draft layer: each residual add done inside the next norm's kernel
            if isinstance(h, Pending):
                h, x = draft_kernels.add_rms_norm(h.h, h.delta, self.input_layernorm.weight, self.input_layernorm.eps)
            else:
                x = self.input_layernorm(h)
            a = self.self_attn(x, cos, sin, mask, cache, layer, start, slots)
            norm = self.post_attention_layernorm
            h, x = draft_kernels.add_rms_norm(h, a, norm.weight, norm.eps)
            return Pending(h, self.mlp(x))
        if isinstance(h, Pending):
            h = h.h + h.delta
        h = h + self.self_attn(self.input_layernorm(h), cos, sin, mask, cache, layer, start, slots)
        return h + self.mlp(self.post_attention_layernorm(h))


# cuDNN's attention plans anew for every new key length with a mask: measured on an H100, 24 ms of CPU
# time per call, which made each draft step 100 ms. The memory-efficient kernel takes any additive mask.
ATTENTION_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


# The linear layers of a decoder layer, by their checkpoint names: what a substitute replaces and what an
# offloader streams.
LINEAR_NAMES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


class Decoder(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary = Rotary(config)
        if config.tie_word_embeddings:
            self.lm_head = None  # the embedding matrix serves as the output projection
        else:
            self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.streamer = None  # set by engine.offload when some layers' weights are streamed

    @property
    def output_weight(self) -> torch.Tensor:
        return self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight

    def new_cache(self, capacity: int) -> KVCache:
        w = self.embed_tokens.weight
        c = self.config
        return KVCache(c.num_layers, c.num_kv_heads, c.head_dim, capacity, w.dtype, w.device)

    def fold(self, mask: torch.Tensor) -> torch.Tensor:
        """An additive mask [T, S] as every layer's `attend` takes it: [B, 1, T, S], or [B, 1, G*T, S]
        folded (fold_mask), in the model's dtype (SDPA's fused kernels take a mask in the query's dtype),
        its rows aligned on CUDA. Its size: engine.planner.mask_bytes."""
        weight = self.embed_tokens.weight
        groups = self.config.num_heads // self.config.num_kv_heads
        align = MASK_ALIGN if weight.device.type == "cuda" else 1
        return fold_mask(mask, groups, weight.dtype, align)[None, None]

    def run_layer(self, index: int, h, cos, sin, mask, cache, start, slots=None):
        if self.streamer is None:
            return self.layers[index](h, cos, sin, mask, cache, index, start, slots)
        self.streamer.before_layer(index)  # waits for this layer's weights to be in a device slot
        h = self.layers[index](h, cos, sin, mask, cache, index, start, slots)
        self.streamer.after_layer(index)  # frees the slot for a prefetch once this compute is done
        return h

    @torch.inference_mode()
    def prefill_pass(self, tokens: torch.Tensor, positions: torch.Tensor, cache: KVCache, start: int,
                     block: int, after_layer=None) -> torch.Tensor:
        """Many prompt tokens in one pass over the weights: layer by layer, each layer runs the tokens
        in blocks of `block` rows before the next layer begins. Returns float32 logits [1, vocab] of the
        last token; commits nothing.

        Under offloading a forward streams every offloaded layer once, so a prompt prefilled 256 tokens
        per forward moves the weights once per 256 tokens; here they move once per pass. Each block is
        the same computation, in the same shapes, as a forward over those `block` tokens (its causal mask
        built per layer for the block alone, engine.planner.mask_bytes's prefill chunk), so the results
        are those of prefilling in chunks of `block` bit for bit: block k of layer i attends over the KV
        that layer i wrote for blocks 0..k just before. What the pass holds beyond one forward's
        activations is its residual stream, [T, hidden], and its rotary tables (planner.prefill_pass_bytes).
        `after_layer(i)` is called as each layer is done (progress; it may raise to stop the pass).
        Target layers only: a fused draft layer's output is pending, not a tensor to write back."""
        dtype = self.embed_tokens.weight.dtype
        device = tokens.device
        h = self.embed_tokens(tokens)[None]  # [B, T, H], each layer's output written back over its input
        cos, sin = self.rotary(positions, dtype)
        window = self.config.sliding_window
        total = tokens.shape[0]
        with sdpa_kernel(ATTENTION_BACKENDS):
            for i in range(len(self.layers)):
                if self.streamer is not None:
                    self.streamer.before_layer(i)
                for begin in range(0, total, block):
                    end = min(begin + block, total)
                    folded = self.fold(causal_mask(start + begin, end - begin, dtype, device, window))
                    # (the built mask is gone already: prefill frees a chunk's own when the forward returns)
                    h[:, begin:end] = self.layers[i](h[:, begin:end], cos[begin:end], sin[begin:end], folded,
                                                     cache, i, start + begin)
                    del folded
                if self.streamer is not None:
                    self.streamer.after_layer(i)
                if after_layer is not None:
                    after_layer(i)
        logits = F.linear(self.norm(h[0, total - 1:total]), self.output_weight)
        return logits.float()

    @torch.inference_mode()
    def forward(self, tokens: torch.Tensor, positions: torch.Tensor, cache: KVCache, start: int,
                mask: torch.Tensor | None = None, logits_index: torch.Tensor | slice | None = None,
                slots: torch.Tensor | None = None, float_logits: bool = True) -> torch.Tensor:
        """Run `tokens` [T] at rotary `positions` [T], writing their KV into cache slots [start, start+T).

        `mask` [T, start+T] is additive over all slots up to start+T; None means every one of them is
        visible (one-token decoding). `logits_index` picks the rows to project to the vocabulary (the
        last one for prefill); None projects all. Returns float32 logits [rows, vocab], or with
        `float_logits=False` the model's own (exactly the same values before the cast: verification of a
        big tree skips a float32 copy of rows x vocab, 243 MB for 400 nodes of Qwen2.5-7B).
        With `slots` (a device tensor [T]) the KV goes to those slots instead, attention spans the
        first mask.shape[-1] slots (a span, engine.draft_graph) and `mask` is [T, span]: every shape is then
        fixed, as CUDA graph replay needs.
        """
        dtype = self.embed_tokens.weight.dtype
        h = self.embed_tokens(tokens)[None]  # [B, T, H]
        cos, sin = self.rotary(positions, dtype)
        attn_mask = None if mask is None else self.fold(mask)  # once here, for every layer's `attend`
        with sdpa_kernel(ATTENTION_BACKENDS):
            for i in range(len(self.layers)):
                h = self.run_layer(i, h, cos, sin, attn_mask, cache, start, slots)
        if isinstance(h, Pending):  # a fused draft's last layer: its add done in the final norm's kernel
            h, delta = h.h[0], h.delta[0]
            if logits_index is not None:
                h, delta = h[logits_index], delta[logits_index]
            h = draft_kernels.add_rms_norm(h, delta, self.norm.weight, self.norm.eps)[1]
        else:
            h = h[0]
            if logits_index is not None:
                h = h[logits_index]
            h = self.norm(h)
        logits = F.linear(h, self.output_weight)
        return logits.float() if float_logits else logits
