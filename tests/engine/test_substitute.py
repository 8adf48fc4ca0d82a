"""The substitute draft shares every tensor it does not replace, and its substitutes are hqq's own."""

import pytest
import torch
from tiny_models import make_tiny_checkpoint

from engine.errors import SubspecError
from engine.loading import load_decoder, load_model
from engine.model import LINEAR_NAMES
from engine.substitute import SubstituteLinear, build_draft, hqq_dequantize, substitute_paths


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    return load_decoder(make_tiny_checkpoint(tmp_path_factory.mktemp("t"), "qwen2"), torch.float32)


def _same(a, b):
    return a.data_ptr() == b.data_ptr() and a.shape == b.shape


def test_everything_but_the_substituted_linears_is_the_same_storage(target):
    draft = build_draft(target, 4, 64, layers=[0, 2], merge=False)
    assert _same(draft.embed_tokens.weight, target.embed_tokens.weight)
    assert _same(draft.norm.weight, target.norm.weight)
    assert _same(draft.output_weight, target.output_weight)
    assert _same(draft.rotary.inv_freq, target.rotary.inv_freq)
    assert draft.layers[1] is target.layers[1]  # not substituted (nor merged): the target's own layer
    for i in (0, 2):
        d, t = draft.layers[i], target.layers[i]
        assert _same(d.input_layernorm.weight, t.input_layernorm.weight)
        assert _same(d.post_attention_layernorm.weight, t.post_attention_layernorm.weight)
        assert _same(d.self_attn.q_proj.bias, t.self_attn.q_proj.bias)  # Qwen2's q/k/v bias is shared
        for name in LINEAR_NAMES:
            owner, leaf = name.split(".")
            assert isinstance(getattr(getattr(d, owner), leaf), SubstituteLinear)
            assert isinstance(getattr(getattr(t, owner), leaf), torch.nn.Linear)  # target untouched


def test_substitute_weight_equals_hqq_own_dequantization(target):
    from hqq.core.quantize import BaseQuantizeConfig, HQQLinear

    for nbits in (4, 8):
        linear = target.layers[0].mlp.up_proj
        sub = SubstituteLinear(linear, nbits, 64)
        copy = torch.nn.Linear(linear.in_features, linear.out_features, bias=False)
        copy.weight.data.copy_(linear.weight.data)
        ref = HQQLinear(copy, BaseQuantizeConfig(nbits=nbits, group_size=64, axis=1),
                        compute_dtype=torch.float32, device="cpu")
        assert torch.equal(sub.weight, ref.dequantize())
        assert not torch.equal(sub.weight, linear.weight)  # it is a real low-bit approximation
        assert sub.packed_bytes < linear.weight.numel() * linear.weight.element_size() / (8 / nbits) * 1.5


def test_draft_logits_are_close_but_not_equal(target):
    from engine.masks import causal_mask

    draft = build_draft(target, 8, 64)
    tokens = torch.arange(3, 13)
    mask = causal_mask(0, 10, torch.float32)
    a = target(tokens, torch.arange(10), target.new_cache(10), 0, mask)
    b = draft(tokens, torch.arange(10), draft.new_cache(10), 0, mask)
    assert not torch.equal(a, b)
    assert ((a - b).abs().max() / a.abs().max()) < 0.05


def test_bad_substitute_settings_are_user_errors(target):
    with pytest.raises(SubspecError, match="bits"):
        build_draft(target, 5, 64)
    with pytest.raises(SubspecError, match="group size"):
        build_draft(target, 4, 100)


def _substitutes(draft):
    for i in draft.substituted_layers:
        for name in LINEAR_NAMES:
            owner, leaf = name.split(".")
            yield (i, name), getattr(getattr(draft.layers[i], owner), leaf)


def _logits(model, n=10):
    from engine.masks import causal_mask

    tokens = torch.arange(3, 3 + n)
    return model(tokens, torch.arange(n), model.new_cache(n), 0, causal_mask(0, n, torch.float32))


