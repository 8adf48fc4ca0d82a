"""Penalties under SubSpec, measured side by side in one run on the default model (greedy, 4-bit g64 draft,
depth 48, width 6): for each penalty setting, plain decoding's speed (what penalizing costs), and SubSpec's
acceptance (tau) with the draft penalized along each node's path as the target is (engine.speculative
grow_tree's `history`) against a draft left unpenalized. Both SubSpec answers must equal plain decoding's.

    .venv/bin/python benchmarks/penalties.py --prompts ../shared/benchmarks/mt_bench.jsonl --limit 5 \
        --max-new-tokens 64 --out benchmarks/results/penalties_cpu.json

About 10 minutes on 2 CPU cores (the 4-bit draft is slow on a CPU; only tau and equality matter there).
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from engine import speculative  # noqa: E402
from engine.bench import read_prompts  # noqa: E402
from engine.convert import build_draft_cached  # noqa: E402
from engine.generate import generate_plain  # noqa: E402
from engine.loading import load_model  # noqa: E402
from engine.sampling import SamplingParams  # noqa: E402
from engine.speculative import TreeShape, generate_subspec  # noqa: E402
from engine.store import DEFAULT_MODEL, resolve_model  # noqa: E402

SETTINGS = {
    "none": SamplingParams(),
    "repetition 1.1": SamplingParams(repetition_penalty=1.1),
    "repetition 1.3": SamplingParams(repetition_penalty=1.3),
    "presence 0.5 + frequency 0.5": SamplingParams(presence_penalty=0.5, frequency_penalty=0.5),
    "repetition 1.3 over the last 64": SamplingParams(repetition_penalty=1.3, penalty_last_n=64),  # the chat's
}


def run(events) -> tuple[list[int], int, int, float]:
    """Tokens, target passes after the prefill, draft tokens accepted, decode seconds."""
    tokens, passes, accepted, t0, t_first = [], 0, 0, time.perf_counter(), None
    for ev in events:
        tokens += ev.token_ids
        if ev.iteration == 0:
            t_first = time.perf_counter()
        else:
            passes += 1
            accepted += ev.accepted
    return tokens, passes, accepted, time.perf_counter() - (t_first or t0)


def unpenalized_draft():
    """grow_tree without the answer's history: the draft guesses the unpenalized target."""
    grow = speculative.grow_tree
    return lambda *a, history=None, **k: grow(*a, **k)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--prompts", required=True)
    p.add_argument("--limit", type=int, default=5)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--settings", help="comma-separated names from: " + "; ".join(SETTINGS))
    p.add_argument("--out")
    args = p.parse_args()
    names = args.settings.split(",") if args.settings else list(SETTINGS)
    folder, name = resolve_model(args.model)
    lm = load_model(folder, dtype="float32", device="cpu", name=name)
    draft = build_draft_cached(lm, 4, 64)
    prompts = [lm.encode(turns[0]) for turns in read_prompts(args.prompts, args.limit)]
    shape = TreeShape(48, 6)
    rows = []
    for setting in names:
        params = SETTINGS[setting]
        row = {"setting": setting, "plain_s": 0.0, "plain_tokens": 0, "identical": 0, "identical_blind": 0,
               "passes": 0, "accepted": 0, "passes_blind": 0, "accepted_blind": 0, "repeats": 0, "tokens": 0}
        for ids in prompts:
            plain, _p, _a, seconds = run(generate_plain(lm, ids, args.max_new_tokens, params))
            row["plain_s"] += seconds
            row["plain_tokens"] += len(plain) - 1  # the prefill's token is not a decode step
            row["tokens"] += len(plain)
            row["repeats"] += len(plain) - len(set(plain))
            spec, passes, accepted, _s = run(generate_subspec(lm, draft, ids, args.max_new_tokens, params,
                                                              shape=shape))
            row["identical"] += spec == plain
            row["passes"] += passes
            row["accepted"] += accepted
            grow, speculative.grow_tree = speculative.grow_tree, unpenalized_draft()
            try:
                blind, passes, accepted, _s = run(generate_subspec(lm, draft, ids, args.max_new_tokens, params,
                                                                   shape=shape))
            finally:
                speculative.grow_tree = grow
            row["identical_blind"] += blind == plain
            row["passes_blind"] += passes
            row["accepted_blind"] += accepted
        row["plain_tok_s"] = round(row["plain_tokens"] / row["plain_s"], 2)
        # tau: tokens a target pass emits, the bonus included (accepted draft tokens + 1 per pass)
        row["tau"] = round((row["accepted"] + row["passes"]) / max(row["passes"], 1), 2)
        row["tau_blind"] = round((row["accepted_blind"] + row["passes_blind"]) / max(row["passes_blind"], 1), 2)
        row["distinct_share"] = round(1 - row["repeats"] / max(row["tokens"], 1), 3)
        rows.append(row)
        print(json.dumps(row), flush=True)
    base = next((r for r in rows if r["setting"] == "none"), None)
    print("\n| penalties | plain tok/s | vs none | distinct tokens | tau, draft penalized | tau, draft not "
          "| identical to plain |\n|---|---|---|---|---|---|---|")
    for r in rows:
        rel = f"{r['plain_tok_s'] / base['plain_tok_s']:.2f}x" if base else "-"
        print(f"| {r['setting']} | {r['plain_tok_s']} | {rel} | {r['distinct_share']:.0%} | {r['tau']} | "
              f"{r['tau_blind']} | {r['identical']}/{len(prompts)}, {r['identical_blind']}/{len(prompts)} |")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump({"setup": {"model": lm.name, "prompts": args.prompts, "limit": args.limit,
                                 "max_new_tokens": args.max_new_tokens, "depth": 48, "width": 6,
                                 "substitute_bits": 4, "group_size": 64, "device": "cpu"},
                       "results": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
