"""The fused low-bit kernel computes F.linear on hqq's own dequantization, reading hqq's packed bytes as they are.

On CPU the Triton kernel runs in Triton's interpreter: the same kernel source, the products in float32
(the interpreter has no half-precision dot; a bf16/fp16 product is exact in float32 either way)."""

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")

from engine.lowbit import FUSED_MAX_ROWS, Config, LowBitWeight, lowbit_linear, unsupported  # noqa: E402
from engine.substitute import hqq_dequantize, hqq_quantize  # noqa: E402

DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _quantized(n, k, bits=4, group=64, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) * 0.05
    packed, meta = hqq_quantize(w, bits, group)
    # Scale and zero in the model's dtype, as a substitute keeps them (hqq then dequantizes in half for fp16).
    meta = dict(meta, scale=meta["scale"].to(dtype), zero=meta["zero"].to(dtype))
    return packed, meta


def _assert_within_one_rounding(y, ref):
    """y equals ref (both [M, N] in a float dtype) up to the summation order: within one unit of the
    output's last place plus float32 accumulation noise."""
    assert y.dtype == ref.dtype and y.shape == ref.shape
    eps = torch.finfo(y.dtype).eps
    err = (y.float() - ref.float()).abs()
    bound = ref.float().abs() * eps + 1e-5 * ref.float().abs().max()
    assert bool((err <= bound).all()), f"max error {err.max().item()} ({y.dtype})"


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("group", [32, 64, 128])
@pytest.mark.parametrize("dtype", DTYPES)
def test_the_packed_view_dequantizes_exactly_as_hqq(bits, group, dtype):
    packed, meta = _quantized(96, 256, bits, group, dtype)
    lw = LowBitWeight.from_hqq(packed, meta)
    assert lw.packed.data_ptr() == packed.data_ptr()  # a view of hqq's tensor, not a copy
    assert torch.equal(lw.dequantize(dtype), hqq_dequantize(packed, meta).to(dtype))
    if bits == 4:  # the layout the kernel relies on: byte [r, k] holds rows r (high) and r + N/2 (low)
        from hqq.core.bitpack import BitPack

        q = BitPack.unpack_4bit_u8(packed).view(96, 256)
        assert torch.equal(lw.packed >> 4, q[:48]) and torch.equal(lw.packed & 0xF, q[48:])


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("dtype", DTYPES)
def test_the_kernel_dequantizes_bit_for_bit(bits, dtype):
    """With one-hot inputs each output is one weight times 1: the kernel's weights must be hqq's exactly."""
    packed, meta = _quantized(80, 192, bits, 64, dtype, seed=1)
    ref = hqq_dequantize(packed, meta).to(dtype)
    cols = torch.tensor([0, 1, 63, 64, 100, 191])
    x = F.one_hot(cols, 192).to(dtype)
    lw = LowBitWeight.from_hqq(packed, meta)
    for config in (None, Config(16, 16, 32, 3), Config(16, 32, 128, 1)):
        assert torch.equal(lowbit_linear(x, lw, config=config), ref[:, cols].T)


SHAPES = [(96, 256, 64), (40, 96, 32), (64, 384, 128), (130, 64, 64)]  # N, K, group: tails in N and K too


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("dtype", DTYPES)
def test_the_kernel_equals_f_linear_on_the_dequantized_weight(bits, dtype):
    for i, (n, k, group) in enumerate(SHAPES):
        packed, meta = _quantized(n, k, bits, group, dtype, seed=i)
        lw = LowBitWeight.from_hqq(packed, meta)
        w = hqq_dequantize(packed, meta).to(dtype)
        g = torch.Generator().manual_seed(10 + i)
        bias = torch.randn(n, generator=g).to(dtype)
        for m in (1, 6, 17, FUSED_MAX_ROWS):
            x = torch.randn(m, k, generator=g).to(dtype)
            for b in (None, bias):
                ref = (x.float() @ w.float().T + (0 if b is None else b.float())).to(dtype)
                _assert_within_one_rounding(lowbit_linear(x, lw, b), ref)


def test_an_odd_number_of_outputs_runs_at_8_bits():
    packed, meta = _quantized(63, 128, bits=8, dtype=torch.bfloat16)
    w = hqq_dequantize(packed, meta).to(torch.bfloat16)
    x = torch.randn(6, 128).to(torch.bfloat16)
    ref = (x.float() @ w.float().T).to(torch.bfloat16)
    _assert_within_one_rounding(lowbit_linear(x, LowBitWeight.from_hqq(packed, meta)), ref)


