"""The planner is pure arithmetic over config.json numbers and a hardware profile: no weights, no GPU."""

import json

import pytest
from real_configs import LLAMA_3_70B, LLAMA_31_8B, QWEN25_7B, QWEN25_14B, QWEN25_32B

from engine.config import ModelConfig
from engine.errors import SubspecError
from engine import planner
from engine.planner import (
    GIB,
    KV_ROUND,
    MAX_NODES,
    PlanError,
    draft_error,
    embedding_bytes,
    kv_cache_bytes,
    layer_linear_bytes,
    layer_linear_params,
    make_plan,
    mask_bytes,
    masks_bytes,
    predicted_tau,
    substitute_layer_bytes,
)


MODELS = {
    "llama-3.1-8b": LLAMA_31_8B,
    "qwen2.5-7b": QWEN25_7B,
    "qwen2.5-14b": QWEN25_14B,
    "qwen2.5-32b": QWEN25_32B,
    "llama-3-70b": LLAMA_3_70B,
}
BUDGETS = (6, 8, 10, 12, 16, 24)


def config(name):
    return ModelConfig.from_dict(MODELS[name])


def gpu_profile(total_gb=24, free_gb=None, gen=4, width=16, h2d=None):
    """An RTX 4090-like profile; planning under a cap goes through vram_gb, as in the paper."""
    total = int(total_gb * GIB)
    return {
        "gpus": [{"total_bytes": total, "free_bytes": int((free_gb or total_gb - 0.4) * GIB),
                  "name": "NVIDIA GeForce RTX 4090",
                  "pcie": {"gen_current": gen, "width_current": width, "gen_max": gen, "width_max": width}}],
        "cuda": {"available": True, "h2d_bandwidth_gbps": h2d, "matmul_tflops": None},
        "ram": {"total_bytes": 128 * GIB, "available_bytes": 120 * GIB},
    }


CPU_ONLY = {
    "gpus": [],
    "cuda": {"available": False, "h2d_bandwidth_gbps": None, "matmul_tflops": None},
    "ram": {"total_bytes": 64 * GIB, "available_bytes": 56 * GIB},
}


def test_configs_have_the_published_sizes():
    # parameter counts of the model cards: 8.03B, 7.62B, 14.77B, 32.76B, 70.55B
    expected = {"llama-3.1-8b": 8.03, "qwen2.5-7b": 7.62, "qwen2.5-14b": 14.77, "qwen2.5-32b": 32.76,
                "llama-3-70b": 70.55}
    for name, billions in expected.items():
        assert config(name).parameter_count / 1e9 == pytest.approx(billions, abs=0.01), name


def test_memory_formulas():
    c = config("qwen2.5-7b")
    h, i, q, kv = 3584, 18944, 28 * 128, 4 * 128
    assert layer_linear_params(c) == h * q + 2 * h * kv + q * h + 3 * h * i + (q + 2 * kv)
    assert layer_linear_bytes(c) == 2 * layer_linear_params(c)
    # 28 offloaded layers move about 13 GB (decimal) per target pass, as the paper says
    assert 28 * layer_linear_bytes(c) / 1e9 == pytest.approx(13.05, abs=0.01)
    weights = layer_linear_params(c) - (q + 2 * kv)
    assert substitute_layer_bytes(c, 4) == pytest.approx(weights * (0.5 + 4 / 64) + 2 * (q + 2 * kv), abs=1)
    assert substitute_layer_bytes(c, 8) == pytest.approx(weights * (1 + 4 / 64) + 2 * (q + 2 * kv), abs=1)
    assert kv_cache_bytes(c, 4096) == 2 * 28 * 4 * 128 * 4096 * 2
    assert embedding_bytes(c) == 152064 * 3584 * 2
    # a 400-node verification at a 32k context: the bf16 tree mask, its fold for the 7 query heads of each
    # KV head, and SDPA's padded copy of the fold (the rows padded to a multiple of 8 slots)
    rows, columns = 400, 32768 + 400
    assert mask_bytes(c, rows, columns) == rows * columns * 2 + 7 * rows * columns * 2 + 7 * rows * (columns + 8) * 2
    assert mask_bytes(c, rows, columns, sdpa_copy=False) == rows * columns * 2 * (1 + 7)
    assert mask_bytes(c, rows, columns) > planner.WORKSPACE_FIXED  # more than the whole fixed workspace
    # a prompt chunk's float32 causal mask, folded to bf16
    assert mask_bytes(c, 256, columns, built_bytes=4, sdpa_copy=False) == 256 * columns * (4 + 7 * 2)
    # verification's logits in the model's dtype, sampling's block of 13 rows at 48 bytes a value (fewer
    # rows in a smaller tree), and the fixed part
    v = 152064
    assert planner.workspace_bytes(c, 400) == 400 * v * 2 + 13 * v * 48 + planner.WORKSPACE_FIXED
    assert planner.workspace_bytes(c, 7) == 7 * v * 2 + 7 * v * 48 + planner.WORKSPACE_FIXED
    assert planner.workspace_bytes(c, 400, 4) == 400 * v * 4 + 13 * v * 48 + planner.WORKSPACE_FIXED