def test_given_hqq_tensors_are_used_as_they_are(target, monkeypatch):
    import engine.substitute as substitute

    fresh = build_draft(target, 4, 64, layers=[0, 2], merge=False)
    given = {key: (sub.packed, sub.meta) for key, sub in _substitutes(fresh)}
    calls = []
    real = substitute.hqq_quantize
    monkeypatch.setattr(substitute, "hqq_quantize", lambda *a, **k: calls.append(1) or real(*a, **k))
    reused = build_draft(target, 4, 64, layers=[0, 2], quantized=given, merge=False)
    assert calls == []
    for key, sub in _substitutes(reused):
        assert sub.packed.data_ptr() == given[key][0].data_ptr()
        assert torch.equal(sub.weight, dict(_substitutes(fresh))[key].weight)
    assert torch.equal(_logits(reused), _logits(fresh))
    # Only the linears missing from the mapping are quantized.
    partial = {k: v for k, v in given.items() if k[0] == 0}
    build_draft(target, 4, 64, layers=[0, 2], quantized=partial)
    assert len(calls) == len(LINEAR_NAMES)
    with pytest.raises(SubspecError, match="8-bit"):
        build_draft(target, 8, 64, layers=[0], quantized=given)


def test_a_half_precision_substitute_keeps_scale_and_zero_in_its_dtype(target):
    linear = torch.nn.Linear(128, 64, bias=False).to(torch.bfloat16)
    sub = SubstituteLinear(linear, 4, 64)
    assert sub.meta["scale"].dtype == sub.meta["zero"].dtype == torch.bfloat16
    assert torch.equal(sub.weight, hqq_dequantize(sub.packed, sub.meta).to(torch.bfloat16))
    # 4 bits a weight plus a 16-bit scale and zero per group of 64: what the planner counts.
    assert sub.packed_bytes == 64 * 128 // 2 + 2 * 2 * 64 * 128 // 64
    assert not sub.fused and sub.resident_bytes == sub.packed_bytes + 64 * 128 * 2


def test_on_the_cpu_substitutes_are_dequantized_unless_fused_is_asked_for(target):
    assert all(not sub.fused for _, sub in _substitutes(build_draft(target, 4, 64, layers=[1], merge=False)))
    with pytest.raises(SubspecError, match="divide"):  # down_proj's 96 inputs are not groups of 64
        build_draft(target, 4, 64, layers=[1], fused=True)


def test_the_fused_draft_computes_what_the_dequantized_draft_computes(target):
    """The fused path (Triton's interpreter on CPU) keeps only the packed tensors and gives the same logits."""
    pytest.importorskip("triton")
    plain = build_draft(target, 4, 32, layers=[0, 2], merge=False)
    fused = build_draft(target, 4, 32, layers=[0, 2], fused=True, merge=False)
    paths = substitute_paths(fused)
    assert paths["fused"] == 2 * len(LINEAR_NAMES) and paths["dequantized"] == 0
    assert paths["resident_bytes"] == paths["packed_bytes"] == substitute_paths(plain)["packed_bytes"]
    for key, sub in _substitutes(fused):
        assert "weight" not in dict(sub.named_buffers())
        assert torch.equal(sub.dequantized(), dict(_substitutes(plain))[key].weight)
    torch.testing.assert_close(_logits(fused), _logits(plain), rtol=1e-5, atol=1e-5)


