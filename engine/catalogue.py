"""A short, curated list of chat models worth running with SubSpec, with the fields of each repo's
config.json that the planner reads, so that "does it fit my GPU?" is answered before any download and
without a network. Sizes on disk are computed (parameters x 2 bytes: the repos ship bf16 safetensors).
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import ModelConfig
from .errors import SubspecError

_QWEN25 = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_act": "silu",
           "vocab_size": 152064, "max_position_embeddings": 32768, "rms_norm_eps": 1e-06,
           "rope_theta": 1000000.0, "sliding_window": 131072, "use_sliding_window": False,
           "tie_word_embeddings": False, "bos_token_id": 151643, "eos_token_id": 151645,
           "torch_dtype": "bfloat16"}
_QWEN3 = {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "hidden_act": "silu",
          "vocab_size": 151936, "max_position_embeddings": 40960, "rms_norm_eps": 1e-06,
          "rope_theta": 1000000.0, "head_dim": 128, "attention_bias": False, "tie_word_embeddings": False,
          "bos_token_id": 151643, "eos_token_id": 151645, "torch_dtype": "bfloat16"}
_LLAMA3 = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
           "vocab_size": 128256, "rms_norm_eps": 1e-05, "rope_theta": 500000.0, "attention_bias": False,
           "mlp_bias": False, "tie_word_embeddings": False, "bos_token_id": 128000, "torch_dtype": "bfloat16"}


def _shape(hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int) -> dict:
    return {"hidden_size": hidden, "intermediate_size": intermediate, "num_hidden_layers": layers,
            "num_attention_heads": heads, "num_key_value_heads": kv_heads}


@dataclass(frozen=True)
class CatalogueEntry:
    repo_id: str
    title: str
    note: str
    config: dict
    gated: bool = False

    @property
    def model_config(self) -> ModelConfig:
        return ModelConfig.from_dict(self.config)

    @property
    def parameters(self) -> int:
        return self.model_config.parameter_count

    @property
    def size_bytes(self) -> int:
        return self.parameters * 2


# Smallest first within each size class; the Qwen2.5 Instruct line runs through every size (one family, so
# "larger" means "better", and ungated: the first-run welcome recommends from it).
CATALOGUE: tuple[CatalogueEntry, ...] = (
    CatalogueEntry("Qwen/Qwen2.5-1.5B-Instruct", "Qwen2.5 1.5B Instruct",
                   "Small and quick: a good first model on a CPU or a small GPU.",
                   {**_QWEN25, **_shape(1536, 8960, 28, 12, 2), "vocab_size": 151936,
                    "tie_word_embeddings": True, "max_window_layers": 21}),
    CatalogueEntry("Qwen/Qwen2.5-3B-Instruct", "Qwen2.5 3B Instruct",
                   "Noticeably smarter than 1.5B, still fits most GPUs whole.",
                   {**_QWEN25, **_shape(2048, 11008, 36, 16, 2), "vocab_size": 151936,
                    "tie_word_embeddings": True, "max_window_layers": 36}),
    CatalogueEntry("Qwen/Qwen2.5-7B-Instruct", "Qwen2.5 7B Instruct",
                   "The paper's model: strong all-round chat and code.",
                   {**_QWEN25, **_shape(3584, 18944, 28, 28, 4), "max_window_layers": 28}),
    CatalogueEntry("meta-llama/Llama-3.1-8B-Instruct", "Llama 3.1 8B Instruct",
                   "Meta's 8B chat model; gated: accept the licence on the hub and use a token.",
                   {**_LLAMA3, **_shape(4096, 14336, 32, 32, 8), "max_position_embeddings": 131072,
                    "eos_token_id": [128001, 128008, 128009],
                    "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                     "original_max_position_embeddings": 8192, "rope_type": "llama3"}},
                   gated=True),
    CatalogueEntry("Qwen/Qwen3-8B", "Qwen3 8B", "Reasoning and chat in one model.",
                   {**_QWEN3, **_shape(4096, 12288, 36, 32, 8)}),
    CatalogueEntry("mistralai/Mistral-7B-Instruct-v0.3", "Mistral 7B Instruct v0.3",
                   "Fast, compact, Apache-2.0.",
                   {"architectures": ["MistralForCausalLM"], "model_type": "mistral", "hidden_act": "silu",
                    **_shape(4096, 14336, 32, 32, 8), "vocab_size": 32768, "max_position_embeddings": 32768,
                    "rms_norm_eps": 1e-05, "rope_theta": 1000000.0, "sliding_window": None,
                    "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2,
                    "torch_dtype": "bfloat16"}),
    CatalogueEntry("Qwen/Qwen2.5-14B-Instruct", "Qwen2.5 14B Instruct",
                   "Twice the 7B's size; needs offloading below 32 GB.",
                   {**_QWEN25, **_shape(5120, 13824, 48, 40, 8), "max_window_layers": 70}),
    CatalogueEntry("Qwen/Qwen3-14B", "Qwen3 14B", "A larger Qwen3 for harder questions.",
                   {**_QWEN3, **_shape(5120, 17408, 40, 40, 8)}),
    CatalogueEntry("Qwen/Qwen2.5-32B-Instruct", "Qwen2.5 32B Instruct",
                   "Near-frontier quality; its substitutes alone need about 18 GB.",
                   {**_QWEN25, **_shape(5120, 27648, 64, 40, 8), "max_window_layers": 70}),
    CatalogueEntry("Qwen/Qwen3-32B", "Qwen3 32B", "The largest Qwen3 dense model.",
                   {**_QWEN3, **_shape(5120, 25600, 64, 64, 8)}),
    CatalogueEntry("Qwen/Qwen2.5-72B-Instruct", "Qwen2.5 72B Instruct",
                   "Frontier-class; needs a 24 GB GPU and plenty of RAM.",
                   {**_QWEN25, **_shape(8192, 29568, 80, 64, 8), "max_window_layers": 80}),
)


def family(prefix: str) -> list[CatalogueEntry]:
    """Entries whose repo name starts with `prefix` (e.g. "Qwen2.5-" and "-Instruct" models), smallest first."""
    return sorted((e for e in CATALOGUE if e.repo_id.split("/")[1].startswith(prefix)), key=lambda e: e.parameters)


def entry(repo_id: str) -> CatalogueEntry:
    for e in CATALOGUE:
        if e.repo_id.lower() == repo_id.lower():
            return e
    raise SubspecError(f"{repo_id} is not in the catalogue")


@dataclass(frozen=True)
class FitEstimate:
    """The planner's answer for one catalogue model on this machine, before downloading it."""
    repo_id: str
    fits: bool
    summary: str  # one line for a badge's tooltip or a table cell
    predicted_tokens_per_s: float | None
    predicted_vram_bytes: int | None
    resident_layers: int | None

    def as_json(self) -> dict:
        return dict(self.__dict__)


