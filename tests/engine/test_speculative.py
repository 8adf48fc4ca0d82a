"""Speculative decoding is lossless: greedy output equals target-only output token for token, sampled
output follows the target's distribution, and the shared cache stays exact."""

import math

import pytest
import torch
from tiny_models import ARCHS, make_tiny_model_folder

from engine.events import summarize
from engine.generate import decode_mask, generate_plain
from engine.kv_cache import KVCache
from engine.loading import load_model
from engine.masks import causal_mask
from engine.sampling import SamplingParams, select_tokens
from engine.speculative import TreeShape, generate_subspec, verify
from engine.substitute import build_draft


@pytest.fixture(scope="module", params=sorted(ARCHS))
def tiny(request, tmp_path_factory):
    lm = load_model(make_tiny_model_folder(tmp_path_factory.mktemp(request.param), request.param), "float32", "cpu")
    return lm, build_draft(lm.decoder, 4, 64)


def _run(gen, lm, ids):
    return summarize(gen, len(ids), "x")


@pytest.mark.parametrize("shape", [TreeShape(6, 3), TreeShape(1, 4), TreeShape(5, 1), TreeShape(0, 2),
                                   TreeShape(8, 4, budget=12), TreeShape(8, 3, auto=True)])
def test_greedy_equals_plain_on_every_architecture(tiny, shape):
    lm, draft = tiny
    for prompt in ["hello world", "the cat sat on"]:
        ids = lm.encode(prompt)
        plain = _run(generate_plain(lm, ids, 40), lm, ids)
        spec = _run(generate_subspec(lm, draft, ids, 40, shape=shape), lm, ids)
        assert spec.token_ids == plain.token_ids
        assert spec.text == plain.text and spec.finish_reason == plain.finish_reason


def test_eos_inside_an_accepted_block_ends_the_answer_there(tiny):
    lm, draft = tiny
    ids = lm.encode("abc")
    events = list(generate_subspec(lm, draft, ids, 60, shape=TreeShape(8, 3)))
    # Pick a token the target emitted inside a multi-token accepted block and declare it the EOS.
    block = next(ev for ev in events if ev.iteration > 0 and ev.accepted >= 2)
    eos = block.token_ids[1]
    emitted = [t for ev in events for t in ev.token_ids]
    cut = emitted.index(eos)
    lm.eos_token_ids = lambda: {eos}
    try:
        plain = _run(generate_plain(lm, ids, 60), lm, ids)
        spec_events = list(generate_subspec(lm, draft, ids, 60, shape=TreeShape(8, 3)))
    finally:
        del lm.eos_token_ids
    spec = [t for ev in spec_events for t in ev.token_ids]
    assert spec == list(plain.token_ids) == emitted[:cut]
    assert spec_events[-1].finish_reason == "eos"
    assert spec_events[-1].accepted + 1 > len(spec_events[-1].token_ids)  # the block was cut at the EOS


def test_cache_is_exact_after_many_rounds(tiny):
    lm, draft = tiny
    ids = lm.encode("some prompt")
    cache = lm.decoder.new_cache(8)
    lm.eos_token_ids = lambda: set()  # run the full 50 tokens
    try:
        events = list(generate_subspec(lm, draft, ids, 50, shape=TreeShape(4, 2), cache=cache))
    finally:
        del lm.eos_token_ids
    emitted = [t for ev in events for t in ev.token_ids]
    assert len(emitted) == 50 and sum(ev.iteration > 0 for ev in events) > 5
    # Committed: the prompt and every emitted token but the last (the next root, without KV yet).
    assert cache.length == len(ids) + len(emitted) - 1
    last = torch.tensor(emitted[-1:])
    pos = cache.length
    from_cache = lm.decoder(last, torch.tensor([pos]), cache, pos, decode_mask(lm.decoder, pos))
    full = torch.tensor(ids + emitted)
    n = full.numel()
    mask = causal_mask(0, n, torch.float32, sliding_window=lm.config.sliding_window)
    fresh = lm.decoder(full, torch.arange(n), lm.decoder.new_cache(n), 0, mask, logits_index=slice(n - 1, n))
    assert ((from_cache - fresh).abs().max() / fresh.abs().max()) < 1e-5


# --- sampling is lossless: a two-sample chi-square test that can also fail ---------------------------