def test_greedy_subspec_with_the_fused_draft_equals_plain_decoding(tmp_path):
    pytest.importorskip("triton")
    from tiny_models import make_tiny_model_folder

    from engine.events import summarize
    from engine.generate import generate_plain
    from engine.speculative import TreeShape, generate_subspec

    lm = load_model(make_tiny_model_folder(tmp_path, "qwen2"), "float32", "cpu")
    draft = build_draft(lm.decoder, 4, 32, layers=[1, 2], fused=True, merge=True)  # as on CUDA
    ids = lm.encode("the cat sat on")
    plain = summarize(generate_plain(lm, ids, 24), len(ids), "vanilla")
    spec = summarize(generate_subspec(lm, draft, ids, 24, shape=TreeShape(6, 3)), len(ids), "subspec")
    assert spec.token_ids == plain.token_ids
    assert spec.tau > 1.5  # the fused draft is a real draft: most of its guesses are accepted


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_the_draft_is_fused_by_default_and_agrees_with_the_dequantized_one(tmp_path):
    target = load_decoder(make_tiny_checkpoint(tmp_path, "qwen2"), torch.bfloat16, "cuda")
    assert all(merged_layer.self_attn.qkv_proj is not None for merged_layer in
               (build_draft(target, 4, 32, layers=[0], device="cuda").layers[0],))  # merged by default on CUDA
    fused = build_draft(target, 4, 32, layers=[0, 2], device="cuda", merge=False)
    plain = build_draft(target, 4, 32, layers=[0, 2], device="cuda", fused=False, merge=False)
    assert substitute_paths(fused)["dequantized"] == 0 and substitute_paths(plain)["fused"] == 0
    for key, sub in _substitutes(fused):
        assert torch.equal(sub.dequantized(), dict(_substitutes(plain))[key].weight)
    from engine.masks import causal_mask

    tokens, n = torch.arange(3, 9, device="cuda"), 6
    mask = causal_mask(0, n, torch.float32, torch.device("cuda"))
    a = fused(tokens, torch.arange(n, device="cuda"), fused.new_cache(n), 0, mask)
    b = plain(tokens, torch.arange(n, device="cuda"), plain.new_cache(n), 0, mask)
    torch.testing.assert_close(a.float(), b.float(), rtol=0.05, atol=0.05)


# Merged launches: stacked q/k/v and gate/up substitutes, fused norms (the default draft).

def test_a_merged_draft_stacks_the_substitutes_it_was_built_from(target):
    """q/k/v and gate/up run as one stacked substitute each; their weight is the parts' stacked exactly,
    Qwen2's q/k/v biases stacked with them; o/down stay single; the target is untouched."""
    from engine.model import DraftRMSNorm
    from engine.substitute import StackedSubstitute

    parts = build_draft(target, 4, 64, layers=[0, 2], merge=False)
    merged = build_draft(target, 4, 64, layers=[0, 2], merge=True)
    for i in (0, 2):
        p, m, t = parts.layers[i], merged.layers[i], target.layers[i]
        qkv, gate_up = m.self_attn.qkv_proj, m.mlp.gate_up_proj
        assert isinstance(qkv, StackedSubstitute) and isinstance(gate_up, StackedSubstitute)
        assert m.self_attn.q_proj is None and m.mlp.gate_proj is None  # the parts' memory is gone
        assert torch.equal(qkv.weight, torch.cat([p.self_attn.q_proj.weight, p.self_attn.k_proj.weight,
                                                  p.self_attn.v_proj.weight]))
        assert torch.equal(qkv.bias, torch.cat([t.self_attn.q_proj.bias, t.self_attn.k_proj.bias,
                                                t.self_attn.v_proj.bias]))
        assert torch.equal(gate_up.weight, torch.cat([p.mlp.gate_proj.weight, p.mlp.up_proj.weight]))
        assert qkv.sizes == (t.self_attn.q_proj.out_features, t.self_attn.k_proj.out_features,
                             t.self_attn.v_proj.out_features)
        assert isinstance(m.input_layernorm, DraftRMSNorm)
        assert _same(m.input_layernorm.weight, t.input_layernorm.weight)
        assert isinstance(t.self_attn.q_proj, torch.nn.Linear) and t.self_attn.qkv_proj is None
        assert type(t.input_layernorm).__name__ == "RMSNorm"
    # The full-precision layer is the target's attention and MLP (same objects); only its norms are the
    # draft's (same weights); so is the final norm.
    kept, t = merged.layers[1], target.layers[1]
    assert kept.self_attn is t.self_attn and kept.mlp is t.mlp
    assert isinstance(kept.post_attention_layernorm, DraftRMSNorm) and isinstance(merged.norm, DraftRMSNorm)
    assert _same(kept.post_attention_layernorm.weight, t.post_attention_layernorm.weight)
    assert _same(merged.norm.weight, target.norm.weight) and type(target.norm).__name__ == "RMSNorm"
    counts = substitute_paths(merged)
    assert counts["dequantized"] == 2 * len(LINEAR_NAMES)  # counted as the linears they stand for
    assert counts["packed_bytes"] == substitute_paths(parts)["packed_bytes"]


