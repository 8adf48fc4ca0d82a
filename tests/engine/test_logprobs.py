"""Log-probabilities of the emitted tokens (SamplingParams.logprobs): the target's own distribution at each
token, as transformers computes it over the whole text, and the same under SubSpec as under plain decoding
(the tree pass's rows of the accepted path, not the draft's)."""

import pytest
import torch
from tiny_models import make_tiny_model_folder

from engine.errors import SubspecError
from engine.events import summarize
from engine.generate import generate_plain
from engine.loading import load_model
from engine.sampling import MAX_TOP_LOGPROBS, SamplingParams
from engine.speculative import TreeShape, generate_subspec, verify
from engine.substitute import build_draft


@pytest.fixture(scope="module", params=["llama", "qwen2", "mistral-window"])
def tiny(request, tmp_path_factory):
    folder = make_tiny_model_folder(tmp_path_factory.mktemp(request.param), request.param)
    lm = load_model(folder, "float32", "cpu")
    return lm, build_draft(lm.decoder, 4, 64), folder


def _reference(folder, prompt: list[int], answer: list[int]) -> torch.Tensor:
    """transformers' log-softmax at each answer token's position, over the whole text at once: [n, V]."""
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(torch.tensor([prompt + answer])).logits[0]
    return torch.log_softmax(logits[len(prompt) - 1:len(prompt) + len(answer) - 1].float(), dim=-1)


def _run(gen, ids):
    return summarize(gen, len(ids), "x")


def test_plain_logprobs_are_transformers_log_softmax_at_each_token(tiny):
    lm, _, folder = tiny
    ids = lm.encode("the cat sat on")
    result = _run(generate_plain(lm, ids, 30, SamplingParams(logprobs=5)), ids)
    assert len(result.logprobs) == len(result.token_ids) == 30
    ref = _reference(folder, ids, list(result.token_ids))
    for j, (tid, lp) in enumerate(zip(result.token_ids, result.logprobs)):
        assert lp.token_id == tid
        assert lp.logprob == pytest.approx(ref[j, tid].item(), abs=1e-4)
        assert len(lp.top) == 5
        top_ids = [t for t, _ in lp.top]
        assert top_ids[0] == tid  # greedy: the chosen token is the likeliest
        assert [v for _, v in lp.top] == sorted((v for _, v in lp.top), reverse=True)
        for t, v in lp.top:
            assert v == pytest.approx(ref[j, t].item(), abs=1e-4)
        assert set(top_ids) == set(torch.topk(ref[j], 5).indices.tolist())


@pytest.mark.parametrize("sampling", [
    SamplingParams(logprobs=3),
    SamplingParams(temperature=0.9, top_p=0.9, seed=11, logprobs=2),
    SamplingParams(repetition_penalty=1.3, presence_penalty=0.5, logprobs=3),
    SamplingParams(temperature=1.2, top_k=20, min_p=0.05, frequency_penalty=0.4, seed=5, logprobs=4),
], ids=["greedy", "sampled", "penalized", "sampled-penalized"])
@pytest.mark.parametrize("shape", [TreeShape(6, 3), TreeShape(8, 4, budget=12), TreeShape(8, 3, auto=True),
                                   TreeShape(0, 2)], ids=["D6K3", "budget", "auto", "D0"])
def test_subspec_reports_what_plain_decoding_reports(tiny, sampling, shape):
    lm, draft, _ = tiny
    ids = lm.encode("hello world")
    plain = _run(generate_plain(lm, ids, 40, sampling), ids)
    spec = _run(generate_subspec(lm, draft, ids, 40, sampling, shape=shape), ids)
    assert spec.token_ids == plain.token_ids
    assert [lp.token_id for lp in spec.logprobs] == list(spec.token_ids)
    for a, b in zip(spec.logprobs, plain.logprobs):
        assert a.logprob == pytest.approx(b.logprob, abs=1e-4)
        assert len(a.top) == len(b.top) == sampling.logprobs
        for (ta, va), (tb, vb) in zip(a.top, b.top):
            assert va == pytest.approx(vb, abs=1e-4)
            assert ta == tb or va == pytest.approx(vb, abs=1e-6)  # (a tie may list either first)
    if sampling.penalized and sampling.greedy:
        # Raw: the penalty changed which token was chosen, not what the model's distribution says of it.
        assert any(lp.token_id != lp.top[0][0] for lp in spec.logprobs)