def test_tau_model_is_calibrated_on_the_paper_and_prefers_8_bit():
    assert predicted_tau(48, 6, 1.0) == pytest.approx(28, abs=1.0)  # all 4-bit, D48 K6
    eight = predicted_tau(48, 6, 0.02)
    assert 32 < eight <= 49
    assert predicted_tau(48, 6, 3.4) < predicted_tau(48, 6, 1.0) < eight
    assert predicted_tau(48, 1, 1.0) < predicted_tau(48, 6, 1.0) < predicted_tau(48, 8, 1.0)
    assert predicted_tau(0, 6, 1.0) == 1.0


def test_8_bit_goes_to_the_last_streamed_layers_where_it_aligns_the_draft_most():
    """Measured on SmolLM2 (benchmarks/substitute_placement.py): the last half at 8-bit drafted tau 17.5,
    the first half 10.2. The plan raises the last streamed layers, and its tau model weights depth so
    that the same number of 8-bit layers predicts more at the end than at the start."""
    c = config("qwen2.5-7b")
    plan = make_plan(c, gpu_profile(total_gb=32), vram_gb=8)
    bits = plan.substitute_bits[: plan.offloaded_layers]
    eights = bits.count(8)
    assert 0 < eights < len(bits)  # a partly 8-bit draft at 8 GB
    assert bits == [4] * (len(bits) - eights) + [8] * eights
    assert any(f"the last {eights} of" in r for r in plan.reasons)
    last = draft_error(c, bits)
    first = draft_error(c, sorted(bits, reverse=True))
    assert last < first < draft_error(c, [4] * len(bits)) == pytest.approx(1.0)
    assert draft_error(c, [8] * c.num_layers) == pytest.approx(0.02)  # the calibration's ends are unchanged
    assert sum(planner.layer_weight(c, i) for i in range(c.num_layers)) == pytest.approx(1.0)
    # resident layers (exact) are the last ones, where exactness counts most: 8 of 28 take 43% of the error
    assert draft_error(c, [4] * 20) == pytest.approx(sum(range(1, 21)) / sum(range(1, 29)))


@pytest.mark.parametrize("context", [4096, 32768, 131072])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_plan_fits_its_budget_or_is_refused_with_the_shortfall(name, context):
    c = config(name)
    fitted = []
    for gb in BUDGETS:
        try:
            plan = make_plan(c, gpu_profile(total_gb=32), vram_gb=gb, context=context)
        except PlanError as exc:
            assert exc.missing_bytes > 0
            assert "needs" in str(exc) and "more" in str(exc)
            assert fitted == [], "a larger budget was refused after a smaller one fitted"
            continue
        fitted.append(gb)
        assert plan.budget_bytes == int((gb - 0.5) * GIB)
        assert 0 < plan.predicted_vram_bytes <= plan.budget_bytes
        assert plan.predicted_vram_bytes == sum(plan.memory.values())
        assert plan.memory["masks"] == masks_bytes(c, plan.kv_length, plan.nodes)
        assert plan.resident_layers + plan.offloaded_layers == c.num_layers
        assert len(plan.substitute_bits) == c.num_layers
        assert plan.substitute_bits[plan.offloaded_layers:] == [None] * plan.resident_layers
        assert plan.kv_length >= 512
        assert plan.predicted_tokens_per_s > 0 and plan.reasons
        if plan.method == "subspec":
            assert plan.slots >= 2 and plan.depth > 0 and 1 + plan.depth * plan.topk <= 400
            assert all(b in (4, 8) for b in plan.substitute_bits[: plan.offloaded_layers])
        else:
            assert plan.depth == 0
        if plan.offloaded_layers:
            assert plan.slots >= 2
            assert plan.offloaded_bytes_per_pass == plan.offloaded_layers * layer_linear_bytes(c)