def test_a_merged_draft_computes_what_the_separate_one_does(target):
    merged = build_draft(target, 4, 64, layers=[0, 2], merge=True)
    parts = build_draft(target, 4, 64, layers=[0, 2], merge=False)
    a, b = _logits(merged), _logits(parts)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert torch.equal(a.argmax(-1), b.argmax(-1))


def test_stacked_low_bit_weights_dequantize_to_the_stacked_weights():
    """LowBitWeight.concat repacks 4-bit rows into the halves layout of the stacked count; 8-bit stacks."""
    from engine.lowbit import LowBitWeight

    g = torch.Generator().manual_seed(0)
    for bits in (4, 8):
        ws = []
        for n in (6, 2, 4):
            rows = n // 2 if bits == 4 else n
            ws.append(LowBitWeight(torch.randint(0, 256, (rows, 128), dtype=torch.uint8, generator=g),
                                   torch.rand(n, 2, generator=g), torch.rand(n, 2, generator=g) * 15,
                                   n, 128, bits, 64, torch.float32))
        stacked = LowBitWeight.concat(ws)
        assert stacked.out_features == 12 and stacked.packed.shape == ((6 if bits == 4 else 12), 128)
        assert torch.equal(stacked.dequantize(torch.float32),
                           torch.cat([w.dequantize(torch.float32) for w in ws]))
    with pytest.raises(ValueError, match="same input size"):
        LowBitWeight.concat([ws[0], LowBitWeight(ws[1].packed[:, :64], ws[1].scale[:, :1], ws[1].zero[:, :1],
                                                  ws[1].out_features, 64, 8, 64, torch.float32)])


def test_a_merged_fused_draft_reads_stacked_packed_weights(target):
    """On the fused path (Triton's interpreter here) the stacked substitute keeps only packed tensors, and
    the merged draft's logits are the separate fused draft's."""
    pytest.importorskip("triton")
    merged = build_draft(target, 4, 32, layers=[2], fused=True, merge=True)
    parts = build_draft(target, 4, 32, layers=[2], fused=True, merge=False)
    qkv = merged.layers[2].self_attn.qkv_proj
    assert qkv.fused and "weight" not in dict(qkv.named_buffers())
    assert torch.equal(qkv.lowbit.dequantize(torch.float32),
                       torch.cat([getattr(parts.layers[2].self_attn, n).dequantized()
                                  for n in ("q_proj", "k_proj", "v_proj")]))
    paths = substitute_paths(merged)
    assert paths["fused"] == len(LINEAR_NAMES) and paths["resident_bytes"] == paths["packed_bytes"]
    torch.testing.assert_close(_logits(merged), _logits(parts), rtol=1e-5, atol=1e-5)


def test_drafts_merge_launches_by_default_only_on_cuda(target):
    from engine.substitute import merges_launches

    assert merges_launches("cuda") and merges_launches(torch.device("cuda", 0)) and not merges_launches("cpu")
    assert build_draft(target, 4, 64, layers=[0]).layers[0].self_attn.qkv_proj is None  # CPU: separate


def test_per_layer_bits_build_each_layer_at_its_width(target):
    """A plan's mixed draft ({layer: bits}): each layer is exactly what a one-width build gives it."""
    from engine.substitute import bits_label, layer_bits

    mixed = build_draft(target, {0: 8, 2: 4}, 64, layers=[0, 2], merge=False)
    assert mixed.substitute_bits == {0: 8, 2: 4}
    for i, bits in ((0, 8), (2, 4)):
        alone = build_draft(target, bits, 64, layers=[i], merge=False)
        got = [m for m in mixed.layers[i].modules() if isinstance(m, SubstituteLinear)]
        want = [m for m in alone.layers[i].modules() if isinstance(m, SubstituteLinear)]
        assert [m.nbits for m in got] == [bits] * 7
        assert all(torch.equal(a.packed, b.packed) and torch.equal(a.weight, b.weight) for a, b in zip(got, want))
    assert bits_label(mixed.substitute_bits) == "8/4-bit" and bits_label({1: 4}) == bits_label(4) == "4-bit"
    with pytest.raises(SubspecError, match=r"no substitute bits given for layers \[2\]"):
        layer_bits({0: 8}, [0, 2])
    with pytest.raises(SubspecError, match="must be one of"):
        layer_bits({0: 8, 2: 5}, [0, 2])
