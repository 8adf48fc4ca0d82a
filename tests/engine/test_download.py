"""Downloads against a real HTTP server on loopback playing the hub (tests/fake_hub.py): full download,
drops and resets mid-file resumed without starting over, a process killed mid-file and resumed by a new
one, checksum mismatches rejected, cancel within a second, a full disk, delete freeing the space."""

import errno
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from fake_hub import Fault, Repo, make_model_repo, repo_from_folder, serve_hub

from engine import cli, download, store
from engine.download import Download, DownloadCancelled, RetryPolicy
from engine.errors import SubspecError

MIB = 1024 * 1024
FAST_RETRY = RetryPolicy(tries=4, first_delay_s=0.02, max_delay_s=0.1, read_timeout_s=2.0)
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def repo_folder(tmp_path_factory):
    return make_model_repo(tmp_path_factory.mktemp("hub-repo"))


@pytest.fixture
def hub(repo_folder, tmp_path, monkeypatch):
    server = serve_hub(monkeypatch, {"org/tiny": repo_from_folder(repo_folder, downloads=10)})
    monkeypatch.setenv("SUBSPEC_HOME", str(tmp_path / "home"))
    server.weights = "model.safetensors"
    server.weights_size = len(server.repos["org/tiny"].files["model.safetensors"])
    yield server
    server.stop()


def fetch(repo="org/tiny", **kw):
    return Download(repo, retry=kw.pop("retry", FAST_RETRY), **kw).run()


def listed():
    return [m.name for m in store.list_models()]


def test_full_download_is_verified_installed_and_loads(hub, repo_folder):
    states = []
    info = fetch(on_progress=lambda p: states.append(p.state))
    assert info.name == "tiny" and listed() == ["tiny"]
    folder = Path(info.path)
    for f in repo_folder.iterdir():
        assert (folder / f.name).read_bytes() == f.read_bytes()
    manifest = json.loads((folder / store.MANIFEST).read_text())
    assert manifest["repo_id"] == "org/tiny" and manifest["commit"] == hub.repos["org/tiny"].commit
    assert manifest["checksums"]["model.safetensors"].startswith("sha256:")
    assert manifest["checksums"]["config.json"].startswith("git-sha1:")
    assert {"resolving", "downloading", "verifying", "installing", "done"} <= set(states)
    assert not list(download.downloads_dir().iterdir())  # nothing partial left behind
    assert hub.resent(hub.weights) == 0

    from engine.generate import generate_plain
    from engine.loading import load_model
    from engine.sampling import SamplingParams

    lm = load_model(folder, dtype="float32", device="cpu")
    events = list(generate_plain(lm, lm.encode("hi"), 4, SamplingParams(temperature=0)))
    assert sum(len(e.token_ids) for e in events) == 4