def _chi_square_p(a: list, b: list) -> float:
    """p-value of the homogeneity test between two samples of categorical outcomes (sparse bins pooled)."""
    from collections import Counter

    ca, cb = Counter(a), Counter(b)
    na, nb = len(a), len(b)
    pooled = {"other": [0, 0]}
    for key in set(ca) | set(cb):
        if ca[key] + cb[key] >= 10:
            pooled[key] = [ca[key], cb[key]]
        else:
            pooled["other"][0] += ca[key]
            pooled["other"][1] += cb[key]
    rows = [v for v in pooled.values() if sum(v) > 0]
    stat = 0.0
    for x, y in rows:
        tot = x + y
        ex, ey = tot * na / (na + nb), tot * nb / (na + nb)
        stat += (x - ex) ** 2 / ex + (y - ey) ** 2 / ey
    dof = len(rows) - 1
    return float(torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64),
                                         torch.tensor(stat / 2, dtype=torch.float64)))


def _biased_verify(target, cache, tree, sampling, generator, history=None):
    """A wrong verifier: where the target's draw is not the first child, take that child anyway whenever
    the target gives it at least 10% probability (over-accepts the draft)."""
    from engine.tree import tree_mask

    L, n = cache.length, tree.size
    logits = target(tree.tokens[:n], L + tree.depths[:n], cache, L,
                    tree_mask(tree.ancestors, slice(0, n), L, n))
    chosen = select_tokens(logits, sampling, generator, L + tree.depths[:n])
    probs = torch.softmax(logits / sampling.temperature, -1)
    for i in range(n):
        kids = (tree.parents[:n] == i).nonzero().flatten()
        if kids.numel():
            first = tree.tokens[kids[0]]
            if probs[i, first] >= 0.1:
                chosen[i] = first
    return chosen


@pytest.fixture(scope="module")
def peaked(tmp_path_factory):
    """A tiny model whose next-token distributions are neither flat nor one-hot."""
    from tiny_models import make_tiny_checkpoint, save_char_tokenizer

    folder = tmp_path_factory.mktemp("peaked")
    make_tiny_checkpoint(folder, "llama", seed=3, scale=3.0)
    save_char_tokenizer(folder)
    lm = load_model(folder, "float32", "cpu")
    return lm, build_draft(lm.decoder, 4, 64)


def _samples(peaked, seeds, spec, verifier=verify):
    lm, draft = peaked
    ids = lm.encode("xy", chat=False)
    out = []
    for seed in seeds:
        # A low temperature makes the tiny random model's distributions peaked enough to test with.
        params = SamplingParams(temperature=0.1, seed=seed)
        if spec:
            gen = generate_subspec(lm, draft, ids, 3, params, shape=TreeShape(2, 2), verifier=verifier)
        else:
            gen = generate_plain(lm, ids, 3, params)
        toks = [t for ev in gen for t in ev.token_ids]
        out.append(tuple(toks[1:3]))  # tokens decided by the first verification passes
    return out


@pytest.mark.parametrize("params", [SamplingParams(temperature=0.7, seed=11),
                                    SamplingParams(temperature=1.0, top_p=0.9, seed=12),
                                    SamplingParams(temperature=1.3, top_k=20, seed=13),
                                    SamplingParams(temperature=1.5, min_p=0.05, seed=14)])
def test_a_seeded_sampled_answer_is_the_same_whichever_way_it_is_decoded(tiny, params):
    lm, draft = tiny
    for prompt in ["hello world", "the cat sat on"]:
        ids = lm.encode(prompt)
        plain = _run(generate_plain(lm, ids, 40, params), lm, ids).token_ids
        for shape in (TreeShape(6, 3), TreeShape(1, 4), TreeShape(8, 3, auto=True), TreeShape(8, 4, budget=12)):
            assert _run(generate_subspec(lm, draft, ids, 40, params, shape=shape), lm, ids).token_ids == plain
    other = SamplingParams(params.temperature, params.top_p, params.top_k, seed=params.seed + 1000,
                           min_p=params.min_p)
    assert _run(generate_plain(lm, ids, 40, other), lm, ids).token_ids != plain  # the seed matters


def _accepted(lm, draft, ids, params, shape):
    """Draft tokens accepted per pass (the prefill's event and the last, cut by the length, left out)."""
    events = list(generate_subspec(lm, draft, ids, 40, params, shape=shape))
    return [ev.accepted for ev in events[1:-1]]


