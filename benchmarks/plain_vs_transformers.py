"""Our plain (target-only) decoding against transformers' `generate` on SmolLM2, side by side in one run.

Both decode greedily in float32 on the same machine, alternating prompt by prompt so that machine noise
hits both alike; both produce the same tokens (the test suite checks that), so tokens/s compare directly.

    .venv/bin/python benchmarks/plain_vs_transformers.py [--max-new-tokens 64] [--repeats 3]
"""

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from engine.events import summarize  # noqa: E402
from engine.generate import generate_plain  # noqa: E402
from engine.loading import load_model  # noqa: E402
from engine.store import resolve_model  # noqa: E402

PROMPTS = [
    "Write a short story about a lighthouse keeper.",
    "Explain how photosynthesis works.",
    "Give me five tips for learning a new language.",
    "Describe the water cycle to a child.",
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="SmolLM2-135M-Instruct")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json-out")
    args = ap.parse_args()

    from transformers import AutoModelForCausalLM

    folder, name = resolve_model(args.model)
    lm = load_model(folder, dtype="float32", device="cpu", name=name)
    ref = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    ours_tps, theirs_tps, same = [], [], 0
    for r in range(args.repeats):
        for prompt in PROMPTS:
            ids = lm.encode(prompt)
            t0 = time.perf_counter()
            res = summarize(generate_plain(lm, ids, args.max_new_tokens), len(ids), "vanilla")
            ours_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            with torch.no_grad():
                out = ref.generate(torch.tensor([ids]), max_new_tokens=args.max_new_tokens, do_sample=False)
            theirs_s = time.perf_counter() - t0
            theirs = [t for t in out[0, len(ids):].tolist() if t not in lm.eos_token_ids()]
            same += list(res.token_ids) == theirs
            # Whole-request rate (prefill included) for both, over the tokens each produced.
            ours_tps.append(len(res.token_ids) / ours_s)
            theirs_tps.append(len(theirs) / theirs_s)
    result = {
        "model": name, "max_new_tokens": args.max_new_tokens, "runs": len(ours_tps),
        "ours_tokens_per_s": round(statistics.median(ours_tps), 2),
        "transformers_tokens_per_s": round(statistics.median(theirs_tps), 2),
        "ratio": round(statistics.median(o / t for o, t in zip(ours_tps, theirs_tps)), 3),
        "identical_outputs": f"{same}/{len(ours_tps)}", "torch_threads": torch.get_num_threads(),
    }
    print(json.dumps(result, indent=2))
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
