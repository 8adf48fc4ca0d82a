"""The substitute cache: built once, keyed by weights/bits/group/dtype, used by every later load, partial
work kept on cancel, damaged files rebuilt; `subspec models convert`, `du` and `remove` around it."""

import json

import pytest
import torch
from tiny_models import make_tiny_model_folder

from engine import cli, convert, store, substitute
from engine.convert import ConvertCancelled, SubstituteCache, build_draft_cached
from engine.loading import load_model


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return make_tiny_model_folder(tmp_path_factory.mktemp("convert-tiny"))


@pytest.fixture
def count_quantize(monkeypatch):
    calls = []
    real = substitute.hqq_quantize

    def counting(*a, **kw):
        calls.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(substitute, "hqq_quantize", counting)
    return calls


def draft_logits(lm, draft, ids):
    from engine.generate import prefill

    return prefill(draft, lm.decoder.new_cache(64), ids)


def test_second_load_reads_the_cache_and_gives_the_same_draft(home, tiny_folder, count_quantize):
    lm = load_model(tiny_folder, dtype="float32", device="cpu")
    fresh = lm.build_draft(4, 32, cache=False)
    assert len(count_quantize) == 3 * 7
    first = lm.build_draft(4, 32)  # builds and writes the cache
    assert len(count_quantize) == 2 * 3 * 7
    second = load_model(tiny_folder, dtype="float32", device="cpu").build_draft(4, 32)
    assert len(count_quantize) == 2 * 3 * 7  # nothing quantized: every layer came from the cache
    for a, b, c in zip(fresh.modules(), first.modules(), second.modules()):
        if isinstance(a, substitute.SubstituteLinear):
            assert torch.equal(a.weight, b.weight) and torch.equal(a.weight, c.weight)
    assert second.substituted_layers == (0, 1, 2)
    ids = [1, 5, 9, 13]
    assert torch.equal(draft_logits(lm, fresh, ids), draft_logits(lm, second, ids))


def test_the_key_separates_bits_group_dtype_and_weights(home, tiny_folder, tmp_path):
    a = SubstituteCache.for_model(tiny_folder, 4, 64, torch.float32)
    assert a == SubstituteCache.for_model(tiny_folder, 4, 64, torch.float32)
    others = {SubstituteCache.for_model(tiny_folder, 8, 64, torch.float32),
              SubstituteCache.for_model(tiny_folder, 4, 32, torch.float32),
              SubstituteCache.for_model(tiny_folder, 4, 64, torch.bfloat16)}
    changed = make_tiny_model_folder(tmp_path / "other", seed=1)
    others.add(SubstituteCache.for_model(changed, 4, 64, torch.float32))
    assert a not in others and len(others) == 4


def test_cancel_keeps_finished_layers_and_the_next_run_builds_only_the_rest(home, tiny_folder,
                                                                             count_quantize):
    import threading

    lm = load_model(tiny_folder, dtype="float32", device="cpu")
    cancel = threading.Event()
    with pytest.raises(ConvertCancelled, match="after 1/3 layers"):
        build_draft_cached(lm, 4, 32, progress=lambda done, total: cancel.set(), cancel=cancel)
    cache = SubstituteCache.for_model(tiny_folder, 4, 32, torch.float32)
    assert cache.cached_layers() == [0]
    count_quantize.clear()
    build_draft_cached(lm, 4, 32)
    assert len(count_quantize) == 2 * 7 and cache.cached_layers() == [0, 1, 2]


def test_a_damaged_cache_file_is_rebuilt(home, tiny_folder, count_quantize):
    lm = load_model(tiny_folder, dtype="float32", device="cpu")
    lm.build_draft(4, 32)
    cache = SubstituteCache.for_model(tiny_folder, 4, 32, torch.float32)
    (cache.folder / "layer-0001.pt").write_bytes(b"not a torch file")
    count_quantize.clear()
    lm.build_draft(4, 32)
    assert len(count_quantize) == 7 and cache.cached_layers() == [0, 1, 2]


def test_store_model_keeps_its_weights_hash_in_the_manifest(home, tiny_folder):
    info = store.import_model(tiny_folder, "tiny")
    digest = convert.weights_hash(info.path)
    assert json.loads((store.models_dir() / "tiny" / store.MANIFEST).read_text())["weights_sha256"] == digest
    assert store.get_model("tiny").name == "tiny"  # the extra manifest key does not hide the model


