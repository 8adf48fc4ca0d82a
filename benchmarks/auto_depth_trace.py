"""Auto depth against fixed depths under a GPU's timings, with a real draft's acceptance (trace-driven).

A GPU cannot be had in every session, but what auto depth does there depends only on two things: how many
draft tokens the target accepts from each position of an answer, and what a draft step and a verify pass
cost. The first is measured here on a real model (SmolLM2 and its 4-bit g64 substitute draft, greedy): for
every position p of each plain-decoded answer, the draft grows a depth-D, width-K beam tree from p, and A(p)
is how many levels of it follow the target's own continuation -- exactly what the verification walk accepts
there (a depth-d beam tree is the first d levels of the depth-D one, so a depth-d pass accepts min(A(p), d)).
The second comes from the command line: `--timings NAME=STEP_MS:VERIFY_MS` (a draft step, a verify pass;
verify is flat in tree size on an offloading GPU, where the pass waits for streamed weights).

Each policy then replays the answers: fixed depth D (accept min(A(p), D), emit that plus the bonus token, move
on), auto depth (engine.depth_control, fed the simulated times), and plain decoding. The output is the
predicted tok/s of each, side by side for the same traces.

    .venv/bin/python benchmarks/auto_depth_trace.py --prompts ../shared/benchmarks/mt_bench.jsonl --limit 6 \\
        --max-new-tokens 64 --timings h100-dequantized=18.95:231 --timings fused-assumed=2.5:231

The h100-dequantized numbers are the measured ones of benchmarks/results/gpu_check_h100.json; any other
timing set is an assumption and is named as one in the output. After a device session has measured new
step times, replay the saved traces under them in seconds, without the model:

    .venv/bin/python benchmarks/auto_depth_trace.py --traces benchmarks/results/auto_depth_trace.json \
        --timings h100-fused=STEP_MS:VERIFY_MS --out /tmp/replay.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from engine import store  # noqa: E402
from engine.bench import read_prompts  # noqa: E402
from engine.depth_control import DepthControl  # noqa: E402
from engine.generate import decode_mask, generate_plain, prefill  # noqa: E402
from engine.loading import load_model  # noqa: E402
from engine.speculative import TreeShape, grow_tree  # noqa: E402


def acceptance_trace(lm, draft, prompt_ids: list[int], answer: list[int], shape: TreeShape) -> list[int]:
    """A(p) for p = 0 .. len(answer) - 2: levels of the draft tree grown from answer[p] that follow answer."""
    target = lm.decoder
    cache = target.new_cache(len(prompt_ids) + len(answer) + shape.grown + 1)
    prefill(target, cache, prompt_ids)
    trace = []
    for p in range(len(answer) - 1):
        root = torch.tensor([answer[p]])
        tree = grow_tree(draft, cache, root, shape, shape.depth, [0.0])
        tokens, parents = tree.tokens[: tree.size].tolist(), tree.parents[: tree.size].tolist()
        children = {(parents[i], tokens[i]): i for i in range(1, tree.size)}
        node, accepted = 0, 0
        while p + 1 + accepted < len(answer) and (node := children.get((node, answer[p + 1 + accepted]), -1)) >= 0:
            accepted += 1
        trace.append(accepted)
        # The target's own pass over answer[p] restores the KV row the tree overwrote, then commits it.
        pos = cache.length
        target(root, torch.tensor([pos]), cache, pos, decode_mask(target, pos))
        cache.commit(pos + 1)
    return trace


def replay(traces: list[list[int]], choose, step_ms: float, verify_ms: float, observe=None) -> dict:
    """Tokens and time of a depth policy over the traces (each answer from its first decoded token on)."""
    tokens = passes = 0
    ms = depth_sum = 0.0
    for trace in traces:
        p = 0
        while p < len(trace):
            depth = min(choose(), len(trace) - p)
            accepted = min(trace[p], depth)
            t_draft = depth * step_ms
            if observe:
                observe(depth, accepted, t_draft, verify_ms)
            tokens += accepted + 1
            ms += t_draft + verify_ms
            passes += 1
            depth_sum += depth
            p += accepted + 1
    return {"tokens": tokens, "passes": passes, "tau": round(tokens / passes, 3),
            "mean_depth": round(depth_sum / passes, 2), "tokens_per_s": round(tokens / ms * 1e3, 3)}


def decode_traces(args) -> list[list[int]]:
    if args.model == store.DEFAULT_MODEL:
        store.ensure_default_model(progress=lambda _m: None)
    lm = load_model(store.resolve_model(args.model)[0], dtype="float32", device="cpu")
    draft = lm.build_draft(4, 64)
    shape = TreeShape(args.depth, args.topk)
    traces = []
    for n, turns in enumerate(read_prompts(args.prompts, args.limit), 1):
        ids = lm.encode(turns[0])
        answer = [t for ev in generate_plain(lm, ids, args.max_new_tokens) for t in ev.token_ids]
        traces.append(acceptance_trace(lm, draft, ids, answer, shape))
        print(f"prompt {n}: {len(answer)} tokens, mean A(p) {sum(traces[-1]) / max(len(traces[-1]), 1):.2f}",
              file=sys.stderr, flush=True)
    return traces


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=store.DEFAULT_MODEL)
    ap.add_argument("--prompts", help="prompt set to decode and trace (or --traces)")
    ap.add_argument("--traces", help="replay the traces saved in an earlier run's JSON instead of decoding")
    ap.add_argument("--limit", type=int, default=6)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--depth", type=int, default=48)
    ap.add_argument("--topk", type=int, default=6)
    ap.add_argument("--fixed", default="4,8,16,32,48", help="fixed depths to compare")
    ap.add_argument("--timings", action="append", default=[], help="NAME=STEP_MS:VERIFY_MS")
    ap.add_argument("--timings-from", action="append", default=[], metavar="GPU_CHECK_JSON",
                    help="the draft step and verify times a gpu_check.py run measured")
    ap.add_argument("--out", default="benchmarks/results/auto_depth_trace.json")
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    t0 = time.time()

    if args.traces:
        saved = json.loads(Path(args.traces).read_text())
        traces = saved["traces"]
        for key in ("model", "prompts", "limit", "max_new_tokens", "depth", "topk"):
            setattr(args, key, saved["setup"][key])
    elif args.prompts:
        traces = decode_traces(args)
    else:
        ap.error("give --prompts (decode and trace) or --traces (replay a saved run)")

    timings = [(name, *(float(x) for x in times.split(":")))
               for name, _, times in (spec.partition("=") for spec in args.timings)]
    for path in args.timings_from:
        check = json.loads(Path(path).read_text())
        name = f"{Path(path).stem} ({check['device'] or 'cpu'}, measured)"
        timings.append((name, check["draft_step_ms"], check["subspec_iteration"]["verify_s"] * 1e3))
    if not timings:
        ap.error("give --timings NAME=STEP_MS:VERIFY_MS or --timings-from GPU_CHECK_JSON")
    results = {}
    for name, step_ms, verify_ms in timings:
        rows = {"plain": replay(traces, lambda: 0, step_ms, verify_ms)}
        for d in (int(x) for x in args.fixed.split(",")):
            rows[f"D{d} K{args.topk}"] = replay(traces, lambda d=d: d, step_ms, verify_ms)
        control = DepthControl(args.depth, args.topk)
        rows[f"auto D<={args.depth} K{args.topk}"] = replay(
            traces, lambda: control.choose().depth, step_ms, verify_ms,
            observe=lambda d, a, td, tv: control.observe(d, a, control.nodes(d), td, tv, td + tv))
        best_fixed = max((r for k, r in rows.items() if k.startswith("D")), key=lambda r: r["tokens_per_s"])
        for r in rows.values():
            r["vs_plain"] = round(r["tokens_per_s"] / rows["plain"]["tokens_per_s"], 3)
            r["vs_best_fixed"] = round(r["tokens_per_s"] / best_fixed["tokens_per_s"], 3)
        results[name] = {"draft_step_ms": step_ms, "verify_ms": verify_ms, "policies": rows}
        print(f"\n{name}: draft step {step_ms} ms, verify {verify_ms} ms")
        print(f"{'policy':16} {'tau':>7} {'depth':>6} {'tok/s':>8} {'vs plain':>9} {'vs best fixed':>14}")
        for k, r in rows.items():
            print(f"{k:16} {r['tau']:7.2f} {r['mean_depth']:6.1f} {r['tokens_per_s']:8.2f} {r['vs_plain']:8.2f}x "
                  f"{r['vs_best_fixed']:13.2f}x")
    out = {"setup": {"model": args.model, "prompts": args.prompts, "limit": args.limit,
                     "max_new_tokens": args.max_new_tokens, "depth": args.depth, "topk": args.topk,
                     "substitute_bits": 4, "group_size": 64, "positions": sum(len(t) for t in traces),
                     "mean_acceptance": round(sum(map(sum, traces)) / max(sum(map(len, traces)), 1), 3),
                     "wall_s": round(time.time() - t0, 1)},
           "traces": traces, "results": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"\nwritten {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
