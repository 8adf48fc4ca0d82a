"""What streaming costs where it can be measured without a GPU: the same decode steps on SmolLM2 with
every layer resident and with N layers streamed through the slots (on a CPU the "transfer" is a memcpy
into the slot), side by side in one run, alternating so that machine noise hits both alike.

    .venv/bin/python benchmarks/offload_overhead_cpu.py [--resident-layers 0] [--steps 32] [--repeats 3]
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

from engine.generate import decode_mask, prefill, streamed_bytes  # noqa: E402
from engine.loading import load_model  # noqa: E402
from engine.store import resolve_model  # noqa: E402


def decode_ms(lm, ids, steps):
    d = lm.decoder
    cache = d.new_cache(len(ids) + steps + 1)
    logits = prefill(d, cache, ids)
    token = logits.argmax(-1)
    t0 = time.perf_counter()
    for _ in range(steps):
        pos = cache.length
        logits = d(token, torch.tensor([pos]), cache, pos, decode_mask(d, pos))
        cache.commit(pos + 1)
        token = logits.argmax(-1)
    return (time.perf_counter() - t0) * 1e3 / steps


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="SmolLM2-135M-Instruct")
    ap.add_argument("--resident-layers", type=int, default=0)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json-out")
    args = ap.parse_args()
    folder, name = resolve_model(args.model)
    resident = load_model(folder, "float32", "cpu", name)
    streamed = load_model(folder, "float32", "cpu", name, resident_layers=args.resident_layers)
    ids = resident.encode("Explain how a refrigerator works.")
    a, b = [], []
    for _ in range(args.repeats):
        a.append(decode_ms(resident, ids, args.steps))
        before = streamed_bytes(streamed.decoder)
        b.append(decode_ms(streamed, ids, args.steps))
    per_pass = (streamed_bytes(streamed.decoder) - before) / (args.steps + 1)  # prefill's pass included
    out = {"model": name, "streamed_layers": len(streamed.offloaded_layers), "steps": args.steps,
           "resident_ms_per_token": round(statistics.median(a), 2),
           "streamed_ms_per_token": round(statistics.median(b), 2),
           "ratio": round(statistics.median(y / x for x, y in zip(a, b)), 3),
           "streamed_mb_per_pass": round(per_pass / 1e6, 1), "torch_threads": torch.get_num_threads()}
    print(json.dumps(out, indent=2))
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
