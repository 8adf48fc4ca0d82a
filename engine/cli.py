"""`subspec`: the headless command line of SubSpec Studio.

Every user mistake ends in one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import sys

from . import cli_models, cli_types
from .errors import SubspecError


def _human_params(n: int) -> str:
    return f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.0f}M"


def cmd_models_list(args) -> int:
    from . import store

    store.ensure_default_model()
    models = store.list_models()
    if args.json:
        print(json.dumps([m.as_json() for m in models], indent=2))
        return 0
    if not models:
        print(f"No models in {store.models_dir()}. Import one with `subspec models import PATH`.")
        return 0
    print(f"{'NAME':32} {'ARCH':8} {'PARAMS':>7} {'DTYPE':9} {'SIZE':>9}")
    for m in models:
        print(f"{m.name:32} {m.architecture:8} {_human_params(m.parameters):>7} {m.dtype:9} "
              f"{cli_models.human_bytes(m.size_bytes):>9}")
    return 0


def cmd_models_info(args) -> int:
    from . import store

    store.ensure_default_model()
    m = store.get_model(args.name)
    if args.json:
        print(json.dumps(m.as_json(), indent=2))
    else:
        for k, v in m.as_json().items():
            print(f"{k:12} {v}")
    return 0


def cmd_models_import(args) -> int:
    import signal
    import threading

    from . import store
    from .gguf_import import ImportCancelled

    cancel = threading.Event()

    def interrupted(*_):  # stop after the current file or tensor; a second Ctrl-C quits at once
        cancel.set()
        signal.signal(signal.SIGINT, previous)
        print("\nstopping after the current tensor or file (Ctrl-C again to quit now)", file=sys.stderr, flush=True)

    previous = signal.signal(signal.SIGINT, interrupted)
    shown = [-1]

    def fraction(f: float) -> None:
        if round(100 * f) != shown[0]:
            shown[0] = round(100 * f)
            print(f"\r{shown[0]}%", end="", file=sys.stderr, flush=True)

    def say(msg: str) -> None:
        if shown[0] >= 0:  # end the percentage line first
            print(file=sys.stderr)
            shown[0] = -1
        print(msg, file=sys.stderr, flush=True)

    try:
        info = store.import_model(args.path, args.name, say, cancel, fraction)
    except ImportCancelled as exc:
        print(f"\n{exc}", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGINT, previous)
    if cancel.is_set():
        print(f"note: the cancel came after the last step: {info.name} is installed "
              f"(subspec models remove {info.name} deletes it)", file=sys.stderr)
    print(f"imported {info.name} ({info.architecture}, {_human_params(info.parameters)} parameters, "
          f"{cli_models.human_bytes(info.size_bytes)}) into {info.path}")
    return 0


def cmd_models_remove(args) -> int:
    from . import convert, store

    if "/" in args.name:  # a repo id: what a paused or failed download left
        return cli_models.remove_partial(args.name)
    info = store.get_model(args.name)
    cache = convert.remove_caches(info.path)
    store.remove_model(args.name)
    extra = f" and {cli_models.human_bytes(cache)} of cached substitutes" if cache else ""
    print(f"removed {info.name} ({cli_models.human_bytes(info.size_bytes)}{extra} freed)")
    return 0


def _sampling(args):
    from .sampling import SamplingParams

    return SamplingParams(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, seed=args.seed,
                          min_p=args.min_p, repetition_penalty=args.repetition_penalty,
                          presence_penalty=args.presence_penalty, frequency_penalty=args.frequency_penalty,
                          penalty_last_n=args.penalty_last_n,
                          json=getattr(args, "format", "text") == "json" or getattr(args, "schema", None) is not None,
                          json_schema=_schema_text(getattr(args, "schema", None)),
                          logprobs=getattr(args, "logprobs", None))


def _schema_text(path: str | None) -> str | None:
    """--schema FILE: the JSON schema's text, once engine.constrained has compiled it (a file it cannot read or
    a schema it cannot enforce is a user error that says why)."""
    if path is None:
        return None
    from pathlib import Path

    from .constrained import SchemaError, schema_text

    try:
        return schema_text(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, SchemaError) as exc:
        raise SubspecError(f"--schema {path}: {getattr(exc, 'strerror', None) or exc}") from None


def _answer_options(p) -> None:
    """How one answer is drawn (generate's and chat's): sampling, penalties, seed and stop strings."""
    p.add_argument("--temperature", type=cli_types.non_negative, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--min-p", type=float, default=0.0,
                   help="drop tokens less likely than this fraction of the likeliest (default 0: none)")
    _penalty_options(p)
    p.add_argument("--seed", type=int)
    p.add_argument("--stop", action="append", help="stop string (repeatable)")
    p.add_argument("--format", choices=("text", "json"), default="text",
                   help="json: the answer is one JSON object (JSON mode, as Ollama's --format json; lossless "
                        "under SubSpec too)")
    p.add_argument("--schema", metavar="FILE",
                   help="a JSON schema file the answer follows (structured output; implies --format json)")


def _penalty_options(p) -> None:
    p.add_argument("--repetition-penalty", type=cli_types.positive, default=1.0,
                   help="make every token of the context less likely, prompt included: > 1 (default 1: none; "
                        "1.1-1.3 is usual)")
    p.add_argument("--presence-penalty", type=float, default=0.0,
                   help="subtract this from the logit of every token the answer holds (default 0)")
    p.add_argument("--frequency-penalty", type=float, default=0.0,
                   help="subtract this once per time the answer holds a token (default 0)")
    p.add_argument("--penalty-last-n", type=int, default=0, metavar="N",
                   help="penalties look at the context's last N tokens only, as llama.cpp's --repeat-last-n "
                        "(default 0: the whole context, as transformers and vLLM)")


def _draft_label(lm, args) -> str:
    """The draft's substitute widths as built ("4-bit", or "8/4-bit" when a plan mixes them)."""
    from .substitute import bits_label

    return bits_label(lm.draft_bits(args.substitute_bits))


