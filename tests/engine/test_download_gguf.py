"""A repo of GGUF files (how most big models are published) downloads one GGUF, every part of a split one,
verified like any download, and is converted into the store; against the loopback hub (tests/fake_hub.py)."""

import json
import os
from pathlib import Path

import pytest
from fake_hub import Repo, serve_hub
from test_download import FAST_RETRY
from test_gguf_import import _stored_tensors
from test_gguf_split import SPLIT_STEM, write_gguf, write_split_default

from engine import download, hub as hub_api, store
from engine.download import Download, DownloadCancelled
from engine.errors import SubspecError

QUANT = SPLIT_STEM
PARTS = [f"{QUANT}-0000{i}-of-00003.gguf" for i in (1, 2, 3)]
OTHER = "Q8_0/SmolLM2-135M-Instruct-Q8_0.gguf"  # another GGUF in a subfolder: listed, never fetched here


@pytest.fixture(scope="module")
def parts(tmp_path_factory, default_model_folder):
    return {p.name: p.read_bytes() for p in write_split_default(tmp_path_factory.mktemp("gguf-repo"))}


@pytest.fixture
def gguf_hub(parts, tmp_path, monkeypatch, fast_metadata):
    # fast_metadata: the config and tokenizer from the stored default model instead of parsed again from the
    # first part (about 15 s; test_gguf_split covers that path): the tensors still come from the download.
    files = {**parts, OTHER: b"\0" * 20_000, "mmproj-SmolLM2-f16.gguf": b"\0" * 20_000, "README.md": b"# GGUFs\n"}
    server = serve_hub(monkeypatch, {"org/smol-gguf": Repo(files)})
    monkeypatch.setenv("SUBSPEC_HOME", str(tmp_path / "home"))
    yield server
    server.stop()


def fetch(**kw):
    return Download("org/smol-gguf", retry=FAST_RETRY, **kw).run()


def test_a_gguf_repo_without_a_choice_lists_its_ggufs_and_fetches_nothing(gguf_hub):
    with pytest.raises(hub_api.GGUFChoiceNeeded) as caught:
        fetch()
    assert caught.value.choices == {"Q8_0/SmolLM2-135M-Instruct-Q8_0": 20_000, QUANT: sum(
        len(gguf_hub.repos["org/smol-gguf"].files[p]) for p in PARTS)}  # the vision projector is left out
    assert "--gguf" in str(caught.value) and "Q4_1" in str(caught.value)
    with pytest.raises(hub_api.GGUFChoiceNeeded, match="no single GGUF of org/smol-gguf matches 'SmolLM2'"):
        fetch(gguf="SmolLM2")  # both labels hold it
    assert not any(gguf_hub.bytes_sent(p) for p in PARTS)
    assert store.list_models() == [] and download.partial_downloads() == []


def test_a_split_gguf_downloads_verifies_converts_and_leaves_nothing_behind(gguf_hub, default_model_folder):
    states = []
    info = fetch(gguf="q4_1", on_progress=lambda p: states.append((p.state, p.message)))
    assert info.name == QUANT and [m.name for m in store.list_models()] == [QUANT]
    ours, single = _stored_tensors(info.path), _stored_tensors(default_model_folder)
    assert set(ours) == set(single) and all(a.equal(single[k]) for k, a in ours.items())
    manifest = json.loads((Path(info.path) / store.MANIFEST).read_text())
    assert manifest["repo_id"] == "org/smol-gguf" and manifest["source"].endswith("/" + QUANT)
    assert sorted(manifest["checksums"]) == PARTS and manifest["checksums"][PARTS[0]].startswith("sha256:")
    assert any(s == "installing" and "converting" in m for s, m in states)
    assert not list(download.downloads_dir().iterdir())  # the GGUF is deleted once converted
    # Each part: its header read first (a request cut off after a few MB), then the whole file once.
    for p in PARTS:
        header, whole = gguf_hub.requests_for(p)
        size = len(gguf_hub.repos["org/smol-gguf"].files[p])
        assert header.start == 0 and header.nbytes < min(size, 16 << 20) and (whole.start, whole.nbytes) == (0, size)
    assert gguf_hub.bytes_sent(OTHER) == 0