@pytest.mark.parametrize("params", [SamplingParams(temperature=1.0, seed=21),
                                    SamplingParams(temperature=0.8, top_p=0.9, top_k=30, min_p=0.02, seed=22)])
def test_a_sampled_tree_drafted_by_the_target_itself_is_accepted_whole(peaked, params, monkeypatch):
    """The draft guesses the target's draw with the answer's own noise: a draft that is the target (no
    substitutes) then guesses every token, and each pass accepts its whole path. A draft that ranks its
    children without the noise (the greedy beam) guesses far fewer: what the coupling is for."""
    from engine import speculative

    lm, _draft = peaked
    exact = build_draft(lm.decoder, 4, 64, layers=[])  # the target's own modules: q = p
    ids = lm.encode("xy", chat=False)
    monkeypatch.setattr(speculative, "DRAFT_CANDIDATES", lm.config.vocab_size)  # (a flat tiny model's tail)
    coupled = _accepted(lm, exact, ids, params, TreeShape(5, 1))
    assert coupled and all(n == 5 for n in coupled)
    grow = speculative.grow_tree
    monkeypatch.setattr(speculative, "grow_tree", lambda *a, sampling=None, draws=None, **k: grow(*a, **k))
    blind = _accepted(lm, exact, ids, params, TreeShape(5, 1))
    assert sum(blind) / len(blind) < 0.6 * 5


def test_a_sampled_tree_wider_than_the_drafts_candidates_is_still_lossless(tiny, monkeypatch):
    from engine import speculative

    lm, draft = tiny
    monkeypatch.setattr(speculative, "DRAFT_CANDIDATES", 2)  # fewer than the tree's width: the width wins
    params = SamplingParams(temperature=0.9, top_p=0.95, seed=5)
    ids = lm.encode("hello world")
    plain = _run(generate_plain(lm, ids, 24, params), lm, ids).token_ids
    assert _run(generate_subspec(lm, draft, ids, 24, params, shape=TreeShape(4, 5)), lm, ids).token_ids == plain


def test_sampling_matches_target_distribution_and_test_detects_bias(peaked):
    n = 800
    plain = _samples(peaked, range(0, n), spec=False)
    assert len(set(plain)) > 20  # a real distribution, not a near-deterministic one
    spec = _samples(peaked, range(100000, 100000 + n), spec=True)
    p_ok = _chi_square_p(plain, spec)
    biased = _samples(peaked, range(200000, 200000 + n), spec=True, verifier=_biased_verify)
    p_bad = _chi_square_p(plain, biased)
    assert p_ok > 0.001, f"speculative sampling differs from the target's (p={p_ok:.2e})"
    assert p_bad < 1e-6, f"the test failed to catch a biased verifier (p={p_bad:.2e})"
    assert not math.isnan(p_ok)


