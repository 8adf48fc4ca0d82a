"""transformers is the oracle: our decoder's logits equal its logits for every supported architecture."""

import pytest
import torch
from tiny_models import ARCHS, make_tiny_checkpoint

from engine.generate import decode_mask, prefill
from engine.loading import load_decoder
from engine.masks import causal_mask

REL_TOL = 1e-5


def _rel_err(ours, ref):
    return ((ours - ref).abs().max() / ref.abs().max()).item()


@pytest.fixture(scope="module", params=sorted(ARCHS))
def pair(request, tmp_path_factory):
    import transformers

    folder = make_tiny_checkpoint(tmp_path_factory.mktemp(request.param), request.param)
    ref = transformers.AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32,
                                                            attn_implementation="eager").eval()
    return load_decoder(folder, torch.float32), ref


def test_prefill_logits_match(pair):
    ours, ref = pair
    tokens = torch.randint(3, 97, (20,), generator=torch.Generator().manual_seed(1))
    cache = ours.new_cache(32)
    mask = causal_mask(0, 20, torch.float32, sliding_window=ours.config.sliding_window)
    logits = ours(tokens, torch.arange(20), cache, 0, mask)
    with torch.no_grad():
        expected = ref(tokens[None]).logits[0]
    assert _rel_err(logits, expected) < REL_TOL


def test_chunked_prefill_then_cached_decoding_match(pair):
    ours, ref = pair
    tokens = torch.randint(3, 97, (26,), generator=torch.Generator().manual_seed(2))
    cache = ours.new_cache(32)
    last = prefill(ours, cache, tokens[:18].tolist(), chunk=5)  # chunks of 5 exercise the chunk mask
    with torch.no_grad():
        expected = ref(tokens[None, :18]).logits[0, -1:]
    assert _rel_err(last, expected) < REL_TOL
    assert cache.length == 18
    for i in range(18, 26):  # token by token through the cache, past the sliding window where there is one
        logits = ours(tokens[i:i + 1], torch.tensor([i]), cache, i, decode_mask(ours, i))
        cache.commit(i + 1)
        with torch.no_grad():
            expected = ref(tokens[None, : i + 1]).logits[0, -1:]
        assert _rel_err(logits, expected) < REL_TOL, f"position {i}"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_loads_and_tracks_float32(tmp_path, dtype):
    folder = make_tiny_checkpoint(tmp_path, "qwen2")
    full = load_decoder(folder, torch.float32)
    half = load_decoder(folder, dtype)
    assert half.embed_tokens.weight.dtype == dtype
    tokens = torch.arange(3, 15)
    mask = causal_mask(0, 12, torch.float32)
    a = full(tokens, torch.arange(12), full.new_cache(16), 0, mask)
    b = half(tokens, torch.arange(12), half.new_cache(16), 0, mask)
    assert b.dtype == torch.float32
    assert _rel_err(b, a) < 0.05  # half precision noise, not a different model


def test_sharded_checkpoint_loads_the_same_weights(tmp_path):
    import transformers

    src = make_tiny_checkpoint(tmp_path / "whole", "llama")
    ref = transformers.AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.float32)
    ref.save_pretrained(str(tmp_path / "sharded"), max_shard_size="20KB")
    shards = sorted((tmp_path / "sharded").glob("*.safetensors"))
    assert len(shards) > 2 and (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    whole, sharded = load_decoder(src), load_decoder(tmp_path / "sharded")
    for (name, a), (_, b) in zip(whole.named_parameters(), sharded.named_parameters()):
        assert torch.equal(a, b), name
