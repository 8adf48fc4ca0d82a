"""engine.draft_graph's spans: a fixed-shape draft step attends over the context and tree rounded up to a
power of two, not the whole cache, and computes what a whole-cache step does."""

import pytest
import torch
from tiny_models import make_tiny_checkpoint

from engine.draft_graph import KEPT_STEPS, MIN_SPAN, DraftStep, draft_span, draft_step_for
from engine.loading import load_decoder
from engine.masks import causal_mask
from engine.substitute import build_draft


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    return load_decoder(make_tiny_checkpoint(tmp_path_factory.mktemp("t"), "qwen2"), torch.float32)


def test_spans_are_powers_of_two_within_the_cache():
    assert draft_span(1, 4096) == MIN_SPAN == 256
    assert draft_span(256, 4096) == 256 and draft_span(257, 4096) == 512
    assert draft_span(3000, 4096) == 4096 and draft_span(5000, 4096) == 4096  # never past the cache
    assert draft_span(10, 100) == 100


def _prefilled(target, capacity, n=40):
    cache = target.new_cache(capacity)
    target(torch.arange(3, 3 + n), torch.arange(n), cache, 0, causal_mask(0, n, torch.float32, "cpu"))
    cache.commit(n)
    return cache


def test_a_step_over_a_span_computes_what_a_whole_cache_step_does(target):
    draft = build_draft(target, 4, 64, layers=[1], merge=False)
    cache = _prefilled(target, 1024)
    width, n = 3, 40
    tokens, positions = torch.tensor([5, 9, 11]), torch.tensor([n, n, n])
    slots = torch.arange(n, n + width)
    mask = torch.zeros(width, n + width)
    mask[:, n:] = torch.finfo(torch.float32).min
    mask[:, n:].fill_diagonal_(0)  # each node sees the context and itself
    whole = DraftStep(draft, cache, width, use_graph=False)
    part = DraftStep(draft, cache, width, use_graph=False, span=draft_span(n + width, cache.capacity))
    assert (whole.span, part.span) == (1024, 256) and part.mask.shape == (width, 256)
    a = whole(tokens, positions, slots, mask).clone()
    b = part(tokens, positions, slots, mask)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="spans"):
        DraftStep(draft, cache, width, use_graph=False, span=2048)


def test_steps_are_kept_per_span_most_recent_first_and_dropped_with_their_cache(target):
    draft = build_draft(target, 4, 64, layers=[1], merge=False)
    cache = target.new_cache(2048)
    s256 = draft_step_for(draft, cache, 3, 256)
    assert draft_step_for(draft, cache, 3, 256) is s256  # reused, not captured again
    s512 = draft_step_for(draft, cache, 3, 512)
    assert draft_step_for(draft, cache, 3, 256) is s256  # 256 is now the most recent
    for width in range(1, KEPT_STEPS):  # more steps than are kept: the least recently used (512) goes
        draft_step_for(draft, cache, width, 1024)
    steps = draft.__dict__["_draft_steps"]
    assert len(steps) == KEPT_STEPS and s512 not in steps.values() and s256 in steps.values()
    other = target.new_cache(2048)
    draft_step_for(draft, other, 3, 256)
    assert len(steps) == 1  # the old cache's steps point at its memory: all dropped


def test_grow_tree_drafts_over_a_span_and_grows_the_ordinary_tree(target):
    """With a cache much longer than the context, the captured-shape steps run over a 256-slot span and the
    tree is the one ordinary (whole-prefix) steps grow."""
    from engine.speculative import TreeShape, grow_tree

    draft = build_draft(target, 4, 64, layers=[0, 2], merge=False)
    trees = []
    for fixed in (False, True):
        cache = _prefilled(target, 1024)
        trees.append(grow_tree(draft, cache, torch.tensor(4), TreeShape(5, 3), 5, [0.0], fixed_shapes=fixed))
    steps = draft.__dict__["_draft_steps"]
    assert sorted((k[0], k[1]) for k in steps) == [(1, 256), (3, 256)]  # the root step, then the rest
    a, b = trees
    assert torch.equal(a.tokens[: a.size], b.tokens[: b.size]) and torch.equal(a.parents[: a.size], b.parents[: b.size])
    assert torch.allclose(a.scores[: a.size], b.scores[: b.size], rtol=1e-4, atol=1e-4)


