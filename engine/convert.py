"""The substitute cache: HQQ-quantizing a big model's layers takes minutes, so each layer's substitutes are
built once and kept on disk, keyed by the weights' checksum, the bits, the group size and hqq's version.

One file per decoder layer (`layer-0007.pt`: that layer's packed weights and hqq metadata), written
atomically, so a conversion that is cancelled or killed keeps the layers it finished and the next load or
`subspec models convert` only builds the rest. Loading a model's draft reads what is cached and writes
back what it had to build (write-through), so the second load of a model is fast even without a convert.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import files as fs, store
from .errors import SubspecError

FORMAT = 1  # bump when the file layout changes: old caches are then simply not found


class ConvertCancelled(SubspecError):
    pass


def cache_root() -> Path:
    d = store.store_root() / "cache" / "substitutes"
    d.mkdir(parents=True, exist_ok=True)
    return d


def weights_hash(folder: Path) -> str:
    """sha256 over the model's safetensors files, computed once: a store model keeps it in its manifest
    (or derives it from the checksums its download verified); a plain folder's is remembered in the cache
    with each file's size and modification time, and computed again only when one of those changes."""
    from .loading import safetensors_files

    folder = Path(folder).resolve()
    manifest = store.read_manifest(folder)
    if manifest and manifest.get("weights_sha256"):
        return manifest["weights_sha256"]
    files = safetensors_files(folder)
    fingerprint = {f.name: [f.stat().st_size, f.stat().st_mtime_ns] for f in files}
    memo_file = cache_root() / "weights-hashes.json"
    memo = _read_json(memo_file) if manifest is None else {}
    known_folder = memo.get(str(folder)) or {}
    if known_folder.get("files") == fingerprint:
        return known_folder["sha256"]
    checksums = (manifest or {}).get("checksums") or {}
    h = hashlib.sha256()
    for f in files:
        known = checksums.get(f.name, "")
        if not known.startswith("sha256:"):
            known = f"sha256:{store.hash_file(f, hashlib.sha256())}"
        h.update(f"{f.name}:{known}\n".encode())
    digest = h.hexdigest()
    if manifest is not None:
        manifest["weights_sha256"] = digest
        _write_json(folder / store.MANIFEST, manifest)
    else:
        memo[str(folder)] = {"files": fingerprint, "sha256": digest}
        _write_json(memo_file, memo)
    return digest


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")  # a kill mid-write leaves the old file whole
    tmp.write_text(json.dumps(data, indent=2), encoding="utf-8")
    fs.replace(tmp, path)


def _hqq_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("hqq")
    except PackageNotFoundError:
        return "unknown"


@dataclass(frozen=True)
class SubstituteCache:
    folder: Path

    @classmethod
    def for_model(cls, model_folder: Path, nbits: int, group_size: int, dtype) -> SubstituteCache:
        # hqq quantizes in the model's compute dtype: a float32 and a bf16 load get different scales.
        dtype = str(dtype).replace("torch.", "")
        key = f"{weights_hash(model_folder)}|{nbits}|{group_size}|{dtype}|hqq-{_hqq_version()}|v{FORMAT}"
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        name = f"{Path(model_folder).name[:40]}-{nbits}bit-g{group_size}-{dtype}-{digest}"
        folder = cache_root() / name
        folder.mkdir(parents=True, exist_ok=True)
        if not (folder / "key.json").is_file():
            _write_json(folder / "key.json", {"key": key, "model": str(model_folder)})
        return cls(folder)

    def _path(self, layer: int) -> Path:
        return self.folder / f"layer-{layer:04d}.pt"

    def has(self, layer: int) -> bool:
        return self._path(layer).is_file()

    def cached_layers(self) -> list[int]:
        return sorted(int(p.stem.split("-")[1]) for p in self.folder.glob("layer-*.pt"))

    def load(self, layers, device=None) -> dict:
        """{(layer, linear_name): (packed, meta)} for the cached ones among `layers`."""
        import torch

        out = {}
        for i in layers:
            if not self.has(i):
                continue
            try:
                saved = torch.load(self._path(i), map_location=device, weights_only=True)
            except Exception:  # a damaged cache file only costs a rebuild of that layer
                self._path(i).unlink(missing_ok=True)
                continue
            out.update({(i, name): (packed, meta) for name, (packed, meta) in saved.items()})
        return out

    def save_layer(self, layer: int, substitutes: dict) -> None:
        """`substitutes`: {linear_name: SubstituteLinear}; tensors go to the CPU first."""
        import torch

        data = {name: (s.packed.cpu(), {k: (v.cpu() if isinstance(v, torch.Tensor) else v)
                                        for k, v in s.meta.items()})
                for name, s in substitutes.items()}
        tmp = self._path(layer).with_suffix(".tmp")
        torch.save(data, tmp)
        fs.replace(tmp, self._path(layer))

    @property
    def size_bytes(self) -> int:
        return store.folder_size(self.folder)


