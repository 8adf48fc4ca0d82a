"""Which model to suggest for this machine: the largest of a short list of chat models that the planner
(engine.planner.make_plan) predicts at a comfortable reading speed or faster on this hardware profile.

The planner needs only each model's config.json, so the suggestion is made before anything is downloaded.
The list is Qwen2.5 Instruct at every size from 1.5B to 72B: one family, so "larger" means "better"
without a judgement call, and ungated on the Hugging Face hub, so it downloads without an account. Their
config fields live once, in the model catalogue (engine.catalogue).
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.catalogue import family
from engine.config import ModelConfig
from engine.errors import SubspecError
from engine.planner import Plan, make_plan

MIN_TOKENS_PER_S = 5.0  # about reading speed: slower than this, a bigger model is not worth the wait
BYTES_PER_PARAM = 2  # the checkpoints are bf16

# (name, hub repository, config.json), smallest first: the catalogue's Qwen2.5 Instruct line.
CANDIDATES = [(e.repo_id.split("/")[1], e.repo_id, e.config) for e in family("Qwen2.5-")
              if e.repo_id.endswith("-Instruct")]


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
