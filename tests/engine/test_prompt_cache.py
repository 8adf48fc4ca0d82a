"""Prompt caching (engine.kv_cache.PromptCache): the next answer prefills only what its prompt does not share
with the cache the last answer left, and answers exactly as without it, plain or SubSpec, turn after turn,
after an edit, a stop or a failure; under offloading the weights streamed for the prefill drop with it."""

import weakref
from types import SimpleNamespace

import pytest
import torch
from tiny_models import make_tiny_model_folder

from engine.events import summarize
from engine.generate import generate_plain, prefill
from engine.kv_cache import PromptCache
from engine.loading import load_model
from engine.sampling import SamplingParams
from engine.speculative import TreeShape, generate_subspec
from engine.substitute import build_draft


@pytest.fixture(scope="module", params=["llama", "qwen3", "mistral-window"])
def tiny(request, tmp_path_factory):
    folder = make_tiny_model_folder(tmp_path_factory.mktemp(request.param), request.param)
    lm = load_model(folder, "float32", "cpu")
    return lm, build_draft(lm.decoder, 4, 64), folder


def _answer(gen, ids):
    return summarize(gen, len(ids), "x")


def _turns(lm, n_turns=3):
    """Prompts of a growing conversation: each the last prompt, its answer and a new message."""
    return [lm.encode(text, chat=False) for text in ("hello there, ", " and then? ", " tell me more: ")][:n_turns]


def _conversation(lm, draft, turns, cache, method, sampling=SamplingParams(), n=24):
    """Each turn's (prompt, answer ids), the prompt built from the previous turn's prompt and answer."""
    prompt, out = [], []
    for i, message in enumerate(turns):
        prompt = prompt + message
        m = method[i % len(method)]
        gen = (generate_plain(lm, prompt, n, sampling, prompt_cache=cache) if m == "plain" else
               generate_subspec(lm, draft, prompt, n, sampling, shape=TreeShape(6, 3), prompt_cache=cache))
        result = _answer(gen, prompt)
        out.append((list(prompt), result.token_ids))
        prompt = prompt + list(result.token_ids)
    return out


@pytest.mark.parametrize("method", [("plain",), ("subspec",), ("plain", "subspec")], ids=["plain", "subspec", "mixed"])
@pytest.mark.parametrize("sampling", [SamplingParams(), SamplingParams(temperature=0.8, seed=3),
                                      SamplingParams(repetition_penalty=1.2)], ids=["greedy", "sampled", "penalized"])
def test_a_conversation_answers_as_without_the_cache(tiny, method, sampling):
    lm, draft, _ = tiny
    cache = PromptCache()
    cached = _conversation(lm, draft, _turns(lm), cache, method, sampling)
    fresh = _conversation(lm, draft, _turns(lm), None, method, sampling)
    assert cached == fresh
    # What it kept: the last prompt and its answer; at the length limit not the answer's last token, which
    # was never run through the model (at an end-of-sequence it was: its logits chose the end).
    prompt, answer = cached[-1]
    assert cache.ids == (prompt + list(answer))[:cache.cache.length]
    assert len(prompt) + len(answer) - 1 <= cache.cache.length <= len(prompt) + len(answer)


