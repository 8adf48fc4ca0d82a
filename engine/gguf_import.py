"""GGUF -> a Hugging Face model folder (safetensors bf16, config, tokenizer), one tensor at a time.

transformers' own GGUF path (`from_pretrained(gguf_file=...)`) dequantizes every tensor to float32 into
one state dict, builds a float32 model from it, and only then can it be cast and saved: on a 0.9B GGUF
(benchmarks/gguf_import_memory.py) that peaked at 4.45 GiB against 1.17 GiB here, and it grows with the
model (about 30 GiB for a 7B's 15 GB of bf16, extrapolated). Running out of memory there kills the
process: the app, with the user's conversation.

Here the GGUF is read through its memory map and each tensor is dequantized, un-permuted and cast on its
own, then written straight into safetensors shards planned up front from the tensors' sizes (each file's
header first, then its tensors block by block). Beside the GGUF's parsed metadata, RAM holds one block
of rows (16M values: 64 MB of float32 and 32 MB of bf16) or one small tensor; only Llama's q and k
projections come whole, as their un-permutation spans all their rows (a 70B's q: 268 MB of float32).
The arithmetic and the names are transformers' and gguf's own (gguf's dequantizer and name table,
transformers' tensor processor), so the result equals the whole-model conversion bit for bit; the suite
checks that on SmolLM2. A cancel is seen between tensors.

A split GGUF (llama.cpp's gguf-split, or its converter's --split-max-size: NAME-00001-of-00003.gguf and so
on, the usual way big models are published) is imported whole from whichever part is picked: the first
part holds the metadata, every part some of the tensors."""

from __future__ import annotations

import contextlib
import copy
import json
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .errors import SubspecError

SHARD_BYTES = 1 << 30  # a new file when the next tensor would take one past 1 GiB (a bigger tensor: its own)
GGUF_ARCHITECTURES = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "mistral": "mistral"}
OUT_DTYPE_BYTES = 2  # bfloat16
ROW_BLOCK_ELEMENTS = 1 << 24  # a big tensor is dequantized 16M values (64 MB of float32) at a time
SPLIT_NAME = re.compile(r"^(?P<stem>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})(?P<suffix>\.gguf)$", re.IGNORECASE)


class ImportCancelled(SubspecError):
    """The user stopped an import; nothing was installed."""


def check_cancel(cancel: threading.Event | None, source: Path) -> None:
    """ImportCancelled when the user has asked the import of `source` to stop."""
    if cancel is not None and cancel.is_set():
        raise ImportCancelled(f"import of {source.name} cancelled; nothing was installed")


def _out_bytes(t) -> int:
    """A GGUF tensor's size once converted (bf16), known before it is read."""
    return int(t.n_elements) * OUT_DTYPE_BYTES


@dataclass(frozen=True)
class Progress:
    done_bytes: int  # bfloat16 bytes written so far
    total_bytes: int
    tensors_done: int
    tensors: int

    @property
    def fraction(self) -> float:
        return self.done_bytes / self.total_bytes if self.total_bytes else 1.0


def _reader(path: Path):
    """A GGUFReader over `path`; a file the parser cannot read is a clear error."""
    try:
        from gguf import GGUFReader

        return GGUFReader(str(path))
    except Exception as exc:  # the GGUF parser raises many types on a damaged file; all mean the same here
        raise SubspecError(f"corrupt or truncated GGUF file {path.name}: {type(exc).__name__}: {exc}") from exc


def _field(reader, key: str, path: Path):
    """A scalar metadata value, or None where the file does not have it."""
    field = reader.fields.get(key)
    if field is None:
        return None
    try:
        return field.contents()
    except Exception as exc:
        raise SubspecError(f"corrupt GGUF metadata {key} in {path.name}: {exc}") from exc


def split_parts(path: Path) -> list[Path]:
    """Every file of the GGUF `path` belongs to, in order: [path] for a single file, all the parts of a
    split one (NAME-0000i-of-0000n.gguf, whichever part was picked). A missing part is refused up front,
    before the hours a big conversion takes."""
    path = Path(path)
    match = SPLIT_NAME.match(path.name)
    if match is None:
        return [path]
    count = int(match["count"])
    if not 1 <= int(match["no"]) <= count:
        raise SubspecError(f"{path.name}: part {int(match['no'])} of {count} does not exist")
    width_no, width_count = len(match["no"]), len(match["count"])
    parts = [path.with_name(f"{match['stem']}-{i:0{width_no}d}-of-{count:0{width_count}d}{match['suffix']}")
             for i in range(1, count + 1)]
    missing = [p.name for p in parts if not p.is_file()]
    if missing:
        raise SubspecError(f"{path.name} is one of {count} parts of a split GGUF, and {len(missing)} "
                           f"{'is' if len(missing) == 1 else 'are'} not in {path.parent}: "
                           f"{', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}. "
                           f"Download every part into the same folder.")
    return parts