@pytest.mark.parametrize("name, gb", [("qwen2.5-32b", 8), ("qwen2.5-32b", 12), ("qwen2.5-14b", 8),
                                      ("llama-3-70b", 24), ("qwen2.5-7b", 6)])
def test_refusals(name, gb):
    with pytest.raises(PlanError) as info:
        make_plan(config(name), gpu_profile(), vram_gb=gb)
    exc = info.value
    assert isinstance(exc, SubspecError)
    assert exc.missing_bytes > 0 and exc.resource == "VRAM"
    assert f"needs {exc.missing_bytes / GIB:.2f} GB more" in str(exc)


def test_the_paper_settings_fit():
    # Qwen2.5-7B at an 8 GB cap and Qwen2.5-32B at 24 GB are the paper's two headline settings
    small = make_plan(config("qwen2.5-7b"), gpu_profile(), vram_gb=8)
    assert small.method == "subspec" and small.kv_length == 4096
    big = make_plan(config("qwen2.5-32b"), gpu_profile(), vram_gb=24)
    assert big.method == "subspec" and big.depth >= 16


@pytest.mark.parametrize("name", sorted(MODELS))
def test_more_vram_never_gives_fewer_resident_layers(name):
    c = config(name)
    previous = None
    for gb in (6, 7, 8, 9, 10, 11, 12, 14, 16, 20, 24, 32, 48, 80, 160):
        try:
            plan = make_plan(c, gpu_profile(total_gb=200), vram_gb=gb)
        except PlanError:
            assert previous is None
            continue
        if previous is not None:
            assert plan.resident_layers >= previous.resident_layers, gb
            assert plan.kv_length >= previous.kv_length, gb
            # spare memory turns 4-bit substitutes into 8-bit ones before it buys resident layers
            assert plan.substitute_bits.count(4) <= previous.substitute_bits.count(4), gb
        previous = plan


def test_spare_memory_goes_to_8_bit_before_resident_layers():
    c = config("qwen2.5-7b")
    tight = make_plan(c, gpu_profile(), vram_gb=8)
    assert tight.resident_layers == 0 and 0 < tight.substitute_bits.count(8) < c.num_layers
    roomy = make_plan(c, gpu_profile(), vram_gb=12)
    assert roomy.resident_layers > 0
    assert roomy.substitute_bits == [8] * roomy.offloaded_layers + [None] * roomy.resident_layers
    assert any(f"the last {roomy.resident_layers} stay in VRAM" in r for r in roomy.reasons)


def test_gpu_offloading_picks_a_deep_tree_for_a_7b_model_on_8_gb():
    plan = make_plan(config("qwen2.5-7b"), gpu_profile(), vram_gb=8)
    assert plan.method == "subspec"
    assert plan.depth >= 16 and plan.topk >= 2
    assert plan.offloaded_layers > 0
    assert plan.predicted_tau > 20
    assert plan.predicted_tokens_per_s > 5 * plan.baseline_tokens_per_s  # the paper: 9x at 8 GB
    assert any(r.startswith("Tree: depth") for r in plan.reasons)


def test_whole_model_in_vram_decodes_plainly_and_says_why():
    plan = make_plan(config("qwen2.5-7b"), gpu_profile(), vram_gb=24)
    assert plan.method == "vanilla" and plan.depth == 0
    assert plan.resident_layers == 28 and plan.offloaded_layers == 0 and plan.slots == 0
    assert plan.offloaded_bytes_per_pass == 0
    assert any("fits in VRAM" in r for r in plan.reasons)