def test_the_kept_rows_are_a_fresh_prefills(tiny):
    lm, draft, _ = tiny
    cache = PromptCache()
    _conversation(lm, draft, _turns(lm), cache, ("plain", "subspec"))
    kept, ids = cache.cache, cache.ids
    fresh = lm.decoder.new_cache(len(ids) + 1)
    with torch.no_grad():
        prefill(lm.decoder, fresh, ids, chunk=7)
    n = len(ids)
    torch.testing.assert_close(kept.k[:, :, :, :n], fresh.k[:, :, :, :n], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(kept.v[:, :, :, :n], fresh.v[:, :, :, :n], atol=1e-5, rtol=1e-4)


def test_only_what_differs_is_prefilled(tiny):
    lm, draft, _ = tiny
    cache = PromptCache()
    first = lm.encode("the quick brown fox jumps", chat=False)
    _answer(generate_plain(lm, first, 5, prompt_cache=cache), first)
    # An edited earlier message: the common prefix is kept, the rest is prefilled anew.
    edited = first[:6] + lm.encode("XYZ over the dog", chat=False)
    calls = []
    real = lm.decoder.forward

    def counting(tokens, *args, **kwargs):
        calls.append(int(tokens.shape[0]))
        return real(tokens, *args, **kwargs)

    lm.decoder.forward = counting
    try:
        got = _answer(generate_plain(lm, edited, 8, prompt_cache=cache), edited)
    finally:
        del lm.decoder.forward
    assert calls[0] == len(edited) - 6  # the prefill: the prompt after the shared six tokens
    assert got.cached_tokens == 6 and got.as_json()["cached_tokens"] == 6
    assert got.token_ids == _answer(generate_plain(lm, edited, 8), edited).token_ids
    # The same prompt again (Regenerate): everything but its last token comes from the cache.
    again = _answer(generate_subspec(lm, draft, edited, 8, shape=TreeShape(4, 2), prompt_cache=cache), edited)
    assert again.token_ids == got.token_ids and cache.ids[:len(edited)] == edited
    assert again.cached_tokens == len(edited) - 1


def test_a_stopped_or_failed_answer_leaves_a_cache_that_is_still_right(tiny):
    lm, draft, _ = tiny
    cache = PromptCache()
    turns = _turns(lm, 2)
    gen = generate_subspec(lm, draft, turns[0], 40, shape=TreeShape(6, 3), prompt_cache=cache)
    partial = [t for _, ev in zip(range(3), gen) for t in ev.token_ids]
    gen.close()  # Stop after three steps
    assert cache.cache is not None and cache.ids == (turns[0] + partial)[:cache.cache.length]
    prompt = turns[0] + partial + turns[1]
    assert (_answer(generate_plain(lm, prompt, 20, prompt_cache=cache), prompt).token_ids
            == _answer(generate_plain(lm, prompt, 20), prompt).token_ids)

    def broken(*args, **kwargs):
        raise RuntimeError("the verification failed")

    with pytest.raises(RuntimeError):
        list(generate_subspec(lm, draft, prompt, 20, shape=TreeShape(4, 2), verifier=broken, prompt_cache=cache))
    assert cache.ids == prompt[:cache.cache.length]  # the prompt only: nothing of the failed pass
    assert (_answer(generate_plain(lm, prompt, 20, prompt_cache=cache), prompt).token_ids
            == _answer(generate_plain(lm, prompt, 20), prompt).token_ids)


def test_another_models_cache_is_not_used(tiny, tmp_path):
    lm, _, folder = tiny
    other = load_model(folder, "float32", "cpu")  # the same weights, another decoder (a reload)
    cache = PromptCache()
    ids = lm.encode("abcdef", chat=False)
    _answer(generate_plain(lm, ids, 4, prompt_cache=cache), ids)
    assert cache.take(other.decoder, ids) is None and cache.cache is None


def test_under_offloading_the_prefill_streams_the_weights_for_the_new_tokens_only(tiny):
    """A prompt streams the offloaded layers once per pass (engine.model.Decoder.prefill_pass): passes of 8
    tokens here, so that the whole prompt takes several and what is new after the kept cache one."""
    lm, _, folder = tiny
    off = load_model(folder, "float32", "cpu", resident_layers=1, prefill_tokens=8)
    cache = PromptCache()
    first = lm.encode("a conversation long enough for several chunks", chat=False)
    answer = _answer(generate_plain(off, first, 6, prefill_chunk=8, prompt_cache=cache), first)
    second = first + list(answer.token_ids) + lm.encode(" go on", chat=False)
    with_cache = next(iter(generate_plain(off, second, 6, prefill_chunk=8, prompt_cache=cache)))
    without = next(iter(generate_plain(off, second, 6, prefill_chunk=8)))
    per_pass = without.bytes_moved // -(-len(second) // 8)  # one pass streams every offloaded layer once
    assert with_cache.bytes_moved == per_pass < without.bytes_moved
    assert with_cache.token_ids == without.token_ids


def test_a_kept_cache_that_cannot_grow_gives_way_to_a_fresh_one(tiny):
    """Growing a kept cache needs the old and the new at once; out of GPU memory (faked here), the kept one
    goes and the prompt is prefilled whole into a fresh cache: the same answer."""
    lm, draft, _ = tiny
    cache = PromptCache()
    ids = lm.encode("hello there", chat=False)
    _answer(generate_plain(lm, ids, 6, prompt_cache=cache), ids)
    kept = cache.cache

    def no_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory (faked)")

    kept.ensure_capacity = no_memory
    gone = weakref.ref(kept)
    del kept
    real = lm.decoder.new_cache

    def new_cache(slots):  # a GPU with room for one cache: the kept one must be freed first
        if gone() is not None:
            raise torch.OutOfMemoryError("CUDA out of memory (faked): the kept cache is still alive")
        return real(slots)

    lm.decoder.new_cache = new_cache
    try:
        longer = ids + lm.encode(" and more", chat=False)
        events = list(generate_subspec(lm, draft, longer, 10, shape=TreeShape(4, 2), prompt_cache=cache))
    finally:
        del lm.decoder.new_cache
    assert gone() is None and cache.cache.length >= len(longer)
    assert not any("limited to" in ev.note for ev in events)  # the answer was not cut short for it
    assert ([t for ev in events for t in ev.token_ids]
            == list(_answer(generate_plain(lm, longer, 10), longer).token_ids))


def test_on_a_gpu_a_kept_cache_too_small_is_not_grown_but_replaced():
    """Growing on a GPU needs the old cache and the new at once, beyond what a plan reserves: a kept cache
    with too few slots there is let go (a new one is made for the plan's context), on the CPU it grows."""
    decoder = object()

    def kept(device, capacity):
        cache = PromptCache(slots=4096)
        fake = SimpleNamespace(length=10, capacity=capacity, k=SimpleNamespace(device=torch.device(device)))
        fake.commit = lambda n: setattr(fake, "length", n)
        cache.keep(decoder, fake, list(range(10)))
        return cache, fake

    ids = list(range(8)) + [99, 98]
    for device, capacity, needed, kept_it in (("cuda", 100, 101, False), ("cuda", 100, 100, True),
                                              ("cpu", 100, 101, True)):
        cache, fake = kept(device, capacity)
        got = cache.take(decoder, ids, needed)
        assert (got is fake) == kept_it and cache.cache is None
        if kept_it:
            assert fake.length == 8  # cut back to the shared tokens