def model_name(path: Path) -> str:
    """The store's name for a GGUF: the file's stem without its quantization (.Q4_K_M) or part suffix."""
    path = Path(path)
    match = SPLIT_NAME.match(path.name)
    stem = match["stem"] if match else path.stem
    return stem.split(".Q")[0]


def read_parts(path: Path):
    """([(GGUFReader, part path)] in order, architecture) of the (possibly split) GGUF at `path`. The parts
    must agree with their metadata: each its own split.no, the count, the total of tensors."""
    parts = split_parts(path)
    reader, arch = read_architecture(parts[0])
    readers = [(reader, parts[0])] + [(_reader(p), p) for p in parts[1:]]
    declared = _field(reader, "split.count", parts[0])
    if declared is None and len(parts) == 1:
        return readers, arch
    if declared is None:
        raise SubspecError(f"{parts[0].name} is named as the first of {len(parts)} parts of a split GGUF, but its "
                           f"metadata has no split.count: not a split llama.cpp can write")
    if declared != len(parts):
        if len(parts) == 1:
            raise SubspecError(f"{path.name} is the first of {declared} parts of a split GGUF, but its name does "
                               f"not say so (parts are named NAME-00001-of-{declared:05d}.gguf and so on): "
                               f"give the parts back their names, all in one folder")
        raise SubspecError(f"{parts[0].name} says the GGUF has {declared} parts; its name says {len(parts)}")
    for i, (r, p) in enumerate(readers):
        if _field(r, "split.no", p) != i:
            raise SubspecError(f"{p.name} is not part {i + 1} of this split GGUF (its metadata says part "
                               f"{_field(r, 'split.no', p)} counting from 0)")
    total = _field(reader, "split.tensors.count", parts[0])
    found = sum(len(r.tensors) for r, _ in readers)
    if total is not None and found != total:
        raise SubspecError(f"the {len(parts)} parts of {parts[0].name} hold {found} tensors; the first says {total}")
    return readers, arch


def read_architecture(path: Path):
    """(GGUFReader, architecture) of a GGUF file; a file the parser cannot read is a clear error."""
    reader = _reader(path)
    try:
        field = reader.fields["general.architecture"]
        arch = bytes(field.parts[field.data[0]]).decode()
    except Exception as exc:
        raise SubspecError(f"corrupt or truncated GGUF file {path.name}: {type(exc).__name__}: {exc}") from exc
    if arch not in GGUF_ARCHITECTURES:
        from .config import SUPPORTED_ARCHITECTURES

        raise SubspecError(f"unsupported architecture {arch!r} in {path.name}; "
                           f"supported: {', '.join(sorted(SUPPORTED_ARCHITECTURES))}")
    return reader, arch


_METADATA_LOCK = threading.Lock()


@contextlib.contextmanager
def _metadata_parsed_once():
    """transformers parses a GGUF's whole metadata for AutoConfig and again for AutoTokenizer (to choose the
    tokenizer's class): 3-6 s each on SmolLM2's 49k-token vocabulary, more on bigger ones. Within this
    block each file's metadata is parsed once and handed out as copies (callers may change what they get).
    The patch is transformers' own module attribute, which both look up when called; if a version moves
    it, this does nothing and both parse as before. One import at a time holds it (the lock), so a patch
    is never saved as the original by another."""
    with _METADATA_LOCK:
        try:
            from transformers import modeling_gguf_pytorch_utils as module
        except ImportError:
            yield
            return
        original = getattr(module, "load_gguf_checkpoint", None)
        if original is None:
            yield
            return
        parsed: dict[str, dict] = {}

        def once(path, return_tensors=False, **kwargs):
            if return_tensors or kwargs:
                return original(path, return_tensors=return_tensors, **kwargs)
            key = str(path)
            if key not in parsed:
                parsed[key] = original(path, return_tensors=False)
            return copy.deepcopy(parsed[key])

        module.load_gguf_checkpoint = once
        try:
            yield
        finally:
            module.load_gguf_checkpoint = original


def _hf_config_and_tokenizer(path: Path):
    """The model's config and tokenizer from the GGUF's metadata, through transformers (no tensors read)."""
    from transformers import AutoConfig, AutoTokenizer

    folder, fname = str(path.parent), path.name
    try:
        with _metadata_parsed_once():
            config = AutoConfig.from_pretrained(folder, gguf_file=fname)
            tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=fname)
    except (ValueError, OSError, KeyError, RuntimeError) as exc:
        raise SubspecError(f"transformers could not read {path.name}: {exc}") from exc
    return config, tokenizer


