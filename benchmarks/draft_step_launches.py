"""How many kernels one draft step launches, counted on the CPU (no GPU needed).

On a fast GPU a draft step's time is set less by the bytes its substitutes read (about 1 ms for a
Qwen2.5-7B draft at an H100's bandwidth) than by how many small kernels run one after another: even
replayed from a CUDA graph each costs a few microseconds of launch, ramp-up and drain. This census runs
one fixed-shape draft step (the one engine.draft_graph captures) of a Qwen2.5-7B-shaped model -- its head
layout (28 query / 4 KV heads), Qwen2's q/k/v biases, bf16 -- at a small width, and records every aten op
dispatched, per decoder layer; views and same-dtype casts launch nothing and are left out. The draft's
linears run here as dequantized matmuls; each is counted as the launches the fused low-bit kernel makes for
that projection at Qwen2.5-7B's real sizes on the given GPU's multiprocessor count (one, plus a split-K sum
when `pick_config` splits K). Attention is one op here; which CUDA backend takes it is not visible on a CPU.

    .venv/bin/python benchmarks/draft_step_launches.py [--out benchmarks/results] [--sms 132] [--time]
    # --time: also time that step on this CPU on a real model (SmolLM2 by default), separate vs merged
"""

from __future__ import annotations

import argparse
import collections
import inspect
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes  # noqa: E402

from engine import draft_kernels, lowbit, store  # noqa: E402
from engine.config import ModelConfig  # noqa: E402
from engine.draft_graph import DraftStep  # noqa: E402
from engine.substitute import build_draft  # noqa: E402

from benchmarks.gpu_check import QWEN25_7B, random_decoder  # noqa: E402

# The same head layout at a width the CPU builds in a second: 28 x 16 = 448 = 7 groups of 64.
NARROW = dict(QWEN25_7B, vocab_size=1024, hidden_size=448, intermediate_size=512, num_hidden_layers=2,
              head_dim=16)

# Ops that only make views, allocate, or read metadata: no kernel.
NO_KERNEL = {"view", "_unsafe_view", "reshape", "transpose", "t", "unsqueeze", "squeeze", "expand", "slice",
             "select", "as_strided", "detach", "alias", "permute", "split", "split_with_sizes", "chunk",
             "unbind", "narrow", "lift_fresh", "_reshape_alias", "empty", "empty_strided", "empty_like",
             "unflatten", "flatten", "sym_size", "sym_stride", "dim", "is_same_size"}


class Census(TorchDispatchMode):
    """Counts launching ops under the label of whatever is running (a layer index, or "outside")."""

    def __init__(self):
        super().__init__()
        self.where = "outside"
        self.ops: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        self.linear_shapes: dict[str, list[tuple]] = collections.defaultdict(list)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if name in NO_KERNEL or (name == "to" and out is args[0]):  # a cast to the same dtype: no copy
            return out
        if name == "linear":
            self.linear_shapes[self.where].append(tuple(args[1].shape))  # the weight's: which projection
        self.ops[self.where][name] += 1
        return out

    def fused(self, name: str, fn):
        """engine.draft_kernels' `fn` counted as the one kernel it launches on CUDA (here Triton's
        interpreter runs it, whose host-side copies are not the GPU's launches)."""
        def counted(*args, **kwargs):
            self.ops[self.where][name] += 1
            with _disable_current_modes():
                return fn(*args, **kwargs)
        return counted