def _draft(lm, args):
    label = _draft_label(lm, args)

    def progress(done, total):
        print(f"\rbuilding {label} substitutes: layer {done}/{total}", end="", file=sys.stderr, flush=True)

    draft = lm.build_draft(args.substitute_bits, args.group_size, progress=progress)
    print(file=sys.stderr)
    return draft


def _load(args):
    from .loading import load_model
    from .store import resolve_model

    folder, name = resolve_model(args.model)
    if args.device and args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise SubspecError(f"--device {args.device}: no CUDA GPU here (torch {torch.__version__}"
                               f"{', built without CUDA' if torch.version.cuda is None else ''})")
        index = int(args.device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise SubspecError(f"--device {args.device}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    resident, bits, prefill_tokens = args.resident_layers, None, None
    if args.vram_gb is not None and resident is None:
        resident, bits, prefill_tokens = _planned_split(folder, args)
    lm = load_model(folder, dtype=args.dtype, device=args.device, name=name, resident_layers=resident,
                    substitute_bits=bits, prefill_tokens=prefill_tokens)
    for note in lm.notes:
        print(f"note: {note}", file=sys.stderr)
    return lm


def _planned_split(folder, args) -> tuple[int | None, dict | None, int | None]:
    """--vram-gb: a software cap like the paper's capped GPU; the planner decides the split under it, the
    substitute bits of the streamed layers (8-bit where the cap leaves room) and the prompt tokens per
    prefill pass (what memory the cap leaves)."""
    from .config import ModelConfig
    from .hardware import probe
    from .planner import make_plan
    from .substitute import bits_label

    plan = make_plan(ModelConfig.from_file(folder), probe(), vram_gb=args.vram_gb)
    if plan.device != "cuda":
        print("note: no CUDA GPU, so --vram-gb has nothing to cap; every layer stays in RAM", file=sys.stderr)
        return None, None, None
    bits = plan.draft_bits
    drafted = f", {bits_label(bits)} substitutes" if bits else ""
    print(f"plan under {args.vram_gb} GB: {plan.resident_layers} resident layers, "
          f"{plan.offloaded_layers} streamed{drafted}, prefill {plan.prefill_pass_tokens} tokens a pass",
          file=sys.stderr)
    return plan.resident_layers, bits, plan.prefill_pass_tokens


def cmd_profile(args) -> int:
    from .hardware import format_profile, probe

    profile = probe(measure=args.measure)
    if args.measure and not profile["cuda"]["available"]:
        print("note: --measure times CUDA copies and matmuls; without a CUDA GPU there is nothing to measure",
              file=sys.stderr)
    print(json.dumps(profile, indent=2) if args.json else format_profile(profile))
    return 0


def _plan_config(target: str):
    from pathlib import Path

    from .config import ModelConfig
    from .store import resolve_model

    p = Path(target).expanduser()
    if p.is_file() and p.suffix.lower() == ".gguf":  # its header holds the shapes: plan before importing
        from .gguf_header import config_from_header, file_chunks, read_header

        from .gguf_import import split_parts

        first = split_parts(p)[0]  # the metadata is in the first part of a split GGUF
        return ModelConfig.from_dict(config_from_header(read_header(file_chunks(first)(), first.name), first.name)), \
            p.name
    if p.is_file():
        return ModelConfig.from_file(p), p.name  # plan from config.json alone, before downloading weights
    if not p.exists() and target.count("/") == 1 and all(target.split("/")):
        # A hub repo id: the catalogue's config (offline), else the repo's config.json (a few KB)
        from . import hub
        from .catalogue import CATALOGUE

        known = next((e for e in CATALOGUE if e.repo_id.lower() == target.lower()), None)
        if known:
            return ModelConfig.from_dict(known.config), target
        try:
            raw = hub.remote_config(target, gguf=True)
        except SubspecError as exc:  # a mistyped path reads as a repo id too: say both
            raise SubspecError(f"{target} is no file or folder here, and as a hub repo: {exc}") from exc
        if "_gguf" in raw:
            print(f"note: {target} has GGUF files only; planned from {raw['_gguf']}'s header, for the bf16 "
                  f"model a download converts it to", file=sys.stderr)
        return ModelConfig.from_dict(raw), target
    folder, name = resolve_model(target)
    return ModelConfig.from_file(folder), name


def cmd_plan(args) -> int:
    from .hardware import hypothetical_gpu, probe
    from .planner import make_plan

    config, name = _plan_config(args.model)
    hardware = probe()
    if args.vram_gb is not None and not hardware["cuda"]["available"]:
        hardware = hypothetical_gpu(hardware, args.vram_gb)
        print(f"note: no CUDA GPU here; planning for a {args.vram_gb} GB GPU on PCIe 4.0 x16", file=sys.stderr)
    plan = make_plan(config, hardware, vram_gb=args.vram_gb, reserve_gb=args.reserve_gb, context=args.context,
                     resident_layers=args.resident_layers)
    if args.json:
        print(json.dumps({"model": name, **plan.as_json()}, indent=2))
        return 0
    bits = sorted({b for b in plan.substitute_bits if b is not None})
    print(f"{name}: {plan.method} on {plan.device}")
    print(f"  resident layers {plan.resident_layers}, streamed {plan.offloaded_layers}, substitute bits "
          f"{'/'.join(map(str, bits)) or '-'}, context {plan.kv_length}, slots {plan.slots}")
    print(f"  tree depth {plan.depth} x width {plan.topk}, predicted tau {plan.predicted_tau:.1f}")
    if plan.offloaded_layers:
        print(f"  prefill up to {plan.prefill_pass_tokens} prompt tokens per pass of the streamed layers")
    gib = 2**30  # the planner's GB are GiB
    used = plan.predicted_vram_bytes if plan.device == "cuda" else plan.predicted_host_bytes
    print(f"  predicted {'VRAM' if plan.device == 'cuda' else 'RAM'} {used / gib:.2f} GB of "
          f"{plan.budget_bytes / gib:.2f} GB, "
          f"predicted {plan.predicted_tokens_per_s:.1f} tok/s ({plan.speedup:.1f}x plain)")
    for reason in plan.reasons:
        print(f"  - {reason}")
    return 0


def cmd_generate(args) -> int:
    from .chat_repl import ReadingLine
    from .events import summarize
    from .generate import generate_plain
    from .logprob_api import finite, token_piece
    from .speculative import generate_subspec

    if args.max_new_tokens < 0:
        raise SubspecError("--max-new-tokens must be >= 0")
    if args.system and not args.chat:
        raise SubspecError("--system is part of the chat template: drop --no-chat, or put it in the prompt")
    if args.logprobs is not None and not args.json:
        raise SubspecError("--logprobs reports in the JSON output: add --json")
    prompt = _prompt_text(args.prompt)
    sampling = _sampling(args)
    shape = _shape(args) if args.method == "subspec" else None
    if args.method != "subspec":
        _say_ignored(args)
    lm = _load(args)
    prompt_ids = lm.encode(prompt, chat=args.chat, system=args.system)
    stops = tuple(args.stop or ())
    extra = {}
    # How far a long prompt is read, on the terminal's stderr (engine.chat_repl.ReadingLine)
    reading = ReadingLine(sys.stderr)
    if args.method == "subspec":
        draft = _draft(lm, args)
        events = generate_subspec(lm, draft, prompt_ids, args.max_new_tokens, sampling, stops, shape,
                                  prompt_progress=reading)
        extra = {"depth": shape.depth, "auto_depth": shape.auto, "topk": shape.topk, "tree_nodes": shape.nodes,
                 "draft_temperature": shape.draft_temperature,
                 "substitute_bits": _draft_label(lm, args), "group_size": args.group_size}
    else:
        events = generate_plain(lm, prompt_ids, args.max_new_tokens, sampling, stops, prompt_progress=reading)
    events = _notes(events) if args.json else _notes(_echo(events))
    depths: list[int] = []
    events = _depths(events, depths)
    try:
        result = summarize(events, len(prompt_ids), args.method, extra=extra)
    finally:
        reading.clear()  # (Ctrl+C while the prompt is read leaves no line behind)
    if shape is not None and shape.auto:
        result.extra["mean_depth"] = round(sum(depths) / len(depths), 2) if depths else 0.0
    if args.json:
        out = result.as_json()
        for entry in out.get("logprobs", ()):  # each token's text beside its id, the alternatives' too
            entry["token"] = token_piece(lm.tokenizer, lm.config.vocab_size, entry["token_id"]).text
            entry["logprob"] = finite(entry["logprob"])  # (JSON has no -inf)
            entry["top"] = [[t, token_piece(lm.tokenizer, lm.config.vocab_size, t).text, finite(v)]
                            for t, v in entry["top"]]
        print(json.dumps(out, ensure_ascii=False))
    else:
        print()
        depth = f", mean depth {result.extra['mean_depth']:.1f}" if "mean_depth" in result.extra else ""
        print(f"[{result.new_tokens} tokens, {result.tokens_per_s:.1f} tok/s, ttft {result.ttft_s:.2f} s, "
              f"tau {result.tau:.2f}{depth}, {result.method}, finish: {result.finish_reason}]", file=sys.stderr)
    return 0


def _prompt_text(prompt: str | None) -> str:
    """--prompt's text; "-" reads it from standard input (asked for: a pipe left open would otherwise hang)."""
    if prompt is None:
        raise SubspecError("give the prompt with --prompt TEXT (--prompt - reads it from standard input)")
    if prompt == "-":
        prompt = sys.stdin.read()
        if not prompt.strip():
            raise SubspecError("standard input held no prompt")
    return prompt


def cmd_chat(args) -> int:
    """A conversation in the terminal (engine.chat_repl)."""
    from .chat_repl import ChatSession, run_chat
    from .generate import generate_plain
    from .kv_cache import PromptCache
    from .speculative import generate_subspec
    from .store import DEFAULT_MODEL

    if args.max_new_tokens < 1:
        raise SubspecError("--max-new-tokens must be >= 1")
    args.model = args.model or DEFAULT_MODEL
    sampling = _sampling(args)
    stops = tuple(args.stop or ())
    lm = _load(args)
    if not getattr(lm.tokenizer, "chat_template", None):
        raise SubspecError(f"model {lm.name} has no chat template, so it cannot chat (`subspec generate --no-chat` "
                           f"continues a text)")
    # As `serve`: on a CPU the draft's passes cost about what the target's do, so SubSpec pays off on a GPU.
    method = args.method or ("subspec" if lm.device.type == "cuda" else "vanilla")
    kept = PromptCache()  # each turn prefills only the new messages (engine.kv_cache.PromptCache)
    if method == "subspec":
        shape, draft = _shape(args), _draft(lm, args)

        def decode(ids, room, progress=None):
            return generate_subspec(lm, draft, ids, room, sampling, stops, shape, prompt_cache=kept,
                                    prompt_progress=progress)
    else:
        _say_ignored(args)

        def decode(ids, room, progress=None):
            return generate_plain(lm, ids, room, sampling, stops, prompt_cache=kept, prompt_progress=progress)
    session = ChatSession(lm.encode_messages, decode, lm.config.max_position_embeddings, args.max_new_tokens,
                          args.system or "", method)
    if sys.stdin.isatty():
        with contextlib.suppress(ImportError):  # input() then edits the line and keeps a history (not on Windows)
            importlib.import_module("readline")
    leave = "Ctrl+Z then Enter" if os.name == "nt" else "Ctrl+D"
    print(f"chatting with {lm.name} ({'SubSpec' if method == 'subspec' else 'plain decoding'}); /help lists the "
          f"commands, Ctrl+C stops an answer, {leave} leaves", file=sys.stderr)
    return run_chat(session)


def cmd_bench(args) -> int:
    from .bench import read_prompts

    if args.max_new_tokens < 0:
        raise SubspecError("--max-new-tokens must be >= 0")
    if args.limit is not None and args.limit < 1:
        raise SubspecError(f"--limit must be >= 1 (leave it out for every prompt), got {args.limit}")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in ("vanilla", "subspec")]
    if not methods or unknown:
        raise SubspecError(f"--methods takes vanilla, subspec or both, comma-separated; got {args.methods!r}")
    for flag, values in (("--depth", args.depth), ("--topk", args.topk), ("--budget", args.budget)):
        if not values:
            raise SubspecError(f"{flag} needs at least one value")
    conversations = read_prompts(args.prompts, args.limit, args.turns)
    created = None
    if args.json_out:  # checked now, not after an hour of measuring
        from pathlib import Path

        existed = os.path.lexists(args.json_out)  # a link to a file yet to be made is the user's too
        try:
            with open(args.json_out, "a", encoding="utf-8"):
                pass
        except OSError as exc:
            raise SubspecError(f"cannot write --json-out {args.json_out}: {exc.strerror or exc}") from None
        created = None if existed else Path(args.json_out)
    try:
        return _run_bench(args, conversations, methods)
    finally:
        if created is not None and created.is_file() and created.stat().st_size == 0:
            created.unlink()  # the check's empty file, when the run ended before its first result


def _run_bench(args, conversations, methods) -> int:
    import dataclasses
    import itertools

    from .bench import format_table, run_bench

    shapes = {}
    for d, k, b in itertools.product(args.depth, args.topk, args.budget):
        shape = _shape(args, d, k, b)
        shapes.setdefault(shape.label, shape)  # a budget at or above the beam's size is the same tree
    sampling = _sampling(args)
    lm = _load(args)
    meta = {"model": lm.name, "prompts": str(args.prompts), "conversations": len(conversations),
            "turns": args.turns, "max_new_tokens": args.max_new_tokens, "substitute_bits": _draft_label(lm, args),
            "group_size": args.group_size, "draft_temperature": args.draft_temperature,
            "temperature": args.temperature, "sampling": dataclasses.asdict(sampling), "device": str(lm.device),
            "dtype": str(lm.decoder.embed_tokens.weight.dtype)}

    def progress(done, rows):
        print(f"conversation {done}/{len(conversations)} done", file=sys.stderr, flush=True)
        if args.json_out:  # saved after every conversation: a long run that is stopped keeps its numbers
            with open(args.json_out, "w", encoding="utf-8") as f:
                json.dump({"setup": {**meta, "completed": done}, "results": rows}, f, indent=2)

    rows = run_bench(lm, conversations, methods, list(shapes.values()), args.max_new_tokens, lambda: _draft(lm, args),
                     sampling, progress=progress)
    print(format_table(rows))
    return 0


def cmd_serve(args) -> int:
    from .origins import is_origin
    from .server import SubspecServer, is_loopback

    if not 0 <= args.port <= 65535:
        raise SubspecError(f"--port must be between 0 and 65535, got {args.port}")
    if args.queue < 1:
        raise SubspecError(f"--queue must be >= 1, got {args.queue}")
    for origin in args.cors_origin or ():
        if not is_origin(origin):
            raise SubspecError(f"--cors-origin takes a web page's origin, like https://chat.example.com or "
                               f"http://localhost:3000 (or '*' for any), not {origin!r}")
    api_key = args.api_key or os.environ.get("SUBSPEC_API_KEY") or None
    backend = _serve_backend(args)
    try:
        server = SubspecServer(backend, args.host, args.port, api_key, args.queue, quiet=False,
                               cors_origins=tuple(args.cors_origin or ()))
    except OSError as exc:
        raise SubspecError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from None
    if not is_loopback(args.host) and not api_key:
        print(f"warning: listening on {args.host} without an API key: anyone who can reach this machine can "
              "use the model (set --api-key)", file=sys.stderr)
    import signal

    def terminate(*_):  # `kill`, systemd, docker stop: the same clean stop as Ctrl+C
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, terminate)
    print(f"serving {backend.name} ({backend.method}) at {server.url}/v1 - Ctrl+C stops", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("\nshutting down", file=sys.stderr)
    finally:
        server.close()
        signal.signal(signal.SIGTERM, previous)
    return 0


def _serve_backend(args):
    """The model, with a draft when SubSpec is chosen and plain decoding's measured speed to compare with."""
    from .server import Backend
    from .store import DEFAULT_MODEL

    shape = _shape(args)
    args.model = args.model or DEFAULT_MODEL
    lm = _load(args)
    # On a CPU the draft's passes cost about what the target's do, so SubSpec only pays off on a GPU.
    method = args.method or ("subspec" if lm.device.type == "cuda" else "vanilla")
    backend = Backend(lm, _draft(lm, args) if method == "subspec" else None, shape)
    if backend.draft is not None:
        print("measuring plain decoding speed for the speedup estimate ...", file=sys.stderr, flush=True)
        tps = backend.measure_baseline()
        print(f"plain decoding: {tps:.1f} tok/s" if tps else "plain decoding: not measured", file=sys.stderr)
    return backend


def _echo(events):
    for ev in events:
        sys.stdout.write(ev.text)
        sys.stdout.flush()
        yield ev


def _depths(events, into: list):
    """Each decode pass's tree depth, gathered as the events go by (auto depth varies it)."""
    for ev in events:
        if ev.iteration > 0:
            into.append(ev.depth)
        yield ev


def _notes(events):
    """What the engine changed on the way (a shallower tree after running out of GPU memory) goes to
    stderr as it happens."""
    for ev in events:
        if ev.note:
            print(f"\nnote: {ev.note}", file=sys.stderr, flush=True)
        yield ev


def _model_options(p) -> None:
    p.add_argument("--dtype", default="auto", help="auto, float32, bfloat16 or float16")
    p.add_argument("--device", type=cli_types.device, help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--resident-layers", type=int,
                   help="keep only the last N decoder layers on the device and stream the others' weights "
                        "from host memory each pass (default: all resident)")
    p.add_argument("--vram-gb", type=cli_types.positive,
                   help="software VRAM cap: the planner chooses the resident layers under it")


# The drafting options' defaults for generate and serve (_subspec_options), and what _say_ignored compares with.
SUBSPEC_DEFAULTS = {"depth": (48, False), "topk": 6, "budget": 0, "draft_temperature": 0.2, "substitute_bits": None,
                    "group_size": 64}


def _say_ignored(args) -> None:
    """Drafting options given to plain decoding: said, not silently dropped."""
    given = [f"--{k.replace('_', '-')}" for k, v in SUBSPEC_DEFAULTS.items() if getattr(args, k) != v]
    if given:
        print(f"note: {', '.join(given)} only apply to --method subspec; decoding plainly", file=sys.stderr)


def _depth(text: str) -> tuple[int, bool]:
    """A tree depth: N, or auto / autoN (auto depth up to N, default 48)."""
    text = text.strip().lower()
    auto = text.startswith("auto")
    digits = text[4:] if auto else text
    try:
        depth = int(digits) if digits else 48
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a depth (e.g. 48), auto or autoN (e.g. auto64), got {text!r}") \
            from None
    if depth < 0:
        raise argparse.ArgumentTypeError(f"depth must be >= 0, got {depth}")
    return depth, auto


def _depth_list(text: str) -> list[tuple[int, bool]]:
    return [_depth(x) for x in text.split(",") if x.strip()]


def _shape(args, depth=None, topk=None, budget=None):
    from .speculative import TreeShape

    d, auto = depth if depth is not None else args.depth
    return TreeShape(d, topk if topk is not None else args.topk, args.draft_temperature,
                     (budget if budget is not None else args.budget) or None, auto=auto)


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _subspec_options(p, sweep: bool) -> None:
    if sweep:
        p.add_argument("--depth", type=_depth_list, default=[(48, False)],
                       help="draft tree depth(s), e.g. 8,16,32,48; autoN: auto depth up to N (e.g. 48,auto48)")
        p.add_argument("--topk", type=_int_list, default=[6], help="draft tree width(s), e.g. 1,4,6,8")
        p.add_argument("--budget", type=_int_list, default=[0],
                       help="nodes verified per pass, e.g. 289 (0: the whole beam, 1 + depth x width)")
    else:
        p.add_argument("--depth", type=_depth, default=SUBSPEC_DEFAULTS["depth"],
                       help="draft tree depth (default 48); auto or autoN: each pass uses the depth that measured "
                            "fastest, up to N (default 48), plain decoding included")
        p.add_argument("--topk", type=int, default=SUBSPEC_DEFAULTS["topk"], help="draft tree width (default 6)")
        p.add_argument("--budget", type=int, default=SUBSPEC_DEFAULTS["budget"],
                       help="nodes verified per pass: grow the beam, verify its most likely N (0: all)")
    p.add_argument("--draft-temperature", type=cli_types.positive, default=SUBSPEC_DEFAULTS["draft_temperature"],
                   help="sharpening of the draft (default 0.2)")
    p.add_argument("--substitute-bits", type=int, choices=(2, 3, 4, 8),
                   help="HQQ bits of every substitute (default: the plan's under --vram-gb, 8-bit where "
                        "memory allows; 4 otherwise)")
    p.add_argument("--group-size", type=cli_types.group_size, default=SUBSPEC_DEFAULTS["group_size"],
                   help="HQQ group size, a multiple of 8 (default 64)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="subspec", description="SubSpec Studio engine: lossless fast LLM chat.")
    sub = p.add_subparsers(dest="command", required=True)

    models = sub.add_parser("models", help="manage the model store")
    msub = models.add_subparsers(dest="models_command", required=True)
    m = msub.add_parser("list", help="list installed models")
    m.add_argument("--json", action="store_true")
    m.set_defaults(func=cmd_models_list)
    m = msub.add_parser("info", help="details of one model")
    m.add_argument("name")
    m.add_argument("--json", action="store_true")
    m.set_defaults(func=cmd_models_info)
    m = msub.add_parser("import", help="import a Hugging Face model folder or a .gguf file "
                                         "(for a split GGUF, any of its parts)")
    m.add_argument("path")
    m.add_argument("--name")
    m.set_defaults(func=cmd_models_import)
    m = msub.add_parser("remove", help="delete a model (or a partial download: its repo id) from the store")
    m.add_argument("name")
    m.set_defaults(func=cmd_models_remove)
    cli_models.add_commands(msub)

    g = sub.add_parser("generate", help="generate a reply to one prompt")
    g.add_argument("model", help="a store name or a model folder")
    g.add_argument("--prompt", help="the prompt; '-' reads it from standard input")
    g.add_argument("--chat", action=argparse.BooleanOptionalAction, default=True,
                   help="apply the model's chat template (default: on)")
    g.add_argument("--system", help="system prompt (chat mode)")
    g.add_argument("--max-new-tokens", type=int, default=256)
    _answer_options(g)
    g.add_argument("--method", choices=["vanilla", "subspec"], default="vanilla",
                   help="vanilla: plain decoding (default); subspec: the substitute draft and a tree")
    _model_options(g)
    _subspec_options(g, sweep=False)
    g.add_argument("--json", action="store_true", help="print one JSON object instead of streaming text")
    g.add_argument("--logprobs", type=int, metavar="N",
                   help="with --json: each token's log-probability under the model (before penalties, "
                        "temperature and cuts) and its N likeliest alternatives (0 to 20)")
    g.set_defaults(func=cmd_generate)

    b = sub.add_parser("bench", help="measure plain decoding and SubSpec side by side on a prompt set")
    b.add_argument("model")
    b.add_argument("--prompts", required=True, help="JSON lines with 'turns' (MT-Bench) or 'prompt'")
    b.add_argument("--limit", type=int, help="the first N prompts (default: all)")
    b.add_argument("--turns", type=int, default=1, choices=[1, 2])
    b.add_argument("--methods", default="vanilla,subspec", help="vanilla, subspec or both (default both)")
    b.add_argument("--max-new-tokens", type=int, default=128)
    b.add_argument("--temperature", type=cli_types.non_negative, default=0.0)
    b.add_argument("--top-p", type=float, default=1.0)
    b.add_argument("--top-k", type=int, default=0)
    b.add_argument("--min-p", type=float, default=0.0)
    _penalty_options(b)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--json-out", help="write the results here as JSON (after every conversation)")
    _model_options(b)
    _subspec_options(b, sweep=True)
    b.set_defaults(func=cmd_bench)

    pr = sub.add_parser("profile", help="GPUs (NVML), RAM and CPU; with --measure, link bandwidth and matmul speed")
    pr.add_argument("--json", action="store_true")
    pr.add_argument("--measure", action="store_true", help="measure host-to-device bandwidth and matmul TFLOP/s")
    pr.set_defaults(func=cmd_profile)

    pl = sub.add_parser("plan", help="how a model would run here: split, substitute bits, tree, predicted speed")
    pl.add_argument("model", help="a store name, a model folder, a config.json, a .gguf file or a hub repo id "
                                  "(no weights needed: the catalogue's models offline, others' config.json "
                                  "from the hub)")
    pl.add_argument("--vram-gb", type=cli_types.positive, help="plan for this much VRAM instead of what is free")
    pl.add_argument("--reserve-gb", type=cli_types.non_negative, default=0.5,
                    help="VRAM left for other programs (default 0.5)")
    pl.add_argument("--context", type=int, default=4096)
    pl.add_argument("--resident-layers", type=int, help="force the split (checked against the budget)")
    pl.add_argument("--json", action="store_true")
    pl.set_defaults(func=cmd_plan)

    sv = sub.add_parser("serve", help="an OpenAI-compatible API server (/v1/chat/completions, /v1/completions), "
                                      "and Ollama's API (/api/chat, /api/generate, /api/tags)")
    sv.add_argument("model", nargs="?", help="a store name or a model folder (default: SmolLM2-135M-Instruct)")
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    sv.add_argument("--port", type=int, default=8642, help="port (default 8642; 0 picks a free one)")
    sv.add_argument("--api-key", help="require 'Authorization: Bearer KEY' (default: $SUBSPEC_API_KEY, else none)")
    sv.add_argument("--method", choices=["vanilla", "subspec"],
                    help="decoding method (default: subspec on CUDA, vanilla on the CPU)")
    sv.add_argument("--cors-origin", action="append", metavar="ORIGIN",
                    help="let web pages at ORIGIN (e.g. https://chat.example.com; '*': any) call the API from a "
                         "browser; pages on this machine (localhost) and desktop apps may already. Repeatable")
    sv.add_argument("--queue", type=int, default=16,
                    help="requests that may wait while one generates; beyond that, 429 (default 16)")
    _model_options(sv)
    _subspec_options(sv, sweep=False)
    sv.set_defaults(func=cmd_serve)

    c = sub.add_parser("chat", help="a conversation in the terminal (Ctrl+C stops an answer, Ctrl+D leaves)")
    c.add_argument("model", nargs="?", help="a store name or a model folder (default: SmolLM2-135M-Instruct)")
    c.add_argument("--system", help="system prompt (/system changes it during the chat)")
    c.add_argument("--max-new-tokens", type=int, default=512, help="the longest answer (default 512)")
    _answer_options(c)
    c.add_argument("--method", choices=["vanilla", "subspec"],
                   help="decoding method (default: subspec on CUDA, vanilla on the CPU)")
    _model_options(c)
    _subspec_options(c, sweep=False)
    c.set_defaults(func=cmd_chat)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except SubspecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