def stopped_while_converting(how: str, match: str) -> DownloadCancelled:
    """The Q4_1 download, paused or cancelled (`how`) a third of the way through its conversion."""
    job = Download("org/smol-gguf", retry=FAST_RETRY, gguf="Q4_1")

    def progress(p):
        if p.state == "installing" and p.total and p.done > 0.3 * p.total:
            getattr(job, how)()

    job.on_progress = progress
    with pytest.raises(DownloadCancelled, match=match) as caught:
        job.run()
    return caught.value


def test_a_pause_while_converting_keeps_the_gguf_and_a_resume_only_converts(gguf_hub):
    assert stopped_while_converting("pause", "paused").kept and store.list_models() == []
    [partial] = download.partial_downloads()
    assert partial.gguf == QUANT and partial.have_bytes == partial.total_bytes
    sent = sum(gguf_hub.bytes_sent(p) for p in PARTS)
    info = fetch(gguf="Q4_1")
    assert info.name == QUANT and sum(gguf_hub.bytes_sent(p) for p in PARTS) == sent  # nothing fetched again
    assert download.partial_downloads() == []


def test_a_cancel_while_converting_deletes_the_gguf_and_holds_no_map_of_it(gguf_hub):
    """Windows cannot delete a file that is memory-mapped: the converter's maps of the GGUF must be gone
    when a cancel deletes the folder. Chained to the converter's exception they were not (its frames hold
    the readers), so the cancel is raised on its own."""
    import gc

    from engine.gguf_import import ImportCancelled

    chain, e = [], stopped_while_converting("cancel", "cancelled")
    while e is not None:
        chain.append(e)
        e = e.__cause__ or e.__context__
    assert not any(isinstance(x, ImportCancelled) for x in chain)
    gc.collect()
    maps = [line for line in Path("/proc/self/maps").read_text().splitlines() if ".gguf" in line]
    assert maps == [] and not list(download.downloads_dir().iterdir()) and store.list_models() == []


def test_a_download_that_cannot_be_moved_into_the_store_is_kept_for_the_next_try(gguf_hub, monkeypatch):
    """The rename into the store fails (Windows: a scanner holds a file of it for longer than we wait, or
    the name was taken meanwhile): the verified GGUF is kept and the next run only converts."""
    real_rename = os.rename

    def refused(src, dst):
        raise PermissionError(13, "The process cannot access the file because it is being used by another process")

    monkeypatch.setattr(os, "rename", refused)
    with pytest.raises(SubspecError, match="could not move .* into the store.*kept in") as caught:
        fetch(gguf="Q4_1")
    assert "run the download again" in str(caught.value) and store.list_models() == []
    [partial] = download.partial_downloads()
    assert partial.have_bytes == partial.total_bytes
    sent = sum(gguf_hub.bytes_sent(p) for p in PARTS)
    monkeypatch.setattr(os, "rename", real_rename)
    assert fetch(gguf="Q4_1").name == QUANT and sum(gguf_hub.bytes_sent(p) for p in PARTS) == sent


def test_a_split_gguf_missing_a_part_on_the_hub_is_refused(gguf_hub):
    del gguf_hub.repos["org/smol-gguf"].files[PARTS[1]]
    with pytest.raises(SubspecError, match="split in 3 parts but the hub has 2"):
        fetch(gguf="Q4_1")
    assert not any(gguf_hub.bytes_sent(p) for p in PARTS)