def test_cpu_only_never_gets_a_deep_tree():
    for name in ("qwen2.5-7b", "llama-3.1-8b", "qwen2.5-14b"):
        plan = make_plan(config(name), CPU_ONLY)
        assert plan.device == "cpu"
        assert plan.method == "vanilla" or plan.depth <= 4
        assert plan.offloaded_layers == 0 and plan.offloaded_bytes_per_pass == 0
        assert plan.predicted_host_bytes == sum(plan.memory.values()) <= plan.budget_bytes
        assert plan.memory["masks"] == masks_bytes(config(name), plan.kv_length, 1) > 0
        assert any("no CUDA" in r for r in plan.reasons)


def test_cpu_only_refuses_a_model_larger_than_ram():
    with pytest.raises(PlanError) as info:
        make_plan(config("qwen2.5-32b"), CPU_ONLY)
    assert info.value.resource == "RAM" and info.value.missing_bytes > 0


def test_forced_resident_layers_are_validated_against_the_budget():
    c = config("qwen2.5-7b")
    forced = make_plan(c, gpu_profile(), vram_gb=12, resident_layers=4)
    assert forced.resident_layers == 4
    assert forced.predicted_vram_bytes <= forced.budget_bytes
    assert any("as asked" in r for r in forced.reasons)
    with pytest.raises(PlanError) as info:
        make_plan(c, gpu_profile(), vram_gb=8, resident_layers=20)
    assert info.value.missing_bytes > 0
    assert "resident_layers=20 does not fit" in str(info.value) and "at most" in str(info.value)
    with pytest.raises(PlanError):
        make_plan(c, gpu_profile(), vram_gb=12, resident_layers=28)
    with pytest.raises(SubspecError):
        make_plan(c, gpu_profile(), vram_gb=12, resident_layers=29)
    everything = make_plan(c, gpu_profile(), vram_gb=24, resident_layers=28)
    assert everything.method == "vanilla" and everything.offloaded_layers == 0


def test_short_memory_shortens_the_context_and_says_so():
    c = config("qwen2.5-7b")
    plan = make_plan(c, gpu_profile(), vram_gb=7.8, context=32768)
    assert 512 <= plan.kv_length < 32768
    assert any("shortened" in r for r in plan.reasons)
    capped = make_plan(config("llama-3-70b"), gpu_profile(total_gb=80), vram_gb=80, context=100000)
    assert capped.kv_length <= 8192


@pytest.mark.parametrize("name, context, gbs", [("qwen2.5-7b", 32768, (8, 10, 12, 16)),
                                                ("llama-3.1-8b", 131072, (8, 12, 16, 24, 32))])
def test_long_contexts_count_their_attention_masks_and_still_fit(name, context, gbs):
    """The masks of a target pass grow with the context: at 32k or 128k they are hundreds of MB, more than
    the fixed workspace, and the plan must hold them within the budget."""
    c = config(name)
    for gb in gbs:
        plan = make_plan(c, gpu_profile(total_gb=80), vram_gb=gb, context=context)
        masks = plan.memory["masks"]
        assert masks == masks_bytes(c, plan.kv_length, plan.nodes)
        assert masks >= mask_bytes(c, plan.nodes, plan.kv_length + plan.nodes)  # verification's at least
        assert plan.predicted_vram_bytes == sum(plan.memory.values()) <= plan.budget_bytes
        assert any("attention masks" in r for r in plan.reasons)
        if plan.kv_length == context:
            assert masks > 200 * 2**20, gb
        else:
            # shortened: the longest multiple of KV_ROUND that fits with the tree's reserve, masks included
            assert plan.kv_length % KV_ROUND == 0
            smallest = planner._with_substitutes(c, 0, plan.kv_length)
            assert planner._vram(c, smallest, 2) <= plan.budget_bytes
            longer = planner._with_substitutes(c, 0, plan.kv_length + KV_ROUND)
            assert planner._vram(c, longer, 2) > plan.budget_bytes
            # without the masks a longer context would have seemed to fit
            assert planner._vram(c, longer, 2) - masks_bytes(c, plan.kv_length + KV_ROUND, MAX_NODES) \
                <= plan.budget_bytes, gb


