"""Prompt caching on a multi-turn chat, side by side on the default model: each turn's time to first token and
the weights streamed for its prefill, with the last answer's KV cache kept (engine.kv_cache.PromptCache) and
without it (every turn prefills the whole conversation), the answers checked equal.

    .venv/bin/python benchmarks/prompt_cache.py --out benchmarks/results/prompt_cache_cpu.json

With --resident-layers N the other layers stream from host memory at every pass, as under offloading on a
GPU (here a CPU memcpy): a prefill moves every streamed layer once per pass (engine.model.Decoder.prefill_pass,
thousands of tokens), so a conversation shorter than a pass moves the same bytes cached or not, and the cache
saves the compute. The two runs alternate turn by turn on one loaded model. Its messages are its own.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import default_model  # noqa: E402

SYSTEM = ("You are a helpful assistant. Answer clearly and concisely, with examples where they help. "
          "If a question is ambiguous, say how you read it before you answer.")
MESSAGES = [
    "I'm planning a small vegetable garden on a balcony. What should I grow first?",
    "How often should I water tomatoes in pots during summer?",
    "What about herbs: which ones grow well together in one planter?",
    "Can you suggest a simple weekly schedule for all of this?",
    "How do I keep pests away without chemicals?",
    "Summarize the whole plan in five bullet points.",
]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--turns", type=int, default=len(MESSAGES))
    p.add_argument("--resident-layers", type=int, default=None,
                   help="stream the other layers from host memory (default: all resident)")
    p.add_argument("--out", type=Path)
    args = p.parse_args()

    from engine.generate import generate_plain
    from engine.kv_cache import PromptCache

    lm = default_model.load(resident_layers=args.resident_layers)
    warm = lm.encode_messages([{"role": "user", "content": "hi"}])
    for _ in generate_plain(lm, warm, 4):
        pass  # a cold first pass would make whichever run goes first look slower
    kept = PromptCache()
    conversation = [{"role": "system", "content": SYSTEM}]
    rows = []
    for turn, message in enumerate(MESSAGES[:args.turns]):
        conversation.append({"role": "user", "content": message})
        ids = lm.encode_messages(conversation)
        shared = 0
        while shared < min(len(kept.ids), len(ids) - 1) and kept.ids[shared] == ids[shared]:
            shared += 1
        runs = {}
        for mode in (("cached", "fresh") if turn % 2 else ("fresh", "cached")):
            t0 = time.perf_counter()
            events = generate_plain(lm, ids, args.max_new_tokens, prompt_cache=kept if mode == "cached" else None)
            first = next(events)
            ttft = time.perf_counter() - t0
            answer = list(first.token_ids) + [t for ev in events for t in ev.token_ids]
            runs[mode] = {"ttft_ms": 1e3 * ttft, "prefill_bytes_moved": first.bytes_moved, "answer": answer}
        assert runs["cached"]["answer"] == runs["fresh"]["answer"], f"turn {turn}: the answers differ"
        text = lm.tokenizer.decode(runs["fresh"]["answer"], skip_special_tokens=True)
        conversation.append({"role": "assistant", "content": text})
        row = {"turn": turn + 1, "prompt_tokens": len(ids), "reused_tokens": shared,
               "ttft_ms": {m: round(r["ttft_ms"], 1) for m, r in runs.items()},
               "prefill_bytes_moved": {m: r["prefill_bytes_moved"] for m, r in runs.items()},
               "answer_tokens": len(runs["fresh"]["answer"])}
        rows.append(row)
        print(f"turn {turn + 1}: prompt {len(ids):5d} tokens, {shared:5d} reused | ttft fresh "
              f"{row['ttft_ms']['fresh']:7.1f} ms cached {row['ttft_ms']['cached']:7.1f} ms | prefill bytes "
              f"fresh {row['prefill_bytes_moved']['fresh'] / 1e6:8.1f} MB cached "
              f"{row['prefill_bytes_moved']['cached'] / 1e6:8.1f} MB", flush=True)

    later = rows[1:] or rows  # the first turn has nothing to reuse
    summary = {
        "turns": len(rows), "max_new_tokens": args.max_new_tokens, "resident_layers": args.resident_layers,
        "layers": lm.config.num_layers, "answers_equal": True,
        "last_prompt_tokens": rows[-1]["prompt_tokens"], "last_reused_tokens": rows[-1]["reused_tokens"],
        "ttft_ms_later_turns": {m: round(sum(r["ttft_ms"][m] for r in later), 1) for m in ("fresh", "cached")},
        "ttft_ratio_fresh_over_cached_later_turns": round(
            sum(r["ttft_ms"]["fresh"] for r in later) / sum(r["ttft_ms"]["cached"] for r in later), 2),
        "prefill_bytes_later_turns": {m: sum(r["prefill_bytes_moved"][m] for r in later) for m in ("fresh", "cached")},
    }
    print(json.dumps(summary, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"summary": summary, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
