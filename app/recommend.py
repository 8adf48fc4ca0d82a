"""Which model to suggest for this machine: the largest of a short list of chat models that the planner
(engine.planner.make_plan) predicts at a comfortable reading speed or faster on this hardware profile.

The planner needs only each model's config.json, so the suggestion is made before anything is downloaded.
The list is Qwen2.5 Instruct at every size from 1.5B to 72B: one family, so "larger" means "better"
without a judgement call, and ungated on the Hugging Face hub, so it downloads without an account. The
config fields below are those of the published config.json files that engine.config reads.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.config import ModelConfig
from engine.errors import SubspecError
from engine.planner import Plan, make_plan

MIN_TOKENS_PER_S = 5.0  # about reading speed: slower than this, a bigger model is not worth the wait
BYTES_PER_PARAM = 2  # the checkpoints are bf16

_QWEN25 = {
    "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_act": "silu",
    "max_position_embeddings": 32768, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
    "use_sliding_window": False, "bos_token_id": 151643, "eos_token_id": 151645, "torch_dtype": "bfloat16",
}


def _qwen25(hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int, vocab: int,
            tied: bool) -> dict:
    return {**_QWEN25, "hidden_size": hidden, "intermediate_size": intermediate, "num_hidden_layers": layers,
            "num_attention_heads": heads, "num_key_value_heads": kv_heads, "vocab_size": vocab,
            "tie_word_embeddings": tied}


# (name, hub repository, config.json), smallest first.
CANDIDATES = [
    ("Qwen2.5-1.5B-Instruct", "Qwen/Qwen2.5-1.5B-Instruct", _qwen25(1536, 8960, 28, 12, 2, 151936, True)),
    ("Qwen2.5-3B-Instruct", "Qwen/Qwen2.5-3B-Instruct", _qwen25(2048, 11008, 36, 16, 2, 151936, True)),
    ("Qwen2.5-7B-Instruct", "Qwen/Qwen2.5-7B-Instruct", _qwen25(3584, 18944, 28, 28, 4, 152064, False)),
    ("Qwen2.5-14B-Instruct", "Qwen/Qwen2.5-14B-Instruct", _qwen25(5120, 13824, 48, 40, 8, 152064, False)),
    ("Qwen2.5-32B-Instruct", "Qwen/Qwen2.5-32B-Instruct", _qwen25(5120, 27648, 64, 40, 8, 152064, False)),
    ("Qwen2.5-72B-Instruct", "Qwen/Qwen2.5-72B-Instruct", _qwen25(8192, 29568, 80, 64, 8, 152064, False)),
]


@dataclass(frozen=True)
class Recommendation:
    name: str
    repo: str
    parameters: int
    size_bytes: int  # the download: bf16 weights
    plan: Plan


def recommend(profile: dict, min_tokens_per_s: float = MIN_TOKENS_PER_S) -> Recommendation | None:
    """The largest candidate whose plan on `profile` (an engine.hardware.probe() dict) fits and predicts at
    least `min_tokens_per_s`; None when none does (the default model is then the one to use)."""
    best = None
    for name, repo, raw in CANDIDATES:
        config = ModelConfig.from_dict(raw)
        try:
            plan = make_plan(config, profile)
        except SubspecError:
            continue  # does not fit this machine's VRAM or RAM (PlanError), or a profile without sizes
        if plan.predicted_tokens_per_s >= min_tokens_per_s:
            params = config.parameter_count
            best = Recommendation(name, repo, params, params * BYTES_PER_PARAM, plan)
    return best