@pytest.mark.parametrize("asked", [32768, 32769, 32775, 100_003, 10_000_000])
def test_the_longest_context_that_fits_is_found_whatever_was_asked(asked):
    """The masks' rows are padded to a multiple of 8 slots, so memory is not a straight line in the context
    length (a one-token slope at 32769 misjudged it by 1280 tokens); the longest fit is still found."""
    from dataclasses import replace

    c = config("qwen2.5-7b")
    layout = planner._with_substitutes(c, 0, asked)
    budget = int(7.5 * 2**30)
    got = planner._longest_kv(c, layout, budget, 2)

    def fits(n):
        return planner._vram(c, replace(layout, kv_length=n), 2) <= budget

    assert got % KV_ROUND == 0 and fits(got) and not fits(got + KV_ROUND)


def test_bandwidth_comes_from_measurement_then_pcie_then_default():
    c = config("qwen2.5-7b")
    gen3 = make_plan(c, gpu_profile(gen=3), vram_gb=8)
    gen4 = make_plan(c, gpu_profile(gen=4), vram_gb=8)
    gen5 = make_plan(c, gpu_profile(gen=5), vram_gb=8)
    x8 = make_plan(c, gpu_profile(gen=4, width=8), vram_gb=8)
    measured = make_plan(c, gpu_profile(h2d=20.0), vram_gb=8)
    assert gen3.predicted_tokens_per_s < gen4.predicted_tokens_per_s < gen5.predicted_tokens_per_s
    assert x8.predicted_tokens_per_s < gen4.predicted_tokens_per_s
    assert any("measured" in r and "20.0" in r for r in measured.reasons)
    unknown = gpu_profile()
    unknown["gpus"][0]["pcie"] = {"gen_current": None, "width_current": None}
    assert make_plan(c, unknown, vram_gb=8).predicted_tokens_per_s == pytest.approx(gen4.predicted_tokens_per_s)
    idle = gpu_profile()  # an idle GPU reports a power-saving link; the link trains up under load
    idle["gpus"][0]["pcie"].update(gen_current=1)
    assert make_plan(c, idle, vram_gb=8).predicted_tokens_per_s == pytest.approx(gen4.predicted_tokens_per_s)


def test_budget_defaults_to_the_free_memory_of_the_first_gpu():
    plan = make_plan(config("qwen2.5-7b"), gpu_profile(total_gb=12, free_gb=11.0))
    assert plan.budget_bytes == int(10.5 * GIB)
    with pytest.raises(SubspecError):
        make_plan(config("qwen2.5-7b"), {"gpus": [], "cuda": {"available": True}, "ram": {}})


def test_as_json_has_the_required_keys_and_serialises():
    for hardware, gb in ((gpu_profile(), 8), (gpu_profile(), 24), (CPU_ONLY, None)):
        data = make_plan(config("qwen2.5-7b"), hardware, vram_gb=gb).as_json()
        for key in ("method", "resident_layers", "substitute_bits", "kv_length", "slots", "depth", "topk",
                    "predicted_vram_bytes", "predicted_tokens_per_s", "reasons"):
            assert key in data
        assert json.loads(json.dumps(data)) == data


@pytest.mark.parametrize("name", sorted(MODELS))
def test_the_prefill_pass_takes_a_few_mb_first_and_then_only_what_is_left(name, monkeypatch):
    """Prompt tokens per pass of the streamed layers: a layout's spare memory goes first to passes of
    PREFILL_PASS_FIRST tokens (a few MB: at most one 8-bit substitute or one resident layer fewer than
    planning with no pass), and what the plan leaves at the end raises them further. The context and the
    tree are never touched; the pass is whole chunks and its residual stream is counted in the budget."""
    c = config(name)
    plans = {}
    for gb in BUDGETS:
        try:
            plans[gb] = make_plan(c, gpu_profile(total_gb=32), vram_gb=gb)
        except PlanError:
            continue
    monkeypatch.setattr(planner, "PREFILL_PASS_BYTES", 0)  # a pass of one chunk: the chunked prefill
    for gb, plan in plans.items():
        alone = make_plan(c, gpu_profile(total_gb=32), vram_gb=gb)
        assert alone.prefill_pass_tokens == planner.PREFILL_CHUNK and alone.memory["prefill_pass"] == 0
        assert (plan.kv_length, plan.depth, plan.topk) == (alone.kv_length, alone.depth, alone.topk)
        eights = [p.substitute_bits.count(8) for p in (plan, alone)]
        assert 0 <= alone.resident_layers - plan.resident_layers <= 1
        assert eights[1] - eights[0] <= 1 or alone.resident_layers > plan.resident_layers
        tokens = plan.prefill_pass_tokens
        assert tokens % planner.PREFILL_CHUNK == 0 and tokens <= 9216
        assert plan.memory["prefill_pass"] == planner.prefill_pass_bytes(c, tokens)
        assert plan.predicted_vram_bytes <= plan.budget_bytes
        prefill = [r for r in plan.reasons if r.startswith("Prefill:")]
        assert len(prefill) == (1 if plan.offloaded_layers else 0)
        if plan.offloaded_layers:
            assert tokens >= planner.PREFILL_PASS_FIRST  # (every streamed plan of this grid has the room)
        else:
            assert tokens == planner.PREFILL_CHUNK  # nothing streamed: a pass is a chunked forward


