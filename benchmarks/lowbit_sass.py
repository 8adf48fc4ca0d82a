"""The fused low-bit kernel compiled for real GPUs on this machine (no GPU needed): Triton builds the cubin
for each architecture with its bundled ptxas, and cuobjdump disassembles it. Per architecture and
dequantization path (general: per element; fast: packed inline PTX) it reports whether the kernel compiles,
registers and spills, and the instructions of the main loop per packed weight byte; then, per GPU, the
issue headroom: the bytes a cycle a multiprocessor can dequantize at 4 warp instructions a cycle (no
stalls: an upper bound) over the bytes a cycle the card's memory delivers to it (spec sheet).
A static estimate, not a timing: `lowbit_kernel_check.py` times the kernel on a device.

The configurations are the ones the engine launches for a draft step of a Qwen2.5-7B substitute (4-bit,
group 64, six rows, bfloat16), tiles and split-K chosen by `pick_config` for each card's multiprocessors.

    python benchmarks/lowbit_sass.py [--out benchmarks/results] [--arch 80,86,89,90,120]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from engine import lowbit  # noqa: E402

HIDDEN, INTERMEDIATE, Q, KV = 3584, 18944, 3584, 512  # Qwen2.5-7B
SHAPES = {"q_proj": (Q, HIDDEN), "k_proj": (KV, HIDDEN), "v_proj": (KV, HIDDEN), "o_proj": (HIDDEN, Q),
          "gate_proj": (INTERMEDIATE, HIDDEN), "up_proj": (INTERMEDIATE, HIDDEN), "down_proj": (HIDDEN, INTERMEDIATE)}
BIASED = {"q_proj", "k_proj", "v_proj"}
ROWS = 6  # one draft step of a width-6 beam

# Spec-sheet figures: architecture, multiprocessors, boost clock (GHz), memory bandwidth (GB/s).
GPUS = {
    "RTX 3060 12GB": (86, 28, 1.777, 360),
    "RTX 3090": (86, 82, 1.695, 936),
    "RTX 4060 Ti 16GB": (89, 34, 2.535, 288),
    "RTX 4070": (89, 46, 2.475, 504),
    "RTX 4090": (89, 128, 2.52, 1008),
    "RTX 5090": (120, 170, 2.407, 1792),
    "A100 80GB SXM": (80, 108, 1.41, 2039),
    "H100 SXM": (90, 132, 1.98, 3350),
}
ISSUE_PER_CYCLE = 4 * 32  # thread instructions a multiprocessor issues a cycle: 4 schedulers x 1 warp

_INSTRUCTION = re.compile(r"^\s+/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")
_BRANCH = re.compile(r"BRA(?:\.\w+)*\s+(?:!?U?P\w+,\s*)?0x([0-9a-f]+)")
_RESOURCES = re.compile(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")


def _tools() -> str:
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")


def _meta_weight(n: int, k: int, bits: int = 4, group: int = 64) -> lowbit.LowBitWeight:
    """A weight with the right shapes and no storage: enough for pick_config."""
    rows = n // 2 if bits == 4 else n
    empty = torch.empty(rows, k, dtype=torch.uint8, device="meta")
    sz = torch.empty(n, k // group, dtype=torch.bfloat16, device="meta")
    return lowbit.LowBitWeight(empty, sz, sz, n, k, bits, group, torch.bfloat16)


def compile_kernel(arch: int, config: lowbit.Config, fast: bool, dtype: str = "bf16", bits: int = 4,
                   group: int = 64, has_bias: bool = False, split: int = 1):
    """The main kernel as lowbit_linear launches it, compiled for sm_<arch>. Pointers and the sizes that are
    multiples of 16 carry Triton's divisibility hint, as its launcher specializes them on a device."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = lowbit._lowbit_kernel
    pointers = ["x_ptr", "w_ptr", "s_ptr", "z_ptr", "b_ptr", "y_ptr"]
    signature = {name: f"*{dtype}" for name in pointers}
    signature["w_ptr"] = "*u8"
    signature.update({name: "i32" for name in ("M", "N", "K", "stride_xm", "stride_ym", "stride_ys", "k_per_split")})
    rounding = {"fp32": 0, "bf16": 1, "fp16": 2}[dtype]
    constants = dict(BITS=bits, GROUP=group, HAS_BIAS=has_bias, SPLIT=split, MATH=rounding, ROUND=rounding,
                     EMULATE=False, FAST=fast, BLOCK_M=config.block_m, BLOCK_N=config.block_n,
                     BLOCK_K=config.block_k)
    signature.update({name: "constexpr" for name in constants})
    divisible = pointers + ["N", "K", "stride_xm", "stride_ym", "stride_ys", "k_per_split"]
    attrs = {(fn.arg_names.index(name),): [["tt.divisibility", 16]] for name in divisible}
    source = ASTSource(fn=fn, signature=signature, constexprs=constants, attrs=attrs)
    return triton.compile(source, target=GPUTarget("cuda", arch, 32),
                          options={"num_warps": config.num_warps, "num_stages": config.num_stages})


def _cuobjdump(cubin: bytes, flag: str) -> str:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run([os.path.join(_tools(), "cuobjdump"), flag, f.name], capture_output=True, text=True,
                              check=True).stdout


