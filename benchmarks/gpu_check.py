"""One prepared GPU check (about 5 minutes on an H100): a Qwen2.5-7B-shaped model with random bf16 weights
made on the device, run under a software VRAM cap (default 8 GB) with the offloading runtime.

Measures: pinned host-to-device bandwidth; plain offloaded decoding (tokens/s); one SubSpec iteration at
depth 48 / width 6 split into draft, verify and overhead; transfer efficiency (offloaded bytes / (target
pass time x bandwidth)); the iteration against the transfer floor (offloaded bytes / bandwidth); and the
tokens/s predicted at the paper's tau of 28.35 (random weights give no meaningful tau of their own).
The draft's substitutes run on the fused low-bit kernel (packed 4-bit weights) where it runs (CUDA with
Triton); --dequantized-draft forces the older path (each substitute's weight dequantized once) to compare.
Which path ran is in the results. Writes JSON and a Markdown table to --out.

    python benchmarks/gpu_check.py --out benchmarks/results [--vram-gb 8] [--tiny] [--dequantized-draft]
    # --tiny: a tiny model, runs on the CPU too (a smoke run of the script)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from engine import draft_kernels, lowbit  # noqa: E402
from engine.config import ModelConfig, streamed_layers  # noqa: E402
from engine.generate import decode_mask, prefill, streamed_bytes  # noqa: E402
from engine.masks import causal_mask  # noqa: E402
from engine.model import Decoder  # noqa: E402
from engine.offload import offload  # noqa: E402
from engine.planner import PREFILL_CHUNK, mask_bytes, masks_bytes  # noqa: E402
from engine.speculative import TreeShape, grow_tree, verify  # noqa: E402
from engine.sampling import SamplingParams  # noqa: E402
from engine.substitute import build_draft, substitute_paths  # noqa: E402

QWEN25_7B = dict(model_type="qwen2", vocab_size=152064, hidden_size=3584, intermediate_size=18944,
                 num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                 max_position_embeddings=32768, rms_norm_eps=1e-6, rope_theta=1000000.0,
                 tie_word_embeddings=False, eos_token_id=151645)
TINY = dict(QWEN25_7B, vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=4,
            num_attention_heads=4, num_key_value_heads=2)
PAPER_TAU = 28.35


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def random_decoder(config: ModelConfig, device, dtype) -> Decoder:
    with torch.device("meta"):
        model = Decoder(config)
    gen = torch.Generator(device=device).manual_seed(0)
    for name, p in list(model.named_parameters()):
        owner, _, leaf = name.rpartition(".")
        module = model.get_submodule(owner)
        if leaf == "weight" and p.dim() == 1:
            t = torch.ones(p.shape, dtype=dtype, device=device)  # norms
        else:
            t = torch.randn(p.shape, generator=gen, dtype=torch.float32, device=device).mul_(0.02).to(dtype)
        setattr(module, leaf, torch.nn.Parameter(t, requires_grad=False))
    from engine.model import rope_inverse_frequencies

    model.rotary.inv_freq = rope_inverse_frequencies(config).to(device)
    return model.eval()


def layer_linear_bytes(config: ModelConfig, dtype_bytes: int) -> int:
    c = config
    q, kv = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
    return (c.hidden_size * (q + 2 * kv) + q * c.hidden_size + 3 * c.hidden_size * c.intermediate_size) * dtype_bytes


def resident_for_cap(config: ModelConfig, cap_bytes: int, kv_len: int, nodes: int, bits: int = 4) -> tuple[int, dict]:
    """How many full-precision layers fit beside the always-resident parts under the cap."""
    c = config
    layer = layer_linear_bytes(c, 2)
    params = layer // 2
    sub = int(params * (bits / 8 + 4 / 64))
    embed = c.vocab_size * c.hidden_size * 2 * (1 if c.tie_word_embeddings else 2)
    kv = 2 * c.num_layers * c.num_kv_heads * c.head_dim * kv_len * 2
    work = nodes * c.vocab_size * 4 + (256 << 20)
    masks = masks_bytes(c, kv_len, nodes, 2)  # the planner's: they grow with the context, as the KV does
    base = embed + kv + 2 * layer + masks + work
    r = 0
    while r < c.num_layers and base + (r + 1) * layer + (c.num_layers - r - 1) * sub <= cap_bytes:
        r += 1
    parts = {"embeddings_lm_head": embed, "kv_cache": kv, "slots": 2 * layer, "masks": masks, "workspace": work,
             "resident_layers": r * layer, "substitutes_4bit_packed": (c.num_layers - r) * sub}
    if base + (c.num_layers - r) * sub > cap_bytes:
        raise SystemExit(f"does not fit the cap: needs {(base + c.num_layers * sub) / 1e9:.2f} GB")
    return r, parts


def verify_memory(config: ModelConfig, nodes: int, committed: int, peak_bytes: int) -> dict:
    """Verification's measured peak (over what was allocated before it), beside the planner's masks for
    that pass, with and without the allowance for SDPA's padded copy (which the aligned fold should
    avoid: a peak within the smaller count plus the logits says the allowance can go), and its logits."""
    columns = committed + nodes
    return {"peak_over_allocated_bytes": peak_bytes,
            "planned_masks_bytes": mask_bytes(config, nodes, columns, 2),
            "planned_masks_without_sdpa_copy_bytes": mask_bytes(config, nodes, columns, 2, sdpa_copy=False),
            "logits_bytes": nodes * config.vocab_size * 2}  # bf16: verify keeps the model's dtype


def verify_memory_text(vm: dict | None) -> str:
    if vm is None:
        return "not measured (CPU)"
    if "error" in vm:
        return f"not measured ({vm['error']})"
    return (f"{vm['peak_over_allocated_bytes'] / 1e6:.0f} MB; {vm['planned_masks_bytes'] / 1e6:.0f} "
            f"({vm['planned_masks_without_sdpa_copy_bytes'] / 1e6:.0f}) + {vm['logits_bytes'] / 1e6:.0f} MB")


def h2d_bandwidth(device, nbytes=1 << 30, repeats=5) -> float:
    host = torch.empty(nbytes, dtype=torch.uint8).pin_memory() if device.type == "cuda" else torch.empty(nbytes, dtype=torch.uint8)
    dev = torch.empty(nbytes, dtype=torch.uint8, device=device)
    times = []
    for i in range(repeats + 2):
        sync(device)
        t0 = time.perf_counter()
        dev.copy_(host, non_blocking=True)
        sync(device)
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return nbytes / statistics.median(times) / 1e9


def device_copy_bandwidth(device, nbytes=1 << 30, repeats=5) -> float:
    """GB/s of a device-to-device copy (reads and writes counted): about what a kernel streaming weights
    from the GPU's own memory can reach."""
    if device.type != "cuda":
        nbytes = min(nbytes, 1 << 26)
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    times = []
    for i in range(repeats + 2):
        sync(device)
        t0 = time.perf_counter()
        dst.copy_(src)
        sync(device)
        if i >= 2:
            times.append(time.perf_counter() - t0)
    del src, dst
    return 2 * nbytes / statistics.median(times) / 1e9


