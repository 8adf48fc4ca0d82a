"""`subspec models search|download|catalogue|convert|du`: the model manager on the command line.
(list, info, import and remove live in cli.py with the rest of the store commands.)"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time

from . import cli_types
from .errors import SubspecError


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


def _eta(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60:02d}:{seconds % 60:02d}"


def cmd_search(args) -> int:
    from . import hub

    hits = hub.search(args.query, limit=args.limit, token_=args.token)
    if args.json:
        print(json.dumps([h.as_json() for h in hits], indent=2))
        return 0
    if not hits:
        print(f"No text-generation models match {args.query!r} on {hub.endpoint()}.")
        return 0
    print(f"{'REPO':56} {'DOWNLOADS':>10} {'LIKES':>6}  UPDATED")
    for h in hits:
        print(f"{h.repo_id:56} {h.downloads:>10} {h.likes:>6}  {h.updated[:10]}")
    return 0


class _ProgressLine:
    """One self-overwriting line on stderr; plain lines when stderr is not a terminal."""

    def __init__(self):
        self.tty = sys.stderr is not None and sys.stderr.isatty()
        self.last_state = ""
        self.last_print = 0.0

    def __call__(self, p) -> None:
        changed, self.last_state = p.state != self.last_state, p.state
        if p.message and (changed or p.state == "retrying"):
            self._line(f"{p.state}: {p.message}", final=True)
        if p.state != "downloading":
            return
        now = time.monotonic()
        if not self.tty and now - self.last_print < 5:
            return
        self.last_print = now
        pct = 100 * p.fraction
        self._line(f"{pct:5.1f}%  {human_bytes(p.done)} / {human_bytes(p.total)}  "
                   f"{human_bytes(p.bytes_per_s)}/s  ETA {_eta(p.eta_s)}  {p.file}")

    def _line(self, text: str, final: bool = False) -> None:
        if self.tty:
            print("\r\033[K" + text, end="\n" if final else "", file=sys.stderr, flush=True)
        else:
            print(text, file=sys.stderr, flush=True)


def cmd_download(args) -> int:
    from .download import Download, DownloadCancelled

    job = Download(args.repo_id, revision=args.revision, name=args.name, token=args.token,
                   on_progress=_ProgressLine(), gguf=args.gguf)
    # Ctrl-C pauses (the partial files stay; the same command resumes). The download runs on a thread so
    # that the signal lands here at once, not after a blocking read.
    result: dict = {}

    def work():
        try:
            result["info"] = job.run()
        except BaseException as exc:  # handed to the main thread, which reports it
            result["error"] = exc

    t = threading.Thread(target=work, name="download", daemon=True)
    t.start()
    try:
        while t.is_alive():
            t.join(0.2)
    except KeyboardInterrupt:
        job.pause()
        t.join()
    print(file=sys.stderr)
    if "error" in result:
        exc = result["error"]
        if isinstance(exc, DownloadCancelled):
            print(f"{exc}", file=sys.stderr)
            return 130
        raise exc
    info = result["info"]
    print(f"installed {info.name} ({info.architecture}, {human_bytes(info.size_bytes)}) into {info.path}")
    return 0


def cmd_catalogue(args) -> int:
    from .catalogue import CATALOGUE, estimate
    from .hardware import hypothetical_gpu, probe

    hardware = probe()
    if args.vram_gb is not None and not hardware["cuda"]["available"]:
        hardware = hypothetical_gpu(hardware, args.vram_gb)
    rows = [(e, estimate(e, hardware, vram_gb=args.vram_gb, reserve_gb=args.reserve_gb)) for e in CATALOGUE]
    if args.json:
        print(json.dumps([{"repo_id": e.repo_id, "title": e.title, "note": e.note, "gated": e.gated,
                           "parameters": e.parameters, "size_bytes": e.size_bytes, "estimate": f.as_json()}
                          for e, f in rows], indent=2))
        return 0
    where = f"a {args.vram_gb:g} GB GPU" if args.vram_gb else "this machine"
    print(f"Recommended chat models, and how each would run on {where}:")
    print(f"{'REPO':38} {'PARAMS':>7} {'SIZE':>9}  {'FITS':4}  ESTIMATE")
    for e, f in rows:
        print(f"{e.repo_id:38} {e.parameters / 1e9:>6.1f}B {human_bytes(e.size_bytes):>9}  "
              f"{'yes' if f.fits else 'no':4}  {f.summary}")
    return 0


def cmd_convert(args) -> int:
    from .convert import ConvertCancelled, convert, planned_bits
    from .store import get_model
    from .substitute import bits_label

    info = get_model(args.name)
    cancel = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda *_: cancel.set())  # stop after the current layer
    started = time.perf_counter()

    bits = planned_bits(info.path) if args.bits is None else args.bits
    label = bits_label(bits)

    def progress(done, total):
        print(f"\rbuilding {label} g{args.group_size} substitutes: layer {done}/{total}", end="",
              file=sys.stderr, flush=True)

    try:
        caches = convert(info.path, bits, args.group_size, progress, cancel, dtype=args.dtype)
    except ConvertCancelled as exc:
        print(f"\n{exc}", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGINT, previous)
    print(file=sys.stderr)
    for cache in caches:
        print(f"cached {len(cache.cached_layers())} layers of substitutes ({human_bytes(cache.size_bytes)}) in "
              f"{cache.folder}")
    print(f"done in {time.perf_counter() - started:.1f} s")
    return 0


def disk_use() -> dict:
    from . import convert, download, store

    models = [{"name": m.name, "bytes": m.size_bytes,
               "substitute_cache_bytes": sum(store.folder_size(p) for p in convert.caches_for(m.path))}
              for m in store.list_models()]
    partial = [{"repo_id": p.repo_id, "bytes": store.folder_size(p.folder), "of_bytes": p.total_bytes}
               for p in download.partial_downloads()]
    cache_total = store.folder_size(convert.cache_root())
    total = sum(m["bytes"] for m in models) + sum(p["bytes"] for p in partial) + cache_total
    return {"root": str(store.store_root()), "models": models, "partial_downloads": partial,
            "substitute_cache_bytes": cache_total, "total_bytes": total,
            "free_bytes": download.free_bytes(store.store_root())}


def cmd_du(args) -> int:
    du = disk_use()
    if args.json:
        print(json.dumps(du, indent=2))
        return 0
    print(f"{'MODEL':40} {'WEIGHTS':>10} {'SUBSTITUTES':>12}")
    for m in du["models"]:
        print(f"{m['name']:40} {human_bytes(m['bytes']):>10} {human_bytes(m['substitute_cache_bytes']):>12}")
    for p in du["partial_downloads"]:
        print(f"{p['repo_id'] + ' (partial download)':40} {human_bytes(p['bytes']):>10} "
              f"{'of ' + human_bytes(p['of_bytes']):>12}")
    print(f"total {human_bytes(du['total_bytes'])} in {du['root']} "
          f"(substitute cache {human_bytes(du['substitute_cache_bytes'])}); "
          f"{human_bytes(du['free_bytes'])} free on that disk")
    return 0


def remove_partial(repo_id: str) -> int:
    from .download import discard_partial

    from .download import partial_downloads

    had = [p for p in partial_downloads() if p.repo_id == repo_id]
    freed = discard_partial(repo_id)
    if not freed:
        if had:
            raise SubspecError(f"the partial download of {repo_id} is running right now: stop it first")
        raise SubspecError(f"no model and no partial download named {repo_id!r}")
    print(f"removed the partial download of {repo_id} ({human_bytes(freed)} freed)")
    return 0


def add_commands(msub) -> None:
    m = msub.add_parser("search", help="search the Hugging Face hub for text-generation models")
    m.add_argument("query")
    m.add_argument("--limit", type=int, default=20)
    m.add_argument("--token", help="a hub token (default: HF_TOKEN or `hf auth login`)")
    m.add_argument("--json", action="store_true")
    m.set_defaults(func=cmd_search)
    m = msub.add_parser("download", help="download a model from the hub (resumes; Ctrl-C pauses)")
    m.add_argument("repo_id", help="like Qwen/Qwen2.5-7B-Instruct")
    m.add_argument("--revision", help="a branch, tag or commit (default: main)")
    m.add_argument("--name", help="the name in the store (default: the repo's name; a GGUF's file name)")
    m.add_argument("--token", help="for gated or private models (default: HF_TOKEN or `hf auth login`)")
    m.add_argument("--gguf", metavar="QUANT",
                   help="for a repo of GGUF files: which one, by name or a part of it such as Q8_0 (every part "
                        "of a split one is downloaded); it is converted to bf16 once verified. Without it, "
                        "such a repo lists its GGUFs")
    m.set_defaults(func=cmd_download)
    m = msub.add_parser("catalogue", help="recommended models and whether each fits this machine")
    m.add_argument("--vram-gb", type=cli_types.positive, help="plan for a GPU of this many GB instead of this machine's")
    m.add_argument("--reserve-gb", type=cli_types.non_negative, default=0.5, help="VRAM kept free for other programs")
    m.add_argument("--json", action="store_true")
    m.set_defaults(func=cmd_catalogue)
    m = msub.add_parser("convert", help="build a model's substitutes once and cache them (Ctrl-C stops; "
                                        "finished layers stay cached)")
    m.add_argument("name")
    m.add_argument("--bits", type=int, choices=(2, 3, 4, 8),
                   help="one width for every layer (default: what loads here use: the plan's, 8-bit for the "
                        "streamed layers where VRAM allows, else 4)")
    m.add_argument("--group-size", type=cli_types.group_size, default=64, help="HQQ group size, a multiple of 8 (default 64)")
    m.add_argument("--dtype", default="auto", choices=("auto", "bfloat16", "float16", "float32"),
                   help="compute dtype the substitutes are built for (auto: what loads use here, "
                        "bfloat16 with CUDA, float32 without)")
    m.set_defaults(func=cmd_convert)
    m = msub.add_parser("du", help="disk use per model, substitute cache and partial downloads")
    m.add_argument("--json", action="store_true")
    m.set_defaults(func=cmd_du)
