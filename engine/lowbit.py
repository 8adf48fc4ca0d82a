"""The substitutes' fused low-bit linear: y = x @ dequant(W)^T + b computed straight from hqq's packed weight,
so that a draft step reads 4-bit weights (plus a 16-bit scale and zero per group) instead of a dequantized
copy. One small Triton kernel for skinny activations (the draft's K beam nodes a step); above
`FUSED_MAX_ROWS` rows the weight is dequantized into a temporary and multiplied (compute-bound sizes).

The layout is hqq's own, used as it is: hqq quantizes along axis 1 in groups of g, as the rows of a
[N*K/g, g] matrix, and packs 4 bits by putting the first half of those rows in the high nibbles and the
second half in the low nibbles. When g divides K and N is even, the packed tensor viewed as [N/2, K] is

    byte[r, k] = W_q[r, k] << 4 | W_q[r + N/2, k]

so one contiguous load along K feeds two output rows (r and r + N/2) per byte, and nothing is repacked:
the tensors a substitute keeps (and a cache saves) are the ones the kernel reads. 8 bits are one byte a
weight, [N, K]. Scale and zero are [N, K/g]. Dequantization is hqq's, W = (W_q - zero) * scale, in the
dtype hqq computes it in (its compute_dtype promoted with scale's and zero's: the model's dtype for our
substitutes, as for HQQLinear), rounded to the activations' dtype; products accumulate in float32.

On CUDA the kernel is compiled; on CPU tensors it runs in Triton's interpreter (slow: for tests).
Split-K partial sums go to a float32 workspace and are added in a fixed order by a second kernel, so a
result never depends on scheduling (captured and eager draft steps stay bit-identical).

Fast dequantization (compiled 4-bit, scale and zero in the activations' half dtype: every substitute of a
bf16 or fp16 model).
At a draft step's few rows the kernel is bound by instruction issue, not memory, on HBM cards: the general
path spends about 15 SASS instructions per packed byte (sm_89/90, Triton 3.7) converting nibbles one by
one, while an H100 needs about 10 to keep up with its memory. Here each 32-bit register of four packed
bytes becomes eight half-precision values in seven integer instructions (inline PTX: mask the nibbles, then
`prmt` each next to the exponent byte of MAGIC, 128 in bfloat16 or 1024 in float16, whose unit in the last
place is 1, so the bits read MAGIC + nibble exactly), and hqq's arithmetic runs on packed pairs:
(q - MAGIC) is exact, then (- zero) and (* scale) round once each, as hqq's own half-precision ops do.
The same weights come out bit for bit, so results equal the general path's; about 9-10 instructions a byte
(`benchmarks/lowbit_sass.py` counts them from the compiled kernel, no GPU needed). Inline PTX cannot run in
the interpreter, so the first use on each device checks it against the general path and falls back with a
warning if they ever differ.
"""

from __future__ import annotations

import functools
import types
from dataclasses import dataclass

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # the dequantized path needs no Triton
    triton = tl = None

FUSED_BITS = (4, 8)
FUSED_MAX_ROWS = 64  # the kernel re-reads the weight for every 64 rows; past that a dequantized matmul wins
_DTYPES = (torch.float32, torch.bfloat16, torch.float16)  # ROUND 0, 1, 2 in the kernels


def available() -> bool:
    """Whether Triton is there (it compiles for CUDA; on CPU tensors it interprets)."""
    return triton is not None


def unsupported(meta: dict) -> str | None:
    """Why the kernel cannot run this hqq weight, or None when it can."""
    n, k = meta["shape"]
    g = meta["group_size"]
    if meta["nbits"] not in FUSED_BITS:
        return f"the fused kernel takes {FUSED_BITS[0]} or {FUSED_BITS[1]} bits, not {meta['nbits']}"
    if meta.get("axis") != 1:
        return "the fused kernel takes weights grouped along axis 1"
    if meta.get("view_as_float") or meta.get("quant_scale") or meta.get("quant_zero") or "scale" not in meta:
        return "the fused kernel takes plain packed bytes with an unquantized scale and zero"
    if g is None or g < 16 or k % g:
        return f"the group size ({g}) must be at least 16 and divide the input size ({k})"
    if meta["nbits"] == 4 and n % 2:
        return f"4-bit packing splits the output rows in halves: their number ({n}) must be even"
    return None


