"""Where a draft's precision should sit: SubSpec's acceptance (tau) at depth 48, width 6 (greedy, group 64)
with the same number of 8-bit (or exact, full-precision) layers placed first or last, on the default
model and the first MT-Bench prompts. The planner's 8-bit placement and its depth-weighted tau model
(engine.planner.layer_weight) rest on these numbers; the JSON also holds what that model and an
unweighted mean predict for each mixed draft, calibrated on this run's all-4-bit and all-8-bit tau.

    .venv/bin/python benchmarks/substitute_placement.py --prompts ../shared/benchmarks/mt_bench.jsonl
        [--limit 10] [--max-new-tokens 64] [--out benchmarks/results/substitute_placement_cpu.json]
    .venv/bin/python benchmarks/substitute_placement.py --prompts ../shared/benchmarks/mt_bench.jsonl \
        --variants "all 8-bit,8-bit + first 6 exact,8-bit + last 6 exact" --max-new-tokens 256 \
        --out benchmarks/results/resident_placement_cpu.json

About 15 minutes on 2 CPU cores (the draft is dequantized on the CPU; only tau matters here).
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from engine.bench import read_prompts  # noqa: E402
from engine.convert import build_draft_cached  # noqa: E402
from engine.loading import load_model  # noqa: E402
from engine.planner import SUBSTITUTE_ERROR  # noqa: E402
from engine.speculative import TreeShape, generate_subspec  # noqa: E402
from engine.store import DEFAULT_MODEL, resolve_model  # noqa: E402

DEPTH, WIDTH = 48, 6


def variants(n: int) -> dict[str, dict[int, int]]:
    """{name: {layer: bits}}; a layer left out is exact (the target's own, as a resident layer)."""
    half = n // 2
    return {
        "all 4-bit": {i: 4 for i in range(n)},
        "first half 8-bit": {i: 8 if i < half else 4 for i in range(n)},
        "last half 8-bit": {i: 8 if i >= half else 4 for i in range(n)},
        "all 8-bit": {i: 8 for i in range(n)},
        "last 7 8-bit": {i: 8 if i >= n - 7 else 4 for i in range(n)},
        "first 6 exact": {i: 4 for i in range(6, n)},
        "last 6 exact": {i: 4 for i in range(n - 6)},
        # Where resident (exact) layers belong once every streamed layer is 8-bit, as in the planner's
        # larger budgets; run these with more new tokens (--variants ... --max-new-tokens 256): at tau ~30
        # 64 tokens are two passes a prompt and cap the measurement.
        "8-bit + first 6 exact": {i: 8 for i in range(6, n)},
        "8-bit + last 6 exact": {i: 8 for i in range(n - 6)},
    }


def tau_of_miss(m: float, depth: int = DEPTH) -> float:
    """The planner's geometric acceptance for a per-step miss probability m."""
    return (1 - (1 - m) ** (depth + 1)) / m


def miss_of_tau(tau: float) -> float:
    lo, hi = 1e-6, 1.0
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if tau_of_miss(mid) > tau else (lo, mid)
    return lo


def error(bits: dict[int, int], n: int, power: int) -> float:
    """Mean relative error over all n layers (exact = 0), layer i weighted (i + 1) ** power."""
    weights = [(i + 1) ** power for i in range(n)]
    return sum(weights[i] * SUBSTITUTE_ERROR[b] for i, b in bits.items()) / sum(weights)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--prompts", required=True, help="JSON lines with 'turns' or 'prompt' (MT-Bench)")
    ap.add_argument("--limit", type=int, default=10)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--out", default="benchmarks/results/substitute_placement_cpu.json")
    ap.add_argument("--variants", help="comma-separated names to run (default: the first seven)")
    args = ap.parse_args()

    folder, name = resolve_model(args.model)
    lm = load_model(folder, dtype="float32", device="cpu", name=name)
    n = lm.config.num_layers
    prompts = [turns[0] for turns in read_prompts(args.prompts, args.limit)]
    every = variants(n)
    names = args.variants.split(",") if args.variants else list(every)[:7]
    unknown = [v for v in names if v not in every]
    if unknown:
        sys.exit(f"unknown variants {unknown}; known: {list(every)}")
    chosen = {v: every[v] for v in names}
    results = {}
    for label, bits in chosen.items():
        draft = build_draft_cached(lm, bits, 64, layers=sorted(bits))
        emitted = passes = 0
        t0 = time.perf_counter()
        for prompt in prompts:
            for ev in generate_subspec(lm, draft, lm.encode(prompt), args.max_new_tokens, shape=TreeShape(DEPTH, WIDTH)):
                if ev.tree_nodes:
                    emitted, passes = emitted + ev.accepted + 1, passes + 1
        results[label] = {"bits": {str(i): b for i, b in sorted(bits.items())}, "tau": round(emitted / passes, 3),
                          "passes": passes, "seconds": round(time.perf_counter() - t0, 1)}
        print(f"{label:18} tau {results[label]['tau']:6.2f} over {passes} passes", flush=True)

    # The planner's miss model m = floor + slope * e, calibrated on this run's all-4-bit (e = 1) and
    # all-8-bit (e = SUBSTITUTE_ERROR[8]) drafts; then each mixed draft's tau as the depth-weighted
    # (linear, the planner's) and the unweighted mean error predict it.
    if "all 4-bit" in results and "all 8-bit" in results:
        m4, m8 = miss_of_tau(results["all 4-bit"]["tau"]), miss_of_tau(results["all 8-bit"]["tau"])
        slope = (m4 - m8) / (1 - SUBSTITUTE_ERROR[8])
        floor = m4 - slope
        for label, bits in chosen.items():
            for key, power in (("predicted_depth_weighted", 1), ("predicted_unweighted", 0)):
                results[label][key] = round(tau_of_miss(floor + slope * error(bits, n, power)), 1)
    setup = {"model": name, "prompts": args.prompts, "limit": args.limit, "max_new_tokens": args.max_new_tokens,
             "depth": DEPTH, "topk": WIDTH, "group_size": 64, "greedy": True, "layers": n, "dtype": "float32"}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"setup": setup, "results": results}, f, indent=2)
    for label, r in results.items():
        if "predicted_depth_weighted" in r:
            print(f"{label:18} measured {r['tau']:6.2f}  depth-weighted {r['predicted_depth_weighted']:5.1f}  "
                  f"unweighted {r['predicted_unweighted']:5.1f}")


if __name__ == "__main__":
    main()
