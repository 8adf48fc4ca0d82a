"""A long prompt's prefill under offloading, side by side on the default model: a chunk per forward (every
streamed layer crosses the link once per 256 tokens; engine.generate.prefill's by_pass=False) and in passes
of the streamed layers (engine.model.Decoder.prefill_pass: once per pass), alternating on one loaded model,
best of --rounds each, the logits checked identical. Then what the planner predicts for the same change on
GPUs (time to first token of a 2,048-token prompt).

    .venv/bin/python benchmarks/prefill_passes.py --out benchmarks/results/prefill_passes_cpu.json

The prompt is this repository's README, pasted as a document to summarize, cut to each length. On a CPU the
"link" is a memcpy, so the bytes streamed are the measure that carries over to a GPU; the time saved here is
small next to the CPU's compute. The planner's numbers are for an RTX 4090-like card on PCIe 4.0 x16.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import default_model  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def prompt_of(lm, tokens: int) -> list[int]:
    """A chat prompt of exactly `tokens` tokens: the README as a pasted document, cut to fit."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    frame = lm.encode_messages([{"role": "user", "content": "Summarize this document:\n\n"}])
    body = lm.encode(text, chat=False)[: tokens - len(frame)]
    return lm.encode_messages([{"role": "user", "content": "Summarize this document:\n\n"
                                + lm.tokenizer.decode(body)}])[:tokens]


def planned(vram_gb: float, name: str) -> dict:
    """The planner's prefill for `name` under a `vram_gb` cap: tokens a pass and predicted time to first
    token for a 2048-token prompt, in passes and a chunk per pass (its reason sentence says both)."""
    sys.path.insert(0, str(ROOT / "tests"))
    import real_configs
    from engine.config import ModelConfig
    from engine.planner import PREFILL_CHUNK, _Layout, _Speeds, make_plan, t_prefill

    config = ModelConfig.from_dict(getattr(real_configs, name))
    profile = {"gpus": [{"total_bytes": 24 << 30, "free_bytes": int(23.6 * (1 << 30)), "name": "RTX 4090-like",
                         "pcie": {"gen_current": 4, "width_current": 16, "gen_max": 4, "width_max": 16}}],
               "cuda": {"available": True, "h2d_bandwidth_gbps": None, "matmul_tflops": None},
               "ram": {"total_bytes": 128 << 30, "available_bytes": 120 << 30}}
    plan = make_plan(config, profile, vram_gb=vram_gb)
    if not plan.offloaded_layers:
        return {"model": name, "vram_gb": vram_gb, "streamed_layers": 0}
    layout = _Layout(plan.resident_layers, plan.offloaded_layers, tuple(b for b in plan.substitute_bits if b),
                     plan.kv_length, plan.slots, plan.nodes, plan.prefill_pass_tokens)
    speeds = _Speeds(25.0, 1000.0, 50.0)  # the planner's defaults for this profile (nothing measured)
    tokens = min(2048, plan.kv_length)
    return {"model": name, "vram_gb": vram_gb, "streamed_layers": plan.offloaded_layers,
            "pass_tokens": plan.prefill_pass_tokens, "prompt_tokens": tokens,
            "predicted_ttft_chunked_s": round(t_prefill(config, layout, tokens, speeds, 2, PREFILL_CHUNK), 2),
            "predicted_ttft_passes_s": round(t_prefill(config, layout, tokens, speeds, 2,
                                                       plan.prefill_pass_tokens), 2)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lengths", default="512,2048,4096", help="prompt tokens, comma-separated")
    p.add_argument("--rounds", type=int, default=2, help="runs of each, alternating; the best is reported")
    p.add_argument("--resident-layers", type=int, default=10, help="the others stream (default: 20 of 30)")
    p.add_argument("--out", type=Path)
    args = p.parse_args()

    import torch

    from engine.generate import generate_plain, prefill, streamed_bytes
    from engine.planner import PREFILL_CHUNK

    lm = default_model.load(resident_layers=args.resident_layers)
    streamer = lm.decoder.streamer
    for _ in generate_plain(lm, prompt_of(lm, 300), 2):
        pass  # a cold first pass would make whichever run goes first look slower
    rows = []
    for length in (int(x) for x in args.lengths.split(",")):
        ids = prompt_of(lm, length)
        best, moved, logits = {}, {}, {}
        for _ in range(args.rounds):
            # chunked: a chunk per forward (Decoder.forward), as before passes; passes: the default
            for kind in ("chunked", "passes"):
                cache = lm.decoder.new_cache(len(ids))
                before = streamed_bytes(lm.decoder)
                t0 = time.perf_counter()
                logits[kind] = prefill(lm.decoder, cache, ids, PREFILL_CHUNK, by_pass=kind == "passes")
                best[kind] = min(best.get(kind, float("inf")), time.perf_counter() - t0)
                moved[kind] = streamed_bytes(lm.decoder) - before
        row = {"prompt_tokens": len(ids), "chunked_s": round(best["chunked"], 3), "passes_s": round(best["passes"], 3),
               "chunked_gb_streamed": round(moved["chunked"] / 1e9, 3),
               "passes_gb_streamed": round(moved["passes"] / 1e9, 3),
               "time_ratio": round(best["chunked"] / best["passes"], 3),
               "same_first_token": int(logits["chunked"].argmax()) == int(logits["passes"].argmax()),
               "identical_logits": bool(torch.equal(logits["chunked"], logits["passes"]))}
        rows.append(row)
        print(json.dumps(row), flush=True)
    plans = [planned(gb, name) for name, gb in (("QWEN25_7B", 8), ("QWEN25_7B", 12), ("LLAMA_31_8B", 8),
                                                ("QWEN25_14B", 16), ("QWEN25_32B", 24))]
    for row in plans:
        print(json.dumps(row), flush=True)
    result = {"model": lm.name, "dtype": "float32", "device": "cpu",
              "streamed_layers": len(lm.offloaded_layers), "layers": lm.config.num_layers,
              "streamed_bytes_per_pass": streamer.layer_bytes * len(lm.offloaded_layers),
              "rounds": args.rounds, "measured": rows, "planner_rtx4090_pcie4": plans}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