def test_gguf_sets_group_parts_keep_folders_and_skip_projectors():
    f = lambda name: hub_api.RemoteFile(name, 1, None, "x")  # noqa: E731
    model = hub_api.RemoteModel("o/r", "c" * 40, tuple(f(n) for n in (
        "a-Q4_K_M.gguf", "big/a-Q8_0-00002-of-00002.gguf", "big/a-Q8_0-00001-of-00002.gguf", "mmproj-a.gguf",
        "README.md")), False)
    sets = hub_api.gguf_sets(model)
    assert list(sets) == ["a-Q4_K_M", "big/a-Q8_0"]
    assert [x.name for x in sets["big/a-Q8_0"]] == ["big/a-Q8_0-00001-of-00002.gguf", "big/a-Q8_0-00002-of-00002.gguf"]
    label, files = hub_api.gguf_files(model, "q8")
    assert label == "big/a-Q8_0" and [x.name for x in files] == [x.name for x in sets["big/a-Q8_0"]]
    assert hub_api.gguf_files(model, "a-Q4_K_M")[1][0].name == "a-Q4_K_M.gguf"
    with pytest.raises(hub_api.GGUFChoiceNeeded):
        hub_api.gguf_files(model, "Q5")


def test_the_cli_lists_the_ggufs_and_passes_the_choice_on(gguf_hub, capsys, monkeypatch):
    from engine import cli

    assert cli.main(["models", "download", "org/smol-gguf"]) == 2
    err = capsys.readouterr().err
    assert "choose one" in err and "--gguf" in err and f"{QUANT} (0.1 GB)" in err and "Q8_0" in err
    asked = []
    monkeypatch.setattr(Download, "run", lambda self: asked.append(self.gguf) or store.ModelInfo(
        QUANT, "/x", "llama", 1, "bfloat16", 1, "hf://org/smol-gguf", ""))  # the download itself: tested above
    assert cli.main(["models", "download", "org/smol-gguf", "--gguf", "Q4_1"]) == 0
    assert asked == ["Q4_1"] and f"installed {QUANT}" in capsys.readouterr().out


def test_an_unsupported_architecture_is_refused_from_the_header_before_any_weights(gguf_hub, tmp_path):
    [gemma] = write_gguf(store.default_gguf(), tmp_path / "gemma-Q4_1.gguf", arch="gemma")
    gguf_hub.repos["org/smol-gguf"].files[gemma.name] = gemma.read_bytes()
    with pytest.raises(SubspecError, match="is a 'gemma' model; supported: .*Nothing was downloaded"):
        fetch(gguf="gemma")
    [header] = gguf_hub.requests_for(gemma.name)
    assert header.nbytes < 16 << 20 and download.partial_downloads() == []