def draft_step_bytes(draft, cache, span: int) -> dict:
    """What one draft step must read from GPU memory: its substitutes (packed), the full-precision layers
    it shares with the target, the output head, and the KV over its span."""
    from engine.substitute import _LowBitLinear

    subs = sum(m.resident_bytes for m in draft.modules() if isinstance(m, _LowBitLinear))
    resident = sum(p.numel() * p.element_size() for i, layer in enumerate(draft.layers)
                   if i not in draft.substituted_layers for p in layer.parameters())
    head = draft.output_weight.numel() * draft.output_weight.element_size()
    kv = cache.k[:, :, :, :span].numel() * cache.k.element_size() * 2
    return {"substitutes": subs, "resident_layers": resident, "head": head, "kv_span": kv,
            "total": subs + resident + head + kv}


class _NullTokenizer:
    """Random weights have no text: the generation loops only need decode() for stop strings."""

    eos_token_id = None

    def decode(self, ids, skip_special_tokens=True):
        return ""


def identical_check(target, draft, config, device, tokens: int = 24,
                    sampling: SamplingParams = SamplingParams(), shape: TreeShape = TreeShape(8, 4)) -> dict:
    """SubSpec equals plain decoding on the GPU too (streamed target, captured draft steps): greedy, or
    sampled with a seed (draws keyed by position), for a fixed or an auto-depth tree."""
    from pathlib import Path

    from engine.events import summarize
    from engine.generate import generate_plain
    from engine.loading import LoadedModel
    from engine.speculative import generate_subspec

    lm = LoadedModel(Path("/nonexistent"), "random", target, _NullTokenizer(), device)
    lm.__dict__["_eos_ids"] = frozenset()  # random weights: never stop early
    prompt = torch.randint(0, config.vocab_size, (64,), generator=torch.Generator().manual_seed(1)).tolist()
    plain = summarize(generate_plain(lm, prompt, tokens, sampling), len(prompt), "vanilla")
    spec = summarize(generate_subspec(lm, draft, prompt, tokens, sampling, shape=shape), len(prompt), "s")
    first = next((i for i, (a, b) in enumerate(zip(plain.token_ids, spec.token_ids)) if a != b), None)
    return {"identical": plain.token_ids == spec.token_ids, "first_difference": first,
            "tokens": len(plain.token_ids), "tau": round(spec.tau, 2), "dtype": str(target.embed_tokens.weight.dtype)}


