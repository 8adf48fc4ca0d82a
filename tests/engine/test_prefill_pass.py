"""A prompt prefilled in passes of the streamed layers (engine.model.Decoder.prefill_pass): each pass
moves the offloaded weights once for many chunks, and its numbers are exactly those of prefilling a chunk
per forward."""

import pytest
import torch
from real_configs import QWEN25_7B
from test_mask_memory import MaskLedger
from tiny_models import make_tiny_model_folder

from engine import planner
from engine.generate import generate_plain, prefill
from engine.loading import load_model
from engine.planner import PREFILL_CHUNK, prefill_pass_bytes
from engine.speculative import TreeShape, generate_subspec

ARCHS = ["qwen2", "llama-mha", "mistral-window", "qwen3"]  # GQA with biases; MHA; a 6-token window; q/k norms


def _ids(n: int, seed: int = 0) -> list[int]:
    return torch.randint(3, 97, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


@pytest.fixture(scope="module", params=ARCHS)
def folder(request, tmp_path_factory):
    return make_tiny_model_folder(tmp_path_factory.mktemp(request.param), request.param)


@pytest.fixture(scope="module")
def resident(folder):
    return load_model(folder, "float32", "cpu")


def test_a_pass_equals_prefilling_a_chunk_per_forward_bit_for_bit(resident):
    """Block k of layer i runs in the shapes a chunk's forward has, against the KV layer i wrote for blocks
    0..k: logits and every KV row are the chunked prefill's, with a cache already holding a prefix too."""
    decoder = resident.decoder
    ids = _ids(61)
    chunked, passed = decoder.new_cache(80), decoder.new_cache(80)
    for cache in (chunked, passed):  # a kept prefix, as with a prompt cache
        prefill(decoder, cache, ids[:9], 8)
    expected = prefill(decoder, chunked, ids[9:], 8)
    positions = torch.arange(9, 61)
    got = decoder.prefill_pass(torch.tensor(ids[9:]), positions, passed, 9, 8)
    assert torch.equal(got, expected)
    assert torch.equal(passed.k[..., :61, :], chunked.k[..., :61, :])
    assert torch.equal(passed.v[..., :61, :], chunked.v[..., :61, :])
    assert passed.length == 9  # a pass commits nothing: prefill does


@pytest.mark.parametrize("resident_layers", [0, 2])
def test_streamed_prefill_moves_the_weights_once_per_pass(folder, resident, resident_layers):
    off = load_model(folder, "float32", "cpu", resident_layers=resident_layers)
    streamer = off.decoder.streamer
    ids = _ids(100)
    expected = prefill(resident.decoder, resident.decoder.new_cache(100), ids, 8)
    layer_bytes = streamer.layer_bytes * len(off.offloaded_layers)
    for pass_tokens, passes in ((48, 3), (8, 13), (None, 1), (50, 3)):  # 50: whole chunks, 48
        cache = off.decoder.new_cache(100)
        before = streamer.bytes_moved
        logits = prefill(off.decoder, cache, ids, 8, pass_tokens)
        assert torch.equal(logits, expected) and cache.length == 100
        # The prefetch runs one layer ahead of the pass (two slots), never a pass's worth behind.
        moved = streamer.bytes_moved - before
        assert passes * layer_bytes <= moved <= passes * layer_bytes + 2 * streamer.layer_bytes, pass_tokens


def test_the_plans_pass_size_travels_with_the_loaded_model(folder, resident):
    off = load_model(folder, "float32", "cpu", resident_layers=1, prefill_tokens=32)
    assert off.decoder.streamer.prefill_tokens == 32
    ids = _ids(100)
    before = off.decoder.streamer.bytes_moved
    prefill(off.decoder, off.decoder.new_cache(100), ids, 8)
    layer_bytes = off.decoder.streamer.layer_bytes * len(off.offloaded_layers)
    assert 4 * layer_bytes <= off.decoder.streamer.bytes_moved - before < 5 * layer_bytes  # 100 / 32: 4 passes


def test_answers_equal_the_resident_models_plain_and_subspec(folder, resident):
    off = load_model(folder, "float32", "cpu", resident_layers=1, prefill_tokens=24)
    ids = _ids(70, seed=1)
    plain = [e.token_ids for e in generate_plain(resident, ids, 12, prefill_chunk=8)]
    assert [e.token_ids for e in generate_plain(off, ids, 12, prefill_chunk=8)] == plain
    draft = off.build_draft(4, 64)
    events = list(generate_subspec(off, draft, ids, 12, shape=TreeShape(4, 2), prefill_chunk=8))
    assert [t for e in events for t in e.token_ids] == [t for ts in plain for t in ts]


def test_out_of_memory_halves_the_pass_keeps_the_smaller_size_and_says_so(folder, resident, monkeypatch):
    """Another program took the memory the plan gave the pass: the pass runs again at half the tokens (its
    KV rows rewritten), later prompts start at that size, and the answer is unchanged."""
    off = load_model(folder, "float32", "cpu", resident_layers=1, prefill_tokens=64)
    real = type(off.decoder).prefill_pass
    sizes = []

    def short_of_memory(self, tokens, *args):
        sizes.append(tokens.shape[0])
        if tokens.shape[0] > 16:
            raise torch.OutOfMemoryError("CUDA out of memory (a test)")
        return real(self, tokens, *args)

    monkeypatch.setattr(type(off.decoder), "prefill_pass", short_of_memory)
    ids = _ids(40, seed=2)
    events = list(generate_plain(off, ids, 6, prefill_chunk=8))
    assert [e.token_ids for e in events] == [e.token_ids for e in generate_plain(resident, ids, 6, prefill_chunk=8)]
    assert sizes == [40, 16, 16, 8]  # the whole prompt (40 of a 64-token pass) fails; half of it works
    assert off.decoder.streamer.prefill_tokens == 16
    assert "Out of GPU memory prefilling the prompt; continuing 16 tokens a pass." in events[0].note
    sizes.clear()
    list(generate_plain(off, ids, 1, prefill_chunk=8))
    assert sizes == [16, 16, 8]


def test_out_of_memory_at_one_chunk_a_pass_is_not_hidden(folder, monkeypatch):
    off = load_model(folder, "float32", "cpu", resident_layers=1, prefill_tokens=8)

    def short_of_memory(self, tokens, *args):
        raise torch.OutOfMemoryError("CUDA out of memory (a test)")

    monkeypatch.setattr(type(off.decoder), "prefill_pass", short_of_memory)
    with pytest.raises(torch.OutOfMemoryError):
        prefill(off.decoder, off.decoder.new_cache(40), _ids(40), 8)


def test_a_pass_holds_at_most_what_the_planner_counts_beyond_a_chunks_forward(resident):
    """Every tensor a pass makes (activations, masks, its residual stream and tables), against a chunked
    prefill of the same prompt, whose peak is its last chunk's forward: the difference is what
    planner.prefill_pass_bytes counts (the model's widths are below the ledger's floor: min_columns 1)."""
    decoder = resident.decoder
    ids = _ids(96)
    with MaskLedger(min_columns=1) as chunked:
        prefill(decoder, decoder.new_cache(96), ids, 8)
    with MaskLedger(min_columns=1) as passed:
        decoder.prefill_pass(torch.tensor(ids), torch.arange(96), decoder.new_cache(96), 0, 8)
    config = decoder.config
    assert passed.peak >= 96 * config.hidden_size * 4  # the residual stream is really held
    # prefill_pass_bytes counts the tokens past PREFILL_CHUNK; the chunks here are 8 tokens
    assert passed.peak <= chunked.peak + (96 - 8) * planner._pass_bytes_per_token(config, 4)
    assert passed.live == chunked.live == 0


def test_pass_sizes_are_whole_chunks_within_the_stream_bytes():
    config = planner.ModelConfig.from_dict(QWEN25_7B)
    assert planner.prefill_pass_tokens(config, 2) == 9216  # 64 MiB / (3584 x 2 bytes) = 9362, in chunks of 256
    assert planner.prefill_pass_tokens(config, 2, chunk=1000) == 9000
    assert planner.prefill_pass_tokens(config, 4096 * 1024) == PREFILL_CHUNK  # at least one chunk
    assert prefill_pass_bytes(config, PREFILL_CHUNK, 2) == prefill_pass_bytes(config, 1, 2) == 0
    assert prefill_pass_bytes(config, 9216, 2) == (9216 - 256) * ((3584 + 2 * 128) * 2 + 16)


def test_out_of_memory_inside_a_layer_leaves_nothing_behind(folder, resident, monkeypatch):
    """The pass fails in the middle (layer 1's second block, its slot in use and the KV of two layers half
    written): the retry refills the slots from layer 0 (LayerStreamer._restart_at), rewrites the rows, and
    the logits and every KV row are those of the resident model. A RuntimeError that says out of memory
    (as cuBLAS's do) counts too."""
    off = load_model(folder, "float32", "cpu", resident_layers=1, prefill_tokens=32)
    layer = off.decoder.layers[1]
    real, calls = layer.forward, []

    def fails_once(h, *args, **kwargs):
        calls.append(h.shape[1])
        if len(calls) == 2:
            raise RuntimeError("CUDA error: out of memory (a test)")
        return real(h, *args, **kwargs)

    monkeypatch.setattr(layer, "forward", fails_once)
    ids = _ids(50, seed=3)
    cache, expected = off.decoder.new_cache(50), resident.decoder.new_cache(50)
    notes = []
    logits = prefill(off.decoder, cache, ids, 8, notes=notes)
    assert torch.equal(logits, prefill(resident.decoder, expected, ids, 8))
    assert torch.equal(cache.k[..., :50, :], expected.k[..., :50, :]) and cache.length == 50
    assert torch.equal(cache.v[..., :50, :], expected.v[..., :50, :])
    assert notes == ["Out of GPU memory prefilling the prompt; continuing 16 tokens a pass."]
    assert calls[:3] == [8, 8, 8]  # two blocks of the failed pass, then the retry's first


def test_progress_never_goes_back_when_a_pass_is_retried_smaller(folder, resident, monkeypatch):
    off = load_model(folder, "float32", "cpu", resident_layers=1, prefill_tokens=48)
    real, calls = off.decoder.layers[2].forward, []

    def fails_once(h, *args, **kwargs):  # the last layer of the first pass: 32 of its 48 tokens reported
        calls.append(1)
        if len(calls) == 6:
            raise torch.OutOfMemoryError("CUDA out of memory (a test)")
        return real(h, *args, **kwargs)

    monkeypatch.setattr(off.decoder.layers[2], "forward", fails_once)
    seen = []
    prefill(off.decoder, off.decoder.new_cache(60), _ids(60), 8, progress=lambda done, _t: seen.append(done))
    assert seen == sorted(seen) and seen[-1] == 60 and 32 in seen


def test_errors_other_than_memory_are_not_retried(folder, monkeypatch):
    off = load_model(folder, "float32", "cpu", resident_layers=1, prefill_tokens=32)

    def broken(self, tokens, *args):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(type(off.decoder), "prefill_pass", broken)
    with pytest.raises(RuntimeError, match="illegal memory access"):
        prefill(off.decoder, off.decoder.new_cache(40), _ids(40), 8)
    assert off.decoder.streamer.prefill_tokens == 32


def test_by_pass_chooses_the_path_either_way(resident):
    """Passes on a resident model and a chunk per forward on a streamed one (what benchmarks compare):
    the same logits."""
    decoder = resident.decoder
    ids = _ids(40)
    chunked = prefill(decoder, decoder.new_cache(40), ids, 8)
    assert torch.equal(prefill(decoder, decoder.new_cache(40), ids, 8, pass_tokens=24, by_pass=True), chunked)


def test_bfloat16_passes_equal_bfloat16_chunks(folder):
    """The shapes are the chunks' own, so half precision rounds the same way too."""
    lm = load_model(folder, "bfloat16", "cpu")
    off = load_model(folder, "bfloat16", "cpu", resident_layers=1, prefill_tokens=24)
    ids = _ids(60, seed=4)
    chunked = prefill(off.decoder, off.decoder.new_cache(60), ids, 8, by_pass=False)
    assert torch.equal(prefill(off.decoder, off.decoder.new_cache(60), ids, 8), chunked)
    assert torch.equal(prefill(lm.decoder, lm.decoder.new_cache(60), ids, 8), chunked)


def test_a_load_that_backed_off_prefills_a_chunk_a_pass_and_says_so(folder, monkeypatch):
    """The plan's pass was paid for with memory that turned out not to be there, as its 8-bit layers were."""
    import engine.loading as loading

    real, calls = loading._place, []

    def flaky(*args):
        calls.append(1)
        if len(calls) == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(*args)

    monkeypatch.setattr(loading, "_place", flaky)
    lm = load_model(folder, "float32", "cpu", resident_layers=2, prefill_tokens=64)
    assert lm.resident_layers == 1 and lm.decoder.streamer.prefill_tokens == PREFILL_CHUNK
    assert lm.notes[-1] == f"prompts prefill {PREFILL_CHUNK} tokens a pass, not the plan's 64"


def test_progress_counts_the_prompt_tokens_read_chunk_by_chunk_and_layer_by_layer(folder, resident):
    calls = []
    prefill(resident.decoder, resident.decoder.new_cache(40), _ids(40), 8, progress=lambda *a: calls.append(a))
    assert calls == [(8, 40), (16, 40), (24, 40), (32, 40), (40, 40)]
    off = load_model(folder, "float32", "cpu", resident_layers=1, prefill_tokens=24)  # three layers
    calls.clear()
    prefill(off.decoder, off.decoder.new_cache(50), _ids(50), 8, progress=lambda *a: calls.append(a))
    # passes of 24, 24 and 2 tokens: a third of a pass per layer, its end once it is committed
    assert [done for done, _ in calls] == [8, 16, 24, 32, 40, 48, 48, 49, 50]
    assert {total for _, total in calls} == {50}


@pytest.mark.parametrize("method", ["plain", "subspec"])
def test_a_stop_while_the_prompt_is_read_keeps_what_was_read_for_the_next_try(folder, resident, method):
    """The chat's Stop during a long prefill: progress raises Stopped, nothing is emitted, the prompt
    cache keeps the passes committed, and the next answer reads only the rest: the same tokens as an
    answer never stopped."""
    from engine.errors import Stopped
    from engine.kv_cache import PromptCache

    off = load_model(folder, "float32", "cpu", resident_layers=1, prefill_tokens=16)
    draft = off.build_draft(4, 64) if method == "subspec" else None

    def run(ids, **kw):
        if draft is None:
            return generate_plain(off, ids, 8, prefill_chunk=8, **kw)
        return generate_subspec(off, draft, ids, 8, shape=TreeShape(3, 2), prefill_chunk=8, **kw)

    ids = _ids(60, seed=5)
    kept = PromptCache()

    def stop_at_40(done, total):
        if done >= 40:
            raise Stopped("stopped while the prompt was read")

    with pytest.raises(Stopped):
        next(iter(run(ids, prompt_cache=kept, prompt_progress=stop_at_40)))
    assert kept.ids == ids[:32]  # two passes of 16 committed; the third stopped inside, after two layers
    events = list(run(ids, prompt_cache=kept))
    assert events[0].cached_tokens == 32
    assert [t for e in events for t in e.token_ids] == [t for e in run(ids) for t in e.token_ids]