def resources(kernel) -> dict:
    regs, stack, shared, local = map(int, _RESOURCES.search(_cuobjdump(kernel.asm["cubin"],
                                                                       "--dump-resource-usage")).groups())
    return {"registers": regs, "stack_bytes": stack, "static_shared_bytes": shared, "local_bytes": local}


def main_loop(kernel) -> collections.Counter:
    """Opcode counts of the kernel's longest loop (the K loop): from a backward branch's target to it."""
    instructions = [(int(m.group(1), 16), m.group(2)) for m in map(_INSTRUCTION.match,
                                                                   _cuobjdump(kernel.asm["cubin"], "-sass").splitlines())
                    if m]
    best = None
    for address, text in instructions:
        branch = _BRANCH.search(text)
        if branch and int(branch.group(1), 16) < address:
            start = int(branch.group(1), 16)
            if best is None or address - start > best[1] - best[0]:
                best = (start, address)
    if best is None:
        raise RuntimeError("no loop in the kernel's SASS")
    return collections.Counter(re.sub(r"^@!?U?P\w+\s+", "", text).split()[0]
                               for address, text in instructions if best[0] <= address <= best[1])


def profile(arch: int, fast: bool, config: lowbit.Config, **kw) -> dict:
    kernel = compile_kernel(arch, config, fast, **kw)
    ops = main_loop(kernel)
    bits = kw.get("bits", 4)
    threads = config.num_warps * 32
    bytes_per_thread = config.block_n * config.block_k / threads  # packed bytes a thread dequantizes an iteration
    loop = sum(ops.values())
    return {**resources(kernel), "loop_instructions": loop, "bits": bits,
            "instructions_per_byte": round(loop / bytes_per_thread, 2),
            "top_opcodes": dict(ops.most_common(6))}


def engine_configs(sms: int) -> dict[str, lowbit.Config]:
    return {name: lowbit.pick_config(ROWS, _meta_weight(n, k), torch.device("cuda"), sms=sms)
            for name, (n, k) in SHAPES.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--arch", default="80,86,89,90,120", help="comma-separated sm_ numbers")
    args = ap.parse_args()
    archs = [int(a) for a in args.arch.split(",")]
    import triton

    t0 = time.perf_counter()
    result = {"triton": triton.__version__, "torch": torch.__version__, "rows": ROWS, "bits": 4, "group_size": 64,
              "dtype": "bfloat16", "archs": {}, "gpus": {}}
    for arch in archs:
        sms = max((g[1] for g in GPUS.values() if g[0] == arch), default=132)
        per_shape = {}
        for name, config in engine_configs(sms).items():
            kw = dict(has_bias=name in BIASED, split=config.split_k)
            per_shape[name] = {"config": config.__dict__,
                               "general": profile(arch, False, config, **kw), "fast": profile(arch, True, config, **kw)}
        # The loop body does not depend on the shape (same tiles): one figure per path, the largest seen.
        summary = {path: max(s[path]["instructions_per_byte"] for s in per_shape.values())
                   for path in ("general", "fast")}
        spills = max(s[p]["local_bytes"] + s[p]["stack_bytes"] for s in per_shape.values() for p in ("general", "fast"))
        result["archs"][f"sm_{arch}"] = {"instructions_per_byte": summary, "spill_bytes": spills, "shapes": per_shape}
        print(f"[{time.perf_counter() - t0:5.1f}s] sm_{arch}: {summary} instructions a packed byte, "
              f"spills {spills} bytes", flush=True)
    for gpu, (arch, sms, ghz, gbps) in GPUS.items():
        if f"sm_{arch}" not in result["archs"]:
            continue
        need = gbps * 1e9 / (sms * ghz * 1e9)  # bytes a cycle each multiprocessor must take in
        per_byte = result["archs"][f"sm_{arch}"]["instructions_per_byte"]
        result["gpus"][gpu] = {"arch": arch, "multiprocessors": sms, "boost_ghz": ghz, "bandwidth_gbps": gbps,
                               "bytes_per_cycle_needed": round(need, 2),
                               **{f"{path}_issue_headroom": round(ISSUE_PER_CYCLE / v / need, 2)
                                  for path, v in per_byte.items()}}
    result["wall_s"] = round(time.perf_counter() - t0, 1)

    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "lowbit_sass.json"), "w") as f:
        json.dump(result, f, indent=2)
    lines = [f"Fused 4-bit g64 kernel, {ROWS} rows, bfloat16, compiled here for each architecture "
             f"(triton {result['triton']}); main-loop SASS instructions per packed byte and thread.", "",
             "| arch | general dequant | fast dequant | spills |", "|---|---|---|---|"]
    for arch, r in result["archs"].items():
        lines.append(f"| {arch} | {r['instructions_per_byte']['general']} | {r['instructions_per_byte']['fast']} "
                     f"| {r['spill_bytes']} B |")
    lines += ["", "Issue headroom: the bytes a cycle instruction issue allows over those the card's memory delivers "
                  "(below 1: issue-bound, at about that share of the bandwidth; spec sheets, no stalls: an upper "
                  "bound, not a timing):", "",
              "| GPU | bytes/cycle/SM needed | general | fast |", "|---|---|---|---|"]
    for gpu, r in result["gpus"].items():
        lines.append(f"| {gpu} (sm_{r['arch']}) | {r['bytes_per_cycle_needed']} | {r['general_issue_headroom']} "
                     f"| {r['fast_issue_headroom']} |")
    with open(os.path.join(args.out, "lowbit_sass.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