@dataclass(frozen=True)
class LowBitWeight:
    """Views of one hqq weight (packed [N/2 or N, K] uint8, scale and zero [N, K/g]); no copies."""

    packed: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor
    out_features: int
    in_features: int
    bits: int
    group_size: int
    math_dtype: torch.dtype  # what hqq dequantizes in: float32, or half when its scale and zero are half

    @classmethod
    def from_hqq(cls, packed: torch.Tensor, meta: dict) -> LowBitWeight:
        reason = unsupported(meta)
        if reason:
            raise ValueError(reason)
        n, k = meta["shape"]
        g, bits = meta["group_size"], meta["nbits"]
        rows = n // 2 if bits == 4 else n
        if packed.dtype != torch.uint8 or packed.numel() != rows * k:
            raise ValueError(f"packed weight {tuple(packed.shape)} {packed.dtype} is not a {bits}-bit {n}x{k} one")
        scale, zero = meta["scale"], meta["zero"]
        # hqq unpacks to meta's compute_dtype (float16 without one) and lets torch promote with zero and scale.
        unpacked = meta.get("compute_dtype", torch.float16)
        math = torch.promote_types(torch.promote_types(unpacked, zero.dtype), scale.dtype)
        if math not in _DTYPES:
            raise ValueError(f"scale and zero in {scale.dtype}/{zero.dtype}: the kernel dequantizes in {_DTYPES}")
        return cls(packed.reshape(rows, k), scale.reshape(n, k // g), zero.reshape(n, k // g), n, k, bits, g, math)

    @classmethod
    def concat(cls, weights: list[LowBitWeight]) -> LowBitWeight:
        """One weight whose output rows are those of `weights` in order (q, k and v; gate and up), so that
        one launch does what several would. Groups run along K within a row, so the stacked rows keep
        their own scale and zero and dequantize to exactly the stacked weights; 4-bit rows are repacked
        into the halves layout of the stacked row count (new tensors: the parts can then be freed)."""
        first = weights[0]
        same = (first.in_features, first.bits, first.group_size, first.math_dtype, first.scale.dtype)
        for w in weights[1:]:
            if (w.in_features, w.bits, w.group_size, w.math_dtype, w.scale.dtype) != same:
                raise ValueError("only weights with the same input size, bits, groups and dtypes stack")
        n = sum(w.out_features for w in weights)
        if first.bits == 4:
            if n % 2:
                raise ValueError(f"4-bit packing splits the output rows in halves: their number ({n}) must be even")
            q = torch.cat([torch.cat((w.packed >> 4, w.packed & 0xF)) for w in weights])  # [N, K] rows in order
            packed = (q[: n // 2] << 4) | q[n // 2:]
        else:
            packed = torch.cat([w.packed for w in weights])
        return cls(packed.contiguous(), torch.cat([w.scale for w in weights]), torch.cat([w.zero for w in weights]),
                   n, first.in_features, first.bits, first.group_size, first.math_dtype)

    def dequantize(self, dtype: torch.dtype) -> torch.Tensor:
        """The full [N, K] weight, hqq's arithmetic exactly (the kernel's reference)."""
        p = self.packed
        q = torch.cat((p >> 4, p & 0xF)) if self.bits == 4 else p
        q = q.view(self.out_features, -1, self.group_size).to(self.math_dtype)
        w = (q - self.zero.to(self.math_dtype)[..., None]) * self.scale.to(self.math_dtype)[..., None]
        return w.view(self.out_features, self.in_features).to(dtype)


@dataclass(frozen=True)
class Config:
    block_m: int
    block_n: int  # packed rows a program reads (a 4-bit program writes twice as many outputs)
    block_k: int
    split_k: int
    num_warps: int = 4
    num_stages: int = 3


@functools.lru_cache(maxsize=None)
def _multiprocessors(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def pick_config(m: int, w: LowBitWeight, device: torch.device, sms: int | None = None) -> Config:
    """Enough programs to keep every multiprocessor streaming weights: tiles of 64 packed rows x one group,
    and the K loop split when the tiles alone are too few (k/v projections, and down_proj's long K).
    sms: the multiprocessor count (default: the device's; given, to plan for a card that is not here)."""
    block_m = 16 if m <= 16 else 32 if m <= 32 else 64
    block_n = 64
    block_k = max(w.group_size, 32) if w.group_size <= 128 else 128
    rows = w.packed.shape[0]
    tiles = -(-rows // block_n) * -(-m // block_m)
    if sms is None:
        sms = _multiprocessors(device.index if device.index is not None else torch.cuda.current_device()) \
            if device.type == "cuda" else 4
    steps = -(-w.in_features // block_k)
    split = 1
    while tiles * split < 2 * sms and steps // (split * 2) >= 2 and split < 64:
        split *= 2
    return Config(block_m, block_n, block_k, split)


# The kernels. EMULATE (Triton's interpreter, on CPU) does half-precision steps in float32 with explicit
# round-to-nearest-even: the interpreter's half-precision dot is not implemented and its float-to-bf16 cast
# truncates. Values are the same either way: a bf16/fp16 product is exact in float32, sums are float32.
if triton is not None:
    @triton.jit
    def _to_bf16_as_f32(v):
        """v rounded to the nearest bfloat16 (ties to even), kept in float32."""
        u = v.to(tl.uint32, bitcast=True)
        u = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16
        return u.to(tl.float32, bitcast=True)

    @triton.jit
    def _rounded(v, DTYPE: tl.constexpr, EMULATE: tl.constexpr):
        """v (float32) rounded to DTYPE (0 float32, 1 bfloat16, 2 float16), kept in float32."""
        if DTYPE == 1:
            if EMULATE:
                v = _to_bf16_as_f32(v)
            else:
                v = v.to(tl.bfloat16).to(tl.float32)
        elif DTYPE == 2:
            v = v.to(tl.float16).to(tl.float32)
        return v

    # The exponent byte of MAGIC, in each half dtype: bfloat16 0x43xx = 128 + xx, float16 0x64xx = 1024 + xx
    # (xx < 16 keeps within the unit-1 mantissa). prmt selector 0x5140 builds [b0, M, b1, M] = the halves
    # (M.b0, M.b1) of bytes 0 and 1; 0x7362 the same for bytes 2 and 3. Output element i is half i % 2 of
    # register i // 2, as Triton packs sub-32-bit values; input element i is byte i of the packed register.
    _MAGIC_NIBBLES_PTX = """{{
        .reg .b32 h, l;
        shr.b32 h, $4, 4;
        and.b32 h, h, 0x0F0F0F0F;
        and.b32 l, $4, 0x0F0F0F0F;
        prmt.b32 $0, h, {m}, 0x5140;
        prmt.b32 $1, h, {m}, 0x7362;
        prmt.b32 $2, l, {m}, 0x5140;
        prmt.b32 $3, l, {m}, 0x7362;
        }}"""
    MAGIC_NIBBLES_PTX = {1: _MAGIC_NIBBLES_PTX.format(m="0x43434343"), 2: _MAGIC_NIBBLES_PTX.format(m="0x64646464")}
    MAGIC = {1: 128.0, 2: 1024.0}
    _PTX_BF16 = tl.constexpr(MAGIC_NIBBLES_PTX[1])  # a jit function reads globals only as constexprs
    _PTX_FP16 = tl.constexpr(MAGIC_NIBBLES_PTX[2])
    _MAGIC_BF16 = tl.constexpr(MAGIC[1])
    _MAGIC_FP16 = tl.constexpr(MAGIC[2])

    @triton.jit
    def _magic_nibbles(q, ROUND: tl.constexpr):
        """(MAGIC + high nibble, MAGIC + low nibble) of each byte of q, exactly, in ROUND's half dtype."""
        if ROUND == 1:
            hi, lo = tl.inline_asm_elementwise(_PTX_BF16, "=r,=r,=r,=r,r", [q],
                                               dtype=(tl.bfloat16, tl.bfloat16), is_pure=True, pack=4)
        else:
            hi, lo = tl.inline_asm_elementwise(_PTX_FP16, "=r,=r,=r,=r,r", [q],
                                               dtype=(tl.float16, tl.float16), is_pure=True, pack=4)
        return hi, lo

    @triton.jit
    def _fast_dequant_dot(acc, x, magic_nib, s_ptr, z_ptr, sz, sz_ok, ROUND: tl.constexpr):
        """acc + x @ ((nib - zero) * scale) in x's half dtype, on packed pairs: hqq's rounding exactly."""
        s = tl.load(s_ptr + sz, mask=sz_ok, other=0.0)
        z = tl.load(z_ptr + sz, mask=sz_ok, other=0.0)
        if ROUND == 1:
            w = ((magic_nib - _MAGIC_BF16) - z) * s  # (MAGIC + nib) - MAGIC is exact
        else:
            w = ((magic_nib - _MAGIC_FP16) - z) * s
        tl.static_assert(w.dtype == x.dtype)  # each step rounded to the half dtype, none promoted to float32
        return tl.dot(x, w, acc)

    @triton.jit
    def _dequant_dot(acc, x, nib, s_ptr, z_ptr, sz, sz_ok, MATH: tl.constexpr, ROUND: tl.constexpr,
                     EMULATE: tl.constexpr):
        """acc + x @ ((nib - zero) * scale): hqq's arithmetic, in MATH's precision (float32, or half when its
        scale and zero are half), then the weight rounded to the activations' dtype."""
        s = tl.load(s_ptr + sz, mask=sz_ok, other=0.0).to(tl.float32)
        z = tl.load(z_ptr + sz, mask=sz_ok, other=0.0).to(tl.float32)
        w = _rounded(_rounded(nib.to(tl.float32) - z, MATH, EMULATE) * s, MATH, EMULATE)
        if ROUND == 0:
            acc = tl.dot(x, w, acc, input_precision="ieee")
        elif EMULATE:
            acc = tl.dot(x, _rounded(w, ROUND, EMULATE), acc, input_precision="ieee")
        else:
            acc = tl.dot(x, w.to(x.dtype), acc)
        return acc

    @triton.jit
    def _store(ptr, acc, mask, ROUND: tl.constexpr, EMULATE: tl.constexpr):
        if EMULATE and ROUND == 1:
            acc = _to_bf16_as_f32(acc)
        tl.store(ptr, acc.to(ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _lowbit_kernel(x_ptr, w_ptr, s_ptr, z_ptr, b_ptr, y_ptr,
                       M, N, K, stride_xm, stride_ym, stride_ys, k_per_split,
                       BITS: tl.constexpr, GROUP: tl.constexpr, HAS_BIAS: tl.constexpr, SPLIT: tl.constexpr,
                       MATH: tl.constexpr, ROUND: tl.constexpr, EMULATE: tl.constexpr, FAST: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        # MATH: the dequantization's precision, ROUND: the activations' dtype (0 float32, 1 bfloat16, 2 float16).
        # FAST: 4-bit, compiled, MATH == ROUND a half dtype (see the module's docstring).
        pid_n = tl.program_id(0)
        pid_s = tl.program_id(1)
        pid_m = tl.program_id(2)
        if BITS == 4:
            rows = N // 2  # packed rows: byte row r holds output rows r (high nibble) and r + N/2 (low)
        else:
            rows = N
        groups = K // GROUP
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_r = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_k = tl.arange(0, BLOCK_K)
        m_ok = offs_m < M
        r_ok = offs_r < rows
        k_first = pid_s * k_per_split
        acc_hi = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float32)
        acc_lo = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float32)
        for i in range(0, k_per_split, BLOCK_K):
            k = k_first + i + offs_k
            k_ok = k < K
            x = tl.load(x_ptr + offs_m[:, None] * stride_xm + k[None, :], mask=m_ok[:, None] & k_ok[None, :],
                        other=0.0)
            if ROUND == 0 or EMULATE:
                x = x.to(tl.float32)
            w_ok = k_ok[:, None] & r_ok[None, :]
            q = tl.load(w_ptr + offs_r[None, :] * K + k[:, None], mask=w_ok, other=0)  # [BLOCK_K, BLOCK_N] bytes
            # Scale and zero of each weight's group: one per row when the tile lies inside one group.
            if GROUP % BLOCK_K == 0:
                sz = offs_r[None, :] * groups + (k_first + i) // GROUP
                sz_ok = r_ok[None, :]
            else:
                sz = offs_r[None, :] * groups + (k // GROUP)[:, None]
                sz_ok = w_ok
            if FAST:
                hi, lo = _magic_nibbles(q, ROUND)
                acc_hi = _fast_dequant_dot(acc_hi, x, hi, s_ptr, z_ptr, sz, sz_ok, ROUND)
                acc_lo = _fast_dequant_dot(acc_lo, x, lo, s_ptr, z_ptr, sz + rows * groups, sz_ok, ROUND)
            elif BITS == 4:
                acc_hi = _dequant_dot(acc_hi, x, (q >> 4) & 0xF, s_ptr, z_ptr, sz, sz_ok, MATH, ROUND, EMULATE)
                acc_lo = _dequant_dot(acc_lo, x, q & 0xF, s_ptr, z_ptr, sz + rows * groups, sz_ok, MATH, ROUND,
                                      EMULATE)
            else:
                acc_hi = _dequant_dot(acc_hi, x, q, s_ptr, z_ptr, sz, sz_ok, MATH, ROUND, EMULATE)
        y_ok = m_ok[:, None] & r_ok[None, :]
        if SPLIT == 1:
            if HAS_BIAS:
                acc_hi += tl.load(b_ptr + offs_r, mask=r_ok, other=0.0).to(tl.float32)[None, :]
            _store(y_ptr + offs_m[:, None] * stride_ym + offs_r[None, :], acc_hi, y_ok, ROUND, EMULATE)
            if BITS == 4:
                if HAS_BIAS:
                    acc_lo += tl.load(b_ptr + rows + offs_r, mask=r_ok, other=0.0).to(tl.float32)[None, :]
                _store(y_ptr + offs_m[:, None] * stride_ym + rows + offs_r[None, :], acc_lo, y_ok, ROUND, EMULATE)
        else:
            part = y_ptr + pid_s * stride_ys + offs_m[:, None] * N + offs_r[None, :]  # float32 workspace
            tl.store(part, acc_hi, mask=y_ok)
            if BITS == 4:
                tl.store(part + rows, acc_lo, mask=y_ok)

    @triton.jit
    def _splitk_sum_kernel(ws_ptr, b_ptr, y_ptr, M, N, stride_ym,
                           SPLIT: tl.constexpr, HAS_BIAS: tl.constexpr, ROUND: tl.constexpr,
                           EMULATE: tl.constexpr, BLOCK: tl.constexpr):
        """y = the split-K partials summed in split order (+ bias), in y's dtype."""
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        ok = offs < M * N
        acc = tl.full((BLOCK,), 0.0, tl.float32)
        for s in tl.static_range(SPLIT):
            acc += tl.load(ws_ptr + s * M * N + offs, mask=ok, other=0.0)
        n = offs % N
        if HAS_BIAS:
            acc += tl.load(b_ptr + n, mask=ok, other=0.0).to(tl.float32)
        _store(y_ptr + (offs // N) * stride_ym + n, acc, ok, ROUND, EMULATE)


def interpreted(module_globals: dict, *names: str) -> tuple:
    """The @triton.jit functions `names` of a module as Triton's interpreter runs them (on CPU tensors). A
    kernel's helpers must be interpreted too, so every @triton.jit function of the module is rebound to a
    copy of its globals in which each one is its interpreted twin. Under TRITON_INTERPRET=1 they already
    are, and come back as they are."""
    if not all(isinstance(module_globals[n], triton.runtime.JITFunction) for n in names):
        return tuple(module_globals[n] for n in names)
    from triton.runtime.interpreter import InterpretedFunction

    scope = dict(module_globals)
    for name, value in module_globals.items():
        if isinstance(value, triton.runtime.JITFunction):
            fn = value.fn
            scope[name] = InterpretedFunction(
                types.FunctionType(fn.__code__, scope, fn.__name__, fn.__defaults__, fn.__closure__))
    return tuple(scope[n] for n in names)


@functools.lru_cache(maxsize=None)
def _kernels(interpret: bool):
    if not interpret:
        return _lowbit_kernel, _splitk_sum_kernel
    return interpreted(globals(), "_lowbit_kernel", "_splitk_sum_kernel")


def fast_dequant_applies(x_dtype: torch.dtype, w: LowBitWeight) -> bool:
    """Whether the compiled kernel can take the fast dequantization for this weight and these activations."""
    return (w.bits == 4 and x_dtype in (torch.bfloat16, torch.float16)
            and w.math_dtype == w.scale.dtype == w.zero.dtype == x_dtype)


_FAST_VERIFIED: dict[tuple[torch.device, torch.dtype], bool] = {}


def _fast_dequant_verified(device: torch.device, dtype: torch.dtype) -> bool:
    """The fast path checked once per device and dtype against the general one (same tiles, so the same
    result bit for bit). Inline PTX is the one part no CPU test runs; this keeps a wrong result on some
    card or compiler from silently weakening every draft. Not checked inside a CUDA graph capture (the
    general path is used there until an eager call has checked)."""
    key = (device, dtype)
    if key in _FAST_VERIFIED:
        return _FAST_VERIFIED[key]
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        return False
    gen = torch.Generator(device=device).manual_seed(0)
    n, k, g = 128, 256, 64
    packed = torch.randint(0, 256, (n // 2, k), dtype=torch.uint8, device=device, generator=gen)
    scale = (torch.rand(n, k // g, device=device, generator=gen) * 0.02 + 1e-3).to(dtype)
    zero = (torch.rand(n, k // g, device=device, generator=gen) * 15).to(dtype)
    w = LowBitWeight(packed, scale, zero, n, k, 4, g, dtype)
    x = torch.randn(6, k, device=device, generator=gen).to(dtype)
    ok = bool(torch.equal(lowbit_linear(x, w, fast=True), lowbit_linear(x, w, fast=False)))
    if not ok:
        import warnings

        warnings.warn(f"the fast low-bit dequantization differs from the general one on {device} ({dtype}); "
                      "using the general one", RuntimeWarning, stacklevel=3)
    _FAST_VERIFIED[key] = ok
    return ok


def lowbit_linear(x: torch.Tensor, w: LowBitWeight, bias: torch.Tensor | None = None,
                  config: Config | None = None, fast: bool | None = None) -> torch.Tensor:
    """F.linear(x, dequantized w, bias), reading the packed weight. x: [..., K] in float32/bf16/fp16.
    fast: the fast dequantization (None: where it applies and has been verified on this device; True
    where it applies, unverified; False: the general path)."""
    if x.shape[-1] != w.in_features:
        raise ValueError(f"input has {x.shape[-1]} features, the weight takes {w.in_features}")
    if x.dtype not in _DTYPES:
        raise ValueError(f"the fused kernel takes float32, bfloat16 or float16 activations, not {x.dtype}")
    if x.device != w.packed.device or (bias is not None and bias.device != x.device):
        raise ValueError("the input, the packed weight and the bias must be on one device")
    lead = x.shape[:-1]
    x2 = x.reshape(-1, w.in_features)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    m, n = x2.shape[0], w.out_features
    if m > FUSED_MAX_ROWS and config is None:
        return torch.nn.functional.linear(x2, w.dequantize(x.dtype), bias).view(*lead, n)
    y = torch.empty(m, n, dtype=x.dtype, device=x.device)
    if m == 0:
        return y.view(*lead, n)
    cfg = config or pick_config(m, w, x.device)
    interpret = x.device.type == "cpu"
    kernel, splitk_sum = _kernels(interpret)
    steps = -(-w.in_features // cfg.block_k)
    k_per_split = -(-steps // cfg.split_k) * cfg.block_k
    split = -(-w.in_features // k_per_split)  # a split with no K left would only add zeros
    ws = y if split == 1 else torch.empty(split, m, n, dtype=torch.float32, device=x.device)
    grid = (-(-w.packed.shape[0] // cfg.block_n), split, -(-m // cfg.block_m))
    if interpret or not fast_dequant_applies(x.dtype, w):
        fast = False  # the interpreter cannot run inline PTX
    elif fast is None:
        fast = _fast_dequant_verified(x.device, x.dtype)
    flags = dict(HAS_BIAS=bias is not None, ROUND=_DTYPES.index(x.dtype), EMULATE=interpret)
    b = bias if bias is not None else y  # never read without HAS_BIAS
    launch = {} if interpret else {"num_warps": cfg.num_warps, "num_stages": cfg.num_stages}
    kernel[grid](x2, w.packed, w.scale, w.zero, b, ws, m, n, w.in_features, x2.stride(0), y.stride(0), m * n,
                 k_per_split, BITS=w.bits, GROUP=w.group_size, SPLIT=split, MATH=_DTYPES.index(w.math_dtype),
                 FAST=fast, BLOCK_M=cfg.block_m,
                 BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, **flags, **launch)
    if split > 1:
        block = 1024
        splitk_sum[(-(-m * n // block),)](ws, b, y, m, n, y.stride(0), SPLIT=split, BLOCK=block, **flags,
                                           **({} if interpret else {"num_warps": 4}))
    return y.view(*lead, n)
