"""benchmarks/draft_step_launches.py: the kernels a draft step launches, counted on the CPU. A draft layer
with merged launches (stacked q/k/v and gate/up, one rotation for q and k, fused norms) must launch less
than half of what the separate one does; the count is what a fast GPU pays per layer and step."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def census():
    spec = importlib.util.spec_from_file_location("draft_step_launches", ROOT / "benchmarks/draft_step_launches.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_merged_draft_layers_launch_less_than_half(census):
    separate, merged = census.count(False, 6, 132), census.count(True, 6, 132)
    assert merged["substituted_layer_launches"] * 2 < separate["substituted_layer_launches"]
    # 7 projections, each a low-bit kernel plus a split-K sum at H100 sizes; merged: q|k|v and o and down
    # with their sums, gate|up without (its tiles fill the GPU on their own).
    assert separate["of_which_low_bit"] == 14 and merged["of_which_low_bit"] == 7
    assert merged["ops_substituted_layer"]["rms_norm"] == 2 and "pow" not in merged["ops_substituted_layer"]
    assert merged["resident_layer_launches"] < separate["resident_layer_launches"]  # its norms fused too
    assert merged["draft_step_launches_qwen25_7b_8gb"] < separate["draft_step_launches_qwen25_7b_8gb"] / 2


def test_fused_elementwise_kernels_take_a_draft_layer_to_12_launches(census):
    """engine.draft_kernels on top of merging: each residual add inside the next norm's kernel, rotary +
    KV store, silu * up, one kernel each. What is left a substituted layer: the 7 low-bit launches, two
    add+norms, the rotation, attention and silu * up; outside the layers, the rotary table is one launch."""
    merged, fused = census.count(True, 6, 132), census.count(True, 6, 132, fused_ops=True)
    assert fused["ops_substituted_layer"] == {"linear": 4, "rotary_store": 1, "add_rms_norm": 2,
                                              "scaled_dot_product_attention": 1, "silu_mul": 1}
    assert fused["substituted_layer_launches"] == 12 < merged["substituted_layer_launches"]
    # the first layer's first norm has no add before it (the embedding's output)
    assert fused["ops_resident_layer"]["rms_norm"] == 1 and fused["resident_layer_launches"] == 12
    assert fused["ops_outside_layers"]["rotary_table"] == 1 and "sin" not in fused["ops_outside_layers"]
    assert fused["draft_step_launches_qwen25_7b_8gb"] < 0.6 * merged["draft_step_launches_qwen25_7b_8gb"]


def test_the_census_sees_every_launching_op(census):
    """A merged substituted layer, op by op: nothing a CUDA step would launch is missed or double counted."""
    ops = census.count(True, 6, 132)["ops_substituted_layer"]
    assert ops == {"rms_norm": 2, "linear": 4, "mul": 3, "roll": 1, "add": 3, "index_copy_": 2,
                   "scaled_dot_product_attention": 1, "silu": 1}
