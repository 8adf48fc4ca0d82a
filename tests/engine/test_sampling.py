import pytest
import torch

from engine.errors import SubspecError
from engine.sampling import SamplingParams, select_tokens, warp


def test_greedy_is_argmax():
    logits = torch.tensor([[0.1, 3.0, 2.0], [5.0, -1.0, 4.9]])
    assert select_tokens(logits, SamplingParams(), None).tolist() == [1, 0]


def test_top_k_keeps_k_most_likely():
    logits = torch.tensor([[1.0, 4.0, 3.0, 2.0]])
    p = warp(logits, SamplingParams(temperature=1.0, top_k=2))
    assert (p[0, [0, 3]] == 0).all() and torch.allclose(p.sum(), torch.tensor(1.0))
    expected = torch.softmax(torch.tensor([4.0, 3.0]), 0)
    assert torch.allclose(p[0, [1, 2]], expected)


def test_top_p_keeps_smallest_set_reaching_p():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    p = warp(probs.log(), SamplingParams(temperature=1.0, top_p=0.8))
    assert p[0].tolist() == pytest.approx([0.5 / 0.8, 0.3 / 0.8, 0.0, 0.0])
    p = warp(probs.log(), SamplingParams(temperature=1.0, top_p=0.81))
    assert (p[0, :3] > 0).all() and p[0, 3] == 0


def test_temperature_sharpens():
    logits = torch.tensor([[1.0, 2.0]])
    hot = warp(logits, SamplingParams(temperature=2.0))
    cold = warp(logits, SamplingParams(temperature=0.5))
    assert cold[0, 1] > hot[0, 1]


def test_seed_reproduces_and_draws_follow_distribution():
    logits = torch.tensor([[0.0, 1.0, 2.0]]).expand(4000, 3)
    params = SamplingParams(temperature=1.0, seed=7)
    a = select_tokens(logits, params, params.generator())
    b = select_tokens(logits, params, params.generator())
    assert torch.equal(a, b)
    freq = torch.bincount(a, minlength=3).float() / 4000
    assert torch.allclose(freq, torch.softmax(torch.tensor([0.0, 1.0, 2.0]), 0), atol=0.03)


@pytest.mark.parametrize("kwargs", [dict(temperature=-1), dict(top_p=0), dict(top_p=1.5), dict(top_k=-2)])
def test_bad_parameters_are_user_errors(kwargs):
    with pytest.raises(SubspecError):
        SamplingParams(**kwargs)
