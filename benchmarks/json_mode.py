"""JSON mode's cost and acceptance, side by side on the default model: for each prompt, plain decoding free and
in JSON mode (time per token: the constraint's overhead), and SubSpec free and in JSON mode (tau, and whether
its answer equals plain decoding's), with how many JSON-mode answers parse as a JSON object.

    .venv/bin/python benchmarks/json_mode.py --out benchmarks/results/json_mode_cpu.json

Runs alternate (free, JSON) per prompt, so drift on a noisy machine hits both alike. Its prompts are its
own (asking for JSON, as a JSON-mode user does).
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
    "Describe a cat as a JSON object with keys name, age and color.",
    "Give the capital cities of France, Italy and Spain as JSON.",
    "Return a JSON object with a list of three fruits and their colors.",
    "Write a JSON object describing a book: title, author, year, genres.",
    "As JSON: the planets closest to the sun, with their order.",
    "Output a JSON object for a user profile with username, email and an address object.",
]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--depth", type=int, default=16)
    p.add_argument("--topk", type=int, default=4)
    p.add_argument("--limit", type=int, default=len(PROMPTS))
    p.add_argument("--out", type=Path)
    args = p.parse_args()

    from engine.generate import generate_plain
    from engine.sampling import SamplingParams
    from engine.speculative import TreeShape, generate_subspec

    lm = default_model.load()
    draft = default_model.draft(lm)
    shape = TreeShape(args.depth, args.topk)
    rows = []
    for prompt in PROMPTS[:args.limit]:
        ids = lm.encode(prompt)
        row = {"prompt": prompt}
        for mode, sampling in (("free", SamplingParams()), ("json", SamplingParams(json=True))):
            plain, t_plain = default_model.timed(generate_plain(lm, ids, args.max_new_tokens, sampling), ids)
            spec, t_spec = default_model.timed(generate_subspec(lm, draft, ids, args.max_new_tokens, sampling, shape=shape), ids)
            try:
                parses = isinstance(json.loads(plain.text), dict)
            except ValueError:
                parses = False
            row[mode] = {"tokens": plain.new_tokens, "plain_ms_per_token": 1e3 * t_plain / max(plain.new_tokens, 1),
                         "subspec_tau": spec.tau, "subspec_equal": spec.token_ids == plain.token_ids,
                         "json_object": parses, "finish_reason": plain.finish_reason, "text": plain.text}
        rows.append(row)
        print(f"{prompt[:50]:50s} free tau {row['free']['subspec_tau']:5.2f} json tau {row['json']['subspec_tau']:5.2f}"
              f" | ms/token free {row['free']['plain_ms_per_token']:6.1f} json {row['json']['plain_ms_per_token']:6.1f}"
              f" | JSON object: free {row['free']['json_object']} json {row['json']['json_object']}", flush=True)

    def median(mode, key):
        return statistics.median(r[mode][key] for r in rows)

    summary = {
        "prompts": len(rows), "max_new_tokens": args.max_new_tokens, "shape": shape.label,
        "json_objects": {m: sum(r[m]["json_object"] for r in rows) for m in ("free", "json")},
        "subspec_equal_plain": {m: sum(r[m]["subspec_equal"] for r in rows) for m in ("free", "json")},
        "median_tau": {m: median(m, "subspec_tau") for m in ("free", "json")},
        "median_plain_ms_per_token": {m: median(m, "plain_ms_per_token") for m in ("free", "json")},
        "plain_time_ratio_json_over_free": statistics.median(
            r["json"]["plain_ms_per_token"] / r["free"]["plain_ms_per_token"] for r in rows),
    }
    print(json.dumps(summary, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"summary": summary, "rows": rows}, indent=2, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
