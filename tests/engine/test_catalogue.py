"""The curated catalogue: its configs are the published models' (parameter counts match the model cards),
and its fits-your-GPU answer is the planner's, from config.json alone."""

import json

import pytest

from engine import cli
from engine.catalogue import CATALOGUE, entry, estimate, family
from engine.hardware import hypothetical_gpu
from engine.planner import PlanError, make_plan

# Parameter counts from the model cards / safetensors metadata, in billions.
PUBLISHED = {"Qwen/Qwen2.5-1.5B-Instruct": 1.54, "Qwen/Qwen2.5-3B-Instruct": 3.09,
             "Qwen/Qwen2.5-7B-Instruct": 7.62, "meta-llama/Llama-3.1-8B-Instruct": 8.03,
             "Qwen/Qwen3-8B": 8.19, "mistralai/Mistral-7B-Instruct-v0.3": 7.25,
             "Qwen/Qwen2.5-14B-Instruct": 14.77, "Qwen/Qwen3-14B": 14.77, "Qwen/Qwen2.5-32B-Instruct": 32.76,
             "Qwen/Qwen3-32B": 32.76, "Qwen/Qwen2.5-72B-Instruct": 72.71}
CPU_BOX = {"gpus": [], "cuda": {"available": False}, "ram": {"total_bytes": 64 * 2**30,
                                                            "available_bytes": 60 * 2**30},
           "cpu": {"logical_cores": 16, "physical_cores": 8, "model": "test CPU"}}


def test_every_entry_has_the_published_parameter_count():
    assert {e.repo_id for e in CATALOGUE} == set(PUBLISHED)
    for e in CATALOGUE:
        assert e.parameters / 1e9 == pytest.approx(PUBLISHED[e.repo_id], abs=0.01), e.repo_id
        assert e.size_bytes == 2 * e.parameters


@pytest.mark.parametrize("vram_gb", [8, 12, 24])
def test_fits_is_the_planners_answer(vram_gb):
    hardware = hypothetical_gpu(CPU_BOX, vram_gb)
    for e in CATALOGUE:
        fit = estimate(e, hardware)
        try:
            plan = make_plan(e.model_config, hardware)
        except PlanError as exc:
            assert not fit.fits and fit.summary == str(exc)
            continue
        assert fit.fits and fit.predicted_tokens_per_s == plan.predicted_tokens_per_s
        assert fit.predicted_vram_bytes <= plan.budget_bytes
    small, large = estimate(entry("Qwen/Qwen2.5-1.5B-Instruct"), hardware), \
        estimate(entry("Qwen/Qwen2.5-72B-Instruct"), hardware)
    assert small.fits and not large.fits  # 72B's substitutes alone are over 24 GB


def test_family_and_unknown_entry():
    assert [e.repo_id for e in family("Qwen3-")] == ["Qwen/Qwen3-8B", "Qwen/Qwen3-14B", "Qwen/Qwen3-32B"]
    with pytest.raises(Exception, match="not in the catalogue"):
        entry("org/nothing")


def test_cli_catalogue_json_and_table(capsys):
    assert cli.main(["models", "catalogue", "--vram-gb", "12", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == len(CATALOGUE)
    by_repo = {r["repo_id"]: r for r in rows}
    assert by_repo["Qwen/Qwen2.5-7B-Instruct"]["estimate"]["fits"] is True
    assert by_repo["Qwen/Qwen2.5-72B-Instruct"]["estimate"]["fits"] is False
    assert by_repo["meta-llama/Llama-3.1-8B-Instruct"]["gated"] is True
    assert cli.main(["models", "catalogue", "--vram-gb", "12"]) == 0
    assert "12 GB GPU" in capsys.readouterr().out
