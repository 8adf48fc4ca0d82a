"""Load a Hugging Face model folder into our Decoder: config.json, safetensors (sharded or not), tokenizer.

Weights are read tensor by tensor from memory-mapped files straight into a model built on the meta device,
so RAM never holds a second full copy of the checkpoint.
"""

from __future__ import annotations

import functools
import gc
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .config import ModelConfig, streamed_layers
from .errors import SubspecError
from .model import Decoder, rope_inverse_frequencies
from .planner import PREFILL_CHUNK

DEFAULT_DRAFT_BITS = 4  # the paper's substitutes; a plan raises layers to 8-bit where memory allows
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def safetensors_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (OSError, json.JSONDecodeError, KeyError) as exc:
            raise SubspecError(f"bad shard index {index}: {exc}") from exc
        files = [folder / n for n in names]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise SubspecError(f"shards listed in {index.name} are missing: {', '.join(missing)}")
        return files
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise SubspecError(f"no .safetensors weights in {folder}")
    return files


def check_safetensors(path: Path) -> dict:
    """Validate a safetensors file's header against its size (catches truncation and corruption cheaply).

    Returns {name: (dtype, shape)}."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if n <= 0 or 8 + n > size:
                raise ValueError("header length exceeds the file")
            header = json.loads(f.read(n))
        end = 0
        tensors = {}
        for name, meta in header.items():
            if name == "__metadata__":
                continue
            begin, stop = meta["data_offsets"]
            end = max(end, stop)
            tensors[name] = (meta["dtype"], tuple(meta["shape"]))
        if 8 + n + end != size:
            raise ValueError(f"file is {size} bytes, header describes {8 + n + end}")
        return tensors
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise SubspecError(f"corrupt or truncated safetensors file {path.name}: {exc}") from exc


def load_decoder(folder: str | Path, dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu") -> Decoder:
    from safetensors import safe_open

    folder = Path(folder)
    config = ModelConfig.from_file(folder)
    with torch.device("meta"):
        model = Decoder(config)
    expected = {name for name, _ in model.named_parameters()}
    loaded: set[str] = set()
    for file in safetensors_files(folder):
        check_safetensors(file)
        with safe_open(file, framework="pt", device="cpu") as f:
            for key in f.keys():
                name = key.removeprefix("model.")
                if name not in expected:
                    if name == "lm_head.weight" and config.tie_word_embeddings:
                        continue  # some tied checkpoints store the copy anyway
                    if name.endswith("rotary_emb.inv_freq"):
                        continue
                    raise SubspecError(f"unexpected tensor {key!r} in {file.name}")
                tensor = f.get_tensor(key).to(dtype=dtype, device=device)
                _assign(model, name, tensor)
                loaded.add(name)
    missing = expected - loaded
    if missing:
        raise SubspecError(f"checkpoint lacks {len(missing)} tensors, e.g. {sorted(missing)[0]}")
    # Buffers built on the meta device hold no values: compute the rotary table for real.
    model.rotary.inv_freq = rope_inverse_frequencies(config).to(device)
    return model.eval()


def _assign(model: torch.nn.Module, name: str, tensor: torch.Tensor) -> None:
    owner, _, leaf = name.rpartition(".")
    module = model.get_submodule(owner)
    old = getattr(module, leaf)
    if tuple(old.shape) != tuple(tensor.shape):
        raise SubspecError(f"tensor {name} has shape {tuple(tensor.shape)}, config expects {tuple(old.shape)}")
    setattr(module, leaf, torch.nn.Parameter(tensor, requires_grad=False))


def load_tokenizer(folder: str | Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError) as exc:
        raise SubspecError(f"cannot load the tokenizer in {folder}: {exc}") from exc


@dataclass
class LoadedModel:
    """A target model ready to generate: the decoder, its tokenizer and where it runs."""

    path: Path
    name: str
    decoder: Decoder
    tokenizer: object
    device: torch.device
    resident_layers: int | None = None  # None: every layer resident
    notes: list = field(default_factory=list)  # what loading had to change (e.g. backing off after an OOM)
    # The plan's substitute bits for the offloaded layers ({layer: bits}: 8-bit where its memory allows);
    # None: DEFAULT_DRAFT_BITS for every substituted layer.
    substitute_bits: dict | None = None

    @property
    def offloaded_layers(self) -> list[int]:
        n = self.config.num_layers
        return streamed_layers(n, n if self.resident_layers is None else self.resident_layers)

    def draft_bits(self, nbits: int | None = None) -> dict[int, int]:
        """{layer: bits} of the draft's substitutes: `nbits` for every substituted layer when given, else
        the plan's (`substitute_bits`), else DEFAULT_DRAFT_BITS. Substituted: the offloaded layers, or every
        layer when nothing is offloaded (the draft must differ from the target somewhere to be cheaper)."""
        layers = self.offloaded_layers or list(range(self.config.num_layers))
        if nbits is None and self.substitute_bits and set(self.substitute_bits) == set(layers):
            return {i: self.substitute_bits[i] for i in layers}
        return {i: DEFAULT_DRAFT_BITS if nbits is None else nbits for i in layers}

    def build_draft(self, nbits: int | None = None, group_size: int = 64, progress=None, cache: bool = True,
                    cancel=None) -> Decoder:
        """The substitute draft, at `draft_bits(nbits)`. With `cache`, the substitutes come from (and go to)
        the on-disk substitute cache (convert.py)."""
        from .convert import build_draft_cached

        bits = self.draft_bits(nbits)
        return build_draft_cached(self, bits, group_size, sorted(bits), progress, cancel, use_cache=cache)

    @property
    def dtype(self) -> torch.dtype:
        return self.decoder.embed_tokens.weight.dtype

    @property
    def config(self) -> ModelConfig:
        return self.decoder.config

    def eos_token_ids(self) -> set[int]:
        return set(self._eos_ids)

    @functools.cached_property
    def _eos_ids(self) -> frozenset[int]:
        ids = set(self.config.eos_token_ids)
        tok_eos = getattr(self.tokenizer, "eos_token_id", None)
        if tok_eos is not None:
            ids.add(int(tok_eos))
        gen = self.path / "generation_config.json"
        if gen.is_file():
            try:
                eos = json.loads(gen.read_text(encoding="utf-8")).get("eos_token_id")
                ids.update(eos if isinstance(eos, list) else ([] if eos is None else [eos]))
            except (OSError, json.JSONDecodeError):
                pass
        return frozenset(ids)

    def encode(self, text: str, chat: bool = True, system: str | None = None,
               history: list[dict] | None = None) -> list[int]:
        """Token ids of a prompt; with `chat`, wrapped in the model's chat template."""
        if chat:
            if not getattr(self.tokenizer, "chat_template", None):
                raise SubspecError(f"model {self.name} has no chat template; use --no-chat")
            messages = ([{"role": "system", "content": system}] if system else []) + list(history or [])
            messages.append({"role": "user", "content": text})
            return self.encode_messages(messages)
        return list(self.tokenizer.encode(text, add_special_tokens=True))

    def encode_messages(self, messages: list[dict], template_kwargs: dict | None = None,
                        prefill: str = "", close_thought: bool = False) -> list[int]:
        """`template_kwargs`: variables for the chat template, e.g. Qwen3's enable_thinking (a template
        that does not use one ignores it). `prefill`: the answer's beginning, after the generation prompt
        and tokenized with it (as the model saw such text in training). `close_thought` (JSON mode): a
        thought the template opens is closed, as before a prefill: the answer must be the JSON."""
        rendered = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False,
                                                      **(template_kwargs or {}))
        if (prefill or close_thought) and rendered.rstrip().endswith("<think>"):
            # The template opens a thought (QwQ, Qwen3 *-Thinking): close it first, or the prefill would be
            # written inside the thought, where a reasoning model's text is not its answer.
            prefill = "\n</think>\n\n" + prefill
        return list(self.tokenizer.encode(rendered + prefill, add_special_tokens=False))

    @property
    def thinking_switch(self) -> bool:
        """Whether the chat template turns the model's thinking on and off (Qwen3's enable_thinking)."""
        return "enable_thinking" in (getattr(self.tokenizer, "chat_template", None) or "")


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def free_device_memory() -> None:
    """Drop what Python still references and give the CUDA caching allocator's free blocks back to the
    driver: after an out-of-memory error before retrying smaller, and before NVML is asked for free VRAM
    (the blocks of a model just let go would read as in use)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def load_model(folder: str | Path, dtype: str = "auto", device: str | None = None,
               name: str | None = None, resident_layers: int | None = None,
               substitute_bits: dict | None = None, prefill_tokens: int | None = None) -> LoadedModel:
    """Load a model folder. dtype 'auto' computes in float32 on the CPU (fastest there) and in the
    stored half precision on a GPU. With `resident_layers` below the layer count, the other layers'
    linear weights stay in host memory and stream to the device at every forward pass.

    `substitute_bits`: the plan's {layer: bits} for the offloaded layers, which the draft is then built
    with. A load that had to stream more layers than asked (out of memory) drops it: the plan's 8-bit
    layers were paid for with memory that turned out not to be there, so the draft goes back to 4-bit.
    `prefill_tokens`: the plan's prompt tokens per prefill pass of the streamed layers (None: as many as
    engine.planner.PREFILL_PASS_BYTES of residual stream hold)."""
    folder = Path(folder)
    dev = torch.device(device) if device else default_device()
    if dtype == "auto":
        torch_dtype = torch.float32 if dev.type == "cpu" else torch.bfloat16
    elif dtype in DTYPES:
        torch_dtype = DTYPES[dtype]
    else:
        raise SubspecError(f"unknown dtype {dtype!r}; choose auto, {', '.join(DTYPES)}")
    config = ModelConfig.from_file(folder)
    layers = config.num_layers
    if resident_layers is not None and not 0 <= resident_layers <= layers:
        raise SubspecError(f"--resident-layers must be between 0 and {layers}, got {resident_layers}")
    resident = layers if resident_layers is None else resident_layers
    notes = []
    while True:
        try:
            decoder = _place(folder, torch_dtype, dev, resident, resident == layers, prefill_tokens)
            break
        except torch.cuda.OutOfMemoryError:
            # Another program may hold VRAM the plan counted on: stream more layers instead of failing.
            if resident == 0:
                raise SubspecError("out of GPU memory even with every decoder layer streamed; close other "
                                   "GPU programs or use a smaller model") from None
            decoder = None
            free_device_memory()
            notes.append(f"out of GPU memory with {resident} resident layers; retried with {resident // 2}")
            resident //= 2
    asked = layers if resident_layers is None else resident_layers
    if substitute_bits and resident != asked:
        notes.append(f"the draft uses {DEFAULT_DRAFT_BITS}-bit substitutes, not the plan's wider ones")
        substitute_bits = None
    if prefill_tokens and resident != asked and decoder.streamer is not None:
        # Like the wider bits, the plan's pass was paid for with memory that was not there.
        decoder.streamer.prefill_tokens = PREFILL_CHUNK
        notes.append(f"prompts prefill {PREFILL_CHUNK} tokens a pass, not the plan's {prefill_tokens}")
    lm = LoadedModel(folder, name or folder.name, decoder, load_tokenizer(folder), dev,
                     None if resident == layers else resident, notes,
                     dict(substitute_bits) if substitute_bits else None)
    return lm


def _place(folder: Path, dtype: torch.dtype, device: torch.device, resident: int, all_resident: bool,
           prefill_tokens: int | None = None) -> Decoder:
    """Load the weights: all on the device, or the last `resident` layers there and the others streamed."""
    if all_resident:
        return load_decoder(folder, dtype, device)
    from .offload import offload

    decoder = load_decoder(folder, dtype, "cpu")
    offload(decoder, resident, device, prefill_tokens=prefill_tokens)
    return decoder
