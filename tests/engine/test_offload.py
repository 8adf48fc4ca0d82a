"""An offloaded forward (layers streamed through device slots) equals the resident forward exactly, for
prefill, decoding and tree passes; the CPU plays the device here."""

import pytest
import torch
from tiny_models import make_tiny_model_folder

from engine.events import summarize
from engine.generate import generate_plain
from engine.loading import load_model
from engine.masks import causal_mask
from engine.offload import StreamedLinear
from engine.speculative import TreeShape, generate_subspec


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_tiny_model_folder(tmp_path_factory.mktemp("off"), "qwen2")  # q/k/v bias: biases stay resident


@pytest.fixture(scope="module")
def resident(folder):
    return load_model(folder, "float32", "cpu")


@pytest.mark.parametrize("resident_layers", [0, 1, 2])
def test_offloaded_forward_equals_resident_exactly(folder, resident, resident_layers):
    off = load_model(folder, "float32", "cpu", resident_layers=resident_layers)
    # The resident layers are the last ones (exact near the output aligns the draft most).
    assert off.offloaded_layers == list(range(3 - resident_layers))
    assert isinstance(off.decoder.layers[0].mlp.up_proj, StreamedLinear)
    assert not isinstance(off.decoder.layers[2].mlp.up_proj, StreamedLinear) or resident_layers == 0
    tokens = torch.randint(3, 97, (12,), generator=torch.Generator().manual_seed(0))
    outs = []
    for lm in (resident, off):
        cache = lm.decoder.new_cache(16)
        prefill = lm.decoder(tokens[:10], torch.arange(10), cache, 0, causal_mask(0, 10, torch.float32))
        cache.commit(10)
        step = lm.decoder(tokens[10:11], torch.tensor([10]), cache, 10, None)
        outs.append((prefill, step))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])
    streamer = off.decoder.streamer
    assert streamer.bytes_moved >= 2 * len(off.offloaded_layers) * streamer.layer_bytes


def test_streamed_weights_live_in_one_flat_host_buffer_per_layer(folder):
    off = load_model(folder, "float32", "cpu", resident_layers=1)
    s = off.decoder.streamer
    assert sorted(s.host) == [0, 1] and len(s.slots) == 2
    lin = off.decoder.layers[1].self_attn.q_proj
    assert lin.host_weight.data_ptr() >= s.host[1].data_ptr()
    assert lin.weight is None  # only set while its layer computes


def test_offloaded_generation_equals_resident_plain_and_subspec(folder, resident):
    off = load_model(folder, "float32", "cpu", resident_layers=1)
    draft_res = resident.build_draft(4, 64)
    draft_off = off.build_draft(4, 64)
    assert draft_off.substituted_layers == (0, 1)  # only offloaded layers get substitutes
    # The resident layer is shared with the target: its attention and MLP are the target's very modules.
    assert draft_off.layers[2].self_attn is off.decoder.layers[2].self_attn
    assert draft_off.layers[2].mlp is off.decoder.layers[2].mlp
    for prompt in ["hello", "streaming weights"]:
        ids = resident.encode(prompt)
        a = summarize(generate_plain(resident, ids, 30), len(ids), "v")
        b = summarize(generate_plain(off, ids, 30), len(ids), "v")
        c = summarize(generate_subspec(off, draft_off, ids, 30, shape=TreeShape(5, 3)), len(ids), "s")
        d = summarize(generate_subspec(resident, draft_res, ids, 30, shape=TreeShape(5, 3)), len(ids), "s")
        assert a.token_ids == b.token_ids == c.token_ids == d.token_ids


def test_bad_resident_layers_is_a_user_error(folder):
    from engine.errors import SubspecError

    with pytest.raises(SubspecError, match="between 0 and 3"):
        load_model(folder, "float32", "cpu", resident_layers=7)