def test_fixed_shape_draft_steps_grow_the_same_tree(tiny):
    """The fixed-shape step (what a CUDA graph replays) equals the ordinary draft forward; on the CPU it
    runs eagerly, so this checks the shapes, slots and mask that the graph would bake in."""
    from engine.generate import prefill
    from engine.speculative import grow_tree

    lm, draft = tiny
    ids = lm.encode("fixed shapes")
    trees = []
    for fixed in (False, True):
        cache = lm.decoder.new_cache(len(ids) + 64)
        root = select_tokens(prefill(lm.decoder, cache, ids), SamplingParams(), None)
        trees.append(grow_tree(draft, cache, root, TreeShape(6, 3), 6, [0.0], fixed_shapes=fixed))
    a, b = trees
    assert a.size == b.size == 19
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.parents, b.parents)
    assert torch.allclose(a.scores, b.scores, rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    lm = load_model(make_tiny_model_folder(tmp_path_factory.mktemp("oom"), "llama"), "float32", "cpu")
    return lm, build_draft(lm.decoder, 4, 64)


def test_out_of_memory_backs_off_to_a_shallower_tree_and_stays_lossless(llama, monkeypatch):
    """Running out of GPU memory mid-answer (faked on the CPU: the verifier raises for trees above 10
    nodes, the draft once) halves the depth, says so in the next event, and the answer is still plain's."""
    import engine.speculative as spec_mod

    lm, draft = llama
    ids = lm.encode("hello world")
    plain = _run(generate_plain(lm, ids, 40), lm, ids)

    def small_gpu(target, cache, tree, sampling, gen, history=None):
        if tree.size > 10:
            raise torch.OutOfMemoryError("CUDA out of memory (faked)")
        return verify(target, cache, tree, sampling, gen, history)

    real_grow, failed = spec_mod.grow_tree, []

    def grow_once_fails(*a, **kw):
        if not failed:
            failed.append(1)
            raise torch.OutOfMemoryError("CUDA out of memory (faked)")
        return real_grow(*a, **kw)

    monkeypatch.setattr(spec_mod, "grow_tree", grow_once_fails)
    events = list(generate_subspec(lm, draft, ids, 40, shape=TreeShape(12, 3), verifier=small_gpu))
    assert [t for ev in events for t in ev.token_ids] == list(plain.token_ids)
    notes = [ev.note for ev in events if ev.note]
    assert notes == ["Out of GPU memory with a D12 K3 tree; continuing with D6 K3. "
                     "Out of GPU memory with a D6 K3 tree; continuing with D3 K3."]
    assert max(ev.tree_nodes for ev in events) <= 1 + 3 * 3
    assert [ev.iteration for ev in events] == list(range(len(events)))  # no iteration lost or doubled


def test_out_of_memory_even_for_plain_decoding_is_a_clear_error(llama):
    lm, draft = llama

    def no_memory(*_a):
        raise torch.OutOfMemoryError("CUDA out of memory (faked)")

    from engine.errors import SubspecError

    with pytest.raises(SubspecError, match="even with plain decoding"):
        list(generate_subspec(lm, draft, lm.encode("hi"), 10, shape=TreeShape(2, 2), verifier=no_memory))


def test_out_of_memory_for_the_kv_cache_shortens_the_answer_not_its_tokens(llama, monkeypatch):
    """A cache too big for the (faked) GPU: the answer's budget is halved until it fits, the first event
    says so, and the tokens are plain decoding's first ones, for both methods."""
    lm, draft = llama
    ids = lm.encode("hello world")
    full = [t for ev in generate_plain(lm, ids, 40, SamplingParams(temperature=0)) for t in ev.token_ids]
    real_new_cache = lm.decoder.new_cache
    runs = [(lambda: generate_plain(lm, ids, 40), 15),  # room for 10 answer tokens, not 20
            (lambda: generate_subspec(lm, draft, ids, 40, shape=TreeShape(4, 2)), 25)]  # 10 + the tree's 10 rows
    for run, room in runs:
        monkeypatch.setattr(lm.decoder, "new_cache", lambda capacity, room=room: real_new_cache(capacity)
                            if capacity <= len(ids) + room else _raise(torch.OutOfMemoryError("faked")))
        events = list(run())
        tokens = [t for ev in events for t in ev.token_ids]
        assert tokens == full[:10] and events[-1].finish_reason == "length"
        assert events[0].note == (f"Out of GPU memory for a {len(ids) + 40}-token context; this answer is "
                                  f"limited to 10 new tokens.")
        assert not any(ev.note for ev in events[1:])

    monkeypatch.setattr(lm.decoder, "new_cache", lambda capacity: _raise(torch.OutOfMemoryError("faked")))
    from engine.errors import SubspecError

    with pytest.raises(SubspecError, match="KV cache of a .*-token prompt: shorten the conversation"):
        list(generate_plain(lm, ids, 40))


def _raise(exc):
    raise exc


# --- penalties: each tree node penalized with its own path, so the answer stays plain decoding's --------

PENALTIES = [SamplingParams(repetition_penalty=3.0),  # tied tiny models repeat one token hard
             SamplingParams(presence_penalty=1.5, frequency_penalty=0.5),
             SamplingParams(repetition_penalty=3.0, frequency_penalty=0.5, penalty_last_n=5),  # shallower than trees
             SamplingParams(temperature=0.8, top_p=0.95, repetition_penalty=1.3, frequency_penalty=0.4, seed=21)]


@pytest.mark.parametrize("params", PENALTIES)
def test_a_penalized_answer_is_the_same_whichever_way_it_is_decoded(tiny, params):
    lm, draft = tiny
    changed = 0
    for prompt in ["hello world", "the cat sat on"]:
        ids = lm.encode(prompt)
        plain = _run(generate_plain(lm, ids, 40, params), lm, ids).token_ids
        for shape in (TreeShape(6, 3), TreeShape(1, 4), TreeShape(8, 3, auto=True), TreeShape(8, 4, budget=12)):
            assert _run(generate_subspec(lm, draft, ids, 40, params, shape=shape), lm, ids).token_ids == plain
        unpenalized = SamplingParams(params.temperature, params.top_p, seed=params.seed)
        changed += _run(generate_plain(lm, ids, 40, unpenalized), lm, ids).token_ids != plain
    assert changed  # the penalties changed an answer


@pytest.fixture(scope="module")
def llama_and_reference(tmp_path_factory):
    import transformers

    folder = make_tiny_model_folder(tmp_path_factory.mktemp("penalties"), "llama")
    ref = transformers.AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32,
                                                            attn_implementation="eager").eval()
    return load_model(folder, "float32", "cpu"), ref