def draft_path(draft) -> dict:
    """Which path the draft's substitutes run on, and the bytes they hold."""
    paths = substitute_paths(draft)
    kind = "fused" if not paths["dequantized"] else "dequantized" if not paths["fused"] else "mixed"
    return {"kind": kind, **paths, "fused_elementwise_ops": bool(getattr(draft, "fused_ops", False))}


def set_fused_ops(draft, target, on: bool) -> None:
    """Switch a fused-ops draft's elementwise kernels (engine.draft_kernels) on or off in every layer (its
    shells carry the flags) and for its rotary table, and drop its captured steps, so the same substitutes
    can be timed both ways."""
    from engine.model import DraftRotary
    from engine.substitute import fuse_layer_ops

    for layer in draft.layers:
        fuse_layer_ops(layer, on)
    draft.rotary = DraftRotary(target.rotary) if on else target.rotary
    draft.__dict__.pop("_draft_steps", None)


def _ops(fused_ops: bool | None) -> dict:
    """build_draft's options for `fused_ops` (None: the device's default; True: merged, on the kernels)."""
    return {} if fused_ops is None else {"merge": True, "fused_ops": True} if fused_ops else {"fused_ops": False}


def float32_identity_check(device, tokens: int = 48, fused: bool | None = None,
                           fused_ops: bool | None = None) -> dict:
    """The whole GPU path -- streamed layers, captured draft steps, tree verification, commit -- in
    float32 on a small random model: greedy SubSpec must equal plain decoding token for token, and so must
    a seeded sampled answer with auto depth (the position- and token-keyed Gumbel draws: the int64 hash on
    the device, and the draft's guesses from the same noise). (In bf16 a one-token pass and a 289-node tree pass round differently, and random
    weights have near-ties.)"""
    config = ModelConfig.from_dict(dict(TINY, hidden_size=512, intermediate_size=1024, num_hidden_layers=6,
                                        vocab_size=4096, num_attention_heads=8, num_key_value_heads=2))
    target = random_decoder(config, device, torch.float32)
    # Substitutes for exactly the streamed layers, as a load builds them (the resident ones are the last).
    draft = build_draft(target, 4, 64, layers=streamed_layers(6, 2), device=device, fused=fused, **_ops(fused_ops))
    offload(target, 2, device)
    seeded = SamplingParams(temperature=0.8, top_p=0.95, seed=5)
    sampled = identical_check(target, draft, config, device, tokens, seeded, TreeShape(8, 4, auto=True))
    # Penalties: each tree node penalized with its own path (a window shallower than the tree included).
    penalized = SamplingParams(repetition_penalty=1.3, frequency_penalty=0.3, penalty_last_n=6)
    return {**identical_check(target, draft, config, device, tokens), "draft_path": draft_path(draft)["kind"],
            "sampled_auto_depth": sampled,
            "penalized": identical_check(target, draft, config, device, tokens, penalized, TreeShape(8, 4))}


def graph_check(device, fused: bool | None = None, fused_ops: bool | None = None) -> dict:
    """In float32, the captured fixed-shape draft steps grow exactly the tree the eager steps grow."""
    from engine.generate import prefill
    from engine.sampling import select_tokens

    config = ModelConfig.from_dict(dict(TINY, hidden_size=256, intermediate_size=512))
    target = random_decoder(config, device, torch.float32)
    draft = build_draft(target, 4, 64, device=device, fused=fused, **_ops(fused_ops))
    ids = torch.randint(0, config.vocab_size, (40,), generator=torch.Generator().manual_seed(2)).tolist()
    trees = []
    for fixed in (False, True):
        cache = target.new_cache(200)
        root = select_tokens(prefill(target, cache, ids), SamplingParams(), None)
        trees.append(grow_tree(draft, cache, root, TreeShape(12, 4), 12, [0.0], fixed_shapes=fixed))
    a, b = trees
    return {"same_tree": bool(torch.equal(a.tokens, b.tokens) and torch.equal(a.parents, b.parents)),
            "max_score_difference": float((a.scores - b.scores).abs().max()), "draft_path": draft_path(draft)["kind"]}