def estimate(e: CatalogueEntry, hardware: dict, vram_gb: float | None = None,
             reserve_gb: float = 0.5) -> FitEstimate:
    return estimate_config(e.repo_id, e.config, hardware, vram_gb, reserve_gb)


def estimate_config(repo_id: str, raw_config: dict, hardware: dict, vram_gb: float | None = None,
                    reserve_gb: float = 0.5) -> FitEstimate:
    """The same answer for any model from its config.json (a search hit's, fetched by hub.remote_config)."""
    from .planner import PlanError, make_plan

    try:
        config = ModelConfig.from_dict(raw_config)
    except SubspecError as exc:  # an architecture the engine does not run: it cannot "fit"
        return FitEstimate(repo_id, False, f"not supported here: {exc}", None, None, None)
    try:
        plan = make_plan(config, hardware, vram_gb=vram_gb, reserve_gb=reserve_gb)
    except PlanError as exc:
        return FitEstimate(repo_id, False, str(exc), None, None, None)
    if plan.device != "cuda":
        return FitEstimate(repo_id, True, f"CPU only: about {plan.predicted_tokens_per_s:.1f} tok/s, "
                           "plain decoding", plan.predicted_tokens_per_s, None, None)
    layers = config.num_layers
    how = ("all layers on the GPU" if plan.resident_layers == layers
           else f"{plan.resident_layers}/{layers} layers resident, the rest streamed")
    return FitEstimate(repo_id, True, f"fits: {how}, about {plan.predicted_tokens_per_s:.1f} tok/s",
                       plan.predicted_tokens_per_s, plan.predicted_vram_bytes, plan.resident_layers)