def test_out_of_memory_while_loading_backs_off_to_fewer_resident_layers(folder, resident, monkeypatch):
    """A GPU fuller than planned: loading streams more layers instead of failing, and says so."""
    import engine.loading as loading

    real = loading.load_decoder
    calls = []

    def flaky(path, dtype, device):
        calls.append(str(device))
        if len(calls) == 1:  # the first, fully resident attempt does not fit
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(path, dtype, device)

    monkeypatch.setattr(loading, "load_decoder", flaky)
    lm = load_model(folder, "float32", "cpu")
    assert lm.resident_layers == 1 and lm.offloaded_layers == [0, 1]
    assert lm.notes == ["out of GPU memory with 3 resident layers; retried with 1"]
    ids = resident.encode("backing off")
    assert (summarize(generate_plain(lm, ids, 12), len(ids), "v").token_ids
            == summarize(generate_plain(resident, ids, 12), len(ids), "v").token_ids)


def test_out_of_memory_with_everything_streamed_is_a_clear_error(folder, monkeypatch):
    import engine.loading as loading
    from engine.errors import SubspecError

    def always(path, dtype, device):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(loading, "load_decoder", always)
    with pytest.raises(SubspecError, match="even with every decoder layer streamed"):
        load_model(folder, "float32", "cpu", resident_layers=1)


def substitute_widths(draft) -> dict[int, set[int]]:
    from engine.substitute import SubstituteLinear

    return {i: {m.nbits for m in draft.layers[i].modules() if isinstance(m, SubstituteLinear)}
            for i in draft.substituted_layers}


def test_the_draft_follows_the_plans_bits_per_streamed_layer(folder, resident):
    """A plan raises some streamed layers' substitutes to 8-bit: the draft is built with exactly those
    widths (not one width for all), and its greedy output is still the target's."""
    off = load_model(folder, "float32", "cpu", resident_layers=1, substitute_bits={0: 4, 1: 8})
    assert off.draft_bits() == {0: 4, 1: 8}
    assert off.draft_bits(4) == {0: 4, 1: 4}  # an explicit width (--substitute-bits) overrides the plan
    draft = off.build_draft(None, 64, cache=False)
    assert draft.substitute_bits == {0: 4, 1: 8} and substitute_widths(draft) == {0: {4}, 1: {8}}
    ids = resident.encode("mixed widths")
    plain = summarize(generate_plain(resident, ids, 24), len(ids), "v")
    spec = summarize(generate_subspec(off, draft, ids, 24, shape=TreeShape(5, 3)), len(ids), "s")
    assert spec.token_ids == plain.token_ids and spec.tau > 1


def test_a_load_that_backed_off_builds_a_4_bit_draft_and_says_so(folder, monkeypatch):
    """The plan paid for its 8-bit layers with VRAM that was not there: after backing off, the draft goes
    back to 4-bit for every streamed layer (the plan's map no longer matches the split anyway)."""
    import engine.loading as loading

    real, calls = loading.load_decoder, []

    def flaky(path, dtype, device):
        calls.append(1)
        if len(calls) == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(path, dtype, device)

    monkeypatch.setattr(loading, "load_decoder", flaky)
    lm = load_model(folder, "float32", "cpu", substitute_bits={0: 8, 1: 8, 2: 8})
    assert lm.offloaded_layers == [0, 1] and lm.substitute_bits is None
    assert lm.notes[-1] == "the draft uses 4-bit substitutes, not the plan's wider ones"
    assert lm.draft_bits() == {0: 4, 1: 4}


def test_plan_bits_for_other_layers_than_the_streamed_ones_are_not_used(folder):
    lm = load_model(folder, "float32", "cpu", resident_layers=2, substitute_bits={1: 8, 2: 8})
    assert lm.draft_bits() == {0: 4}  # the map was made for another split: the default width


def test_the_resident_layers_are_the_last_ones_and_a_bad_count_is_refused():
    from engine.config import streamed_layers
    from engine.errors import SubspecError

    assert streamed_layers(5, 2) == [0, 1, 2] and streamed_layers(5, 5) == [] and streamed_layers(5, 0) == [0, 1, 2, 3, 4]
    for bad in (-1, 6):
        with pytest.raises(SubspecError, match="between 0 and 5"):
            streamed_layers(5, bad)