def _name_map(config, arch: str):
    """(the tensor processor transformers applies per architecture (Llama's q/k un-permutation), GGUF ->
    HF tensor names, {HF name: shape} of every tensor the saved model holds) for this config.

    The names come from gguf's own table, asked once for every parameter of the model (built on the meta
    device: no memory). transformers' `get_gguf_hf_weights_map` does the same but asks again for every
    submodule, rebuilding the table each time: seconds for a 30-layer model, more for deep ones. For the
    architectures imported here its top-level pass is the whole answer."""
    import torch
    from gguf import MODEL_ARCH_NAMES, get_tensor_name_map
    from transformers import AutoModelForCausalLM
    from transformers.modeling_gguf_pytorch_utils import TENSOR_PROCESSORS, TensorProcessor

    processor = TENSOR_PROCESSORS.get(arch, TensorProcessor)(config=config.to_dict())
    gguf_arch = next((key for key, value in MODEL_ARCH_NAMES.items() if value == config.model_type), None)
    if gguf_arch is None:
        raise SubspecError(f"the gguf package does not know the {config.model_type!r} architecture")
    table = get_tensor_name_map(gguf_arch, config.num_hidden_layers)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    params = skeleton.state_dict()
    names = {}
    for hf_name in params:
        base, _, suffix = hf_name.rpartition(".")
        gguf_name = table.get_name(base) if suffix in ("weight", "bias") else None
        if gguf_name is not None:
            names[f"{gguf_name}.{suffix}"] = hf_name
    if config.tie_word_embeddings:
        params.pop("lm_head.weight", None)  # saved once, as the embeddings (what save_pretrained writes)
    config.architectures = [type(skeleton).__name__]  # as a saved model's config.json names it
    return processor, names, {name: tuple(t.shape) for name, t in params.items()}


def _shards(tensors: list, limit: int) -> list[list]:
    """Group (name, gguf tensor) pairs in file order into shards of at most `limit` output bytes (a bigger
    tensor gets a shard of its own). Sizes are known before anything is dequantized."""
    shards: list[list] = []
    size = 0
    for item in tensors:
        nbytes = _out_bytes(item[1])
        if not shards or (size + nbytes > limit and shards[-1]):
            shards.append([])
            size = 0
        shards[-1].append(item)
        size += nbytes
    return shards


def _shard_name(i: int, n: int) -> str:
    return "model.safetensors" if n == 1 else f"model-{i + 1:05d}-of-{n:05d}.safetensors"


def _keeps_rows(processor, name: str) -> bool:
    """Whether transformers' processor leaves this tensor as it is (then it can be dequantized a block of
    rows at a time). Llama's un-permutes q and k across heads; the base processor changes nothing."""
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor, TensorProcessor

    if type(processor) is TensorProcessor:
        return True
    return type(processor) is LlamaTensorProcessor and ".attn_q." not in name and ".attn_k." not in name


