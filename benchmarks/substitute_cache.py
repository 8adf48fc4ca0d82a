"""What the substitute cache saves: building a model's draft with HQQ quantization from scratch, against
reading the same substitutes from the cache, side by side in one run (alternating, `--repeats` times),
on the default model unless told otherwise. Also checks that both drafts are identical.

    .venv/bin/python benchmarks/substitute_cache.py [--model NAME] [--bits 4] [--group-size 64]
        [--dtype float32] [--repeats 3] [--out benchmarks/results/substitute_cache_cpu.json]
"""

import argparse
import json
import os
import shutil
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from engine.convert import SubstituteCache  # noqa: E402
from engine.loading import load_model  # noqa: E402
from engine.store import DEFAULT_MODEL, resolve_model  # noqa: E402
from engine.substitute import SubstituteLinear  # noqa: E402


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out")
    args = ap.parse_args()

    folder, name = resolve_model(args.model)
    lm, load_s = timed(lambda: load_model(folder, dtype=args.dtype, device="cpu", name=name))
    cache = SubstituteCache.for_model(folder, args.bits, args.group_size, lm.dtype)
    # Start cold, so that the first cached build quantizes and writes every layer.
    shutil.rmtree(cache.folder)
    cache.folder.mkdir(parents=True)
    _, first_s = timed(lambda: lm.build_draft(args.bits, args.group_size, cache=True))
    fresh_s, cached_s = [], []
    for _ in range(args.repeats):
        fresh, t = timed(lambda: lm.build_draft(args.bits, args.group_size, cache=False))
        fresh_s.append(t)
        cached, t = timed(lambda: lm.build_draft(args.bits, args.group_size, cache=True))
        cached_s.append(t)
    same = all(torch.equal(a.weight, b.weight) for a, b in zip(fresh.modules(), cached.modules())
               if isinstance(a, SubstituteLinear))
    result = {
        "model": name, "bits": args.bits, "group_size": args.group_size, "dtype": args.dtype,
        "layers": len(lm.decoder.layers), "load_target_s": round(load_s, 3),
        "first_build_with_cache_write_s": round(first_s, 3),
        "build_without_cache_s": [round(t, 3) for t in fresh_s],
        "build_from_cache_s": [round(t, 3) for t in cached_s],
        "median_speedup": round(statistics.median(fresh_s) / statistics.median(cached_s), 2),
        "cache_bytes": cache.size_bytes, "identical_substitutes": same,
        "machine": f"{os.cpu_count()} CPUs, torch {torch.__version__}",
    }
    print(json.dumps(result, indent=2))
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
