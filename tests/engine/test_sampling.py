from dataclasses import replace

import math

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


def test_a_draw_depends_on_seed_position_and_token_only():
    # The same position in a batch of other rows, or alone, or repeated: the same noise, so the same token.
    draws = SamplingParams(temperature=1.0, seed=123).draws()
    g = draws.gumbels(torch.tensor([5, 9, 5, 1000000007]), 50)
    assert g.shape == (4, 50) and g.dtype == torch.float32 and torch.isfinite(g).all()
    assert torch.equal(g[0], g[2]) and not torch.equal(g[0], g[1])
    assert torch.equal(draws.gumbels(torch.tensor([9]), 50)[0], g[1])
    # Some tokens only (the draft's candidates), per row or shared: the same values as the whole vocabulary's.
    ids = torch.tensor([[3, 49, 0], [7, 7, 1]])
    assert torch.equal(draws.gumbels(torch.tensor([5, 9]), ids), torch.stack((g[0][ids[0]], g[1][ids[1]])))
    assert torch.equal(draws.gumbels(torch.tensor([5]), torch.tensor([4, 2])), g[:1, [4, 2]])
    # Standard Gumbel (mean Euler's gamma, variance pi^2 / 6), uncorrelated between neighbouring positions
    # and between neighbouring tokens (the hash avalanches).
    many = draws.gumbels(torch.arange(2000), 1000).double()
    assert abs(float(many.mean()) - 0.5772) < 0.005 and abs(float(many.var()) - math.pi ** 2 / 6) < 0.01
    u = torch.exp(-torch.exp(-many)).flatten()  # back to uniforms
    assert torch.histc(u.float(), bins=10, min=0, max=1).div(u.numel() / 10).sub(1).abs().max() < 0.01
    for a, b in ((many[:-1], many[1:]), (many[:, :-1], many[:, 1:])):
        assert abs(float(torch.corrcoef(torch.stack((a.flatten(), b.flatten())))[0, 1])) < 0.01
    assert not torch.equal(SamplingParams(temperature=1.0, seed=124).draws().gumbels(torch.tensor([5]), 50)[0], g[0])


def test_a_cut_token_is_never_drawn():
    logits = torch.tensor([[0.0, float("-inf"), 0.0, float("-inf")]]).expand(2000, 4)
    params = SamplingParams(temperature=1.0, seed=1)
    tokens = select_tokens(logits, params, params.draws(), torch.arange(2000))
    assert set(tokens.tolist()) == {0, 2}
    cut = SamplingParams(temperature=1.0, top_k=2, seed=1)  # and one the warps cut
    tokens = select_tokens(torch.tensor([[3.0, 2.0, 1.0]]).expand(2000, 3), cut, cut.draws(), torch.arange(2000))
    assert set(tokens.tolist()) == {0, 1}


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
    """What warping and the draw hold at their peak, measured: it does not grow with the tree's rows, and per
    value of a block it is within what engine.planner.workspace_bytes counts (29 bytes measured with top-p's
    sort; 20 without, the Gumbel noise's hash: one int64 value and a temporary beside the log-probabilities)."""
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
    assert per_value <= (29 if params.top_p < 1 else 20) + cast <= planner.SAMPLING_BYTES_PER_VALUE


# Penalties: repetition (transformers' rule over prompt and answer), presence and frequency (OpenAI's, over
# the answer), before any warping.

def _history(params, prompt, answer):
    from engine.sampling import History

    h = History(params, prompt)
    h.extend(answer)
    return h


def test_the_repetition_penalty_is_transformers_over_prompt_and_answer():
    from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

    params = SamplingParams(repetition_penalty=1.3)
    logits = torch.randn(1, 200, generator=torch.Generator().manual_seed(3)) * 4
    prompt, answer = [5, 9, 9, 17], [9, 40, 41]
    ours = _history(params, prompt, answer).penalize(logits)
    theirs = RepetitionPenaltyLogitsProcessor(1.3)(torch.tensor([prompt + answer]), logits.clone())
    assert torch.equal(ours, theirs)  # the same rounding, element for element
    assert not torch.equal(ours, logits)
    assert torch.equal(ours[0, 100:], logits[0, 100:])  # tokens outside the context are left alone


