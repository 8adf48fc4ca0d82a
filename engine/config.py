"""Model configuration: the few numbers of a Llama-family decoder, read from a Hugging Face `config.json`.

One reader for every supported architecture, so that the model code never branches on names, only on
features (q/k/v bias, q/k norm, tied embeddings, sliding window, rope scaling).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .errors import SubspecError

# model_type -> the features that architecture switches on.
SUPPORTED_ARCHITECTURES = {
    "llama": {},
    "mistral": {},
    "qwen2": {"qkv_bias": True},
    "qwen3": {"qk_norm": True},
}
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")


@dataclass(frozen=True)
class ModelConfig:
    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    max_position_embeddings: int
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    qk_norm: bool = False
    sliding_window: int | None = None
    rope_scaling: dict = field(default_factory=dict)
    eos_token_ids: tuple[int, ...] = ()
    bos_token_id: int | None = None

    @classmethod
    def from_dict(cls, raw: dict) -> "ModelConfig":
        if not isinstance(raw, dict):
            raise SubspecError(f"a model config is a JSON object; this one is a {type(raw).__name__}")
        arch = raw.get("model_type")
        if arch not in SUPPORTED_ARCHITECTURES:
            raise SubspecError(
                f"unsupported architecture {arch!r}; supported: {', '.join(sorted(SUPPORTED_ARCHITECTURES))}"
            )
        if raw.get("hidden_act", "silu") != "silu":
            raise SubspecError(f"unsupported activation {raw.get('hidden_act')!r}; only silu is supported")
        features = SUPPORTED_ARCHITECTURES[arch]
        try:
            hidden = int(raw["hidden_size"])
            heads = int(raw["num_attention_heads"])
            head_dim = raw.get("head_dim") or hidden // heads
            rope = _rope_parameters(raw)
            window = raw.get("sliding_window")
            if arch == "qwen2" and not raw.get("use_sliding_window", False):
                window = None  # Qwen2 configs carry a window they do not use
            if arch == "qwen3" and not raw.get("use_sliding_window", False):
                window = None
            eos = raw.get("eos_token_id")
            eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (int(eos),))
            return cls(
                architecture=arch,
                vocab_size=int(raw["vocab_size"]),
                hidden_size=hidden,
                intermediate_size=int(raw["intermediate_size"]),
                num_layers=int(raw["num_hidden_layers"]),
                num_heads=heads,
                num_kv_heads=int(raw.get("num_key_value_heads") or heads),
                head_dim=int(head_dim),
                rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
                rope_theta=float(rope.pop("rope_theta")),
                max_position_embeddings=int(raw.get("max_position_embeddings", 4096)),
                tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
                qkv_bias=features.get("qkv_bias", False) or bool(raw.get("attention_bias", False)),
                qk_norm=features.get("qk_norm", False),
                sliding_window=int(window) if window else None,
                rope_scaling=rope,
                eos_token_ids=eos_ids,
                bos_token_id=raw.get("bos_token_id"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise SubspecError(f"config.json is missing or has a bad field: {exc}") from exc

    @classmethod
    def from_file(cls, path: str | Path) -> "ModelConfig":
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise SubspecError(f"no config.json in {path.parent}: not a Hugging Face model folder")
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:  # ValueError's two kinds
            raise SubspecError(f"cannot read {path}: {exc}") from exc
        return cls.from_dict(raw)

    @property
    def parameter_count(self) -> int:
        """Parameters as stored (tied embeddings counted once)."""
        h, i, v = self.hidden_size, self.intermediate_size, self.vocab_size
        q = self.num_heads * self.head_dim
        kv = self.num_kv_heads * self.head_dim
        attn = h * q + 2 * h * kv + q * h + (q + 2 * kv if self.qkv_bias else 0)
        norms = 2 * h + (2 * self.head_dim if self.qk_norm else 0)
        layer = attn + 3 * h * i + norms
        return self.num_layers * layer + v * h * (1 if self.tie_word_embeddings else 2) + h


def streamed_layers(num_layers: int, resident: int) -> list[int]:
    """The decoder layers whose weights stream from host memory when `resident` stay on the device: the
    first ones. Resident layers are the LAST: they are exact in the draft too (shared with the target), and
    exactness near the output aligns the draft most (SmolLM2, D48 K6, 4-bit substitutes: tau 12.6 with its
    last 6 of 30 layers exact against 9.7 with its first 6; benchmarks/substitute_placement.py). For the
    target the order is free: prefetch is cyclic, so the resident layers' compute hides the next pass's
    first copies wherever they sit."""
    if not 0 <= resident <= num_layers:
        raise SubspecError(f"resident layers must be between 0 and {num_layers}, got {resident}")
    return list(range(num_layers - resident))


def _rope_parameters(raw: dict) -> dict:
    """Both spellings: transformers 5 `rope_parameters`, older `rope_theta` + `rope_scaling`."""
    params = dict(raw.get("rope_parameters") or {})
    if "rope_theta" not in params:
        params["rope_theta"] = raw.get("rope_theta", 10000.0)
    scaling = raw.get("rope_scaling") or {}
    for key, value in scaling.items():
        params.setdefault(key, value)
    rope_type = params.pop("rope_type", None) or params.pop("type", None) or "default"
    params.pop("type", None)
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise SubspecError(f"unsupported rope scaling {rope_type!r}; supported: {', '.join(SUPPORTED_ROPE_TYPES)}")
    params["rope_type"] = rope_type
    return params