def test_the_disk_must_hold_the_download_and_its_bf16_conversion(gguf_hub, monkeypatch):
    size = sum(len(gguf_hub.repos["org/smol-gguf"].files[p]) for p in PARTS)
    converted = 2 * 134_515_008  # SmolLM2's elements in bf16: more than the 4-bit GGUF
    monkeypatch.setattr(download, "free_bytes", lambda _p: size + converted // 2 + store.DISK_MARGIN)
    with pytest.raises(SubspecError, match=r"not enough disk space .* then 0\.27 GB once converted to bf16"):
        fetch(gguf="Q4_1")
    assert all(len(gguf_hub.requests_for(p)) == 1 for p in PARTS)  # the headers only


def test_the_header_parser_reads_what_ggufs_own_reader_does(tmp_path):
    from gguf import GGUFReader

    from engine.gguf_header import file_chunks, read_header

    path = store.default_gguf()
    header = read_header(file_chunks(path, block=4096)(), path.name)
    reader = GGUFReader(str(path))
    assert header.tensors == {t.name: int(t.n_elements) for t in reader.tensors}
    assert header.architecture == "llama" and header.metadata["llama.block_count"] == 30
    assert "tokenizer.ggml.tokens" not in header.metadata  # arrays are skipped, not kept
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(path.read_bytes()[: 1 << 20])
    with pytest.raises(SubspecError, match="header ends early"):
        read_header(file_chunks(cut)(), cut.name)
    with pytest.raises(SubspecError, match="not a GGUF"):
        read_header(iter([b"PK\x03\x04" + b"\0" * 64]), "model.zip")
    with pytest.raises(SubspecError, match="goes on past 1 MB"):
        read_header(file_chunks(path)(), path.name, limit=1 << 20)


def test_a_gguf_header_with_odd_metadata_is_a_clear_error():
    from dataclasses import replace

    from engine.gguf_header import config_from_header, file_chunks, read_header

    path = store.default_gguf()
    header = read_header(file_chunks(path)(), path.name)
    assert config_from_header(header, "x")["num_hidden_layers"] == 30
    for key, value, message in (("general.architecture", None, "names no general.architecture"),
                                ("llama.block_count", "30", "block_count is '30', not a positive count"),
                                ("llama.attention.head_count", 0, "head_count is 0"),
                                ("llama.rope.freq_base", "fast", "freq_base is 'fast', not a positive number")):
        meta = {**header.metadata, key: value}
        with pytest.raises(SubspecError, match=message):
            config_from_header(replace(header, metadata=meta), "x")


def test_discarding_one_gguf_keeps_the_others_and_never_touches_a_running_download(gguf_hub):
    def partial(label):
        folder = download.work_folder("org/smol-gguf", "c" * 40, label)
        folder.mkdir(parents=True)
        (folder / "x.gguf.part").write_bytes(b"\0" * 1000)
        download._write_state(folder, {"repo_id": "org/smol-gguf", "commit": "c" * 40, "name": label,
                                       "total": 2000, "verified": {}, "gguf": label})
        return folder

    q4, q8, f16 = partial("a-Q4_1"), partial("a-Q8_0"), partial("a-F16")
    assert sorted(p.gguf for p in download.partial_downloads()) == ["a-F16", "a-Q4_1", "a-Q8_0"]
    assert download.discard_partial("org/smol-gguf", "a-Q8_0") > 0
    assert not q8.exists() and q4.exists() and f16.exists()
    running = download._try_lock(q4)  # a download holds its folder's lock while it runs
    try:
        download.discard_partial("org/smol-gguf")  # every label: the running one stays
        assert q4.exists() and not f16.exists()
    finally:
        running.close()
    assert download.discard_partial("org/smol-gguf") > 0 and download.partial_downloads() == []


def test_a_gguf_only_repo_is_planned_from_its_smallest_ggufs_header(gguf_hub, default_model_folder, capsys):
    """`subspec plan ORG/REPO` before downloading: a repo without config.json answers from a GGUF header
    (one request cut off after it), the same model shape as the default model's own config.json."""
    from engine import cli
    from engine.config import ModelConfig

    gguf_hub.repos["org/smol-single"] = Repo({"SmolLM2-135M-Instruct.Q4_1.gguf": store.default_gguf().read_bytes(),
                                               "README.md": b"# one GGUF\n"})
    raw = hub_api.remote_config("org/smol-single", gguf=True)
    assert raw["_gguf"] == "SmolLM2-135M-Instruct.Q4_1.gguf"
    ours, theirs = ModelConfig.from_dict(raw), ModelConfig.from_file(default_model_folder)
    fields = ("architecture", "vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
              "num_kv_heads", "head_dim", "max_position_embeddings", "tie_word_embeddings", "qkv_bias")
    assert {f: getattr(ours, f) for f in fields} == {f: getattr(theirs, f) for f in fields}
    [request] = gguf_hub.requests_for("SmolLM2-135M-Instruct.Q4_1.gguf")
    assert request.nbytes < 16 << 20
    with pytest.raises(SubspecError, match="has no config.json"):
        hub_api.remote_config("org/smol-single")  # a search's fit badge does not read headers
    assert cli.main(["plan", "org/smol-single", "--vram-gb", "8"]) == 0
    out = capsys.readouterr()
    assert "GGUF files only; planned from SmolLM2-135M-Instruct.Q4_1.gguf's header" in out.err
    assert "org/smol-single: " in out.out


def test_a_pause_while_reading_the_headers_stays_a_pause(gguf_hub, monkeypatch):
    job = Download("org/smol-gguf", retry=FAST_RETRY, gguf="Q4_1")
    real = Download._remote_header

    def pausing(self, remote, f):
        self.pause()
        return real(self, remote, f)  # sees the stop and raises DownloadCancelled(kept=True)

    monkeypatch.setattr(Download, "_remote_header", pausing)
    with pytest.raises(DownloadCancelled, match="paused") as caught:
        job.run()
    assert caught.value.kept  # not turned into a cancel that deletes the folder