# An iteration's extra work for what a chat sends: penalties as the chat uses them (repetition and frequency
# over the last 64 tokens), and sampling as its "balanced" preset (the draft's guesses from the answer's
# Gumbel noise, and the verification's draws over the whole vocabulary).
PENALIZED = SamplingParams(repetition_penalty=1.1, frequency_penalty=0.2, penalty_last_n=64)
SAMPLED = SamplingParams(temperature=0.7, top_p=0.9, seed=1)


def prefill_passes(target, config: ModelConfig, device, tokens: int = 2048, rounds: int = 2) -> dict:
    """Time to prefill a `tokens`-token prompt a chunk per forward (the streamed layers cross the link once
    per PREFILL_CHUNK tokens) against passes (engine.model.Decoder.prefill_pass: once per pass), alternating,
    best of `rounds` each; whether the two give the same logits (the blocks' shapes are the chunks')."""
    ids = torch.randint(0, config.vocab_size, (tokens,), generator=torch.Generator().manual_seed(3)).tolist()
    best = {"chunked": float("inf"), "passes": float("inf")}
    moved, logits = {}, {}
    prefill(target, target.new_cache(PREFILL_CHUNK), ids[:PREFILL_CHUNK])  # warm-up: kernels, allocator
    for _ in range(rounds):
        for kind in ("chunked", "passes"):  # chunked: Decoder.forward a chunk at a time, as before passes
            cache = target.new_cache(tokens)
            before = streamed_bytes(target)
            sync(device)
            t0 = time.perf_counter()
            logits[kind] = prefill(target, cache, ids, PREFILL_CHUNK, by_pass=kind == "passes")
            sync(device)
            best[kind] = min(best[kind], time.perf_counter() - t0)
            moved[kind] = streamed_bytes(target) - before
            del cache
    return {"prompt_tokens": tokens, "chunked_s": round(best["chunked"], 4), "passes_s": round(best["passes"], 4),
            "chunked_bytes_streamed": moved["chunked"], "passes_bytes_streamed": moved["passes"],
            "speedup": round(best["chunked"] / best["passes"], 2),
            "identical_logits": bool(torch.equal(logits["chunked"], logits["passes"]))}


def timed_iteration(target, draft, cache, token, shape: TreeShape, device, prompt: list[int],
                    params: SamplingParams, repeats: int = 3) -> dict:
    """Draft and verification of a SubSpec iteration with `params` (penalized: the draft and the
    verification's rows penalized along each node's path; sampled: drawn). Timed on the same cache and root
    as the greedy iterations, nothing committed."""
    from engine.sampling import History

    history = None
    if params.penalized:
        history = History(params, prompt)
        history.extend(token.tolist())
    draws = params.draws()
    times = []
    for i in range(repeats + 1):
        sync(device)
        t0 = time.perf_counter()
        tree = grow_tree(draft, cache, token, shape, shape.depth, [0.0], history=history, sampling=params,
                         draws=draws)
        sync(device)
        t1 = time.perf_counter()
        verify(target, cache, tree, params, draws, history)
        sync(device)
        if i:  # the first: warm-up
            times.append((t1 - t0, time.perf_counter() - t1))
    return {"draft_s": round(statistics.median(t[0] for t in times), 4),
            "verify_s": round(statistics.median(t[1] for t in times), 4)}