@pytest.mark.parametrize("kind", ["close", "reset"])
def test_dropped_connection_resumes_without_starting_over(hub, kind):
    hub.faults = [Fault(hub.weights, kind, after=hub.weights_size // 2)]
    fetch()
    assert listed() == ["tiny"]
    reqs = hub.requests_for(hub.weights)
    assert len(reqs) == 2 and reqs[0].start == 0 and reqs[1].start > 0
    assert reqs[1].status == 206
    assert hub.resent(hub.weights) < MIB, reqs  # a restart from zero would resend about 2.5 MB


def test_server_errors_and_stalls_are_retried(hub):
    hub.faults = [Fault(hub.weights, "status", after=0, status=503),
                  Fault(hub.weights, "stall", after=MIB, stall_s=4.0),  # longer than the read timeout
                  Fault(hub.weights, "status", after=MIB + 1, status=500)]
    messages = []
    fetch(on_progress=lambda p: messages.append(p.message) if p.state == "retrying" else None)
    assert listed() == ["tiny"]
    assert any("503" in m for m in messages) and any("500" in m for m in messages)
    assert any("ReadTimeout" in m for m in messages)
    assert hub.resent(hub.weights) < MIB


def test_gives_up_after_tries_without_progress_and_keeps_the_bytes(hub):
    hub.faults = [Fault(hub.weights, "close", after=MIB)] + \
                 [Fault(hub.weights, "status", after=MIB + i, status=502) for i in range(1, 10)]
    with pytest.raises(SubspecError, match="giving up after 4 tries.*run the download again to resume"):
        fetch()
    assert listed() == []
    [partial] = download.partial_downloads()
    assert partial.repo_id == "org/tiny" and partial.have_bytes >= MIB
    hub.faults.clear()
    fetch()  # the next call resumes
    assert listed() == ["tiny"] and hub.resent(hub.weights) < MIB


def test_killed_process_resumes_in_a_new_process(hub, tmp_path):
    hub.rate = 1.5 * MIB  # about 3 s for the weights: time to kill the process mid-file
    env = {**os.environ, "HF_ENDPOINT": hub.url, "SUBSPEC_HOME": os.environ["SUBSPEC_HOME"],
           "PYTHONPATH": str(ROOT)}
    env.pop("HF_HUB_OFFLINE", None)
    proc = subprocess.Popen([sys.executable, "-m", "engine.cli", "models", "download", "org/tiny"],
                            env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    part = None
    while time.monotonic() < deadline:
        parts = list(download.downloads_dir().glob("*/model.safetensors.part"))
        if parts and parts[0].stat().st_size > MIB:
            part = parts[0]
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert part is not None, proc.stderr.read().decode()[-2000:]
    kept = part.stat().st_size
    assert 0 < kept < hub.weights_size and listed() == []

    hub.rate = None
    env_proc = subprocess.run([sys.executable, "-m", "engine.cli", "models", "download", "org/tiny"],
                              env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert env_proc.returncode == 0, env_proc.stderr[-2000:]
    assert listed() == ["tiny"]
    resumed = hub.requests_for(hub.weights)[-1]
    assert resumed.start >= kept and resumed.status == 206
    assert hub.resent(hub.weights) < MIB


@pytest.mark.parametrize("name", ["model.safetensors", "tokenizer.json"])  # sha256 and git-sha1
def test_checksum_mismatch_is_rejected_and_not_listed(hub, name):
    hub.corrupt = {name}
    with pytest.raises(SubspecError, match=f"{name} does not match the hub's checksum"):
        fetch()
    assert listed() == []
    assert not list(download.downloads_dir().glob(f"*/{name}*"))  # the corrupt bytes are gone


def test_cancel_takes_effect_within_a_second_and_leaves_nothing(hub):
    hub.rate = 256 * 1024  # 20 s for the weights
    job = Download("org/tiny", retry=FAST_RETRY)
    errors = []
    t = threading.Thread(target=lambda: _run_into(job, errors))
    t.start()
    _wait_for_part(0.5 * MIB)
    started = time.monotonic()
    job.cancel()
    t.join(5)
    assert not t.is_alive() and time.monotonic() - started < 1.0
    assert isinstance(errors[0], DownloadCancelled) and not errors[0].kept
    assert listed() == [] and not list(download.downloads_dir().iterdir())


def test_cancel_during_a_stalled_connection_is_still_prompt(hub):
    hub.faults = [Fault(hub.weights, "stall", after=MIB, stall_s=20)]
    job = Download("org/tiny", retry=RetryPolicy(read_timeout_s=30))
    errors = []
    t = threading.Thread(target=lambda: _run_into(job, errors))
    t.start()
    _wait_for_part(MIB)
    time.sleep(0.3)  # now blocked in a read that would wait 30 s
    started = time.monotonic()
    job.cancel()
    t.join(5)
    assert not t.is_alive() and time.monotonic() - started < 1.0
    assert isinstance(errors[0], DownloadCancelled)


def test_pause_keeps_the_partial_files_and_a_new_download_resumes(hub):
    hub.rate = 512 * 1024
    job = Download("org/tiny", retry=FAST_RETRY)
    errors = []
    t = threading.Thread(target=lambda: _run_into(job, errors))
    t.start()
    _wait_for_part(MIB)
    job.pause()
    t.join(5)
    assert errors[0].kept and "resume" in str(errors[0])
    [partial] = download.partial_downloads()
    assert partial.have_bytes >= MIB and partial.total_bytes > hub.weights_size
    hub.rate = None
    fetch()
    assert listed() == ["tiny"] and hub.resent(hub.weights) < MIB


def test_not_enough_disk_space_is_refused_before_fetching_weights(hub, monkeypatch):
    monkeypatch.setattr(download, "free_bytes", lambda _path: 10 * MIB)
    with pytest.raises(SubspecError, match="not enough disk space for org/tiny: it needs"):
        fetch()
    assert hub.bytes_sent(hub.weights) == 0 and listed() == []


def test_disk_filling_up_mid_file_is_a_clear_error_and_keeps_the_bytes(hub, monkeypatch):
    real_open = open

    class FullDisk:
        def __init__(self, fh):
            self.fh, self.room = fh, MIB

        def write(self, data):
            if len(data) > self.room:
                raise OSError(errno.ENOSPC, "No space left on device")
            self.room -= len(data)
            return self.fh.write(data)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

    def fake_open(path, mode="r", *a, **kw):
        fh = real_open(path, mode, *a, **kw)
        return FullDisk(fh) if str(path).endswith("model.safetensors.part") else fh

    monkeypatch.setattr(download, "open", fake_open, raising=False)
    with pytest.raises(SubspecError, match="disk is full while writing model.safetensors"):
        fetch()
    assert listed() == []
    [partial] = download.partial_downloads()
    assert partial.have_bytes > MIB // 2


def test_remove_frees_the_space(hub, capsys):
    info = fetch()
    before = cli_du()
    assert cli.main(["models", "remove", "tiny"]) == 0
    assert "freed" in capsys.readouterr().out
    assert not Path(info.path).exists() and listed() == []
    assert before["total_bytes"] - cli_du()["total_bytes"] >= hub.weights_size


def test_remove_a_partial_download_by_repo_id(hub, capsys):
    hub.faults = [Fault(hub.weights, "status", after=MIB + i, status=500) for i in range(10)]
    hub.faults.insert(0, Fault(hub.weights, "close", after=MIB))
    with pytest.raises(SubspecError):
        fetch()
    assert cli.main(["models", "remove", "org/tiny"]) == 0
    assert "partial download of org/tiny" in capsys.readouterr().out
    assert download.partial_downloads() == []


def test_a_partial_discarded_while_it_is_listed_is_skipped(hub, monkeypatch):
    """The app lists partial downloads on one thread while Discard deletes one on another: the listing
    skips a folder that goes away under it instead of failing (seen in the suite under load)."""
    import shutil

    hub.faults = [Fault(hub.weights, "status", after=MIB + i, status=500) for i in range(10)]
    hub.faults.insert(0, Fault(hub.weights, "close", after=MIB))
    with pytest.raises(SubspecError):
        fetch()
    [partial] = download.partial_downloads()
    real = download._read_state

    def read_then_deleted(folder):
        state = real(folder)
        shutil.rmtree(folder)  # the other thread's Discard, between the state file and the listing
        return state

    monkeypatch.setattr(download, "_read_state", read_then_deleted)
    assert download.partial_downloads() == [] and not Path(partial.folder).exists()


def test_unsupported_architecture_is_refused_before_the_weights(hub, repo_folder):
    files = dict(hub.repos["org/tiny"].files)
    config = json.loads(files["config.json"])
    config.update(model_type="gpt2", architectures=["GPT2LMHeadModel"])
    files["config.json"] = json.dumps(config).encode()
    hub.repos["org/gpt"] = type(hub.repos["org/tiny"])(files)
    with pytest.raises(SubspecError, match="org/gpt: .*gpt2"):
        fetch("org/gpt")
    assert hub.bytes_sent(hub.weights) == 0
    assert download.partial_downloads() == []


def test_gated_model_needs_a_token(hub):
    hub.repos["org/tiny"].gated = True
    with pytest.raises(SubspecError, match="token"):
        fetch()
    assert listed() == []
    fetch(token=hub.token)
    assert listed() == ["tiny"]


def test_repo_without_safetensors_or_config_and_unknown_repo(hub):
    hub.repos["org/bin"] = type(hub.repos["org/tiny"])({"config.json": b"{}", "pytorch_model.bin": b"x" * 100})
    with pytest.raises(SubspecError, match="no safetensors weights.*\\.bin"):
        fetch("org/bin")
    with pytest.raises(SubspecError, match="no model 'org/nope'"):
        fetch("org/nope")
    with pytest.raises(SubspecError, match="not a hub repo id"):
        fetch("just-a-name")


def test_unreachable_hub_is_a_clear_error(hub, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: nothing listens
    with pytest.raises(SubspecError, match="cannot reach http://127.0.0.1:9"):
        fetch()


def test_a_newer_commit_supersedes_an_older_partial(hub):
    hub.faults = [Fault(hub.weights, "close", after=MIB)] + \
                 [Fault(hub.weights, "status", after=MIB + i, status=500) for i in range(1, 10)]
    with pytest.raises(SubspecError):
        fetch()
    old = download.partial_downloads()[0]
    hub.faults.clear()
    hub.repos["org/tiny"].commit = "f" * 40
    fetch()
    assert not Path(old.folder).exists() and listed() == ["tiny"]


def test_name_taken_is_refused_before_downloading(hub):
    fetch()
    with pytest.raises(SubspecError, match="already exists"):
        fetch()
    fetch(name="tiny-2")
    assert listed() == ["tiny", "tiny-2"]


def test_cli_search_and_download(hub, capsys):
    assert cli.main(["models", "search", "tin"]) == 0
    assert "org/tiny" in capsys.readouterr().out
    assert cli.main(["models", "search", "tin", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["repo_id"] == "org/tiny"
    assert cli.main(["models", "download", "org/tiny", "--name", "t2"]) == 0
    assert "installed t2" in capsys.readouterr().out
    assert cli.main(["models", "download", "org/missing"]) == 2
    assert "no model 'org/missing'" in capsys.readouterr().err


def cli_du():
    from engine.cli_models import disk_use

    return disk_use()


def _run_into(job, errors):
    try:
        job.run()
    except Exception as exc:  # the test inspects it
        errors.append(exc)


def _wait_for_part(nbytes, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        parts = list(download.downloads_dir().glob("*/model.safetensors.part"))
        if parts and parts[0].stat().st_size >= nbytes:
            return
        time.sleep(0.02)
    raise AssertionError("the download never got going")


def test_a_second_process_on_the_same_download_is_refused(hub):
    work = download.work_folder("org/tiny", hub.repos["org/tiny"].commit)
    work.mkdir(parents=True)
    other = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, sys, time; fh = open(sys.argv[1], 'a'); fcntl.flock(fh, fcntl.LOCK_EX); "
        "print('locked', flush=True); time.sleep(30)"), str(download.lock_path(work))],
        stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline().strip() == "locked"
        with pytest.raises(SubspecError, match="already being downloaded by another process"):
            fetch()
        assert work.is_dir()  # the other process's files are left alone
    finally:
        other.kill()
        other.wait()
    fetch()
    assert listed() == ["tiny"]


def test_a_finished_download_leaves_no_lock_file_behind(hub):
    """The lock sits beside its folder (Windows can neither rename nor delete a folder holding an open
    file, and the folder is installed or deleted under the lock); it goes when the folder goes (for a
    cancel: test_cancel_takes_effect_within_a_second_and_leaves_nothing)."""
    fetch()
    assert listed() == ["tiny"] and list(download.downloads_dir().iterdir()) == []


def test_on_windows_the_lock_is_msvcrts(monkeypatch, tmp_path):
    """Without fcntl the lock is msvcrt's one-byte lock at the start of the lock file. A stand-in msvcrt
    (built on flock, which conflicts between two open files as msvcrt's does) checks the glue: a second
    lock is refused while the first is held, a discard leaves a held download alone, and once let go the
    folder can be locked again."""
    import fcntl
    import types

    calls = []

    def locking(fd, mode, nbytes):
        calls.append((os.lseek(fd, 0, os.SEEK_CUR), mode, nbytes))
        if mode == 0:
            fcntl.flock(fd, fcntl.LOCK_UN)
        else:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises OSError (BlockingIOError) when held

    monkeypatch.setitem(sys.modules, "fcntl", None)  # `import fcntl` raises ImportError, as on Windows
    monkeypatch.setitem(sys.modules, "msvcrt", types.SimpleNamespace(LK_UNLCK=0, LK_NBLCK=2, locking=locking))
    folder = tmp_path / "org--tiny@abc"
    folder.mkdir()
    first = download._try_lock(folder)
    assert first is not None and download._try_lock(folder) is None
    assert calls == [(0, 2, 1), (0, 2, 1)]
    download._release(first, folder)
    assert calls[-1] == (0, 0, 1)  # unlocked before closing: Windows may release a closed file's lock late
    assert download.lock_path(folder).exists()  # the folder is still there: a later resume locks it
    again = download._try_lock(folder)
    assert again is not None
    download._remove_locked(folder, again)
    assert not folder.exists() and not download.lock_path(folder).exists()


@pytest.mark.skipif(sys.platform == "win32", reason="flock is POSIX's")
def test_a_lock_on_a_lock_file_removed_meanwhile_is_not_trusted(tmp_path, monkeypatch):
    """A download finishing between another process's open and lock of its lock file removes the file: that
    process must not keep a lock on a file no one else can open (a third would lock a new one as well)."""
    import fcntl

    folder = tmp_path / "org--tiny@abc"
    folder.mkdir()
    real, calls = fcntl.flock, []

    def racing(fh, op):
        if not calls:
            download.lock_path(folder).unlink()  # the finishing download's _release, this very instant
        calls.append(op)
        return real(fh, op)

    monkeypatch.setattr(fcntl, "flock", racing)
    lock = download._try_lock(folder)
    assert lock is not None and len(calls) == 2  # the second try locked the file now at the path
    assert download._try_lock(folder) is None  # so a third process is refused
    download._release(lock, folder)


def test_a_lock_file_whose_folder_is_gone_is_cleaned_up(hub):
    """A process killed between deleting (or installing) its folder and removing its lock file."""
    stale = download.lock_path(download.downloads_dir() / "org--gone@abc")
    download.downloads_dir().mkdir(parents=True, exist_ok=True)
    stale.write_bytes(b"")
    fetch()
    assert not stale.exists()


def test_a_repos_config_alone_says_whether_it_fits(hub):
    from engine import hub as hub_api
    from engine.catalogue import estimate_config
    from engine.hardware import hypothetical_gpu

    config = hub_api.remote_config("org/tiny")
    assert config["model_type"] == "llama" and hub.bytes_sent(hub.weights) == 0
    box = hypothetical_gpu({"ram": {"total_bytes": 16 * 2**30, "available_bytes": 12 * 2**30}}, 8)
    fit = estimate_config("org/tiny", config, box)
    assert fit.fits and fit.resident_layers == 2
    unsupported = estimate_config("org/x", {**config, "model_type": "gpt2"}, box)
    assert not unsupported.fits and unsupported.summary.startswith("not supported here: unsupported architecture")
    hub.repos["org/tiny"].gated = True
    with pytest.raises(SubspecError, match="gated or private"):
        hub_api.remote_config("org/tiny")
    assert hub_api.remote_config("org/tiny", token_=hub.token)["model_type"] == "llama"
    with pytest.raises(SubspecError, match="no config.json"):
        hub_api.remote_config("org/nope")


def test_a_long_repo_and_label_make_a_short_unique_folder(hub):
    """Windows' 260-character paths: bartowski/nvidia_Llama-3_1-Nemotron-Ultra-253B-v1-GGUF's Q4_K_M came to
    295 with its file inside. Short names stay readable as they were; a folder an older version began
    under a long name is still the one resumed."""
    repo = "bartowski/nvidia_Llama-3_1-Nemotron-Ultra-253B-v1-GGUF"
    label = "nvidia_Llama-3_1-Nemotron-Ultra-253B-v1-Q4_K_M/nvidia_Llama-3_1-Nemotron-Ultra-253B-v1-Q4_K_M"
    a, b = download.work_folder(repo, "a" * 40, label), download.work_folder(repo, "b" * 40, label)
    assert len(a.name) == download.FOLDER_NAME_MAX and a != b and a.name.startswith("bartowski--nvidia_Llama")
    assert download.work_folder("org/tiny", "c" * 40).name == "org--tiny@cccccccccccc"
    legacy = download.downloads_dir() / f"{repo.replace('/', '--')}@{'a' * 12}#{label.replace('/', '--')}"
    legacy.mkdir(parents=True)
    assert download.work_folder(repo, "a" * 40, label) == legacy


def test_a_download_that_cannot_be_moved_into_the_store_is_resumed_by_installing(hub, monkeypatch):
    """The rename into the store fails (Windows: a scanner holding a file longer than we wait): the verified
    files are kept with their state, listed as a partial download, and the next run only installs."""
    real_rename = os.rename

    def refused(src, dst):
        raise PermissionError(13, "The process cannot access the file because it is being used by another process")

    monkeypatch.setattr(os, "rename", refused)
    with pytest.raises(SubspecError, match="could not move tiny into the store.*kept in"):
        fetch()
    [partial] = download.partial_downloads()
    assert partial.have_bytes == partial.total_bytes and listed() == []
    sent = hub.bytes_sent(hub.weights)
    monkeypatch.setattr(os, "rename", real_rename)
    fetch()
    assert listed() == ["tiny"] and hub.bytes_sent(hub.weights) == sent  # nothing downloaded again



def sharded_repo(repo_folder: Path, extra: dict[str, bytes] | None = None, drop: str | None = None) -> Repo:
    """The tiny model's weights in two shards with their index, like the hub's big models, plus `extra`
    files and less `drop`."""
    from safetensors.torch import load_file, save

    tensors = load_file(str(repo_folder / "model.safetensors"))
    names = sorted(tensors)
    halves = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    files = {f.name: f.read_bytes() for f in repo_folder.iterdir() if f.is_file() and f.name != "model.safetensors"}
    for shard, keys in halves.items():
        files[shard] = save({k: tensors[k].contiguous() for k in keys})
    index = {"metadata": {}, "weight_map": {k: shard for shard, keys in halves.items() for k in keys}}
    files["model.safetensors.index.json"] = json.dumps(index).encode()
    files.update(extra or {})
    files.pop(drop, None)
    return Repo(files)


def test_a_sharded_repo_fetches_only_the_shards_its_index_lists(hub, repo_folder):
    # Mistral-7B-Instruct-v0.3 ships consolidated.safetensors (the same weights, another layout) beside
    # its shards: fetching every .safetensors would double the download and the disk check.
    consolidated = (repo_folder / "model.safetensors").read_bytes()
    hub.repos["org/sharded"] = sharded_repo(repo_folder, {"consolidated.safetensors": consolidated})
    info = fetch("org/sharded")
    folder = Path(info.path)
    assert sorted(f.name for f in folder.glob("*.safetensors")) == ["model-00001-of-00002.safetensors",
                                                                   "model-00002-of-00002.safetensors"]
    assert hub.bytes_sent("consolidated.safetensors") == 0
    assert hub.bytes_sent("model-00002-of-00002.safetensors") > 0

    import torch

    from engine.loading import load_model

    loaded = load_model(folder, dtype="float32", device="cpu").decoder.state_dict()
    reference = load_model(repo_folder, dtype="float32", device="cpu").decoder.state_dict()
    assert loaded.keys() == reference.keys() and all(torch.equal(loaded[k], reference[k]) for k in reference)


def test_an_index_naming_a_shard_the_repo_lacks_is_refused_before_any_weights(hub, repo_folder):
    hub.repos["org/broken"] = sharded_repo(repo_folder, drop="model-00002-of-00002.safetensors")
    with pytest.raises(SubspecError, match="lists shards the repo does not have: model-00002-of-00002"):
        fetch("org/broken")
    assert hub.bytes_sent("model-00001-of-00002.safetensors") == 0
    hub.repos["org/nomap"] = sharded_repo(repo_folder, {"model.safetensors.index.json": b'{"metadata": {}}'})
    with pytest.raises(SubspecError, match="no usable weight_map"):
        fetch("org/nomap")
    assert listed() == []
