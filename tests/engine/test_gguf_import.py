"""GGUF import, one tensor at a time: the same bits as transformers' whole-model conversion, shards that
bound the memory held, a cancel between tensors that installs nothing."""

import json
import math
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors import safe_open
from tiny_models import make_tiny_model_folder

from engine import gguf_import, store
from engine.gguf_import import ImportCancelled


def _stored_tensors(folder) -> dict:
    from engine.loading import safetensors_files

    out = {}
    for f in safetensors_files(Path(folder)):
        with safe_open(str(f), "pt") as st:
            out.update({k: st.get_tensor(k) for k in st.keys()})
    return out


def test_the_stored_default_model_has_transformers_own_conversion_bit_for_bit(default_model_folder):
    """The session's default model was imported by the streaming converter; transformers' loader
    (dequantize, un-permute, then the float32 model cast to bf16) gives exactly the same tensors."""
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    gguf = store.default_gguf()
    config = AutoConfig.from_pretrained(default_model_folder)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    reference = load_gguf_checkpoint(str(gguf), return_tensors=True, model_to_load=skeleton)["tensors"]
    ours = _stored_tensors(default_model_folder)
    assert config.tie_word_embeddings and "lm_head.weight" not in ours  # saved once, as save_pretrained does
    assert set(ours) == set(skeleton.state_dict()) - {"lm_head.weight"}
    for name, tensor in ours.items():
        want = reference[name].to(torch.bfloat16)
        assert tensor.dtype == torch.bfloat16 and tensor.shape == want.shape, name
        assert torch.equal(tensor.view(torch.int16), want.view(torch.int16)), name
    saved = json.loads((Path(default_model_folder) / "config.json").read_text())
    assert saved["architectures"] == ["LlamaForCausalLM"] and saved["dtype"] == "bfloat16"
    assert "quantization_config" not in saved


def test_shards_hold_at_most_the_limit_and_load_as_one_model(home, default_model_folder, fast_metadata,
                                                              monkeypatch, tmp_path):
    from engine.loading import check_safetensors

    limit = 8 << 20
    # Every tensor over 64k values a block of rows at a time (q and k whole: Llama's un-permutation spans
    # their rows), against the stored copy converted with the default blocks; the largest block held.
    import gguf

    monkeypatch.setattr(gguf_import, "ROW_BLOCK_ELEMENTS", 1 << 16)
    real, blocks = gguf.dequantize, []

    def recording(data, qtype):
        out = real(data, qtype)
        blocks.append(out.shape)
        return out

    monkeypatch.setattr(gguf, "dequantize", recording)
    fractions = []
    out = tmp_path / "out"
    out.mkdir()
    gguf_import.convert_gguf(store.default_gguf(), out, progress=lambda p: fractions.append(p.fraction),
                             shard_bytes=limit)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(p.name for p in out.glob("*.safetensors"))
    assert len(shards) > 10 and sorted(set(index["weight_map"].values())) == shards
    sizes = []
    for shard in shards:  # the header promises what the file holds (what the store checks at install)
        header = check_safetensors(out / shard)
        sizes.append(sum(2 * math.prod(shape) for dtype, shape in header.values() if dtype == "BF16"))
    embeddings = 49152 * 576 * 2  # bigger than the limit: a shard of its own
    assert all(size <= limit for size in sizes if size != embeddings) and embeddings in sizes
    assert index["metadata"]["total_size"] == sum(sizes)
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    ours, stored = _stored_tensors(out), _stored_tensors(default_model_folder)
    assert set(ours) == set(stored) and all(torch.equal(ours[k], stored[k]) for k in ours)
    # blocks of at most 64k values, except q and k (576 and 192 rows of 576: whole)
    big = [shape for shape in blocks if math.prod(shape) > 1 << 16]
    assert len(blocks) > 4 * len(ours) and big and {shape[0] for shape in big} <= {576, 192}


def test_shard_plan():
    tensor = lambda n: SimpleNamespace(n_elements=n)  # noqa: E731 - bf16 out: 2 bytes per element
    items = [(name, tensor(n)) for name, n in [("a", 10), ("b", 20), ("big", 100), ("c", 5), ("d", 25)]]
    plan = gguf_import._shards(items, 64)
    assert [[name for name, _ in shard] for shard in plan] == [["a", "b"], ["big"], ["c", "d"]]
    assert [gguf_import._shard_name(i, 3) for i in range(3)][-1] == "model-00003-of-00003.safetensors"
    assert gguf_import._shard_name(0, 1) == "model.safetensors"


def test_a_cancel_between_tensors_installs_nothing(home, fast_metadata):
    cancel = threading.Event()
    seen = []

    def fraction(f):
        seen.append(f)
        if f > 0.3:
            cancel.set()

    with pytest.raises(ImportCancelled, match="cancelled; nothing was installed"):
        store.import_model(store.default_gguf(), "half", cancel=cancel, fraction=fraction)
    assert 0.3 < max(seen) < 0.6  # it stopped at the next tensor, not at the end
    assert store.list_models() == [] and not list(store.models_dir().iterdir())