def test_cli_convert_du_and_remove(home, tiny_folder, capsys, count_quantize):
    info = store.import_model(tiny_folder, "tiny")
    assert cli.main(["models", "convert", "tiny", "--group-size", "32"]) == 0
    out = capsys.readouterr().out
    assert "cached 3 layers" in out
    # Built for what a load computes in here (float32 on this CPU): the next load finds every layer.
    count_quantize.clear()
    load_model(info.path, device="cpu").build_draft(4, 32)
    assert count_quantize == []
    assert cli.main(["models", "du", "--json"]) == 0
    du = json.loads(capsys.readouterr().out)
    [model] = du["models"]
    assert model["name"] == "tiny" and model["substitute_cache_bytes"] > 0
    assert du["total_bytes"] >= model["bytes"] + model["substitute_cache_bytes"]
    assert cli.main(["models", "remove", "tiny"]) == 0
    assert "of cached substitutes" in capsys.readouterr().out
    assert convert.caches_for(store.models_dir() / "tiny") == []
    assert cli.main(["models", "convert", "nope"]) == 2


def test_a_plain_folder_is_hashed_once_until_its_weights_change(home, tmp_path, monkeypatch):
    import os

    folder = make_tiny_model_folder(tmp_path / "plain")
    hashed = []
    real = store.hash_file
    monkeypatch.setattr(store, "hash_file", lambda path, h, *a: hashed.append(path) or real(path, h, *a))
    first = convert.weights_hash(folder)
    assert convert.weights_hash(folder) == first and len(hashed) == 1  # remembered, not read again
    weights = folder / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    assert convert.weights_hash(folder) == first and len(hashed) == 2  # touched: read again, same bytes
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert convert.weights_hash(folder) != first and len(hashed) == 3


def test_a_mixed_draft_caches_each_width_apart_and_reads_both_back(home, tiny_folder, count_quantize):
    bits = {0: 8, 1: 4, 2: 8}  # a plan's: the first layers it streams at 8-bit
    lm = load_model(tiny_folder, dtype="float32", device="cpu", substitute_bits=bits)
    first = lm.build_draft(None, 32)
    assert len(count_quantize) == 3 * 7 and first.substitute_bits == bits
    assert SubstituteCache.for_model(tiny_folder, 8, 32, torch.float32).cached_layers() == [0, 2]
    assert SubstituteCache.for_model(tiny_folder, 4, 32, torch.float32).cached_layers() == [1]
    again = load_model(tiny_folder, dtype="float32", device="cpu", substitute_bits=bits).build_draft(None, 32)
    assert len(count_quantize) == 3 * 7  # every layer from its width's cache
    fresh = build_draft_cached(lm, bits, 32, use_cache=False)
    ids = [1, 5, 9, 13]
    assert torch.equal(draft_logits(lm, fresh, ids), draft_logits(lm, again, ids))


def fake_gpu_profile(gb: float) -> dict:
    gpu = {"index": 0, "name": f"fake {gb} GB", "total_bytes": int(gb * 2**30), "free_bytes": int(gb * 2**30),
           "used_bytes": 0, "pcie": {"gen_current": 4, "gen_max": 4, "width_current": 16, "width_max": 16}}
    return {"gpus": [gpu], "cuda": {"available": True, "h2d_bandwidth_gbps": None, "matmul_tflops": None},
            "ram": {"total_bytes": 64 * 2**30, "available_bytes": 60 * 2**30}}


def test_convert_builds_the_widths_a_load_here_would_use(tmp_path):
    """`models convert` (and the app's Build substitutes) by default build the plan's bits for the layers it
    streams and 4-bit for the rest; without CUDA, 4-bit everywhere."""
    from real_configs import QWEN25_7B

    from engine.config import ModelConfig
    from engine.planner import make_plan

    (tmp_path / "config.json").write_text(json.dumps(QWEN25_7B))
    profile = fake_gpu_profile(12)
    plan = make_plan(ModelConfig.from_dict(QWEN25_7B), profile)
    bits = convert.planned_bits(tmp_path, profile)
    assert sorted(bits) == list(range(28))
    assert {i: bits[i] for i in plan.draft_bits} == plan.draft_bits and 8 in plan.draft_bits.values()
    assert all(bits[i] == 4 for i in range(28) if i not in plan.draft_bits)
    no_cuda = {**profile, "cuda": {"available": False}}
    assert set(convert.planned_bits(tmp_path, no_cuda).values()) == {4}
    too_small = fake_gpu_profile(1)  # cannot run here at all: the default width, for where it can
    assert set(convert.planned_bits(tmp_path, too_small).values()) == {4}