def lowbit_launches(out_features: int, in_features: int, sms: int, rows: int, group: int = 64) -> int:
    """Kernels the fused low-bit linear launches for a 4-bit [out, in] substitute at `rows` rows."""
    w = lowbit.LowBitWeight(torch.empty(out_features // 2, in_features, dtype=torch.uint8, device="meta"),
                            torch.empty(out_features, in_features // group, device="meta"),
                            torch.empty(out_features, in_features // group, device="meta"),
                            out_features, in_features, 4, group, torch.bfloat16)
    return 1 + (lowbit.pick_config(rows, w, torch.device("meta"), sms=sms).split_k > 1)


FUSED_KERNELS = ("add_rms_norm", "silu_mul", "rotary_store", "rotary_table")


def count(merge: bool, width: int, sms: int, fused_ops: bool = False) -> dict:
    config = ModelConfig.from_dict(NARROW)
    torch.manual_seed(0)
    target = random_decoder(config, torch.device("cpu"), torch.bfloat16)
    params = inspect.signature(build_draft).parameters  # older commits (the baseline's) lack some options
    kwargs = {k: v for k, v in (("merge", merge), ("fused_ops", fused_ops)) if k in params}
    if (merge and "merge" not in kwargs) or (fused_ops and "fused_ops" not in kwargs):
        return {}
    draft = build_draft(target, 4, 64, layers=[1], fused=False, **kwargs)  # layer 0 resident, 1 substituted
    step = DraftStep(draft, target.new_cache(256), width, use_graph=False)
    census = Census()
    hooks = []
    for i, layer in enumerate(draft.layers):
        hooks.append(layer.register_forward_pre_hook(lambda m, a, i=i: setattr(census, "where", f"layer {i}")))
        hooks.append(layer.register_forward_hook(lambda m, a, o: setattr(census, "where", "outside")))
    originals = {name: getattr(draft_kernels, name) for name in FUSED_KERNELS}
    try:
        for name, fn in originals.items():
            setattr(draft_kernels, name, census.fused(name, fn))
        with census:
            step._run()
    finally:
        for name, fn in originals.items():
            setattr(draft_kernels, name, fn)
        for h in hooks:
            h.remove()

    # Each substituted projection (known by its weight's shape at the narrow width) counted as the low-bit
    # launches it makes at full size. The resident layer's linears are cuBLAS calls: one launch each.
    n, f = NARROW, QWEN25_7B
    q, kv = n["num_attention_heads"] * n["head_dim"], n["num_key_value_heads"] * n["head_dim"]
    h, i = n["hidden_size"], n["intermediate_size"]
    fd = f["hidden_size"] // f["num_attention_heads"]
    fq, fkv, fh, fi = f["num_attention_heads"] * fd, f["num_key_value_heads"] * fd, f["hidden_size"], f["intermediate_size"]
    full = {(q, h): (fq, fh), (kv, h): (fkv, fh), (h, q): (fh, fq), (i, h): (fi, fh), (h, i): (fh, fi),
            (q + 2 * kv, h): (fq + 2 * fkv, fh), (2 * i, h): (2 * fi, fh)}
    sub = census.ops["layer 1"]
    lowbit_kernels = sum(lowbit_launches(*full[s], sms=sms, rows=width) for s in census.linear_shapes["layer 1"])
    linears_narrow = len(census.linear_shapes["layer 1"])
    substituted = sum(sub.values()) - linears_narrow + lowbit_kernels
    resident = sum(census.ops["layer 0"].values())
    outside = sum(census.ops["outside"].values())
    return {"merge": merge, "fused_ops": fused_ops, "ops_substituted_layer": dict(sub), "ops_resident_layer": dict(census.ops["layer 0"]),
            "ops_outside_layers": dict(census.ops["outside"]),
            "substituted_layer_launches": substituted, "of_which_low_bit": lowbit_kernels,
            "resident_layer_launches": resident, "outside_layers_launches": outside,
            # gpu_check's split under an 8 GB cap: 1 resident layer, 27 substituted (a full 28-layer model)
            "draft_step_launches_qwen25_7b_8gb": (f["num_hidden_layers"] - 1) * substituted + resident + outside}


def time_cpu_steps(model: str, width: int, steps: int = 20, rounds: int = 5) -> dict:
    """The same fixed-shape draft step of a real model on this CPU, separate and merged, alternating rounds so
    that machine noise hits both alike (float32, dequantized substitutes: the CPU path)."""
    import statistics
    import time

    from engine.loading import load_model
    from engine.store import resolve_model

    folder, name = resolve_model(model)
    lm = load_model(folder, "float32", "cpu", name)
    drafts = {m: build_draft(lm.decoder, 4, 64, fused=False, merge=m) for m in (False, True)}
    ms = {False: [], True: []}
    for _ in range(rounds):
        for m, draft in drafts.items():
            step = DraftStep(draft, lm.decoder.new_cache(512), width, use_graph=False)
            step._run()
            t0 = time.perf_counter()
            for _ in range(steps):
                step._run()
            ms[m].append((time.perf_counter() - t0) * 1e3 / steps)
    sep, mer = statistics.median(ms[False]), statistics.median(ms[True])
    return {"model": name, "separate_ms_per_step": round(sep, 3), "merged_ms_per_step": round(mer, 3),
            "merged_over_separate": round(mer / sep, 3), "rounds": rounds, "steps_per_round": steps}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--time", action="store_true", help="also time the step on this CPU on a real model")
    ap.add_argument("--model", default=store.DEFAULT_MODEL, help="with --time: a stored model")
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--sms", type=int, default=132, help="the GPU's multiprocessor count (H100 SXM: 132)")
    ap.add_argument("--width", type=int, default=6, help="tree width K: the rows of a draft step")
    args = ap.parse_args()
    rows = [r for r in (count(False, args.width, args.sms), count(True, args.width, args.sms),
                        count(True, args.width, args.sms, fused_ops=True)) if r]
    result = {"model": "Qwen2.5-7B layout (28/4 heads, q/k/v bias) at width 448, bf16, counted on the CPU",
              "sms": args.sms, "width": args.width, "configurations": rows}
    if args.time:
        result["cpu_timing"] = time_cpu_steps(args.model, args.width)
    print(json.dumps(result, indent=2))
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "draft_step_launches.json"), "w") as f:
        json.dump(result, f, indent=2)
    for r in rows:
        print(f"merge={r['merge']} fused_ops={r.get('fused_ops', False)}: substituted layer {r['substituted_layer_launches']} launches "
              f"({r['of_which_low_bit']} low-bit), resident layer {r['resident_layer_launches']}, outside "
              f"{r['outside_layers_launches']}; a Qwen2.5-7B draft step under 8 GB: "
              f"{r['draft_step_launches_qwen25_7b_8gb']}")


if __name__ == "__main__":
    main()