def test_running_out_of_memory_inside_a_capture_is_known_through_the_capture_error():
    """Ending a broken capture raises its own error; the out-of-memory one behind it must still be seen,
    so that the answer backs off to a shallower tree instead of failing."""
    from engine.draft_graph import out_of_memory

    try:
        try:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB")
        except torch.OutOfMemoryError:
            raise RuntimeError("operation failed due to a previous error during capture")
    except RuntimeError as e:
        capture_error = e
    assert out_of_memory(capture_error)
    assert out_of_memory(RuntimeError("CUDA error: out of memory"))
    assert not out_of_memory(RuntimeError("CUDA error: an illegal memory access was encountered"))


def test_a_new_answer_frees_the_last_answers_captured_steps_and_cache_before_allocating(tmp_path, monkeypatch):
    """Captured steps hold their KV cache alive; a new answer's cache must not be allocated while the old
    one still sits in memory (two KV caches at once, at a long context, can exhaust an 8 GB card)."""
    import gc
    import weakref

    from tiny_models import make_tiny_model_folder

    import engine.generate as gen
    import engine.speculative as spec
    from engine.loading import load_model

    lm = load_model(make_tiny_model_folder(tmp_path, "qwen2"), "float32", "cpu")
    draft = build_draft(lm.decoder, 4, 64, layers=[1])
    old = lm.decoder.new_cache(512)
    draft_step_for(draft, old, 3, 256)
    gone = weakref.ref(old.k)
    del old
    real_allocate = gen.allocate_cache  # (engine.generate.start_cache allocates SubSpec's cache too)
    seen = []

    def allocate(*args, **kwargs):
        gc.collect()
        seen.append((len(draft.__dict__["_draft_steps"]), gone() is None))
        return real_allocate(*args, **kwargs)

    monkeypatch.setattr(gen, "allocate_cache", allocate)
    list(spec.generate_subspec(lm, draft, lm.encode("hi"), 4, shape=spec.TreeShape(3, 2)))
    assert seen == [(0, True)]  # no captured step left and the old cache freed, before the new one is made



def test_captured_steps_go_with_their_answer_unless_the_caller_keeps_the_cache(tmp_path, monkeypatch):
    """After an answer (finished or abandoned) its steps are gone, so a plain answer or an idle app does not
    keep its KV cache in VRAM; a cache the caller passed in keeps its steps, and only its own."""
    from tiny_models import make_tiny_model_folder

    import engine.speculative as spec
    from engine.draft_graph import release_steps
    from engine.loading import load_model

    lm = load_model(make_tiny_model_folder(tmp_path, "qwen2"), "float32", "cpu")
    draft = build_draft(lm.decoder, 4, 64, layers=[1])
    real_grow = spec.grow_tree
    monkeypatch.setattr(spec, "grow_tree", lambda *a, **k: real_grow(*a, **{**k, "fixed_shapes": True}))
    steps = lambda: draft.__dict__.get("_draft_steps", {})  # noqa: E731
    answer = spec.generate_subspec(lm, draft, lm.encode("hi"), 8, shape=spec.TreeShape(3, 2))
    next(answer), next(answer)  # prefill, then one tree: its steps are captured
    assert steps()
    answer.close()  # the user stops the answer
    assert not steps()
    list(spec.generate_subspec(lm, draft, lm.encode("hi"), 4, shape=spec.TreeShape(3, 2)))
    assert not steps()
    kept = lm.decoder.new_cache(512)
    list(spec.generate_subspec(lm, draft, lm.encode("hi"), 4, shape=spec.TreeShape(3, 2), cache=kept))
    assert steps() and all(step.cache is kept for step in steps().values())
    other = DraftStep(draft, lm.decoder.new_cache(256), 2, use_graph=False)  # as if left from another cache
    steps()[other.key] = other
    release_steps(draft, keep=kept)
    assert steps() and all(step.cache is kept for step in steps().values())


def test_running_out_of_memory_while_ending_a_capture_is_raised_as_out_of_memory(monkeypatch):
    import contextlib

    from engine import draft_graph

    @contextlib.contextmanager
    def broken_capture(graph):
        try:
            yield
        except Exception:
            raise RuntimeError("CUDA error: operation not permitted when stream is capturing")

    monkeypatch.setattr(torch.cuda, "graph", broken_capture)

    def run_out():
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 MiB")

    with pytest.raises(torch.OutOfMemoryError, match="while capturing a draft step"):
        draft_graph.capture(None, run_out)
    with pytest.raises(RuntimeError, match="not permitted") as other:  # any other failure: as it came
        draft_graph.capture(None, lambda: (_ for _ in ()).throw(RuntimeError("an illegal memory access")))
    assert not isinstance(other.value, torch.OutOfMemoryError)
    assert draft_graph.capture(None, lambda: 7) == 7