@pytest.mark.parametrize("params", PENALTIES[:3])
def test_penalized_greedy_decoding_is_transformers_with_the_same_penalties(llama_and_reference, params):
    """The oracle: transformers' logits at every step, its RepetitionPenaltyLogitsProcessor over prompt and
    answer (or their last n tokens), and OpenAI's presence and frequency penalties over the answer (the
    answer's tokens among those n), then argmax."""
    from collections import Counter

    from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

    lm, ref = llama_and_reference
    ids = lm.encode("the cat sat on the mat")
    lm.eos_token_ids = lambda: set()
    try:
        ours = _run(generate_plain(lm, ids, 30, params), lm, ids).token_ids
    finally:
        del lm.eos_token_ids
    answer = []
    with torch.no_grad():
        for _ in range(30):
            logits = ref(torch.tensor([ids + answer])).logits[:, -1].float()
            n = params.penalty_last_n or len(ids + answer)
            window = (ids + answer)[-n:]
            logits = RepetitionPenaltyLogitsProcessor(params.repetition_penalty)(torch.tensor([window]), logits)
            for token, count in Counter(answer[-n:]).items():
                logits[0, token] -= params.frequency_penalty * count + params.presence_penalty
            answer.append(int(logits.argmax()))
    assert list(ours) == answer
    assert len(set(answer)) > 5  # penalized, a random tiny model does not just repeat itself


@pytest.mark.parametrize("first", [1, 3, 16])
def test_a_cpu_cache_that_grows_with_its_answer_gives_the_same_answer(llama, monkeypatch, first):
    """On the CPU the KV cache starts with room for the answer's first tokens and grows as it goes (an answer
    length of 100k tokens must not take its RAM up front): plain and SubSpec answers are the same as with a
    cache made whole, and a cache for a huge answer length starts small."""
    import engine.generate as gen

    lm, draft = llama
    ids = lm.encode("grow as you go")
    lm.eos_token_ids = lambda: set()
    try:
        whole = _run(generate_plain(lm, ids, 60), lm, ids).token_ids
        monkeypatch.setattr(gen, "FIRST_ANSWER_SLOTS_CPU", first)
        assert _run(generate_plain(lm, ids, 60), lm, ids).token_ids == whole
        for shape in (TreeShape(6, 3), TreeShape(8, 3, auto=True)):
            assert _run(generate_subspec(lm, draft, ids, 60, shape=shape), lm, ids).token_ids == whole
        grown = []  # doubling stops at what the answer can need (not 2x past it, as plain doubling would)
        real = KVCache.ensure_capacity
        monkeypatch.setattr(KVCache, "ensure_capacity",
                            lambda self, n, at_most=None: (real(self, n, at_most), grown.append(self.capacity)))
        list(generate_plain(lm, ids, 70))
        assert len(grown) >= 2 and max(grown) == len(ids) + 70  # the prompt and 70 tokens: no more
        monkeypatch.setattr(KVCache, "ensure_capacity", real)
        monkeypatch.setattr(gen, "FIRST_ANSWER_SLOTS_CPU", 8)  # (1024 in use: the tiny model's context is 256)
        cache = lm.decoder.new_cache(1)
        room = lm.config.max_position_embeddings - len(ids) - TreeShape(6, 3).grown - 1
        events = generate_subspec(lm, draft, ids, room, shape=TreeShape(6, 3), cache=cache)
        next(events)  # the prefill: the cache is made, for the answer's first 8 tokens and a tree
        assert cache.capacity == len(ids) + 8 + TreeShape(6, 3).grown + 1 < len(ids) + room
        events.close()
    finally:
        del lm.eos_token_ids