def _bf16_blocks(t, processor, path: Path):
    """One GGUF tensor as transformers holds it (float32: dequantized, processed), rounded once to bf16,
    yielded as consecutive blocks of rows.

    A big tensor the processor keeps as it is comes ROW_BLOCK_ELEMENTS at a time, so neither its float32
    nor its bf16 is ever whole (a 152k-row embedding table: 2.2 GB and 1.1 GB for Qwen2.5-7B); any other
    tensor (Llama's q and k, un-permuted across their rows; small ones) comes whole."""
    import numpy as np
    import torch
    from gguf import dequantize

    def float32(w) -> torch.Tensor:
        # An F32 tensor comes back as a read-only view of the memory map: copied, as torch wants it writable.
        w = np.ascontiguousarray(w, dtype=np.float32)
        return torch.from_numpy(w if w.flags.writeable else w.copy())

    def dequantized(data) -> torch.Tensor:
        try:
            return float32(dequantize(data, t.tensor_type))
        except (ValueError, NotImplementedError, TypeError) as exc:
            raise SubspecError(f"cannot dequantize {t.name} ({t.tensor_type.name}) in {path.name}: {exc}") from exc

    rows = t.data.shape[0] if t.data.ndim == 2 else 0
    if rows and int(t.n_elements) > ROW_BLOCK_ELEMENTS and _keeps_rows(processor, t.name):
        step = max(1, ROW_BLOCK_ELEMENTS * rows // int(t.n_elements))
        for r in range(0, rows, step):
            yield dequantized(t.data[r:r + step]).to(torch.bfloat16)
        return
    result = processor.process(weights=dequantized(t.data).numpy(), name=t.name)
    if result.name != t.name:  # transformers maps the processed name; ours keep it (see _name_map)
        raise SubspecError(f"unexpected tensor renaming in {path.name}: {t.name} -> {result.name}")
    yield float32(result.weights).to(torch.bfloat16)


def _write_shard(file: Path, shard: list, shapes: dict, blocks: Callable, on_tensor: Callable) -> None:
    """A safetensors file written as it is converted: its header first (every shape and offset is known
    from the GGUF), then each tensor's bytes block by block, so no tensor needs to be whole in memory.
    The format: an 8-byte little-endian header length, the JSON header (padded with spaces to a multiple
    of 8), then the data; offsets are relative to the data's start."""
    import torch

    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, t in shard:
        nbytes = _out_bytes(t)
        header[name] = {"dtype": "BF16", "shape": list(shapes[name]), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(file, "wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw)
        for name, t in shard:
            written = 0
            for block in blocks(t):
                data = block.contiguous().view(torch.int16).numpy()  # bf16 bits, as safetensors stores them
                f.write(data.data)
                written += data.nbytes
            begin, end = header[name]["data_offsets"]
            if written != end - begin:  # the header promised these bytes
                raise SubspecError(f"{t.name}: converted to {written} bytes, expected {end - begin}")
            on_tensor(name, written)


def convert_gguf(path: Path, out: Path, say: Callable[[str], None] | None = None,
                 progress: Callable[[Progress], None] | None = None,
                 cancel: threading.Event | None = None, shard_bytes: int = SHARD_BYTES) -> None:
    """Write the GGUF at `path` into the (empty) folder `out` as a bf16 Hugging Face model folder.
    Raises SubspecError on a damaged or unsupported file, ImportCancelled when `cancel` is set (what was
    written stays in `out`, for the caller to delete)."""
    import torch
    from transformers import GenerationConfig
    from transformers.utils import logging as hf_logging

    say = say or (lambda _m: None)
    path, out = Path(path), Path(out)
    readers, arch = read_parts(path)
    first = readers[0][1]
    tensors = [(t, p) for reader, p in readers for t in reader.tensors]
    part_of = {t.name: p for t, p in tensors}

    hf_logging.disable_progress_bar()  # our own progress says what is happening
    check_cancel(cancel, path)
    if len(readers) > 1:
        say(f"{path.name} is one of {len(readers)} parts; importing them all")
    say(f"reading the metadata and tokenizer of {first.name} ...")
    config, tokenizer = _hf_config_and_tokenizer(first)
    # transformers decides tied embeddings by whether the file it reads holds output.weight; in a split
    # GGUF that file is only the first part, and the head may sit in a later one. The same rule over all
    # the parts (a model taken for tied would silently drop its head and answer through the embeddings).
    config.tie_word_embeddings = all(t.name != "output.weight" for t, _ in tensors)
    check_cancel(cancel, path)
    processor, names, shapes = _name_map(config, arch)
    # transformers maps a name after its processor has run; Llama's processor keeps names, so the map is
    # applied to the GGUF name (checked below: every wanted tensor must be found exactly once).
    chosen = [(names[t.name], t) for t, _ in tensors if names.get(t.name) in shapes]
    found = [n for n, _ in chosen]
    missing = sorted(set(shapes) - set(found))
    if missing or len(found) != len(set(found)):
        raise SubspecError(f"{path.name} does not hold the tensors a {config.model_type} model needs "
                           f"(missing: {', '.join(missing[:4]) or 'none'}; "
                           f"repeated: {len(found) - len(set(found))})")

    for name, t in chosen:  # a GGUF's dims are innermost first; a mismatch would only fail at load
        if tuple(int(d) for d in reversed(t.shape)) != shapes[name]:
            raise SubspecError(f"{path.name}: {t.name} is {list(reversed(t.shape.tolist()))} but its "
                               f"config makes {name} {list(shapes[name])}")
    shards = _shards(chosen, shard_bytes)
    total = sum(_out_bytes(t) for _, t in chosen)
    from .store import check_free_space

    check_free_space(out.parent, total, path.name)  # bf16 is 3-4x a 4-bit GGUF: say so before writing
    say(f"converting {len(chosen)} tensors of {path.name} to bf16 ({total / 1e9:.2f} GB) ...")
    state = Progress(0, total, 0, len(chosen))
    weight_map = {}

    def on_tensor(name: str, nbytes: int) -> None:
        nonlocal state
        state = Progress(state.done_bytes + nbytes, total, state.tensors_done + 1, state.tensors)
        if progress is not None:
            progress(state)

    def blocks(t):
        check_cancel(cancel, path)
        return _bf16_blocks(t, processor, part_of[t.name])

    for i, shard in enumerate(shards):
        fname = _shard_name(i, len(shards))
        weight_map.update((name, fname) for name, _ in shard)
        _write_shard(out / fname, shard, shapes, blocks, on_tensor)
    if len(shards) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2), encoding="utf-8")

    config.dtype = torch.bfloat16  # what the weights are stored as (config.json's "dtype")
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the stored weights are plain bf16
    config.save_pretrained(str(out))
    GenerationConfig.from_model_config(config).save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