def layer_substitutes(draft, layer: int) -> dict:
    from .model import LINEAR_NAMES
    from .substitute import SubstituteLinear

    out = {}
    for name in LINEAR_NAMES:
        owner, leaf = name.split(".")
        module = getattr(getattr(draft.layers[layer], owner), leaf)
        if isinstance(module, SubstituteLinear):
            out[name] = module
    return out


def build_draft_cached(lm, nbits=4, group_size: int = 64, layers=None,
                       progress: Callable[[int, int], None] | None = None,
                       cancel: threading.Event | None = None, use_cache: bool = True):
    """`lm.decoder`'s draft, its substitutes read from the cache where present, built (and cached)
    where not. `nbits`: one width, or {layer: bits} (a plan's mixed draft: each width has its own
    cache). `cancel` is checked between layers; what was finished stays cached."""
    from .substitute import build_draft, layer_bits, merge_launches, merges_launches

    target = lm.decoder
    chosen = sorted(set(range(len(target.layers)) if layers is None else layers))
    bits = layer_bits(nbits, chosen)
    if not use_cache:
        return build_draft(target, bits, group_size, chosen, progress, lm.device)
    caches = {b: SubstituteCache.for_model(lm.path, b, group_size, lm.dtype) for b in sorted(set(bits.values()))}
    quantized = {}
    for b, cache in caches.items():
        quantized.update(cache.load([i for i in chosen if bits[i] == b], lm.device))
    hits = {i for i, _ in quantized}
    merge = merges_launches(lm.device)
    draft = build_draft(target, bits, group_size, [], None, lm.device, merge=merge)  # shares every target module
    for n, i in enumerate(chosen):
        # One layer at a time, so that each finished layer is cached before the next one starts.
        draft.layers[i] = build_draft(target, bits, group_size, [i], None, lm.device,
                                      quantized=quantized, merge=False).layers[i]
        if i not in hits:
            caches[bits[i]].save_layer(i, layer_substitutes(draft, i))
        if merge:
            merge_launches(draft.layers[i], draft.fused_ops)
        if progress:
            progress(n + 1, len(chosen))
        if cancel is not None and cancel.is_set() and n + 1 < len(chosen):
            raise ConvertCancelled(f"conversion cancelled after {n + 1}/{len(chosen)} layers; "
                                   f"those stay cached")
    draft.substituted_layers = tuple(chosen)
    draft.substitute_bits = bits
    return draft


def planned_bits(model_folder: Path, hardware: dict | None = None) -> dict[int, int]:
    """{layer: bits} for every layer, as a load here would build its draft: the plan's bits for the layers it
    streams (8-bit where memory allows) and engine.loading's default width for the rest (a hardware panel
    override or an out-of-memory back-off may stream them too). Without CUDA there is no plan: the default
    width everywhere. `hardware`: a profile (default: probe this machine)."""
    from .config import ModelConfig
    from .hardware import probe
    from .loading import DEFAULT_DRAFT_BITS
    from .planner import PlanError, make_plan

    config = ModelConfig.from_file(model_folder)
    bits = {i: DEFAULT_DRAFT_BITS for i in range(config.num_layers)}
    hardware = probe() if hardware is None else hardware
    if (hardware.get("cuda") or {}).get("available"):
        try:
            bits.update(make_plan(config, hardware).draft_bits or {})
        except PlanError:
            pass  # does not fit here at all: the default width, for a machine where it does
    return bits


def convert(model_folder: Path, nbits, group_size: int = 64,
            progress: Callable[[int, int], None] | None = None, cancel: threading.Event | None = None,
            dtype: str = "auto") -> list[SubstituteCache]:
    """Build and cache every layer's substitutes of a stored model (`subspec models convert`): `nbits` for
    all, or {layer: bits} (`planned_bits`: what a load here will use). Returns the caches
    written, one per width. `dtype` "auto" is what loads compute in here (bfloat16 with CUDA, float32
    without): hqq quantizes in the compute dtype, so a cache built for another dtype would not be found."""
    import torch

    from .loading import load_model

    if dtype == "auto":
        dtype = "bfloat16" if torch.cuda.is_available() else "float32"
    lm = load_model(model_folder, dtype=dtype, device="cpu")
    draft = build_draft_cached(lm, nbits, group_size, None, progress, cancel)
    return [SubstituteCache.for_model(lm.path, b, group_size, lm.dtype)
            for b in sorted(set(draft.substitute_bits.values()), reverse=True)]


def caches_for(model_folder: Path) -> list[Path]:
    prefix = Path(model_folder).name[:40] + "-"
    return [p for p in cache_root().iterdir() if p.is_dir() and p.name.startswith(prefix)
            and _read_json(p / "key.json").get("model") == str(model_folder)]


def remove_caches(model_folder: Path) -> int:
    freed = 0
    for p in caches_for(model_folder):
        freed += store.folder_size(p)
        fs.rmtree(p, ignore_errors=True)
    return freed
