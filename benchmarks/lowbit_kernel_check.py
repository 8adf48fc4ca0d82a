"""The fused low-bit kernel against F.linear on the dequantized bf16 weight, on the Qwen2.5-7B linear shapes at
M = 6 rows (one draft step of a width-6 beam). For a device session: about a minute on an H100 (a few
more with --sweep).

Per shape: the kernel's error against F.linear; whether its fast dequantization (inline PTX, compiled
only) gives the general path's result bit for bit; the median time of the kernel (both paths) and of
F.linear (L2 flushed between calls, so the weights come from HBM as they do in a draft step over 27
layers); the bytes each reads and the bandwidth that makes. Then one whole decoder layer (its seven linears) replayed as a CUDA graph, fused against
dequantized, and that times 27 offloaded layers: the linears' share of a draft step. --sweep also tries
other tilings and split-K factors per shape and reports the best next to the default choice.

    python benchmarks/lowbit_kernel_check.py [--out benchmarks/results] [--bits 4] [--group 64] [--sweep]
    python benchmarks/lowbit_kernel_check.py --tiny   # small shapes, runs on the CPU (Triton's interpreter)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from engine.lowbit import Config, LowBitWeight, fast_dequant_applies, lowbit_linear, pick_config  # noqa: E402
from engine.substitute import hqq_dequantize, hqq_quantize  # noqa: E402

HIDDEN, INTERMEDIATE, Q, KV = 3584, 18944, 3584, 512  # Qwen2.5-7B: 28 heads x 128, 4 KV heads x 128
SHAPES = {"q_proj": (Q, HIDDEN), "k_proj": (KV, HIDDEN), "v_proj": (KV, HIDDEN), "o_proj": (HIDDEN, Q),
          "gate_proj": (INTERMEDIATE, HIDDEN), "up_proj": (INTERMEDIATE, HIDDEN), "down_proj": (HIDDEN, INTERMEDIATE)}
TINY = {"q_proj": (256, 256), "k_proj": (64, 256), "v_proj": (64, 256), "o_proj": (256, 256),
        "gate_proj": (512, 256), "up_proj": (512, 256), "down_proj": (256, 512)}
BIASED = {"q_proj", "k_proj", "v_proj"}
OFFLOADED_LAYERS = 27  # gpu_check's plan under an 8 GB cap


def timer(device, flush_bytes=256 << 20):
    """median seconds of fn() over `reps` calls, L2 flushed before each on CUDA."""
    scratch = torch.empty(flush_bytes, dtype=torch.uint8, device=device) if device.type == "cuda" else None

    def run(fn, reps):
        for _ in range(3):
            fn()
        times = []
        for _ in range(reps):
            if scratch is not None:
                scratch.zero_()
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end) / 1e3)
            else:
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
        return statistics.median(times)

    return run


def make_weight(n, k, bits, group, device, seed):
    w = torch.randn(n, k, generator=torch.Generator(device=device).manual_seed(seed), device=device) * 0.02
    packed, meta = hqq_quantize(w.to(torch.bfloat16), bits, group, compute_dtype=torch.bfloat16)
    meta = dict(meta, scale=meta["scale"].to(torch.bfloat16), zero=meta["zero"].to(torch.bfloat16))
    return LowBitWeight.from_hqq(packed, meta), hqq_dequantize(packed, meta).to(torch.bfloat16)


def sweep_configs(m, w, device):
    base = pick_config(m, w, device)
    splits = sorted({1, max(1, base.split_k // 2), base.split_k, base.split_k * 2})
    for block_n in (32, 64, 128):
        for split in splits:
            yield Config(base.block_m, block_n, base.block_k, split)
    yield Config(base.block_m, base.block_n, base.block_k, base.split_k, num_warps=8)
    yield Config(base.block_m, base.block_n, base.block_k * 2, base.split_k)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--rows", type=int, default=6)
    ap.add_argument("--bits", type=int, default=4, choices=(4, 8))
    ap.add_argument("--group", type=int, default=64)
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument("--sweep", action="store_true", help="also try other tilings / split-K per shape")
    ap.add_argument("--tiny", action="store_true", help="small shapes on whatever device: checks the script")
    args = ap.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda" and not args.tiny:
        raise SystemExit("needs CUDA (or --tiny, which runs on the CPU through Triton's interpreter)")
    shapes = TINY if args.tiny else SHAPES
    reps = 3 if args.tiny else args.reps
    bench = timer(device)
    result = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (interpreter)",
              "torch": torch.__version__, "rows": args.rows, "bits": args.bits, "group_size": args.group,
              "dtype": "bfloat16", "shapes": {}}
    try:
        import triton

        result["triton"] = triton.__version__
    except ImportError:
        raise SystemExit("needs Triton")
    t_start = time.perf_counter()
    weights = {}
    for i, (name, (n, k)) in enumerate(shapes.items()):
        lw, w = make_weight(n, k, args.bits, args.group, device, i)
        bias = torch.randn(n, device=device).to(torch.bfloat16) if name in BIASED else None
        weights[name] = (lw, w, bias)
        x = torch.randn(args.rows, k, device=device).to(torch.bfloat16)
        ref = (x.float() @ w.float().T + (0 if bias is None else bias.float())).to(torch.bfloat16)
        y = lowbit_linear(x, lw, bias)
        general = lowbit_linear(x, lw, bias, fast=False)
        deq = F.linear(x, w, bias)
        config = pick_config(args.rows, lw, device)
        t_fused = bench(lambda: lowbit_linear(x, lw, bias), reps)
        t_deq = bench(lambda: F.linear(x, w, bias), reps)
        t_general = bench(lambda: lowbit_linear(x, lw, bias, fast=False), reps)
        packed_bytes = lw.packed.numel() + 2 * lw.scale.numel() * lw.scale.element_size()
        row = {"n": n, "k": k, "config": config.__dict__,
               "max_abs_error_vs_fp32_reference": float((y.float() - ref.float()).abs().max()),
               "max_abs_error_of_f_linear": float((deq.float() - ref.float()).abs().max()),
               "fast_dequant": device.type == "cuda" and fast_dequant_applies(x.dtype, lw),
               "fast_equals_general": bool(torch.equal(y, general)),
               "fused_us": round(t_fused * 1e6, 2), "general_dequant_us": round(t_general * 1e6, 2),
               "dequantized_us": round(t_deq * 1e6, 2),
               "speedup": round(t_deq / t_fused, 2),
               "fused_bytes": packed_bytes, "dequantized_bytes": n * k * 2,
               "fused_gbps": round(packed_bytes / t_fused / 1e9, 1),
               "dequantized_gbps": round(n * k * 2 / t_deq / 1e9, 1)}
        if args.sweep:
            tried = []
            for cfg in sweep_configs(args.rows, lw, device):
                try:
                    t = bench(lambda: lowbit_linear(x, lw, bias, cfg), max(5, reps // 5))
                except Exception as e:  # a tiling the compiler or the card refuses
                    tried.append({"config": cfg.__dict__, "error": type(e).__name__})
                    continue
                tried.append({"config": cfg.__dict__, "us": round(t * 1e6, 2)})
            ok = [t for t in tried if "us" in t]
            best = min(ok, key=lambda t: t["us"])
            row["sweep_best"] = best
            row["sweep"] = tried
        result["shapes"][name] = row
        print(f"[{time.perf_counter() - t_start:6.1f}s] {name:9s} {n}x{k}: fused {row['fused_us']} us "
              f"(general dequant {row['general_dequant_us']} us, same result {row['fast_equals_general']}) "
              f"({row['fused_gbps']} GB/s), dequantized {row['dequantized_us']} us ({row['dequantized_gbps']} GB/s), "
              f"error {row['max_abs_error_vs_fp32_reference']:.3g} (F.linear {row['max_abs_error_of_f_linear']:.3g})"
              + (f", sweep best {row['sweep_best']}" if args.sweep else ""), flush=True)

    # One decoder layer's seven linears, launched as one CUDA graph (as the captured draft step runs them).
    if device.type == "cuda":
        xs = {name: torch.randn(args.rows, shapes[name][1], device=device).to(torch.bfloat16) for name in shapes}
        layer = {}
        for kind in ("fused", "general", "dequantized"):
            def step(kind=kind):
                for name, (lw, w, bias) in weights.items():
                    if kind == "fused":
                        lowbit_linear(xs[name], lw, bias)
                    elif kind == "general":  # the fused kernel with its general (per-element) dequantization
                        lowbit_linear(xs[name], lw, bias, fast=False)
                    else:
                        F.linear(xs[name], w, bias)
            step()
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                step()
            layer[kind] = bench(graph.replay, reps)
        result["layer_graph_us"] = {k: round(v * 1e6, 1) for k, v in layer.items()}
        result["linears_per_draft_step_ms"] = {k: round(v * OFFLOADED_LAYERS * 1e3, 2) for k, v in layer.items()}
        print(f"one layer's linears as a CUDA graph: {result['layer_graph_us']} us; x {OFFLOADED_LAYERS} layers: "
              f"{result['linears_per_draft_step_ms']} ms", flush=True)
    result["wall_s"] = round(time.perf_counter() - t_start, 1)

    os.makedirs(args.out, exist_ok=True)
    stem = "lowbit_kernel_check" + ("_tiny" if args.tiny else "")
    with open(os.path.join(args.out, stem + ".json"), "w") as f:
        json.dump(result, f, indent=2)
    lines = [f"Fused {args.bits}-bit g{args.group} kernel vs F.linear on the dequantized bf16 weight, "
             f"M = {args.rows}, {result['device']}, torch {result['torch']}, triton {result['triton']}", "",
             "| linear | N x K | fused us (GB/s) | general dequant us (same result) | dequantized us (GB/s) | speedup "
             "| max error (F.linear's) |",
             "|---|---|---|---|---|---|---|"]
    for name, r in result["shapes"].items():
        lines.append(f"| {name} | {r['n']} x {r['k']} | {r['fused_us']} ({r['fused_gbps']}) | {r['general_dequant_us']} "
                     f"({r['fast_equals_general']}) | {r['dequantized_us']} "
                     f"({r['dequantized_gbps']}) | {r['speedup']}x | {r['max_abs_error_vs_fp32_reference']:.3g} "
                     f"({r['max_abs_error_of_f_linear']:.3g}) |")
    if "layer_graph_us" in result:
        lines += ["", f"One layer's seven linears as a CUDA graph: fused {result['layer_graph_us']['fused']} us, "
                      f"general dequant {result['layer_graph_us']['general']} us, "
                      f"dequantized {result['layer_graph_us']['dequantized']} us; x {OFFLOADED_LAYERS} layers: "
                      f"{result['linears_per_draft_step_ms']['fused']} ms vs "
                      f"{result['linears_per_draft_step_ms']['dequantized']} ms a draft step."]
    with open(os.path.join(args.out, stem + ".md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
