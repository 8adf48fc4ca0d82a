"""Log-probabilities' cost and agreement, side by side on the default model: for each prompt, plain decoding and
SubSpec with and without `logprobs` (20 alternatives, OpenAI's most), timed per token; the tokens must be the
same with and without them, and SubSpec's log-probabilities (read from the tree pass's rows of the accepted
path) are compared with plain decoding's (one-token passes), over the tokens the two have in common: the
largest difference is rounding. (In bfloat16 the two ways round differently, and on a near tie their tokens
can part: `same_tokens` counts the prompts where they did not.)

    .venv/bin/python benchmarks/logprobs.py --out benchmarks/results/logprobs_cpu.json
    .venv/bin/python benchmarks/logprobs.py --dtype bfloat16 --out benchmarks/results/logprobs_bf16_cpu.json

The order within a prompt alternates (with logprobs first on odd prompts), so drift on a noisy machine hits
both alike. Its prompts are its own.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import default_model  # noqa: E402

PROMPTS = [
    "Why is the sky blue?",
    "Write a haiku about autumn.",
    "List three uses of a paperclip.",
    "What is the capital of Japan, and what is it known for?",
    "Explain what a prime number is to a child.",
    "Give me a short recipe for pancakes.",
]


def timed(gen, ids):
    """(result, ms per token)"""
    result, seconds = default_model.timed(gen, ids)
    return result, 1e3 * seconds / max(result.new_tokens, 1)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--depth", type=int, default=16)
    p.add_argument("--topk", type=int, default=4)
    p.add_argument("--top", type=int, default=20, help="alternatives per token (0 to 20)")
    p.add_argument("--limit", type=int, default=len(PROMPTS))
    p.add_argument("--dtype", default="float32", help="float32 (default) or bfloat16, as on a GPU")
    p.add_argument("--out", type=Path)
    args = p.parse_args()

    from engine.generate import generate_plain
    from engine.sampling import SamplingParams
    from engine.speculative import TreeShape, generate_subspec

    lm = default_model.load(args.dtype)
    draft = default_model.draft(lm)
    shape = TreeShape(args.depth, args.topk)
    n = args.max_new_tokens
    rows = []
    for i, prompt in enumerate(PROMPTS[:args.limit]):
        ids = lm.encode(prompt)
        order = [("without", SamplingParams()), ("with", SamplingParams(logprobs=args.top))]
        if i % 2:
            order.reverse()
        out = {}
        for name, sampling in order:
            plain, plain_ms = timed(generate_plain(lm, ids, n, sampling), ids)
            spec, spec_ms = timed(generate_subspec(lm, draft, ids, n, sampling, shape=shape), ids)
            out[name] = (plain, plain_ms, spec, spec_ms)
        plain, plain_ms, spec, spec_ms = out["with"]
        free_plain, free_plain_ms, free_spec, free_spec_ms = out["without"]
        # Asking for log-probabilities must not change a token; SubSpec's tokens are plain decoding's (in
        # half precision a tree pass and a one-token pass round differently, and on a near tie the two
        # can part: then only the tokens before they part are compared).
        assert plain.token_ids == free_plain.token_ids and spec.token_ids == free_spec.token_ids
        same = spec.token_ids == plain.token_ids
        common = next((k for k, (a, b) in enumerate(zip(spec.token_ids, plain.token_ids)) if a != b),
                      min(len(spec.token_ids), len(plain.token_ids)))
        pairs = list(zip(spec.logprobs[:common], plain.logprobs[:common]))
        diff = max((abs(a.logprob - b.logprob) for a, b in pairs), default=0.0)
        top_diff = max((abs(x - y) for a, b in pairs for (_, x), (_, y) in zip(a.top, b.top)), default=0.0)
        row = {"prompt": prompt, "tokens": plain.new_tokens, "same_tokens": same, "common_tokens": common,
               "subspec_tau": spec.tau,
               "max_abs_logprob_diff": diff, "max_abs_top_diff": top_diff,
               "plain_ms_per_token": {"without": free_plain_ms, "with": plain_ms},
               "subspec_ms_per_token": {"without": free_spec_ms, "with": spec_ms}}
        rows.append(row)
        print(f"{prompt[:40]:40s} same {same} ({common}) tau {spec.tau:5.2f} max|d| {diff:.2e} top {top_diff:.2e}"
              f" | plain ms/token {free_plain_ms:6.1f} -> {plain_ms:6.1f}"
              f" | subspec {free_spec_ms:6.1f} -> {spec_ms:6.1f}", flush=True)

    def ratio(key):
        return statistics.median(r[key]["with"] / r[key]["without"] for r in rows)

    summary = {
        "prompts": len(rows), "max_new_tokens": n, "shape": shape.label, "top_logprobs": args.top,
        "dtype": args.dtype,
        "same_tokens": sum(r["same_tokens"] for r in rows),
        "first_parting_tokens": [r["common_tokens"] for r in rows if not r["same_tokens"]],
        "max_abs_logprob_diff": max(r["max_abs_logprob_diff"] for r in rows),
        "max_abs_top_diff": max(r["max_abs_top_diff"] for r in rows),
        "median_tau": statistics.median(r["subspec_tau"] for r in rows),
        "plain_time_ratio_with_over_without": ratio("plain_ms_per_token"),
        "subspec_time_ratio_with_over_without": ratio("subspec_ms_per_token"),
    }
    print(json.dumps(summary, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"summary": summary, "rows": rows}, indent=2, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