def test_tilings_and_k_splits_agree():
    packed, meta = _quantized(104, 320, 4, 64)
    lw = LowBitWeight.from_hqq(packed, meta)
    x = torch.randn(6, 320)
    bias = torch.randn(104)
    ref = F.linear(x, hqq_dequantize(packed, meta), bias)
    for config in (Config(16, 16, 64, 1), Config(16, 16, 64, 5), Config(32, 64, 32, 2), Config(16, 8, 128, 3),
                   Config(16, 32, 64, 64)):  # more splits than K steps: the empty ones are dropped
        torch.testing.assert_close(lowbit_linear(x, lw, bias, config), ref, rtol=1e-5, atol=1e-6)


def test_leading_dimensions_and_empty_inputs():
    packed, meta = _quantized(64, 128)
    lw = LowBitWeight.from_hqq(packed, meta)
    w = hqq_dequantize(packed, meta)
    x = torch.randn(1, 5, 128)
    y = lowbit_linear(x, lw)
    assert y.shape == (1, 5, 64)
    torch.testing.assert_close(y, F.linear(x, w), rtol=1e-5, atol=1e-6)
    strided = torch.randn(5, 256)[:, ::2]  # not contiguous in K
    torch.testing.assert_close(lowbit_linear(strided, lw), F.linear(strided, w), rtol=1e-5, atol=1e-6)
    assert lowbit_linear(torch.randn(0, 128), lw).shape == (0, 64)


def test_prefill_sized_inputs_fall_back_to_a_dequantized_matmul():
    packed, meta = _quantized(64, 128, dtype=torch.bfloat16)
    lw = LowBitWeight.from_hqq(packed, meta)
    w = hqq_dequantize(packed, meta).to(torch.bfloat16)
    x = torch.randn(FUSED_MAX_ROWS + 36, 128).to(torch.bfloat16)
    bias = torch.randn(64).to(torch.bfloat16)
    assert torch.equal(lowbit_linear(x, lw, bias), F.linear(x, w, bias))
    # The kernel itself takes any number of rows (several row tiles), when asked to.
    ref = (x.float() @ w.float().T + bias.float()).to(torch.bfloat16)
    _assert_within_one_rounding(lowbit_linear(x, lw, bias, Config(64, 32, 64, 2)), ref)


def test_what_the_kernel_does_not_take_is_refused_with_a_reason():
    assert "bits" in unsupported(_quantized(64, 128, bits=2)[1])
    assert "bits" in unsupported(_quantized(64, 128, bits=3)[1])
    assert "even" in unsupported(_quantized(63, 128)[1])  # 4-bit halves would split a row
    assert unsupported(_quantized(63, 128, bits=8)[1]) is None
    assert "divide" in unsupported(_quantized(64, 96, group=64)[1])  # groups would straddle rows
    with pytest.raises(ValueError, match="even"):
        LowBitWeight.from_hqq(*_quantized(63, 128))
    lw = LowBitWeight.from_hqq(*_quantized(64, 128))
    with pytest.raises(ValueError, match="features"):
        lowbit_linear(torch.randn(2, 64), lw)
    with pytest.raises(ValueError, match="activations"):
        lowbit_linear(torch.randn(2, 128).double(), lw)
    with pytest.raises(ValueError, match="4-bit 64x128"):
        LowBitWeight.from_hqq(torch.zeros(10, 64, dtype=torch.uint8), _quantized(64, 128)[1])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_compiled_and_captured():
    """The compiled kernel (tensor-core bf16 products) against F.linear, eager and replayed in a CUDA graph."""
    dev = torch.device("cuda")
    for n, k, group in ((3584, 3584, 64), (512, 3584, 64), (18944, 3584, 64), (3584, 18944, 64), (200, 256, 32)):
        packed, meta = _quantized(n, k, 4, group, torch.bfloat16)
        packed, meta = packed.to(dev), {key: (v.to(dev) if torch.is_tensor(v) else v) for key, v in meta.items()}
        lw = LowBitWeight.from_hqq(packed, meta)
        w = hqq_dequantize(packed, meta).to(torch.bfloat16)
        x = torch.randn(6, k, device=dev).to(torch.bfloat16)
        bias = torch.randn(n, device=dev).to(torch.bfloat16)
        ref = (x.float() @ w.float().T + bias.float()).to(torch.bfloat16)
        y = lowbit_linear(x, lw, bias)
        torch.testing.assert_close(y, ref, rtol=1.6e-2, atol=1e-2)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = lowbit_linear(x, lw, bias)
        graph.replay()
        assert torch.equal(out, y)  # split-K sums in a fixed order: replays are bit-identical
