"""SubSpec's acceptance when sampling, beside greedy, on the default model (4-bit g64 draft, depth 48,
width 6): tau (tokens a target pass emits, the bonus included) for each setting, and whether every
seeded SubSpec answer equals plain decoding's with the same seed (it must: draws are keyed by position).

    .venv/bin/python benchmarks/sampling_acceptance.py --prompts ../shared/benchmarks/mt_bench.jsonl \
        --limit 5 --max-new-tokens 64 --out benchmarks/results/sampling_acceptance_cpu.json

Several minutes on 2 CPU cores (the 4-bit draft is slow on a CPU; only tau and equality matter here).
Seeds are fixed (1000 + the prompt's index), so a run is repeatable and two commits compare exactly.
"""

import argparse
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from engine.bench import read_prompts  # noqa: E402
from engine.convert import build_draft_cached  # noqa: E402
from engine.generate import generate_plain  # noqa: E402
from engine.loading import load_model  # noqa: E402
from engine.sampling import SamplingParams  # noqa: E402
from engine.speculative import TreeShape, generate_subspec  # noqa: E402
from engine.store import DEFAULT_MODEL, resolve_model  # noqa: E402
from penalties import run  # noqa: E402  (tokens, passes, accepted, seconds of one answer's events)

# The chat's presets (app.controls.PRESETS), and a hotter one.
SETTINGS = {
    "greedy": dict(temperature=0.0),
    "balanced (T 0.7, top-p 0.9)": dict(temperature=0.7, top_p=0.9),
    "creative (T 1.0, top-p 0.95)": dict(temperature=1.0, top_p=0.95),
    "T 1.0": dict(temperature=1.0),
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--prompts", required=True)
    p.add_argument("--limit", type=int, default=5)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--depth", type=int, default=48)
    p.add_argument("--topk", type=int, default=6)
    p.add_argument("--settings", help="names separated by semicolons, from: " + "; ".join(SETTINGS))
    p.add_argument("--draft-temperatures", default=str(TreeShape.draft_temperature),
                   help="the draft's sharpening, comma-separated: each setting runs at each (a sweep)")
    p.add_argument("--out")
    args = p.parse_args()
    names = [n.strip() for n in args.settings.split(";")] if args.settings else list(SETTINGS)
    unknown = [n for n in names if n not in SETTINGS]
    if unknown:
        p.error(f"unknown settings {unknown}; known: {'; '.join(SETTINGS)}")
    folder, name = resolve_model(args.model)
    lm = load_model(folder, dtype="float32", device="cpu", name=name)
    draft = build_draft_cached(lm, 4, 64)
    prompts = [lm.encode(turns[0]) for turns in read_prompts(args.prompts, args.limit)]
    temperatures = [float(t) for t in args.draft_temperatures.split(",")]
    rows = []
    plains = {}  # (setting, prompt) -> plain decoding's tokens, the same at every draft temperature
    for setting, sharpening in ((s, t) for s in names for t in temperatures):
        shape = TreeShape(args.depth, args.topk, draft_temperature=sharpening)
        row = {"setting": setting, **SETTINGS[setting], "draft_temperature": sharpening, "identical": 0,
               "passes": 0, "accepted": 0, "tokens": 0, "subspec_s": 0.0}
        for i, ids in enumerate(prompts):
            params = SamplingParams(**SETTINGS[setting], seed=1000 + i)
            if (setting, i) not in plains:
                plains[setting, i] = run(generate_plain(lm, ids, args.max_new_tokens, params))[0]
            plain = plains[setting, i]
            spec, passes, accepted, seconds = run(generate_subspec(lm, draft, ids, args.max_new_tokens, params,
                                                                   shape=shape))
            row["identical"] += spec == plain
            row["passes"] += passes
            row["accepted"] += accepted
            row["tokens"] += len(spec)
            row["subspec_s"] += seconds
        row["tau"] = round((row["accepted"] + row["passes"]) / max(row["passes"], 1), 2)
        rows.append(row)
        print(json.dumps(row), flush=True)
    greedy = next((r["tau"] for r in rows if r["setting"] == "greedy"), None)
    print("\n| setting | draft temperature | tau | of greedy's | identical to plain |\n|---|---|---|---|---|")
    for r in rows:
        share = f"{r['tau'] / greedy:.0%}" if greedy else "-"
        print(f"| {r['setting']} | {r['draft_temperature']} | {r['tau']} | {share} | {r['identical']}/{len(prompts)} |")
    if args.out:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump({"setup": {"model": lm.name, "prompts": args.prompts, "limit": args.limit,
                                 "max_new_tokens": args.max_new_tokens, "depth": args.depth, "width": args.topk,
                                 "draft_temperatures": temperatures,
                                 "substitute_bits": 4, "group_size": 64, "device": "cpu", "commit": commit},
                       "results": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
