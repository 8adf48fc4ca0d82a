"""A GGUF file's header (metadata and tensor table) read from a stream of bytes: what a download needs to
know before fetching gigabytes, through one HTTP request that stops after the header (a few MB: mostly the
tokenizer's vocabulary). The format (ggml's docs/gguf.md, little-endian):

    magic "GGUF", u32 version (2 or 3), u64 tensor count, u64 metadata count,
    metadata: key (u64 length + UTF-8), u32 type, value (scalar, string, or array: u32 type, u64 count, items),
    tensors: name, u32 dimension count, u64 dimensions, u32 ggml type, u64 offset.

Only scalars and strings are kept; arrays (the vocabulary, its merges) are skipped as they stream by."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Callable, Iterator

from .errors import SubspecError

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
STRING, ARRAY = 8, 9
MAX_STRING = 1 << 26  # a longer "string" means a damaged or hostile header
MAX_ITEMS = 1 << 26  # so does a longer array (a vocabulary has a few hundred thousand entries)
MAX_HEADER = 256 << 20  # and a header past this (a 256k-token vocabulary with its merges is about 10 MB)


@dataclass(frozen=True)
class GGUFHeader:
    metadata: dict  # scalars and strings only
    tensors: dict  # name -> number of elements
    shapes: dict  # name -> dimensions, innermost first (GGUF's order)

    @property
    def architecture(self) -> str | None:
        return self.metadata.get("general.architecture")

    @property
    def elements(self) -> int:
        return sum(self.tensors.values())


def config_from_header(header: GGUFHeader, name: str) -> dict:
    """The fields of a Hugging Face config.json the planner needs, from a GGUF's metadata and tensor table
    (llama.cpp's keys: <arch>.block_count, .embedding_length, ...): a GGUF-only repo planned before any
    weights come. Only the first part's header is needed (it holds the metadata and the embeddings)."""
    arch = header.architecture
    meta = header.metadata
    if not isinstance(arch, str) or not arch:
        raise SubspecError(f"{name}: its GGUF metadata names no general.architecture")

    def key(k, default=None, kind=int):
        value = meta.get(f"{arch}.{k}", default)
        if value is None:
            raise SubspecError(f"{name}: its GGUF metadata has no {arch}.{k}")
        if kind is int and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
            raise SubspecError(f"{name}: its GGUF metadata {arch}.{k} is {value!r}, not a positive count")
        if kind is float and (not isinstance(value, (int, float)) or value <= 0):
            raise SubspecError(f"{name}: its GGUF metadata {arch}.{k} is {value!r}, not a positive number")
        return value

    embed = header.shapes.get("token_embd.weight")
    vocab = meta.get(f"{arch}.vocab_size") or (embed[1] if embed and len(embed) == 2 else None)
    if not isinstance(vocab, int) or vocab <= 0:
        raise SubspecError(f"{name}: its GGUF says neither {arch}.vocab_size nor the embeddings' shape")
    heads = key("attention.head_count")
    config = {"model_type": arch, "vocab_size": int(vocab), "hidden_size": key("embedding_length"),
              "intermediate_size": key("feed_forward_length"), "num_hidden_layers": key("block_count"),
              "num_attention_heads": heads, "num_key_value_heads": key("attention.head_count_kv", heads),
              "rms_norm_eps": key("attention.layer_norm_rms_epsilon", 1e-6, float),
              "rope_theta": key("rope.freq_base", 10000.0, float),
              "max_position_embeddings": key("context_length", 4096),
              # A split GGUF may hold the head in a later part, unseen here: counted untied then (the
              # larger plan, never one that does not fit).
              "tie_word_embeddings": "output.weight" not in header.tensors and meta.get("split.count", 1) == 1}
    if f"{arch}.attention.key_length" in meta:
        config["head_dim"] = key("attention.key_length")
    return config


class _Stream:
    """Exact reads over an iterator of byte chunks (an HTTP body, or a file read in blocks)."""

    def __init__(self, chunks: Iterator[bytes], name: str, limit: int = MAX_HEADER):
        self.chunks, self.name, self.limit = chunks, name, limit
        self.buf, self.pos, self.consumed = b"", 0, 0

    def read(self, n: int) -> bytes:
        self.consumed += n
        if self.consumed > self.limit:
            raise SubspecError(f"{self.name}: the GGUF header goes on past {self.limit >> 20} MB; it is damaged")
        while len(self.buf) - self.pos < n:
            try:
                chunk = next(self.chunks)
            except StopIteration:
                raise SubspecError(f"{self.name}: the GGUF header ends early (truncated or not a GGUF)") from None
            self.buf = self.buf[self.pos:] + chunk
            self.pos = 0
        out = self.buf[self.pos: self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str):
        return struct.unpack(fmt, self.read(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        n = self.unpack("<Q")
        if n > MAX_STRING:
            raise SubspecError(f"{self.name}: a GGUF string of {n} bytes; the header is damaged")
        return self.read(n).decode("utf-8", errors="replace")


def _value(s: _Stream, kind: int, keep: bool = True):
    if kind in _SCALARS:
        return s.unpack(_SCALARS[kind])
    if kind == STRING:
        return s.string()
    if kind == ARRAY:
        item, count = s.unpack("<I"), s.unpack("<Q")
        if count > MAX_ITEMS:
            raise SubspecError(f"{s.name}: a GGUF array of {count} items; the header is damaged")
        if item in _SCALARS:  # skipped in one read
            s.read(struct.calcsize(_SCALARS[item]) * count)
        else:
            for _ in range(count):
                _value(s, item, keep=False)
        return None
    raise SubspecError(f"{s.name}: unknown GGUF value type {kind}; the header is damaged")


def read_header(chunks: Iterator[bytes], name: str, limit: int = MAX_HEADER) -> GGUFHeader:
    """The header of the GGUF whose bytes `chunks` yields, from its first byte; reads no further, and
    refuses a header longer than `limit` bytes."""
    s = _Stream(iter(chunks), name, limit)
    if s.read(4) != b"GGUF":
        raise SubspecError(f"{name} is not a GGUF file")
    version = s.unpack("<I")
    if version not in (2, 3):
        raise SubspecError(f"{name}: GGUF version {version} is not supported (big-endian or too new)")
    tensors_count, kv_count = s.unpack("<Q"), s.unpack("<Q")
    metadata = {}
    for _ in range(kv_count):
        key, kind = s.string(), s.unpack("<I")
        value = _value(s, kind)
        if value is not None:
            metadata[key] = value
    tensors, shapes = {}, {}
    for _ in range(tensors_count):
        tname, dims = s.string(), s.unpack("<I")
        shape = tuple(s.unpack("<Q") for _ in range(dims))
        s.unpack("<I")  # ggml type
        s.unpack("<Q")  # offset
        elements = 1
        for d in shape:
            elements *= d
        tensors[tname], shapes[tname] = elements, shape
    return GGUFHeader(metadata, tensors, shapes)


def file_chunks(path, block: int = 1 << 20) -> Callable[[], Iterator[bytes]]:
    """A local file's bytes in blocks (the same parser on a file as on a download)."""
    def gen():
        with open(path, "rb") as f:
            while chunk := f.read(block):
                yield chunk
    return gen