def test_a_cancelled_folder_import_installs_nothing(home, tmp_path):
    src = make_tiny_model_folder(tmp_path / "src", "llama")
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(ImportCancelled):
        store.import_model(src, "tiny", cancel=cancel)
    assert not list(store.models_dir().iterdir())
    fractions = []
    store.import_model(src, "tiny", fraction=fractions.append)
    assert fractions and fractions[-1] == 1.0 and [m.name for m in store.list_models()] == ["tiny"]


def test_a_gguf_missing_tensors_is_refused(home, fast_metadata, monkeypatch):
    real = gguf_import.read_architecture

    def without_a_norm(path):
        reader, arch = real(path)
        reader.tensors = [t for t in reader.tensors if t.name != "blk.3.ffn_norm.weight"]
        return reader, arch

    monkeypatch.setattr(gguf_import, "read_architecture", without_a_norm)
    with pytest.raises(store.SubspecError, match="missing: model.layers.3.post_attention_layernorm.weight"):
        store.import_model(store.default_gguf(), "holes")
    assert not list(store.models_dir().iterdir())


def test_ctrl_c_stops_a_cli_import_at_the_next_tensor(home, fast_metadata, monkeypatch, capsys):
    import signal

    import gguf

    from engine import cli

    real, calls = gguf.dequantize, []

    def interrupted_at_the_tenth(data, qtype):
        calls.append(qtype)
        if len(calls) == 10:
            signal.raise_signal(signal.SIGINT)
        return real(data, qtype)

    monkeypatch.setattr(gguf, "dequantize", interrupted_at_the_tenth)
    before = signal.getsignal(signal.SIGINT)
    assert cli.main(["models", "import", str(store.default_gguf()), "--name", "x"]) == 130
    assert "cancelled; nothing was installed" in capsys.readouterr().err and len(calls) == 10
    assert store.list_models() == [] and signal.getsignal(signal.SIGINT) is before


def test_an_import_the_disk_cannot_hold_is_refused_before_writing(home, fast_metadata, monkeypatch, tmp_path):
    import shutil

    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=200 * 10**6))
    with pytest.raises(store.SubspecError, match=r"not enough disk space for SmolLM2-135M-Instruct.Q4_1.gguf: "
                                                 r"it needs 0.27 GB \(\+0.07 GB margin\) and .* has 0.20 GB free"):
        store.import_model(store.default_gguf(), "big")
    src = make_tiny_model_folder(tmp_path / "src", "llama")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=0))
    with pytest.raises(store.SubspecError, match="not enough disk space for src"):
        store.import_model(src, "tiny")
    assert not list(store.models_dir().iterdir())


def test_a_tensor_shaped_unlike_its_config_is_refused_before_writing(home, fast_metadata, monkeypatch):
    import numpy as np

    real = gguf_import.read_architecture

    def short_embeddings(path):
        reader, arch = real(path)
        reader.tensors = [t._replace(shape=np.array([576, 100])) if t.name == "token_embd.weight" else t
                          for t in reader.tensors]
        return reader, arch

    monkeypatch.setattr(gguf_import, "read_architecture", short_embeddings)
    with pytest.raises(store.SubspecError, match=r"token_embd.weight is \[100, 576\] but its config makes "
                                                 r"model.embed_tokens.weight \[49152, 576\]"):
        store.import_model(store.default_gguf(), "odd")
    assert not list(store.models_dir().iterdir())


def test_the_metadata_is_parsed_once_and_gives_what_two_parses_give(monkeypatch):
    """AutoConfig and AutoTokenizer each parsed SmolLM2's whole GGUF metadata (3-6 s each); inside the
    import they share one parse. The config and the tokenizer are the same as transformers' own, and its
    function is back in place afterwards."""
    from transformers import AutoConfig, AutoTokenizer
    from transformers import modeling_gguf_pytorch_utils as module

    gguf = store.default_gguf()
    real = module.load_gguf_checkpoint
    calls = []

    def counted(path, return_tensors=False, **kwargs):
        calls.append(str(path))
        return real(path, return_tensors=return_tensors, **kwargs)

    monkeypatch.setattr(module, "load_gguf_checkpoint", counted)
    config, tokenizer = gguf_import._hf_config_and_tokenizer(gguf)
    assert calls == [str(gguf)] and module.load_gguf_checkpoint is counted
    theirs = AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    their_tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    assert len(calls) == 3  # without it: one parse each
    assert config.to_dict() == theirs.to_dict()
    assert tokenizer.get_vocab() == their_tokenizer.get_vocab()
    assert tokenizer.chat_template == their_tokenizer.chat_template
