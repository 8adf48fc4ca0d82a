"""The fused low-bit kernel as a GPU runs it, checked without a GPU: compiled for real architectures (Triton's
bundled ptxas), its fast dequantization's inline PTX executed by a small emulator of the three instructions
it uses, and that path's arithmetic against hqq's dequantization."""

import importlib.util
import os
import random

import pytest
import torch

pytest.importorskip("triton")

from engine import lowbit  # noqa: E402
from engine.substitute import SubstituteLinear, hqq_dequantize, hqq_quantize  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HALF = {1: torch.bfloat16, 2: torch.float16}


def _sass_script():
    spec = importlib.util.spec_from_file_location("lowbit_sass", os.path.join(ROOT, "benchmarks", "lowbit_sass.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_ptx(asm: str, registers: dict[str, int]) -> dict[str, int]:
    """Execute the shr/and/prmt PTX of the fast path on 32-bit registers (semantics: the PTX ISA's)."""
    regs = dict(registers)

    def value(operand):
        return int(operand, 16) if operand.startswith("0x") else int(operand) if operand.isdigit() else regs[operand]

    for line in asm.splitlines():
        line = line.strip().rstrip(";")
        if line in ("", "{", "}") or line.startswith(".reg"):
            continue
        op, rest = line.split(None, 1)
        args = [a.strip() for a in rest.split(",")]
        if op == "shr.b32":
            regs[args[0]] = value(args[1]) >> value(args[2])
        elif op == "and.b32":
            regs[args[0]] = value(args[1]) & value(args[2])
        elif op == "prmt.b32":  # d.byte[i] = ({b, a} as 8 bytes)[selector nibble i], generic mode
            pool, selector = value(args[1]) | value(args[2]) << 32, value(args[3])
            out = 0
            for i in range(4):
                pick = selector >> 4 * i & 0xF
                assert pick < 8, "sign-replicating selectors are not used"
                out |= (pool >> 8 * pick & 0xFF) << 8 * i
            regs[args[0]] = out
        else:
            raise AssertionError(f"the emulator does not know {op}")
    return regs


@pytest.mark.parametrize("rounding", [1, 2])
def test_the_fast_paths_ptx_gives_magic_plus_each_nibble(rounding):
    """Element i of the four packed bytes (byte i of $4) comes out as MAGIC + its high nibble (half i % 2 of
    $0/$1) and MAGIC + its low nibble ($2/$3), exactly, for every byte value in every position."""
    dtype, magic = HALF[rounding], lowbit.MAGIC[rounding]
    rng = random.Random(rounding)
    words = [int.from_bytes(bytes((b, (b + 85) % 256, (b + 170) % 256, 255 - b)), "little") for b in range(256)]
    words += [rng.getrandbits(32) for _ in range(256)]
    for word in words:
        out = run_ptx(lowbit.MAGIC_NIBBLES_PTX[rounding], {"$4": word})
        for i in range(4):
            byte = word >> 8 * i & 0xFF
            for first, nibble in ((0, byte >> 4), (2, byte & 0xF)):
                bits = out[f"${first + i // 2}"] >> 16 * (i % 2) & 0xFFFF
                value = torch.tensor([bits], dtype=torch.int16).view(dtype).item()
                assert value == magic + nibble, (hex(word), i, hex(bits))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_the_fast_paths_arithmetic_is_hqqs_rounding(dtype):
    """((MAGIC + q) - MAGIC - zero) * scale, one rounding per operation in the half dtype, as the compiled
    kernel computes it, equals hqq's dequantization bit for bit on a substitute of a half-precision linear
    (which takes the fast path: hqq dequantizes in the model's dtype, as HQQLinear does)."""
    rounding = 1 if dtype == torch.bfloat16 else 2
    torch.manual_seed(0)
    linear = torch.nn.Linear(512, 256, bias=False)
    with torch.no_grad():
        linear.weight.mul_(2)
        linear.weight[3] *= 40  # a wide row: large scales and zeros
    sub = SubstituteLinear(linear.to(dtype), 4, 64, fused=True)
    lw, packed, meta = sub.lowbit, sub.packed, sub.meta
    assert lowbit.fast_dequant_applies(dtype, lw)
    q = torch.cat((lw.packed >> 4, lw.packed & 0xF)).view(256, -1, 64)
    magic = torch.tensor(lowbit.MAGIC[rounding], dtype=dtype)
    q_magic = (q.to(torch.int16) | {1: 0x4300, 2: 0x6400}[rounding]).view(dtype)
    fast = ((q_magic - magic) - lw.zero[..., None]) * lw.scale[..., None]
    assert torch.equal(fast.view(256, 512), hqq_dequantize(packed, meta).to(dtype))


def test_the_fast_path_applies_to_half_substitutes_only():
    def weight(dtype, scale_dtype, bits=4):
        packed, meta = hqq_quantize(torch.randn(64, 128).to(dtype), bits, 64, compute_dtype=dtype)
        meta = dict(meta, scale=meta["scale"].to(scale_dtype), zero=meta["zero"].to(scale_dtype), compute_dtype=dtype)
        return lowbit.LowBitWeight.from_hqq(packed, meta)

    assert lowbit.fast_dequant_applies(torch.bfloat16, weight(torch.bfloat16, torch.bfloat16))
    assert lowbit.fast_dequant_applies(torch.float16, weight(torch.float16, torch.float16))
    assert not lowbit.fast_dequant_applies(torch.float32, weight(torch.float32, torch.float32))
    assert not lowbit.fast_dequant_applies(torch.bfloat16, weight(torch.bfloat16, torch.float32))  # math in fp32
    assert not lowbit.fast_dequant_applies(torch.float16, weight(torch.bfloat16, torch.bfloat16))
    assert not lowbit.fast_dequant_applies(torch.bfloat16, weight(torch.bfloat16, torch.bfloat16, bits=8))
    packed, meta = hqq_quantize(torch.randn(64, 128).to(torch.bfloat16), 4, 64, compute_dtype=torch.bfloat16)
    meta = dict(meta, scale=meta["scale"].to(torch.bfloat16), zero=meta["zero"].to(torch.bfloat16))
    assert not lowbit.fast_dequant_applies(torch.bfloat16, lowbit.LowBitWeight.from_hqq(packed, meta)), \
        "without compute_dtype hqq unpacks to float16, and float16 with bfloat16 is float32 arithmetic"


def test_the_interpreter_never_takes_the_fast_path():
    """fast=True on the CPU still runs (the general path): inline PTX cannot be interpreted."""
    packed, meta = hqq_quantize(torch.randn(64, 128).to(torch.bfloat16), 4, 64, compute_dtype=torch.bfloat16)
    lw = lowbit.LowBitWeight.from_hqq(packed, meta)
    x = torch.randn(3, 128).to(torch.bfloat16)
    assert torch.equal(lowbit.lowbit_linear(x, lw, fast=True), lowbit.lowbit_linear(x, lw, fast=False))


@pytest.fixture(scope="module")
def sass():
    return _sass_script()


@pytest.mark.parametrize("arch", [80, 86, 89, 90, 120])
def test_the_kernel_compiles_for_each_gpu_generation_without_spills(sass, arch):
    """Ampere, Ada, Hopper and Blackwell cubins of the fast and general paths, for the engine's own tiles of a
    Qwen2.5-7B gate projection, with every value in registers (a spill would put the draft's hot loop in
    local memory)."""
    config = sass.engine_configs(sms=128)["gate_proj"]
    variants = [(True, "bf16"), (False, "bf16")] + ([(True, "fp16")] if arch == 89 else [])
    for fast, dtype in variants:
        usage = sass.resources(sass.compile_kernel(arch, config, fast, dtype=dtype, split=config.split_k))
        assert usage["local_bytes"] == 0 and usage["stack_bytes"] == 0, usage


@pytest.mark.parametrize("arch", [89, 90])
def test_the_fast_dequantization_issues_far_fewer_instructions(sass, arch):
    """The reason the fast path exists: its main loop spends at least a third fewer instructions per
    packed byte than the general one (measured 15.3 -> 8.9 on sm_89, 15.3 -> 9.8 on sm_90)."""
    config = sass.engine_configs(sms=132)["down_proj"]
    general = sass.profile(arch, False, config, split=config.split_k)
    fast = sass.profile(arch, True, config, split=config.split_k)
    assert fast["instructions_per_byte"] < general["instructions_per_byte"] * 2 / 3, (general, fast)


def test_the_sass_report_runs(tmp_path, sass, monkeypatch):
    """The benchmark script end to end on one architecture: JSON and Markdown with both paths."""
    import json
    import sys

    monkeypatch.setattr(sys, "argv", ["lowbit_sass.py", "--out", str(tmp_path), "--arch", "89"])
    sass.main()
    result = json.loads((tmp_path / "lowbit_sass.json").read_text())
    per_byte = result["archs"]["sm_89"]["instructions_per_byte"]
    assert per_byte["fast"] < per_byte["general"]
    assert result["gpus"]["RTX 4090"]["fast_issue_headroom"] > result["gpus"]["RTX 4090"]["general_issue_headroom"]
    assert "| sm_89 |" in (tmp_path / "lowbit_sass.md").read_text()


def test_a_fast_path_that_disagrees_is_switched_off_with_a_warning(monkeypatch):
    """The once-per-device check: equal results keep the fast path, a difference turns it off (and says
    so) for that device and dtype, and the verdict is remembered."""
    monkeypatch.setattr(lowbit, "_FAST_VERIFIED", {})
    cpu = torch.device("cpu")
    assert lowbit._fast_dequant_verified(cpu, torch.bfloat16)  # the interpreter: both paths are the general one
    real = lowbit.lowbit_linear
    calls = []

    def broken(x, w, bias=None, config=None, fast=None):
        calls.append(fast)
        y = real(x, w, bias, config, fast=False)
        return y + 1 if fast else y

    monkeypatch.setattr(lowbit, "lowbit_linear", broken)
    with pytest.warns(RuntimeWarning, match="differs"):
        assert not lowbit._fast_dequant_verified(cpu, torch.float16)
    assert calls == [True, False]
    assert not lowbit._fast_dequant_verified(cpu, torch.float16) and calls == [True, False]  # remembered
    assert lowbit._FAST_VERIFIED == {(cpu, torch.bfloat16): True, (cpu, torch.float16): False}