def test_a_layout_with_no_memory_left_prefills_a_chunk_a_pass():
    c = config("qwen2.5-7b")
    layout = planner._with_substitutes(c, 2, 4096)
    full = planner._vram(c, layout, 2)
    per_token = planner._pass_bytes_per_token(c, 2)
    assert planner._prefill_pass(c, layout, full, 2) == planner.PREFILL_CHUNK
    assert planner._prefill_pass(c, layout, full - 1, 2) == planner.PREFILL_CHUNK  # over budget already
    assert planner._prefill_pass(c, layout, full + 256 * per_token - 1, 2) == planner.PREFILL_CHUNK
    assert planner._prefill_pass(c, layout, full + 256 * per_token, 2) == 512
    assert planner._prefill_pass(c, layout, full + 100 * planner.GIB, 2) == planner.prefill_pass_tokens(c, 2)


def test_the_prefill_reason_predicts_the_first_token_sooner_with_passes():
    plan = make_plan(config("qwen2.5-7b"), gpu_profile(), vram_gb=12)
    reason = next(r for r in plan.reasons if r.startswith("Prefill:"))
    assert f"up to {plan.prefill_pass_tokens} prompt tokens per pass" in reason
    assert "a 2048-token prompt streams them 1x" in reason and "(8x and" in reason
    layout = planner._Layout(plan.resident_layers, plan.offloaded_layers, (8,) * plan.offloaded_layers,
                             plan.kv_length, plan.slots, plan.nodes, plan.prefill_pass_tokens)
    speeds = planner._Speeds(25.0, 1000.0, 50.0)
    passes = planner.t_prefill(config("qwen2.5-7b"), layout, 2048, speeds, 2, plan.prefill_pass_tokens)
    chunks = planner.t_prefill(config("qwen2.5-7b"), layout, 2048, speeds, 2, planner.PREFILL_CHUNK)
    # 8 transfers of the streamed layers against one; the compute is the same
    transfer = plan.offloaded_bytes_per_pass / 25e9
    assert chunks - passes == pytest.approx(7 * transfer, rel=0.35)
    assert f"predicted {passes:.2f} s" in reason and f"{chunks:.2f} s at 256" in reason


def test_cpu_and_resident_plans_prefill_a_chunk_a_pass():
    for hardware, gb in ((CPU_ONLY, None), (gpu_profile(), 24)):
        plan = make_plan(config("qwen2.5-7b"), hardware, vram_gb=gb)
        assert plan.offloaded_layers == 0
        assert plan.prefill_pass_tokens == planner.PREFILL_CHUNK and plan.memory["prefill_pass"] == 0
        assert not any(r.startswith("Prefill:") for r in plan.reasons)


def test_the_first_pass_takes_what_the_spare_holds_up_to_its_size():
    c = config("qwen2.5-7b")
    layout = planner._with_substitutes(c, 2, 4096)
    per_token = planner._pass_bytes_per_token(c, 2)
    first = planner.PREFILL_PASS_FIRST
    full = planner._vram(c, layout, 2)  # what the layout takes; the rest of the budget is spare
    for spare, tokens in ((0, 256), (-5, 256), (255 * per_token, 256), (256 * per_token, 512),
                          ((first - 256) * per_token + 1, first), (10 * planner.GIB, first)):
        got, left = planner._first_pass(c, layout, full + spare, 2)
        assert got.prefill == tokens and left == spare - planner.prefill_pass_bytes(c, tokens, 2), spare
    assert planner.prefill_pass_bytes(c, first, 2) < 15 * 2**20  # a few MB
