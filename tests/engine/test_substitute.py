"""The substitute draft shares every tensor it does not replace, and its substitutes are hqq's own."""

import pytest
import torch
from tiny_models import make_tiny_checkpoint

from engine.errors import SubspecError
from engine.loading import load_decoder
from engine.model import LINEAR_NAMES
from engine.substitute import SubstituteLinear, build_draft


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    return load_decoder(make_tiny_checkpoint(tmp_path_factory.mktemp("t"), "qwen2"), torch.float32)


def _same(a, b):
    return a.data_ptr() == b.data_ptr() and a.shape == b.shape


def test_everything_but_the_substituted_linears_is_the_same_storage(target):
    draft = build_draft(target, 4, 64, layers=[0, 2])
    assert _same(draft.embed_tokens.weight, target.embed_tokens.weight)
    assert _same(draft.norm.weight, target.norm.weight)
    assert _same(draft.output_weight, target.output_weight)
    assert _same(draft.rotary.inv_freq, target.rotary.inv_freq)
    assert draft.layers[1] is target.layers[1]  # not substituted: the target's own layer
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
