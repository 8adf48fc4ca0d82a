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


def test_min_p_keeps_tokens_at_least_that_fraction_as_likely_as_the_likeliest():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    p = warp(probs.log(), SamplingParams(temperature=1.0, min_p=0.2))  # cut below 0.1
    assert p[0].tolist() == pytest.approx([0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0.0])


@pytest.mark.parametrize("kwargs", [dict(min_p=0.1), dict(top_k=50, top_p=0.9, min_p=0.05),
                                    dict(temperature=0.6, top_p=0.8, min_p=0.3)])
def test_the_warped_distribution_is_transformers(kwargs):
    """Temperature, top-k, top-p, min-p: transformers' processors in transformers' order."""
    from transformers.generation.logits_process import (MinPLogitsWarper, TemperatureLogitsWarper,
                                                        TopKLogitsWarper, TopPLogitsWarper)

    params = SamplingParams(**{"temperature": 1.0, **kwargs})
    logits = torch.randn(4, 300, generator=torch.Generator().manual_seed(0)) * 3
    scores = TemperatureLogitsWarper(params.temperature)(None, logits.clone())
    for warper in ([TopKLogitsWarper(params.top_k)] if params.top_k else []) + \
                  ([TopPLogitsWarper(params.top_p)] if params.top_p < 1 else []) + [MinPLogitsWarper(params.min_p)]:
        scores = warper(None, scores)
    assert torch.allclose(warp(logits, params), torch.softmax(scores, -1), atol=1e-6)


def test_temperature_sharpens():
    logits = torch.tensor([[1.0, 2.0]])
    hot = warp(logits, SamplingParams(temperature=2.0))
    cold = warp(logits, SamplingParams(temperature=0.5))
    assert cold[0, 1] > hot[0, 1]


def test_seed_reproduces_and_draws_follow_distribution():
    logits = torch.tensor([[0.0, 1.0, 2.0]]).expand(4000, 3)
    positions = torch.arange(4000)
    params = SamplingParams(temperature=1.0, seed=7)
    a = select_tokens(logits, params, params.draws(), positions)
    b = select_tokens(logits, params, params.draws(), positions)
    assert torch.equal(a, b)
    freq = torch.bincount(a, minlength=3).float() / 4000
    assert torch.allclose(freq, torch.softmax(torch.tensor([0.0, 1.0, 2.0]), 0), atol=0.03)
    other = select_tokens(logits, SamplingParams(temperature=1.0, seed=8), SamplingParams(seed=8, temperature=1).draws(),
                          positions)
    assert (other != a).float().mean() > 0.3  # another seed, other draws


def test_a_draw_depends_on_seed_and_position_only():
    # The same position in a batch of other rows, or alone, or repeated: the same u, so the same token.
    draws = SamplingParams(temperature=1.0, seed=123).draws()
    u = draws.uniforms(torch.tensor([5, 9, 5, 1000000007]))
    assert u[0] == u[2] and u[0] != u[1] and 0 < u.min() and u.max() < 1
    assert draws.uniforms(torch.tensor([9]))[0] == u[1]
    # Uniform and uncorrelated between neighbouring positions (the hash avalanches).
    many = draws.uniforms(torch.arange(200000))
    assert abs(float(many.mean()) - 0.5) < 0.005
    assert torch.histc(many.float(), bins=10, min=0, max=1).div(20000).sub(1).abs().max() < 0.03
    assert abs(float(torch.corrcoef(torch.stack((many[:-1], many[1:])))[0, 1])) < 0.01


def test_inverse_cdf_never_picks_a_zero_probability_token():
    logits = torch.tensor([[0.0, float("-inf"), 0.0, float("-inf")]]).expand(2000, 4)
    params = SamplingParams(temperature=1.0, seed=1)
    tokens = select_tokens(logits, params, params.draws(), torch.arange(2000))
    assert set(tokens.tolist()) == {0, 2}


def test_sampling_without_positions_is_a_clear_error():
    params = SamplingParams(temperature=1.0, seed=1)
    with pytest.raises(ValueError, match="position"):
        select_tokens(torch.zeros(1, 3), params, params.draws())


@pytest.mark.parametrize("kwargs", [dict(temperature=-1), dict(top_p=0), dict(top_p=1.5), dict(top_k=-2),
                                    dict(min_p=-0.1), dict(min_p=1.5), dict(min_p=float("nan"))])
def test_bad_parameters_are_user_errors(kwargs):
    with pytest.raises(SubspecError):
        SamplingParams(**kwargs)


PARAMS = [SamplingParams(0.7, 1.0), SamplingParams(0.7, 0.9), SamplingParams(1.0, 0.95, 40),
          SamplingParams(1.3, 1.0, 7)]


@pytest.mark.parametrize("params", PARAMS)
def test_sampling_a_block_of_rows_at_a_time_draws_the_same_tokens(params, monkeypatch):
    from engine import sampling

    logits = torch.randn(61, 3000, generator=torch.Generator().manual_seed(5)) * 4
    positions = torch.arange(100, 161)
    whole = select_tokens(logits, params, sampling.Draws(11), positions)
    for rows in (1, 7, 60):
        monkeypatch.setattr(sampling, "SAMPLE_CHUNK_ELEMENTS", rows * 3000)
        assert torch.equal(select_tokens(logits, params, sampling.Draws(11), positions), whole)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_logits_in_the_models_dtype_select_what_their_float32_cast_does(dtype):
    """Verification hands its logits over in the model's dtype (no float32 copy of the whole tree):
    greedy and every sampler pick exactly what they pick from the float32 cast."""
    from engine import sampling

    logits = (torch.randn(40, 2000, generator=torch.Generator().manual_seed(2)) * 5).to(dtype)
    positions = torch.arange(40)
    for params in [SamplingParams()] + PARAMS:
        draws = sampling.Draws(9)
        assert torch.equal(select_tokens(logits, params, draws, positions),
                           select_tokens(logits.float(), params, draws, positions))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("params", PARAMS)
def test_sampling_memory_stays_within_the_planners_term(params, dtype, monkeypatch):
    """What warping holds at its peak, measured: it does not grow with the tree's rows, and per value of a
    block it is within what engine.planner.workspace_bytes counts (29 bytes measured with top-p)."""
    from test_mask_memory import MaskLedger

    from engine import planner, sampling

    assert planner.SAMPLE_CHUNK_ELEMENTS == sampling.SAMPLE_CHUNK_ELEMENTS
    vocab, block = 3000, 8
    monkeypatch.setattr(sampling, "SAMPLE_CHUNK_ELEMENTS", block * vocab)
    logits = (torch.randn(64, vocab, generator=torch.Generator().manual_seed(1)) * 4).to(dtype)
    peaks = []
    for rows in (block, 64):
        with MaskLedger(min_columns=vocab) as ledger:
            select_tokens(logits[:rows], params, sampling.Draws(3), torch.arange(rows))
        peaks.append(ledger.peak)
    assert peaks[0] == peaks[1] > 0  # 64 rows hold what one block does
    per_value = peaks[1] / (block * vocab)
    cast = 4 if dtype != torch.float32 else 0  # the block's float32 copy
    assert per_value <= (29 if params.top_p < 1 else 9) + cast <= planner.SAMPLING_BYTES_PER_VALUE