def test_presence_and_frequency_penalties_count_the_answer_only():
    params = SamplingParams(presence_penalty=0.5, frequency_penalty=0.25)
    logits = torch.randn(2, 50, generator=torch.Generator().manual_seed(4))
    ours = _history(params, [1, 2, 3], [3, 7, 7, 7]).penalize(logits)
    expected = logits.clone()
    expected[:, 3] -= 0.5 + 0.25
    expected[:, 7] -= 0.5 + 0.75
    assert torch.allclose(ours, expected, atol=1e-6)
    assert torch.equal(ours[:, [1, 2]], logits[:, [1, 2]])  # the prompt's tokens: not the answer's


@pytest.mark.parametrize("last_n", [0, 1, 2, 3, 4, 5, 7, 30])
def test_a_tree_row_is_penalized_as_plain_decoding_would_at_that_node(last_n):
    """A node's path below the root joins its context: penalizing with paths equals extending the history.
    With a window (the context's last n tokens), its oldest tokens leave a deeper node's window, and a
    path longer than the window keeps only its last n tokens."""
    params = SamplingParams(repetition_penalty=1.2, presence_penalty=0.3, frequency_penalty=0.1,
                            penalty_last_n=last_n)
    logits = torch.randn(3, 60, generator=torch.Generator().manual_seed(5)) * 3
    tokens = torch.tensor([4, 11, 12, 11, 30, 2])  # node 0 the root (already emitted)
    depths = torch.tensor([0, 1, 2, 2, 3, 4])
    member = torch.tensor([[False, True, False, True, False, False],  # a path: root -> 11 -> 11
                           [False, False, False, False, False, False],  # the root itself
                           [False, True, True, False, True, True]]).bool()  # root -> 11 -> 12 -> 30 -> 2
    prompt, answer = [2, 3, 30, 3], [12, 4]
    tree_rows = _history(params, prompt, answer).penalize(logits, (member, tokens, depths))
    for r, extra in enumerate([[11, 11], [], [11, 12, 30, 2]]):
        alone = _history(params, prompt, answer + extra).penalize(logits[r:r + 1])
        assert torch.equal(tree_rows[r:r + 1], alone), r


def test_a_window_counts_the_contexts_last_n_tokens_only():
    """llama.cpp's repeat_last_n: the repetition penalty over the last n tokens of prompt and answer;
    presence and frequency over the answer's tokens among them."""
    from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

    logits = torch.randn(1, 100, generator=torch.Generator().manual_seed(8)) * 4
    prompt, answer = [5, 6, 7, 8], [9, 5, 10, 10]
    params = SamplingParams(repetition_penalty=1.4, penalty_last_n=5)
    window = (prompt + answer)[-5:]  # 8, 9, 5, 10, 10
    expected = RepetitionPenaltyLogitsProcessor(1.4)(torch.tensor([window]), logits.clone())
    assert torch.equal(_history(params, prompt, answer).penalize(logits), expected)
    params = SamplingParams(frequency_penalty=1.0, penalty_last_n=3)  # 5, 10, 10: all the answer's
    penalized = _history(params, prompt, answer).penalize(logits)
    assert torch.allclose(logits - penalized, torch.zeros(1, 100).index_put_(
        (torch.tensor([0, 0]), torch.tensor([5, 10])), torch.tensor([1.0, 2.0])))
    params = SamplingParams(frequency_penalty=1.0, penalty_last_n=6)  # 7, 8 (the prompt's), then 9, 5, 10, 10
    penalized = _history(params, prompt, answer).penalize(logits)
    assert (logits - penalized)[0, [5, 7, 8, 9, 10]].tolist() == pytest.approx([1.0, 0.0, 0.0, 1.0, 2.0])


