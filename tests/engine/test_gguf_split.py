"""Split GGUFs (NAME-00001-of-00003.gguf ...: how big models are published) import whole from whichever part
is picked, and equal the same model from one file; a missing or renamed part is refused up front."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from test_gguf_import import _stored_tensors

from engine import gguf_import, store
from engine.errors import SubspecError


def write_gguf(source: Path, out: Path, max_tensors: int = 0, head: np.ndarray | None = None,
               arch: str | None = None) -> list[Path]:
    """The GGUF at `source` written again as `out` (split every `max_tensors` tensors when given), with every
    metadata field and tensor as they are; `head` adds an F16 output.weight after the others (an untied
    model whose head lands in the last part), `arch` another general.architecture. Returns the files
    written, in order."""
    from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter

    reader = GGUFReader(str(source))
    arch = arch or bytes(reader.fields["general.architecture"].parts[-1]).decode()
    writer = GGUFWriter(str(out), arch, split_max_tensors=max_tensors)
    for field in reader.fields.values():
        if field.name == "general.architecture" or field.name.startswith("GGUF."):
            continue
        kind = field.types[0]
        writer.add_key_value(field.name, field.contents(), kind,
                             sub_type=field.types[-1] if kind == GGUFValueType.ARRAY else None)
    tensors = [(t.name, t.data, t.tensor_type) for t in reader.tensors]
    if head is not None:
        tensors.append(("output.weight", head, GGMLQuantizationType.F16))
    for name, data, kind in tensors:
        writer.add_tensor_info(name, data.shape, data.dtype, data.nbytes, kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for _name, data, _kind in tensors:
        writer.write_tensor_data(data)
    writer.close()
    return sorted(out.parent.glob(f"{out.stem}*.gguf"))


SPLIT_STEM = "SmolLM2-135M-Instruct-Q4_1"


def write_split_default(folder: Path) -> list[Path]:
    """The default model's GGUF as three parts in `folder` ({SPLIT_STEM}-0000i-of-00003.gguf)."""
    parts = write_gguf(store.default_gguf(), folder / f"{SPLIT_STEM}.gguf", max_tensors=100)
    assert [p.name for p in parts] == [f"{SPLIT_STEM}-0000{i}-of-00003.gguf" for i in (1, 2, 3)]
    return parts


@pytest.fixture(scope="module")
def split_dir(tmp_path_factory, default_model_folder):
    folder = tmp_path_factory.mktemp("split")
    write_split_default(folder)
    return folder


def test_a_split_gguf_imports_from_any_part_and_equals_the_single_file(home, split_dir, default_model_folder):
    """Picked by its second part, the split copy of the default model's GGUF installs under the name without
    the part suffix, and holds exactly the tensors imported from the single file."""
    messages = []
    info = store.import_model(split_dir / "SmolLM2-135M-Instruct-Q4_1-00002-of-00003.gguf", progress=messages.append)
    assert info.name == "SmolLM2-135M-Instruct-Q4_1"
    assert any("one of 3 parts" in m for m in messages)
    ours, single = _stored_tensors(info.path), _stored_tensors(default_model_folder)
    assert set(ours) == set(single) and all(torch.equal(ours[k], single[k]) for k in ours)
    assert json.loads((Path(info.path) / "config.json").read_text())["tie_word_embeddings"] is True


def test_an_untied_head_in_a_later_part_is_kept(home, tmp_path, default_model_folder):
    """transformers decides "tied" by whether the file it reads holds output.weight, and it reads only the
    first part: a head in the last part must still become lm_head, not be dropped for the embeddings."""
    from gguf import GGUFReader, dequantize

    reader = GGUFReader(str(store.default_gguf()))
    embed = next(t for t in reader.tensors if t.name == "token_embd.weight")
    head = (-0.5 * dequantize(embed.data, embed.tensor_type)).astype(np.float16)  # not the embeddings
    parts = write_gguf(store.default_gguf(), tmp_path / "untied.gguf", max_tensors=100, head=head)
    assert len(parts) == 3
    last = GGUFReader(str(parts[-1]))
    assert "output.weight" in [t.name for t in last.tensors]
    assert "output.weight" not in [t.name for t in GGUFReader(str(parts[0])).tensors]

    info = store.import_model(parts[0], "untied")  # the metadata read through transformers, not shortcut
    saved = _stored_tensors(info.path)
    assert json.loads((Path(info.path) / "config.json").read_text())["tie_word_embeddings"] is False
    want = torch.from_numpy(head.astype(np.float32)).to(torch.bfloat16)
    assert torch.equal(saved["lm_head.weight"], want)
    embed_name = "model.embed_tokens.weight"
    assert torch.equal(saved[embed_name], _stored_tensors(default_model_folder)[embed_name])


def test_a_missing_part_is_refused_before_anything_is_written(home, split_dir, tmp_path):
    partial = tmp_path / "partial"
    partial.mkdir()
    for i in (1, 3):
        shutil.copy(split_dir / f"SmolLM2-135M-Instruct-Q4_1-0000{i}-of-00003.gguf", partial)
    with pytest.raises(SubspecError, match=r"one of 3 parts .* SmolLM2-135M-Instruct-Q4_1-00002-of-00003.gguf"):
        store.import_model(partial / "SmolLM2-135M-Instruct-Q4_1-00001-of-00003.gguf")
    assert store.list_models() == [] and not list(store.models_dir().iterdir())


def test_a_renamed_or_misplaced_part_is_refused(home, split_dir, tmp_path):
    lone = tmp_path / "model.gguf"  # the first part, renamed: its metadata says 3 parts
    shutil.copy(split_dir / "SmolLM2-135M-Instruct-Q4_1-00001-of-00003.gguf", lone)
    with pytest.raises(SubspecError, match="first of 3 parts of a split GGUF, but its name does not say so"):
        store.import_model(lone)
    swapped = tmp_path / "swapped"  # parts 2 and 3 under each other's names
    swapped.mkdir()
    for i, j in ((1, 1), (2, 3), (3, 2)):
        shutil.copy(split_dir / f"SmolLM2-135M-Instruct-Q4_1-0000{i}-of-00003.gguf",
                    swapped / f"m-0000{j}-of-00003.gguf")
    with pytest.raises(SubspecError, match="is not part 2 of this split GGUF"):
        store.import_model(swapped / "m-00001-of-00003.gguf")
    assert store.list_models() == []


def test_store_names_drop_the_quantization_and_part_suffixes():
    assert gguf_import.model_name(Path("SmolLM2-135M-Instruct.Q4_1.gguf")) == "SmolLM2-135M-Instruct"
    assert gguf_import.model_name(Path("/m/qwen2.5-7b-instruct-q8_0-00002-of-00003.gguf")) == "qwen2.5-7b-instruct-q8_0"
    assert gguf_import.split_parts(Path("/nowhere/plain.gguf")) == [Path("/nowhere/plain.gguf")]
    with pytest.raises(SubspecError, match="part 4 of 3 does not exist"):
        gguf_import.split_parts(Path("/m/x-00004-of-00003.gguf"))
