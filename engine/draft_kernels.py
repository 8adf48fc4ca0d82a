"""Fused elementwise kernels for the draft: each does in one launch what eager ops do in several.

After the substitutes are stacked (engine.substitute.merge_launches), a Qwen2.5-7B draft layer still
launched 20 kernels a step, 13 of them elementwise work on a few thousand numbers, and a draft step is
replayed 48 times a tree: on a fast GPU such kernels cost their launch and ramp-up, not their bytes.

- `add_rms_norm`: the residual add and the next RMSNorm (2 launches -> 1).
- `silu_mul`: silu(gate) * up (2 -> 1).
- `rotary_store`: rotary embedding of q and k, and k and v written to the KV cache at their slots
  (4 for the rotation of the stacked q|k, 2 cache writes -> 1).
- `rotary_table`: a step's cos and signed sin from its positions (8 -> 1, once a step).

Each computes in float32 and rounds once to the model's dtype, where the eager ops round after every op,
so the draft may differ from an eager draft in the last bit. That is fine for a draft: its tokens are
proposals the target verifies, and the target never runs these kernels (nor reads the KV they write:
the target's own pass rewrites every tree slot it commits). Captured and eager draft steps run the same
kernels, so they still grow the same tree.

On CUDA the kernels are compiled; on CPU tensors they run in Triton's interpreter (slow: for tests), with
the bfloat16 rounding done by hand as in engine.lowbit. `usable` checks them once per device and dtype
against the eager ops, so a card or compiler on which one fails leaves the draft on eager ops, with a
warning, instead of failing or weakening it.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from . import lowbit

triton, tl = lowbit.triton, lowbit.tl
_DTYPES = (torch.float32, torch.bfloat16, torch.float16)  # ROUND 0, 1, 2, as in engine.lowbit

if triton is not None:
    from .lowbit import _rounded, _store, _to_bf16_as_f32  # noqa: F401  (helpers the kernels call)

    @triton.jit
    def _add_rms_norm_kernel(h_ptr, d_ptr, w_ptr, sum_ptr, out_ptr, N, eps,
                             stride_h, stride_d, stride_s, stride_o,
                             ROUND: tl.constexpr, EMULATE: tl.constexpr, BLOCK: tl.constexpr):
        """One row: s = h + d (rounded: the residual stream is kept in the model's dtype), then
        out = s * rsqrt(mean(s^2) + eps) * w, rounded once."""
        row = tl.program_id(0)
        offs = tl.arange(0, BLOCK)
        ok = offs < N
        h = tl.load(h_ptr + row * stride_h + offs, mask=ok, other=0.0).to(tl.float32)
        d = tl.load(d_ptr + row * stride_d + offs, mask=ok, other=0.0).to(tl.float32)
        s = _rounded(h + d, ROUND, EMULATE)
        _store(sum_ptr + row * stride_s + offs, s, ok, ROUND, EMULATE)
        # tl.sum spelled as the reduction it is: Triton's interpreter runs its combine step, not tl.sum itself
        inv = 1.0 / tl.sqrt(tl.reduce(s * s, 0, tl.standard._sum_combine) / N + eps)
        w = tl.load(w_ptr + offs, mask=ok, other=0.0).to(tl.float32)
        _store(out_ptr + row * stride_o + offs, s * inv * w, ok, ROUND, EMULATE)

    @triton.jit
    def _silu_mul_kernel(g_ptr, u_ptr, out_ptr, M, N, stride_g, stride_u, stride_o,
                         ROUND: tl.constexpr, EMULATE: tl.constexpr, BLOCK: tl.constexpr):
        """out = silu(g) * u over [M, N], rounded once."""
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        ok = offs < M * N
        m, n = offs // N, offs % N
        g = tl.load(g_ptr + m * stride_g + n, mask=ok, other=0.0).to(tl.float32)
        u = tl.load(u_ptr + m * stride_u + n, mask=ok, other=0.0).to(tl.float32)
        _store(out_ptr + m * stride_o + n, g / (1.0 + tl.exp(-g)) * u, ok, ROUND, EMULATE)

    @triton.jit
    def _rotary_store_kernel(q_ptr, k_ptr, v_ptr, cos_ptr, sin_ptr, slots_ptr, qo_ptr, kc_ptr, vc_ptr,
                             T, stride_qt, stride_kt, stride_vt, stride_ct, stride_st, stride_ch, stride_cs,
                             H: tl.constexpr, HKV: tl.constexpr, D: tl.constexpr, HP: tl.constexpr,
                             DP: tl.constexpr, ROUND: tl.constexpr, EMULATE: tl.constexpr):
        """Token t = program 0, part = program 1: 0 rotates q into qo [H, T, D]; 1 rotates k into the key
        cache at slot slots[t]; 2 copies v into the value cache there. The rotation is the reference's
        x * cos + rotate_half(x) * sin, with rotate_half(x) = roll(x, D/2) and its sign in `sin`
        (engine.model.Rotary gives it signed). HP, DP: the head count and head size rounded up to powers of
        two (a block's sides); the extra rows and columns are masked."""
        t = tl.program_id(0)
        part = tl.program_id(1)
        heads = tl.arange(0, HP)[:, None]
        d = tl.arange(0, DP)[None, :]
        d_ok = d < D
        rolled = (d + D // 2) % D
        if part == 2:
            ok = (heads < HKV) & d_ok
            slot = tl.load(slots_ptr + t)
            v = tl.load(v_ptr + t * stride_vt + heads * D + d, mask=ok, other=0.0)
            tl.store(vc_ptr + heads * stride_ch + slot * stride_cs + d, v, mask=ok)
        else:
            cos = tl.load(cos_ptr + t * stride_ct + d, mask=d_ok, other=0.0).to(tl.float32)
            sin = tl.load(sin_ptr + t * stride_st + d, mask=d_ok, other=0.0).to(tl.float32)
            if part == 0:
                ok = (heads < H) & d_ok
                row = q_ptr + t * stride_qt + heads * D
                x = tl.load(row + d, mask=ok, other=0.0).to(tl.float32)
                xr = tl.load(row + rolled, mask=ok, other=0.0).to(tl.float32)
                _store(qo_ptr + heads * (T * D) + t * D + d, x * cos + xr * sin, ok, ROUND, EMULATE)
            else:
                ok = (heads < HKV) & d_ok
                slot = tl.load(slots_ptr + t)
                row = k_ptr + t * stride_kt + heads * D
                x = tl.load(row + d, mask=ok, other=0.0).to(tl.float32)
                xr = tl.load(row + rolled, mask=ok, other=0.0).to(tl.float32)
                _store(kc_ptr + heads * stride_ch + slot * stride_cs + d, x * cos + xr * sin, ok, ROUND, EMULATE)


    @triton.jit
    def _rotary_table_kernel(pos_ptr, inv_ptr, cos_ptr, sin_ptr, HALF: tl.constexpr, HP: tl.constexpr,
                             ROUND: tl.constexpr, EMULATE: tl.constexpr):
        """Row t of cos and of the signed sin engine.model.Rotary makes: f = position * inv_freq in float32,
        both halves; sin's first half negated."""
        t = tl.program_id(0)
        j = tl.arange(0, HP)
        ok = j < HALF
        f = tl.load(pos_ptr + t).to(tl.float32) * tl.load(inv_ptr + j, mask=ok, other=0.0)
        c, s = tl.cos(f), tl.sin(f)
        row = t * 2 * HALF
        _store(cos_ptr + row + j, c, ok, ROUND, EMULATE)
        _store(cos_ptr + row + HALF + j, c, ok, ROUND, EMULATE)
        _store(sin_ptr + row + j, -s, ok, ROUND, EMULATE)
        _store(sin_ptr + row + HALF + j, s, ok, ROUND, EMULATE)


def available() -> bool:
    return triton is not None


_NAMES = ("_add_rms_norm_kernel", "_silu_mul_kernel", "_rotary_store_kernel", "_rotary_table_kernel")


@functools.lru_cache(maxsize=None)
def _kernels(interpret: bool) -> dict:
    kernels = lowbit.interpreted(globals(), *_NAMES) if interpret else tuple(globals()[n] for n in _NAMES)
    return dict(zip(_NAMES, kernels))


def _launch(device: torch.device, dtype: torch.dtype, name: str, warps: int = 4):
    """The kernel `name` for tensors of `dtype` on `device`, and the options every launch of it takes: the
    rounding constants and, compiled, the warp count (Triton's interpreter takes none)."""
    if dtype not in _DTYPES:
        raise ValueError(f"the draft kernels take float32, bfloat16 or float16, not {dtype}")
    interpret = device.type == "cpu"
    options = dict(ROUND=_DTYPES.index(dtype), EMULATE=interpret)
    if not interpret:
        options["num_warps"] = warps
    return _kernels(interpret)[name], options


def _rows(x: torch.Tensor) -> torch.Tensor:
    """x as [rows, last] with a unit last stride (a view where it can be)."""
    x2 = x.reshape(-1, x.shape[-1])
    return x2 if x2.stride(-1) == 1 else x2.contiguous()


def add_rms_norm(h: torch.Tensor, delta: torch.Tensor, weight: torch.Tensor, eps: float
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(s, rms_norm(s) * weight) with s = h + delta: the residual stream and the next sublayer's input."""
    n = h.shape[-1]
    block = triton.next_power_of_2(n)
    kernel, options = _launch(h.device, h.dtype, "_add_rms_norm_kernel", warps=8 if block >= 4096 else 4)
    h2, d2 = _rows(h), _rows(delta)
    s, out = torch.empty_like(h2), torch.empty_like(h2)
    kernel[(h2.shape[0],)](h2, d2, weight, s, out, n, eps, h2.stride(0), d2.stride(0), s.stride(0), out.stride(0),
                           BLOCK=block, **options)
    return s.view(h.shape), out.view(h.shape)


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up; gate and up may be views into one stacked output."""
    kernel, options = _launch(gate.device, gate.dtype, "_silu_mul_kernel")
    g2, u2 = _rows(gate), _rows(up)
    m, n = g2.shape
    out = torch.empty(m, n, dtype=gate.dtype, device=gate.device)
    block = 1024
    kernel[(triton.cdiv(m * n, block),)](g2, u2, out, m, n, g2.stride(0), u2.stride(0), out.stride(0),
                                         BLOCK=block, **options)
    return out.view(*gate.shape[:-1], n)


def rotary_store(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                 k_cache: torch.Tensor, v_cache: torch.Tensor, slots: torch.Tensor,
                 heads: int, kv_heads: int, head_dim: int) -> torch.Tensor:
    """The rotated q as [1, heads, T, head_dim]; the rotated k and v written into one layer's caches
    [1, kv_heads, capacity, head_dim] at `slots` [T]. q, k, v: [1, T, heads * head_dim] (or kv_heads), each
    token's heads contiguous (views into one stacked q|k|v output are fine); cos, sin: [T, head_dim]."""
    kernel, options = _launch(q.device, q.dtype, "_rotary_store_kernel")
    if head_dim % 2:
        raise ValueError(f"rotary embeddings take an even head size, not {head_dim}")
    q2, k2, v2 = _rows(q), _rows(k), _rows(v)
    t = q2.shape[0]
    cos, sin = _rows(cos), _rows(sin)
    if k_cache.stride(-1) != 1 or k_cache.stride() != v_cache.stride():
        raise ValueError("the key and value caches must share one layout with unit last stride")
    qo = torch.empty(1, heads, t, head_dim, dtype=q.dtype, device=q.device)
    kernel[(t, 3)](q2, k2, v2, cos, sin, slots, qo, k_cache, v_cache, t,
                   q2.stride(0), k2.stride(0), v2.stride(0), cos.stride(0), sin.stride(0),
                   k_cache.stride(1), k_cache.stride(2),
                   H=heads, HKV=kv_heads, D=head_dim, HP=triton.next_power_of_2(heads),
                   DP=triton.next_power_of_2(head_dim), **options)
    return qo


def rotary_table(positions: torch.Tensor, inv_freq: torch.Tensor, dtype: torch.dtype
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and signed sin [T, D] for `positions` [T] (what engine.model.Rotary returns), in one launch."""
    kernel, options = _launch(positions.device, dtype, "_rotary_table_kernel", warps=1)
    half = inv_freq.numel()
    t = positions.numel()
    cos = torch.empty(t, 2 * half, dtype=dtype, device=positions.device)
    sin = torch.empty_like(cos)
    if t:
        kernel[(t,)](positions.contiguous(), inv_freq, cos, sin, HALF=half, HP=triton.next_power_of_2(half),
                     **options)
    return cos, sin


# --- the eager ops they stand for (the references of `usable` and of the tests) ---

def add_rms_norm_reference(h, delta, weight, eps):
    s = h + delta
    return s, F.rms_norm(s, (s.shape[-1],), weight, eps)


def silu_mul_reference(gate, up):
    return F.silu(gate) * up


# A small layout for checks made without a model: 6 query heads over 2 KV heads of 16, hidden 96.
SMALL = (96, 6, 2, 16)

_USABLE: dict[tuple, bool] = {}


def usable(device: torch.device | str, dtype: torch.dtype, shape: tuple[int, int, int, int] = SMALL) -> bool:
    """Whether the kernels compile, run and agree with the eager ops on this device and dtype for a model of
    `shape` = (hidden size, heads, KV heads, head size): the kernels are compiled per such shape, so that is
    what is checked (once; on CPU tensors they interpret, which is for tests: a draft uses them there only
    when told to)."""
    device = torch.device(device)
    key = (device, dtype, tuple(shape))
    if key in _USABLE:
        return _USABLE[key]
    if not available():
        return False
    try:
        ok = _self_check(device, dtype, shape)
        why = "differ from the eager ops"
    except Exception as e:  # a compiler or driver failure on some card: fall back, say why
        ok, why = False, f"failed ({type(e).__name__}: {e})"
    if not ok:
        import warnings

        warnings.warn(f"the draft's fused elementwise kernels {why} on {device} ({dtype}); the draft uses "
                      "eager ops", RuntimeWarning, stacklevel=2)
    _USABLE[key] = ok
    return ok


def _self_check(device: torch.device, dtype: torch.dtype, shape: tuple[int, int, int, int]) -> bool:
    from .model import apply_rotary

    gen = torch.Generator(device="cpu").manual_seed(0)
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=2e-2, rtol=2e-2)

    def rand(*shape):
        return torch.randn(*shape, generator=gen).to(device=device, dtype=dtype)

    (hidden, heads, kv_heads, head_dim), t, capacity = shape, 3, 8
    h, d, w = rand(1, t, hidden), rand(1, t, hidden), rand(hidden)
    good = all(torch.allclose(a, b, **tol) for a, b in zip(add_rms_norm(h, d, w, 1e-6),
                                                          add_rms_norm_reference(h, d, w, 1e-6)))
    gu = rand(1, t, 2 * hidden)  # the MLP's width does not change the kernel: the hidden size stands in
    good &= torch.allclose(silu_mul(gu[..., :hidden], gu[..., hidden:]),
                           silu_mul_reference(gu[..., :hidden], gu[..., hidden:]), **tol)
    qkv = rand(1, t, (heads + 2 * kv_heads) * head_dim)
    q, k, v = qkv.split((heads * head_dim, kv_heads * head_dim, kv_heads * head_dim), dim=-1)
    cos, sin = rand(t, head_dim), rand(t, head_dim)
    kc, vc = torch.zeros(2, 1, kv_heads, capacity, head_dim, dtype=dtype, device=device)
    slots = torch.tensor([5, 1, 6], device=device)
    qo = rotary_store(q, k, v, cos, sin, kc, vc, slots, heads, kv_heads, head_dim)

    def bhtd(x, n):
        return x.view(1, t, n, head_dim).transpose(1, 2)

    good &= torch.allclose(qo, apply_rotary(bhtd(q, heads), cos, sin), **tol)
    good &= torch.allclose(kc[:, :, slots], apply_rotary(bhtd(k, kv_heads), cos, sin), **tol)
    good &= torch.equal(vc[:, :, slots], bhtd(v, kv_heads))
    untouched = torch.ones(capacity, dtype=torch.bool, device=device)
    untouched[slots] = False
    good &= not kc[:, :, untouched].any() and not vc[:, :, untouched].any()
    positions = torch.tensor([0, 7, 4000, 131071, 1_000_000], device=device)  # past 1e5 radians: the
    # large-argument path of sin and cos (only positions past ~100k reach it)
    inv = 1.0 / (10000.0 ** (torch.arange(0, head_dim, 2, device=device).float() / head_dim))
    freqs = torch.cat((positions.float()[:, None] * inv[None],) * 2, dim=-1)
    sign = torch.ones(head_dim, device=device)
    sign[: head_dim // 2] = -1
    table = rotary_table(positions, inv, dtype)
    good &= torch.allclose(table[0], freqs.cos().to(dtype), **tol)
    good &= torch.allclose(table[1], (freqs.sin() * sign).to(dtype), **tol)
    return bool(good)