def test_a_window_follows_the_answer_as_it_grows():
    """The window's counts are kept up to date as tokens come and leave: equal to a history built at once."""
    params = SamplingParams(repetition_penalty=1.3, frequency_penalty=0.2, penalty_last_n=4)
    logits = torch.randn(1, 40, generator=torch.Generator().manual_seed(9)) * 3
    grown = _history(params, [1, 2, 3], [])
    answer = []
    for block in ([4], [4, 5, 1], [], [6, 7, 8, 9, 10, 4], [2]):
        grown.extend(block)
        answer += block
        assert torch.equal(grown.penalize(logits), _history(params, [1, 2, 3], answer).penalize(logits))


@pytest.mark.parametrize("params", [SamplingParams(repetition_penalty=1.5),
                                    SamplingParams(temperature=0.9, top_p=0.9, frequency_penalty=2.0, seed=1)])
def test_penalized_blocks_of_rows_select_the_same_tokens_and_leave_the_logits_alone(params, monkeypatch):
    from engine import sampling

    logits = torch.randn(30, 500, generator=torch.Generator().manual_seed(6)) * 4
    before = logits.clone()
    positions = torch.arange(30)
    unpenalized = select_tokens(logits, replace(params, repetition_penalty=1.0, frequency_penalty=0.0),
                                sampling.Draws(2), positions)
    # The context holds some of the tokens chosen without penalties, so penalizing has something to change.
    history = _history(params, list(range(0, 500, 3)) + unpenalized[:5].tolist(), unpenalized[5:10].tolist())
    member = torch.rand(30, 8, generator=torch.Generator().manual_seed(7)) < 0.4
    paths = (member, unpenalized[10:18], torch.arange(1, 9))
    whole = select_tokens(logits, params, sampling.Draws(2), positions, history, paths)
    assert torch.equal(logits, before)
    assert not torch.equal(whole, unpenalized)  # the penalties changed some choices
    for rows in (1, 7):
        monkeypatch.setattr(sampling, "SAMPLE_CHUNK_ELEMENTS", rows * 500)
        assert torch.equal(select_tokens(logits, params, sampling.Draws(2), positions, history, paths), whole)
    with pytest.raises(ValueError, match="history"):
        select_tokens(logits, params, sampling.Draws(2), positions)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_penalties_stay_within_the_planners_sampling_term(dtype, monkeypatch):
    from test_mask_memory import MaskLedger

    from engine import planner, sampling

    vocab, block = 3000, 8
    monkeypatch.setattr(sampling, "SAMPLE_CHUNK_ELEMENTS", block * vocab)
    logits = (torch.randn(64, vocab, generator=torch.Generator().manual_seed(1)) * 4).to(dtype)
    params = SamplingParams(temperature=1.0, top_p=0.9, repetition_penalty=1.1, presence_penalty=0.5,
                            frequency_penalty=0.5, penalty_last_n=64)
    history = _history(params, list(range(0, vocab, 2)), [5, 5, 6])
    paths = (torch.ones(64, 40, dtype=torch.bool), torch.arange(40), torch.arange(40))
    with MaskLedger(min_columns=vocab) as ledger:
        select_tokens(logits, params, sampling.Draws(3), torch.arange(64), history, paths)
    assert 0 < ledger.peak / (block * vocab) <= planner.SAMPLING_BYTES_PER_VALUE


@pytest.mark.parametrize("kwargs", [dict(repetition_penalty=0), dict(repetition_penalty=-1.1),
                                    dict(repetition_penalty=1e-45), dict(repetition_penalty=1e6),
                                    dict(repetition_penalty=float("inf")), dict(presence_penalty=float("nan")),
                                    dict(frequency_penalty=float("-inf")), dict(penalty_last_n=-1),
                                    dict(penalty_last_n=2.5)])
def test_bad_penalties_are_user_errors(kwargs):
    with pytest.raises(SubspecError, match="penalt"):
        SamplingParams(**kwargs)