def test_logprobs_follow_the_tokens_kept_at_a_stop_string_eos_and_length(tiny):
    lm, draft, _ = tiny
    ids = lm.encode("abc")
    free = _run(generate_plain(lm, ids, 40, SamplingParams(logprobs=1)), ids)
    stop = lm.tokenizer.decode(list(free.token_ids[10:12]))
    for gen in (generate_plain(lm, ids, 40, SamplingParams(logprobs=1), (stop,)),
                generate_subspec(lm, draft, ids, 40, SamplingParams(logprobs=1), (stop,), TreeShape(8, 3))):
        events = list(gen)
        assert all(len(ev.logprobs) == len(ev.token_ids) for ev in events)
        assert [lp.token_id for ev in events for lp in ev.logprobs] == [t for ev in events for t in ev.token_ids]
        assert events[-1].finish_reason == "stop"
    # The length limit inside an accepted block: the block is cut, and its log-probabilities with it.
    for n in (1, 7, 13):
        events = list(generate_subspec(lm, draft, ids, n, SamplingParams(logprobs=0), shape=TreeShape(8, 3)))
        got = [lp for ev in events for lp in ev.logprobs]
        assert len(got) == n and [lp.logprob for lp in got] == pytest.approx(
            [lp.logprob for lp in free.logprobs[:n]], abs=1e-4)


def test_json_mode_reports_the_raw_distribution_of_the_allowed_token(tiny):
    lm, draft, folder = tiny
    ids = lm.encode("data:")
    sampling = SamplingParams(json=True, logprobs=2)
    plain = _run(generate_plain(lm, ids, 30, sampling), ids)
    spec = _run(generate_subspec(lm, draft, ids, 30, sampling, shape=TreeShape(6, 3)), ids)
    assert spec.token_ids == plain.token_ids
    ref = _reference(folder, ids, list(plain.token_ids))
    for j, lp in enumerate(spec.logprobs):
        assert lp.logprob == pytest.approx(ref[j, lp.token_id].item(), abs=1e-4)
    # The constraint chose tokens the free model would not have: their log-probability is below the top's.
    assert any(lp.top[0][0] != lp.token_id for lp in spec.logprobs)


def test_none_unless_asked(tiny):
    lm, draft, _ = tiny
    ids = lm.encode("hi")
    assert _run(generate_plain(lm, ids, 5), ids).logprobs == ()
    assert _run(generate_subspec(lm, draft, ids, 5, shape=TreeShape(4, 2)), ids).logprobs == ()
    assert "logprobs" not in _run(generate_plain(lm, ids, 5), ids).as_json()
    asked = _run(generate_plain(lm, ids, 5, SamplingParams(logprobs=1)), ids).as_json()
    assert len(asked["logprobs"]) == 5 and set(asked["logprobs"][0]) == {"token_id", "logprob", "top"}


@pytest.mark.parametrize("bad", [-1, MAX_TOP_LOGPROBS + 1, True, 1.5, "3"])
def test_a_bad_count_is_refused(bad):
    with pytest.raises(SubspecError, match="top logprobs"):
        SamplingParams(logprobs=bad)


def test_a_verifier_that_keeps_no_logits_is_told_so(tiny):
    lm, draft, _ = tiny

    def tokens_only(target, cache, tree, sampling, draws, history, keep=None):
        return verify(target, cache, tree, sampling, draws, history)

    with pytest.raises(TypeError, match="keep\\['logits'\\]"):
        list(generate_subspec(lm, draft, lm.encode("hi"), 10, SamplingParams(logprobs=1), shape=TreeShape(2, 2),
                              verifier=tokens_only))


def test_json_mode_without_logprobs_needs_only_the_rescoring(tiny):
    lm, draft, _ = tiny

    def rescoring_only(target, cache, tree, sampling, draws, history, keep=None):
        tokens = verify(target, cache, tree, sampling, draws, history, keep=keep)
        keep.pop("logits")
        return tokens

    sampling = SamplingParams(json=True)
    ids = lm.encode("data:")
    got = _run(generate_subspec(lm, draft, ids, 20, sampling, shape=TreeShape(4, 2), verifier=rescoring_only), ids)
    assert got.token_ids == _run(generate_plain(lm, ids, 20, sampling), ids).token_ids
    with pytest.raises(TypeError, match="keep\\['logits'\\]"):
        list(generate_subspec(lm, draft, ids, 20, SamplingParams(json=True, logprobs=1), shape=TreeShape(4, 2),
                              verifier=rescoring_only))