def draft_step_replay(draft, cache, width: int, device, replays: int = 20, depth: int = 48) -> dict:
    """The captured draft step alone (no beam selection, no host work between steps): ms per replay, and on
    CUDA the kernels one replay runs (count and the costliest, from the profiler), to set against
    benchmarks/draft_step_launches.py's count and against the bytes the step reads. Over the span a tree of
    `depth` levels on this context drafts over (engine.draft_graph.draft_span)."""
    from engine.draft_graph import draft_span, draft_step_for

    span = draft_span(cache.length + 1 + depth * width, cache.capacity)
    step = draft_step_for(draft, cache, width, span)
    run = step.graph.replay if step.graph is not None else step._run
    run()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(replays):
        run()
    sync(device)
    out = {"ms_per_replay": round((time.perf_counter() - t0) * 1e3 / replays, 3), "graph": step.graph is not None,
           "span": span, "cache_capacity": cache.capacity}
    if device.type != "cuda":
        return out
    try:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(3):
                run()
            sync(device)
        kernels = [e for e in prof.key_averages() if e.device_type.name == "CUDA" and e.count]
        total = sum(e.count for e in kernels)
        key = "self_device_time_total" if hasattr(kernels[0], "self_device_time_total") else "self_cuda_time_total"
        kernels.sort(key=lambda e: -getattr(e, key))
        out["kernels_per_replay"] = round(total / 3, 1)
        out["kernel_ms_per_replay"] = round(sum(getattr(e, key) for e in kernels) / 3 / 1e3, 3)
        out["top_kernels"] = [{"name": e.key[:90], "per_replay": round(e.count / 3, 1),
                               "us_per_replay": round(getattr(e, key) / 3, 1)} for e in kernels[:12]]
    except Exception as e:  # a profiler that cannot see into graphs must not cost the run its numbers
        out["profile_error"] = f"{type(e).__name__}: {e}"[:300]
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--vram-gb", type=float, default=8.0)
    ap.add_argument("--kv-len", type=int, default=4096)
    ap.add_argument("--decode-tokens", type=int, default=8)
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--tiny", action="store_true", help="a tiny model on whatever device: checks the script")
    ap.add_argument("--profile", action="store_true", help="also print a kernel profile of two draft steps")
    ap.add_argument("--only-checks", action="store_true", help="only the float32 correctness checks")
    ap.add_argument("--dequantized-draft", action="store_true",
                    help="substitutes as dequantized weights (the path before the fused low-bit kernel)")
    ap.add_argument("--fused-ops", action="store_true",
                    help="the draft merged and on its fused elementwise kernels even off CUDA (interpreted there: "
                         "checks the script's side-by-side timing); on CUDA they are on by default")
    args = ap.parse_args()
    fused = False if args.dequantized_draft else None  # None: fused wherever it runs
    fused_ops = True if args.fused_ops else None  # None: the device's default (on CUDA, on)
    suffix = "_dequantized" if args.dequantized_draft else ""

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    config = ModelConfig.from_dict(TINY if args.tiny else QWEN25_7B)
    shape = TreeShape(48, 6) if not args.tiny else TreeShape(8, 3)
    cap = int(args.vram_gb * 1e9)
    result = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
              "torch": torch.__version__, "model": "Qwen2.5-7B shape, random bf16" if not args.tiny else "tiny",
              "vram_cap_gb": args.vram_gb, "depth": shape.depth, "topk": shape.topk, "tree_nodes": shape.nodes}
    t_start = time.perf_counter()
    if args.only_checks:
        checks = {"float32_identity": float32_identity_check(device, fused=fused, fused_ops=fused_ops),
                  "graph_vs_eager_float32": graph_check(device, fused, fused_ops)}
        print(json.dumps(checks, indent=2))
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, f"gpu_checks_float32{suffix}.json"), "w") as f:
            json.dump({"device": result["device"], **checks}, f, indent=2)
        return
    if args.tiny:
        resident, parts = 1, {}
    else:
        resident, parts = resident_for_cap(config, cap, args.kv_len, shape.nodes)
    result["resident_layers"] = resident
    result["planned_bytes"] = parts
    print(f"[{time.perf_counter() - t_start:6.1f}s] resident layers under the cap: {resident}", flush=True)

    result["h2d_bandwidth_gbps"] = round(h2d_bandwidth(device, (1 << 30) if not args.tiny else (1 << 24)), 2)
    print(f"[{time.perf_counter() - t_start:6.1f}s] pinned H2D: {result['h2d_bandwidth_gbps']} GB/s", flush=True)

    target = random_decoder(config, device, dtype)
    offloaded = streamed_layers(config.num_layers, resident)
    draft = build_draft(target, 4, 64, layers=offloaded, device=device, fused=fused, **_ops(fused_ops))
    result["draft_path"] = draft_path(draft)
    streamer = offload(target, resident, device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        result["cuda_allocated_gb_with_draft"] = round(torch.cuda.memory_allocated(device) / 1e9, 2)
    offloaded_bytes = len(offloaded) * streamer.layer_bytes
    result["offloaded_layers"] = len(offloaded)
    result["offloaded_bytes_per_pass"] = offloaded_bytes
    floor_s = offloaded_bytes / (result["h2d_bandwidth_gbps"] * 1e9)
    result["transfer_floor_s"] = round(floor_s, 4)
    print(f"[{time.perf_counter() - t_start:6.1f}s] model ready: {len(offloaded)} layers streamed, "
          f"{offloaded_bytes / 1e9:.2f} GB per pass, floor {floor_s * 1e3:.0f} ms; draft substitutes "
          f"{result['draft_path']['kind']}, {result['draft_path']['resident_bytes'] / 1e9:.2f} GB", flush=True)

    # A long prompt's time to first token: a chunk per forward against passes of the streamed layers.
    result["prefill"] = prefill_passes(target, config, device, 2048 if not args.tiny else 600)
    print(f"[{time.perf_counter() - t_start:6.1f}s] prefill: {result['prefill']}", flush=True)

    # Plain offloaded decoding.
    cache = target.new_cache(args.kv_len)
    prompt = torch.randint(0, config.vocab_size, (128,), device=device)
    target(prompt, torch.arange(128, device=device), cache, 0, causal_mask(0, 128, torch.float32, device))
    cache.commit(128)
    token = prompt[-1:]
    times = []
    for i in range(args.decode_tokens + 1):
        pos = cache.length
        sync(device)
        t0 = time.perf_counter()
        logits = target(token, torch.tensor([pos], device=device), cache, pos, decode_mask(target, pos))
        token = logits.argmax(-1)
        sync(device)
        if i:
            times.append(time.perf_counter() - t0)
        cache.commit(pos + 1)
    t_target = statistics.median(times)
    result["plain_decode_s_per_token"] = round(t_target, 4)
    result["plain_tokens_per_s"] = round(1 / t_target, 3)
    result["transfer_efficiency"] = round(offloaded_bytes / (t_target * result["h2d_bandwidth_gbps"] * 1e9), 3)
    print(f"[{time.perf_counter() - t_start:6.1f}s] plain offloaded decoding {1 / t_target:.2f} tok/s, "
          f"transfer efficiency {result['transfer_efficiency']}", flush=True)

    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=acts) as prof:
            grow_tree(draft, cache, token, TreeShape(2, shape.topk), 2, [0.0])
            sync(device)
        key = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
        print(prof.key_averages().table(sort_by=key, row_limit=25), flush=True)

    # SubSpec iterations at D48/K6: draft, verify, overhead.
    iters = []
    greedy = SamplingParams()
    for i in range(args.iterations + 1):
        sync(device)
        t0 = time.perf_counter()
        timer = [0.0]
        tree = grow_tree(draft, cache, token, shape, shape.depth, timer)
        sync(device)
        t1 = time.perf_counter()
        measure_memory = i == 0 and device.type == "cuda"  # the untimed first pass: verification's peak
        if measure_memory:
            torch.cuda.reset_peak_memory_stats(device)
            allocated = torch.cuda.memory_allocated(device)
        chosen = verify(target, cache, tree, greedy, None)
        sync(device)
        t2 = time.perf_counter()
        if measure_memory:
            try:  # a report: a failure here must not lose the run's timings
                result["verify_memory"] = verify_memory(config, tree.size, cache.length,
                                                        torch.cuda.max_memory_allocated(device) - allocated)
            except Exception as exc:  # noqa: BLE001
                result["verify_memory"] = {"error": f"{type(exc).__name__}: {exc}"}
        n = tree.size
        from engine.tree import walk

        tokens, parents, picked = torch.stack((tree.tokens[:n], tree.parents[:n], chosen)).tolist()
        path, bonus = walk(tokens, parents, picked)
        cache.compact(torch.tensor([0] + path, device=device) + cache.length)
        token = torch.tensor([bonus], device=device)
        sync(device)
        t3 = time.perf_counter()
        if i:
            iters.append({"draft_s": t1 - t0, "draft_forward_s": timer[0] / 1e3, "verify_s": t2 - t1,
                          "overhead_s": t3 - t2 + (t1 - t0) - timer[0] / 1e3, "total_s": t3 - t0})
    med = {k: round(statistics.median(it[k] for it in iters), 4) for k in iters[0]}
    result["subspec_iteration"] = med
    result["iteration_over_transfer_floor"] = round(med["total_s"] / floor_s, 3)
    result["verify_over_plain_pass"] = round(med["verify_s"] / t_target, 3)
    result["draft_step_ms"] = round(med["draft_forward_s"] / shape.depth * 1e3, 2)
    result["predicted_tokens_per_s_at_paper_tau"] = round(PAPER_TAU / med["total_s"], 2)
    result["predicted_speedup_at_paper_tau"] = round(PAPER_TAU / med["total_s"] * t_target, 2)
    for name, params in (("penalized_iteration", PENALIZED), ("sampled_iteration", SAMPLED)):
        result[name] = timed_iteration(target, draft, cache, token, shape, device, prompt.tolist(), params)
        print(f"[{time.perf_counter() - t_start:6.1f}s] {name.replace('_', ' ')}: {result[name]}", flush=True)
    result["draft_step_replay"] = draft_step_replay(draft, cache, shape.topk, device, depth=shape.depth)
    print(f"[{time.perf_counter() - t_start:6.1f}s] draft step replay: {result['draft_step_replay']}", flush=True)
    # The step's memory floor: what it reads at the copy bandwidth of the GPU's own memory. The replay's
    # distance above it is launches, latency and the kernels' own efficiency.
    step_bytes = draft_step_bytes(draft, cache, result["draft_step_replay"]["span"])
    result["draft_step_bytes"] = step_bytes
    result["device_copy_gbps"] = round(device_copy_bandwidth(device), 1)
    result["draft_step_memory_floor_ms"] = round(step_bytes["total"] / (result["device_copy_gbps"] * 1e9) * 1e3, 3)
    result["draft_step_replay_over_memory_floor"] = round(
        result["draft_step_replay"]["ms_per_replay"] / result["draft_step_memory_floor_ms"], 2)
    # What a tree step costs beyond its replay: beam selection, tree bookkeeping, the mask, the root step
    # and host gaps (the iteration's draft time per step, less the replay alone).
    result["draft_step_outside_replay_ms"] = round(result["draft_step_ms"] - result["draft_step_replay"]["ms_per_replay"], 3)
    if getattr(draft, "fused_ops", False):
        # The same step with the elementwise work as eager ops, side by side: what the fused kernels gain.
        set_fused_ops(draft, target, False)
        result["draft_step_replay_eager_elementwise"] = draft_step_replay(draft, cache, shape.topk, device, depth=shape.depth)
        set_fused_ops(draft, target, True)
        print(f"[{time.perf_counter() - t_start:6.1f}s] the same step, eager elementwise ops: "
              f"{result['draft_step_replay_eager_elementwise']}", flush=True)
    result["greedy_identical_to_plain"] = identical_check(target, draft, config, device)
    result["graph_vs_eager_float32"] = graph_check(device, fused, fused_ops)
    result["float32_identity"] = float32_identity_check(device, fused=fused, fused_ops=fused_ops)
    print(f"[{time.perf_counter() - t_start:6.1f}s] lossless check: {result['greedy_identical_to_plain']}", flush=True)
    result["streamed_bytes_total"] = streamed_bytes(target)
    # Whether the fused kernel's fast dequantization passed its once-per-device check (and so ran above).
    result["fast_dequant_verified"] = {f"{d} {str(t).removeprefix('torch.')}": ok
                                       for (d, t), ok in lowbit._FAST_VERIFIED.items()}
    # Whether the draft's fused elementwise kernels passed their once-per-device check (and so ran above).
    result["draft_kernels_usable"] = {f"{d} {str(t).removeprefix('torch.')} {'x'.join(map(str, shape))}": ok
                                      for (d, t, shape), ok in draft_kernels._USABLE.items()}
    result["wall_s"] = round(time.perf_counter() - t_start, 1)
    print(json.dumps(result, indent=2), flush=True)

    os.makedirs(args.out, exist_ok=True)
    stem = ("gpu_check_tiny" if args.tiny else "gpu_check") + suffix
    with open(os.path.join(args.out, stem + ".json"), "w") as f:
        json.dump(result, f, indent=2)
    rows = [("device", result["device"]), ("VRAM cap", f"{args.vram_gb} GB"),
            ("resident / streamed layers", f"{resident} / {len(offloaded)}"),
            ("draft substitutes (fused: packed 4-bit read by the kernel)",
             f"{result['draft_path']['kind']}, {result['draft_path']['resident_bytes'] / 1e9:.2f} GB held "
             f"({result['draft_path']['packed_bytes'] / 1e9:.2f} GB packed); fast dequantization verified: "
             f"{result['fast_dequant_verified'] or 'not used'}; fused elementwise kernels: "
             f"{result['draft_path']['fused_elementwise_ops']}"),
            ("streamed per target pass", f"{offloaded_bytes / 1e9:.2f} GB"),
            ("pinned H2D bandwidth", f"{result['h2d_bandwidth_gbps']} GB/s"),
            ("transfer floor (bytes / bandwidth)", f"{floor_s * 1e3:.0f} ms"),
            ("plain offloaded decoding", f"{result['plain_tokens_per_s']} tok/s ({t_target * 1e3:.0f} ms/token)"),
            ("transfer efficiency (goal >= 0.9)", f"{result['transfer_efficiency']}"),
            (f"prefill of a {result['prefill']['prompt_tokens']}-token prompt: {PREFILL_CHUNK} tokens a forward / "
             f"passes of the streamed layers (same logits)",
             f"{result['prefill']['chunked_s'] * 1e3:.0f} ms ({result['prefill']['chunked_bytes_streamed'] / 1e9:.2f} GB) / "
             f"{result['prefill']['passes_s'] * 1e3:.0f} ms ({result['prefill']['passes_bytes_streamed'] / 1e9:.2f} GB), "
             f"{result['prefill']['speedup']}x ({result['prefill']['identical_logits']})"),
            (f"SubSpec iteration D{shape.depth} K{shape.topk} ({shape.nodes} nodes)", f"{med['total_s'] * 1e3:.0f} ms"),
            (f"- draft ({shape.depth} steps)", f"{med['draft_s'] * 1e3:.0f} ms ({result['draft_step_ms']} ms a step)"),
            ("  - the captured step alone (replay; kernels a replay)",
             f"{result['draft_step_replay']['ms_per_replay']} ms; "
             f"{result['draft_step_replay'].get('kernels_per_replay', 'n/a')}"),
            ("  - a tree step beyond its replay (selection, bookkeeping, host gaps)",
             f"{result['draft_step_outside_replay_ms']} ms"),
            ("  - the step's memory floor (bytes it reads / device copy bandwidth); replay over it",
             f"{result['draft_step_memory_floor_ms']} ms ({result['draft_step_bytes']['total'] / 1e9:.2f} GB at "
             f"{result['device_copy_gbps']} GB/s); {result['draft_step_replay_over_memory_floor']}"),
            ("  - the same step with eager elementwise ops (no engine.draft_kernels)",
             f"{result['draft_step_replay_eager_elementwise']['ms_per_replay']} ms; "
             f"{result['draft_step_replay_eager_elementwise'].get('kernels_per_replay', 'n/a')}"
             if "draft_step_replay_eager_elementwise" in result else "not run (draft on eager ops)"),
            ("- verify (one target pass over the tree)", f"{med['verify_s'] * 1e3:.0f} ms"),
            ("  - its peak memory over what was allocated; the planner's masks of it (without SDPA's copy) + "
             "bf16 logits", verify_memory_text(result.get("verify_memory"))),
            ("- overhead (tree, walk, commit)", f"{med['overhead_s'] * 1e3:.0f} ms"),
            ("iteration / transfer floor (goal <= 1.55; published ~2.24)", f"{result['iteration_over_transfer_floor']}"),
            (f"predicted tok/s at tau {PAPER_TAU}", f"{result['predicted_tokens_per_s_at_paper_tau']} "
                                                   f"({result['predicted_speedup_at_paper_tau']}x plain)"),
            ("greedy SubSpec identical to plain (24 tokens, random bf16 weights)",
             str(result["greedy_identical_to_plain"]["identical"])),
            ("captured draft steps grow the eager tree (float32)",
             str(result["graph_vs_eager_float32"]["same_tree"])),
            ("float32, streamed: greedy / seeded sampled auto-depth / penalized SubSpec identical to plain",
             f"{result['float32_identity']['identical']} / "
             f"{result['float32_identity']['sampled_auto_depth']['identical']} / "
             f"{result['float32_identity']['penalized']['identical']}"),
            ("iteration with repetition and frequency penalties (last 64 tokens): draft / verify",
             f"{result['penalized_iteration']['draft_s'] * 1e3:.0f} / "
             f"{result['penalized_iteration']['verify_s'] * 1e3:.0f} ms"),
            ("iteration sampled (T 0.7, top-p 0.9; the draft guessing from the same noise): draft / verify",
             f"{result['sampled_iteration']['draft_s'] * 1e3:.0f} / "
             f"{result['sampled_iteration']['verify_s'] * 1e3:.0f} ms")]
    md = "| measure | value |\n|---|---|\n" + "\n".join(f"| {a} | {b} |" for a, b in rows) + "\n"
    with open(os.path.join(args.out, stem + ".md"), "w") as f:
        f.write(md)
    print(md)


if __name__ == "__main__":
    main()
