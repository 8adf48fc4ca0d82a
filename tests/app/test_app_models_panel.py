"""The Models panel against a real HTTP server on loopback playing the hub (tests/fake_hub.py): search,
the catalogue's fit badges from a faked hardware probe, downloads (complete, paused and resumed without
starting over, cancelled, a checksum error), import, convert, delete with confirmation, a download going on
with the panel closed, and closing the window pausing a download."""

import os
import sys
import threading
import time
from pathlib import Path

import pytest
from app_fakes import FakeBackend, factory_for
from fake_hub import make_model_repo, repo_from_folder, serve_hub
from PySide6.QtGui import QImage
from test_app_hardware import FakeProber, gpu, profile

import app.dialogs as app_dialogs
import app.hardware_host as hardware_host
import app.models_panel as models_panel
from app import models_text
from app.main import build_parser, main
from app.model_manager import ModelManager
from engine import download, store
from engine.catalogue import CATALOGUE, estimate

MIB = 1024 * 1024
WAIT_MS = 30_000  # a download installs through transformers' tokenizer: its first import takes seconds


@pytest.fixture(scope="module")
def repo_folder(tmp_path_factory):
    return make_model_repo(tmp_path_factory.mktemp("hub-repo"))


@pytest.fixture
def hub(repo_folder, monkeypatch):
    server = serve_hub(monkeypatch, {"org/tiny": repo_from_folder(repo_folder, downloads=10),
                                     "org/tiny-chat": repo_from_folder(repo_folder, downloads=3)})
    server.weights = "model.safetensors"
    server.weights_size = len(server.repos["org/tiny"].files[server.weights])
    yield server
    server.stop()


@pytest.fixture
def window(qtbot, dialogs, monkeypatch):
    """A main window on the fake engine whose model menu lists the real (per-test) store, the Models dock
    shown, the hardware probe faked (an 8 GB card)."""
    from app.main_window import MainWindow
    from app.worker import EngineHost

    prober = FakeProber(profile(gpu(0, "NVIDIA GeForce RTX 4060", 8, 7.4)))
    monkeypatch.setattr(hardware_host, "real_probe", prober)
    host = EngineHost(factory_for(FakeBackend()))  # no lister given: engine.store's, as the app
    w = MainWindow(host)
    qtbot.addWidget(w)
    w.show()
    with qtbot.waitSignal(host.loaded, timeout=5000):
        w.load_model("fake-model")
    w.show_models()
    qtbot.waitUntil(lambda: w.models_dock.ready(), timeout=10_000)
    yield w
    w.close()
    host.shutdown()


def job(w, repo_id):
    """The newest job of that repo, whatever its state."""
    snaps = [w.model_manager.snapshot(j) for j in w.model_manager.jobs]
    mine = [s for s in snaps if s["repo_id"] == repo_id]
    return mine[-1] if mine else None


def wait_state(qtbot, w, repo_id, *states, timeout=WAIT_MS):
    try:
        qtbot.waitUntil(lambda: (job(w, repo_id) or {}).get("state") in states, timeout=timeout)
    except qtbot.TimeoutError:
        pytest.fail(f"{repo_id} never reached {states}: {job(w, repo_id)}")
    return job(w, repo_id)


def installed(w):
    return [c for c in w.models_dock.installed_cards]


def test_search_lists_the_hubs_matches_most_downloaded_first(window, hub, qtbot):
    dock = window.models_dock
    dock.query.setText("tiny")
    with qtbot.waitSignal(window.model_manager.search_done, timeout=10_000):
        dock.search_button.click()
    assert [c.repo_id for c in dock.results.items] == ["org/tiny", "org/tiny-chat"]
    assert "2 models for “tiny”" in dock.search_status.text()
    assert "10 downloads" in dock.results.items[0].facts.text()
    assert all(c.action.isEnabled() and c.action.text() == "Download" for c in dock.results.items)

    dock.query.setText("nothing-like-it")
    with qtbot.waitSignal(window.model_manager.search_done, timeout=10_000):
        dock.search_button.click()
    assert dock.results.items == [] and "No text-generation models match" in dock.search_status.text()


def test_a_search_the_hub_refuses_is_said_in_the_search_tab(window, qtbot):
    dock = window.models_dock  # no hub fixture: the suite's HF_HUB_OFFLINE=1 is on
    dock.query.setText("qwen")
    with qtbot.waitSignal(window.model_manager.search_done, timeout=10_000):
        dock.search_button.click()
    assert "offline mode is on (HF_HUB_OFFLINE)" in dock.search_status.text()
    assert dock.search_status.property("tone") == "error" and dock.search_button.isEnabled()


def test_the_catalogue_shows_fit_badges_from_the_hardware_probe(window):
    dock = window.models_dock
    prof = window.hardware_dock.planning_profile()
    assert prof["gpus"][0]["name"] == "NVIDIA GeForce RTX 4060"
    kinds = {}
    for card in dock.catalogue_cards:
        expected = estimate(card.entry, prof, reserve_gb=0.5)
        words, kind = models_text.fit_badge(expected)
        assert card.fit.text().startswith(words) and card.fit.kind == kind
        assert card.fit.toolTip() == expected.summary
        kinds[card.entry.repo_id] = kind
    assert kinds["Qwen/Qwen2.5-7B-Instruct"] == "good" and kinds["Qwen/Qwen2.5-32B-Instruct"] == "bad"
    assert len(dock.catalogue_cards) == len(CATALOGUE)

    # The hardware panel's reserve counts: keeping 4 GB of the 8 free leaves no room for a 7B model.
    window.hardware_dock.reserve_slider.setValue(window.hardware_dock.reserve_slider.maximum())
    seven = next(c for c in dock.catalogue_cards if c.entry.repo_id == "Qwen/Qwen2.5-7B-Instruct")
    assert seven.fit.kind == "bad" and "does not fit" in seven.fit.toolTip()


def test_on_a_machine_without_a_gpu_the_badges_say_cpu_only(qtbot, dialogs, monkeypatch):
    monkeypatch.setattr(hardware_host, "real_probe", FakeProber(profile()))
    from app.hardware_panel import HardwareDock

    hardware = HardwareDock()
    dock = models_panel.ModelsDock(ModelManager(), hardware)
    qtbot.addWidget(hardware)
    qtbot.addWidget(dock)
    dock.show()
    qtbot.waitUntil(dock.ready, timeout=10_000)
    badges = {c.entry.repo_id: c.fit.text() for c in dock.catalogue_cards}
    assert badges["Qwen/Qwen2.5-7B-Instruct"].startswith("CPU only · ≈")  # 64 GB of RAM in the fake
    assert badges["Qwen/Qwen3-32B"] == "Does not fit"
    hardware.shutdown()
    dock.manager.shutdown()


def test_a_download_completes_and_the_model_appears_in_the_list_and_the_menu(window, hub, qtbot):
    dock = window.models_dock
    gui_threads = set()
    window.model_manager.job_changed.connect(lambda _j: gui_threads.add(threading.get_ident()))
    dock.download("org/tiny")
    assert dock.tabs.currentIndex() == 2 and len(dock.job_cards) == 1
    done = wait_state(qtbot, window, "org/tiny", "done", "failed")
    assert done["state"] == "done" and done["name"] == "tiny", done["error"]
    qtbot.waitUntil(lambda: "tiny" in dock.installed_cards, timeout=5000)
    qtbot.waitUntil(lambda: "tiny" in window.picker.names(), timeout=5000)
    assert [m.name for m in store.list_models()] == ["tiny"]
    card = dock.installed_cards["tiny"]
    assert card.source.text().startswith("From org/tiny @ 0123456")
    assert dock.tabs.tabText(3) == "Installed (1)"
    [job_card] = dock.job_cards.values()
    assert job_card.state_badge.text() == "Done" and job_card.dismiss_button.isVisibleTo(job_card)
    assert not job_card.pause_button.isVisibleTo(job_card)
    recommended = {c.entry.repo_id for c in dock.catalogue_cards if not c.action.isEnabled()}
    assert recommended == set()  # org/tiny is no catalogue model
    qtbot.waitUntil(lambda: "Downloaded and installed tiny" in dock.notice.text(), timeout=2000)
    assert hub.resent(hub.weights) == 0
    [download_thread] = [j.thread for j in window.model_manager.jobs.values()]
    assert gui_threads == {threading.get_ident()} and download_thread.ident != threading.get_ident()

    # The same repo offered again in a search reads Installed.
    dock.query.setText("tiny")
    with qtbot.waitSignal(window.model_manager.search_done, timeout=10_000):
        dock.search()
    by_repo = {c.repo_id: c.action for c in dock.results.items}
    assert by_repo["org/tiny"].text() == "Installed" and not by_repo["org/tiny"].isEnabled()
    assert by_repo["org/tiny-chat"].isEnabled()


def test_progress_shows_bytes_speed_and_time_left(window, hub, qtbot):
    hub.rate = 1 * MIB
    window.models_dock.download("org/tiny")
    qtbot.waitUntil(lambda: (job(window, "org/tiny") or {}).get("done", 0) > MIB // 2
                    and job(window, "org/tiny")["bytes_per_s"] > 0, timeout=WAIT_MS)
    snap = job(window, "org/tiny")
    card = window.models_dock.job_cards[snap["id"]]
    assert card.state_badge.text().startswith("Downloading · ") and card.state_badge.text().endswith("%")
    detail = card.detail.text()
    assert " of " in detail and "/s" in detail and "left" in detail and "model.safetensors" in detail
    assert 0 < card.bar.value() < 1000 and card.pause_button.isVisibleTo(card)
    hub.rate = None
    assert wait_state(qtbot, window, "org/tiny", "done", "failed")["state"] == "done"


def test_pause_then_resume_continues_without_starting_over(window, hub, qtbot):
    hub.rate = 1 * MIB
    dock = window.models_dock
    dock.download("org/tiny")
    qtbot.waitUntil(lambda: (job(window, "org/tiny") or {}).get("file") == hub.weights
                    and job(window, "org/tiny")["done"] > MIB, timeout=WAIT_MS)
    card = next(iter(dock.job_cards.values()))
    card.pause_button.click()
    paused = wait_state(qtbot, window, "org/tiny", "paused", timeout=5000)
    assert paused["resumable"] and paused["revision"] == hub.repos["org/tiny"].commit
    [partial] = download.partial_downloads()
    [part] = Path(partial.folder).glob("model.safetensors.part")
    kept = part.stat().st_size
    assert kept > MIB and store.list_models() == []
    assert card.resume_button.isVisibleTo(card) and card.cancel_button.isVisibleTo(card)
    assert not card.pause_button.isVisibleTo(card) and card.state_badge.text().startswith("Paused")

    hub.rate = None
    card.resume_button.click()
    assert wait_state(qtbot, window, "org/tiny", "done", "failed")["state"] == "done"
    qtbot.waitUntil(lambda: "tiny" in dock.installed_cards, timeout=5000)
    requests = hub.requests_for(hub.weights)
    assert len(requests) == 2 and requests[0].start == 0
    assert requests[1].start == kept and requests[1].status == 206
    assert hub.resent(hub.weights) < MIB  # a restart from zero would send about 2.5 MB again


def test_cancel_deletes_the_partial_files(window, hub, qtbot):
    hub.rate = 512 * 1024
    dock = window.models_dock
    dock.download("org/tiny")
    qtbot.waitUntil(lambda: (job(window, "org/tiny") or {}).get("file") == hub.weights
                    and job(window, "org/tiny")["done"] > MIB // 2, timeout=WAIT_MS)
    assert list(download.downloads_dir().glob("*/model.safetensors.part"))
    started = time.monotonic()
    next(iter(dock.job_cards.values())).cancel_button.click()
    cancelled = wait_state(qtbot, window, "org/tiny", "cancelled", timeout=5000)
    assert time.monotonic() - started < 2.0
    assert not cancelled["resumable"] and not list(download.downloads_dir().iterdir())
    assert store.list_models() == [] and download.partial_downloads() == []


def test_a_checksum_error_is_shown_and_nothing_is_installed(window, hub, qtbot):
    hub.corrupt = {hub.weights}
    dock = window.models_dock
    dock.download("org/tiny")
    failed = wait_state(qtbot, window, "org/tiny", "failed", "done")
    assert failed["state"] == "failed"
    assert "model.safetensors does not match the hub's checksum" in failed["error"]
    card = dock.job_cards[failed["id"]]
    assert card.error.isVisibleTo(card) and "does not match the hub's checksum" in card.error.text()
    assert card.state_badge.text() == "Failed" and card.state_badge.kind == "bad"
    qtbot.waitUntil(lambda: "Download of org/tiny failed" in dock.notice.text(), timeout=2000)
    assert store.list_models() == [] and dock.installed_cards == {}
    assert not list(download.downloads_dir().glob("*/model.safetensors*"))  # the corrupt bytes are gone


def test_the_download_goes_on_with_the_panel_closed(window, hub, qtbot):
    hub.rate = 2 * MIB
    dock = window.models_dock
    dock.download("org/tiny")
    qtbot.waitUntil(lambda: (job(window, "org/tiny") or {}).get("state") == "downloading", timeout=WAIT_MS)
    dock.close()
    assert dock.isHidden()
    assert wait_state(qtbot, window, "org/tiny", "done", "failed")["state"] == "done"
    qtbot.waitUntil(lambda: "tiny" in window.picker.names(), timeout=5000)
    qtbot.waitUntil(lambda: window.statusBar().currentMessage() == "Downloaded and installed tiny", timeout=2000)
    window.show_models()  # reopened, it shows what happened meanwhile
    assert "tiny" in dock.installed_cards and next(iter(dock.job_cards.values())).state_badge.text() == "Done"


def test_closing_the_window_pauses_a_download_and_joins_its_thread(window, hub, qtbot):
    hub.rate = 512 * 1024
    window.models_dock.download("org/tiny")
    qtbot.waitUntil(lambda: (job(window, "org/tiny") or {}).get("done", 0) > MIB // 2, timeout=WAIT_MS)
    [thread] = [j.thread for j in window.model_manager.jobs.values()]
    started = time.monotonic()
    window.close()
    assert not thread.is_alive() and time.monotonic() - started < 5.0
    [partial] = download.partial_downloads()
    assert partial.repo_id == "org/tiny" and partial.have_bytes > 0 and store.list_models() == []


def test_partial_downloads_from_an_earlier_run_can_be_resumed_or_discarded(window, hub, qtbot, monkeypatch):
    hub.rate = 1 * MIB
    manager = window.model_manager
    jid = manager.download("org/tiny")
    qtbot.waitUntil(lambda: manager.snapshot(jid)["done"] > MIB, timeout=WAIT_MS)
    manager.pause(jid)
    qtbot.waitUntil(lambda: manager.snapshot(jid)["state"] == "paused", timeout=5000)
    manager.dismiss(jid)  # as after a restart: no job, only the files
    dock = window.models_dock
    qtbot.waitUntil(lambda: len(dock.partial_cards) == 1, timeout=5000)
    assert not dock.partials_header.isHidden() and dock.tabs.tabText(2) == "Downloads (1)"

    questions = []
    monkeypatch.setattr(app_dialogs, "confirm", lambda _p, _t, q: questions.append(q) or False)
    dock.partial_cards[0].discard_button.click()  # Discard, answered No
    assert "org/tiny" in questions[0] and download.partial_downloads()

    hub.rate = None
    dock.partial_cards[0].resume_button.click()  # Resume
    assert wait_state(qtbot, window, "org/tiny", "done", "failed")["state"] == "done"
    assert hub.resent(hub.weights) < MIB and dock.partial_cards == []

    # A partial discarded: its files go.
    hub.rate = 1 * MIB
    jid = manager.download("org/tiny-chat")
    qtbot.waitUntil(lambda: manager.snapshot(jid)["done"] > MIB, timeout=WAIT_MS)
    manager.pause(jid)
    qtbot.waitUntil(lambda: manager.snapshot(jid)["state"] == "paused", timeout=5000)
    manager.dismiss(jid)
    qtbot.waitUntil(lambda: len(dock.partial_cards) == 1, timeout=5000)
    monkeypatch.setattr(app_dialogs, "confirm", lambda *_a: True)
    dock.partial_cards[0].discard_button.click()
    qtbot.waitUntil(lambda: download.partial_downloads() == [] and dock.partial_cards == [], timeout=5000)


def test_import_a_folder_then_delete_it_after_confirmation(window, repo_folder, qtbot, monkeypatch):
    dock = window.models_dock
    monkeypatch.setattr(models_panel, "choose_folder", lambda _parent: str(repo_folder))
    dock.import_folder_button.click()
    name = repo_folder.name
    qtbot.waitUntil(lambda: name in dock.installed_cards, timeout=WAIT_MS)
    qtbot.waitUntil(lambda: name in window.picker.names(), timeout=5000)
    info = store.get_model(name)
    assert Path(info.path).is_dir()

    questions = []
    monkeypatch.setattr(app_dialogs, "confirm", lambda _p, _t, q: questions.append(q) or False)
    dock.installed_cards[name].delete_button.click()
    assert name in questions[0] and "cannot be undone" in questions[0]
    assert models_text.human_bytes(info.size_bytes) in questions[0]
    assert store.get_model(name)  # No: nothing deleted

    monkeypatch.setattr(app_dialogs, "confirm", lambda *_a: True)
    dock.installed_cards[name].delete_button.click()
    qtbot.waitUntil(lambda: name not in dock.installed_cards, timeout=10_000)
    assert store.list_models() == [] and not Path(info.path).exists()
    assert name not in window.picker.names() and "freed" in dock.notice.text()


def test_a_name_in_use_asks_for_another_one(window, repo_folder, qtbot, monkeypatch):
    dock = window.models_dock
    monkeypatch.setattr(models_panel, "choose_folder", lambda _parent: str(repo_folder))
    dock.import_folder()
    qtbot.waitUntil(lambda: repo_folder.name in dock.installed_cards, timeout=WAIT_MS)
    asked = []
    monkeypatch.setattr(app_dialogs, "ask_text", lambda _p, _t, label, text="": asked.append(label) or "copy")
    dock.import_folder()
    qtbot.waitUntil(lambda: "copy" in dock.installed_cards, timeout=WAIT_MS)
    assert repo_folder.name in asked[0]


def test_a_broken_gguf_import_is_an_error_and_installs_nothing(window, tmp_path, qtbot, monkeypatch):
    bad = tmp_path / "Broken-7B.Q4_K_M.gguf"
    bad.write_bytes(b"GGUF" + os.urandom(64))
    monkeypatch.setattr(models_panel, "choose_gguf", lambda _parent: str(bad))
    dock = window.models_dock
    dock.import_gguf_button.click()
    [jid] = list(window.model_manager.jobs)
    qtbot.waitUntil(lambda: window.model_manager.snapshot(jid)["state"] == "failed", timeout=WAIT_MS)
    card = dock.job_cards[jid]
    assert "corrupt or truncated GGUF file Broken-7B.Q4_K_M.gguf" in card.error.text()
    assert card.error.isVisibleTo(card) and store.list_models() == []
    assert not list(store.models_dir().iterdir())  # no temporary folder left either


def test_a_gguf_import_shows_progress_and_can_be_cancelled(window, default_model_folder, qtbot, monkeypatch):
    import gguf
    from transformers import AutoConfig, AutoTokenizer

    from engine import gguf_import

    # The metadata from the stored copy (parsing it from the GGUF takes 15 s), and each tensor slowed down so
    # that the cancel lands mid-import.
    monkeypatch.setattr(gguf_import, "_hf_config_and_tokenizer", lambda _path: (
        AutoConfig.from_pretrained(default_model_folder), AutoTokenizer.from_pretrained(default_model_folder)))
    real = gguf.dequantize
    monkeypatch.setattr(gguf, "dequantize", lambda data, qtype: time.sleep(0.05) or real(data, qtype))
    monkeypatch.setattr(models_panel, "choose_gguf", lambda _parent: str(store.default_gguf()))
    dock, manager = window.models_dock, window.model_manager
    dock.import_gguf_button.click()
    [jid] = list(manager.jobs)
    qtbot.waitUntil(lambda: (manager.snapshot(jid)["fraction"] or 0) > 0.05, timeout=WAIT_MS)
    card = dock.job_cards[jid]
    assert card.cancel_button.isVisibleTo(card) and "Importing · " in card.state_badge.text()
    assert "converting 272 tensors" in card.detail.text()
    card.cancel_button.click()
    qtbot.waitUntil(lambda: manager.snapshot(jid)["state"] == "cancelled", timeout=WAIT_MS)
    assert manager.snapshot(jid)["fraction"] < 0.9  # stopped at the next tensor, not at the end
    assert "nothing was installed" in card.detail.text()
    assert not card.cancel_button.isVisibleTo(card) and card.dismiss_button.isVisibleTo(card)
    assert store.list_models() == [] and not list(store.models_dir().iterdir())


def test_a_cancel_that_comes_after_the_last_step_says_the_model_is_installed(window, repo_folder, qtbot,
                                                                             monkeypatch):
    manager = window.model_manager
    real = store.install_folder

    def cancelled_while_installing(*args, **kwargs):
        [job] = manager.jobs.values()
        job.cancel.set()  # what Cancel does, too late for the import to stop
        return real(*args, **kwargs)

    monkeypatch.setattr(store, "install_folder", cancelled_while_installing)
    jid = manager.import_model(str(repo_folder), "late")
    qtbot.waitUntil(lambda: manager.snapshot(jid)["state"] == "done", timeout=WAIT_MS)
    assert "the cancel came after the last step" in manager.snapshot(jid)["message"]
    assert [m.name for m in store.list_models()] == ["late"]


def test_convert_builds_and_caches_the_substitutes_with_progress(window, repo_folder, qtbot, monkeypatch):
    from engine import convert

    dock = window.models_dock
    monkeypatch.setattr(models_panel, "choose_folder", lambda _parent: str(repo_folder))
    dock.import_folder()
    name = repo_folder.name
    qtbot.waitUntil(lambda: name in dock.installed_cards, timeout=WAIT_MS)
    assert "no substitutes cached" in dock.installed_cards[name].disk.text()
    seen = []
    window.model_manager.job_changed.connect(lambda j: seen.append((j["state"], j["done"], j["total"])))
    dock.installed_cards[name].convert_button.click()
    [jid] = [j for j, job_ in window.model_manager.jobs.items() if job_.snapshot["kind"] == "convert"]
    qtbot.waitUntil(lambda: window.model_manager.snapshot(jid)["state"] in ("done", "failed"), timeout=120_000)
    assert window.model_manager.snapshot(jid)["state"] == "done", window.model_manager.snapshot(jid)["error"]
    assert ("converting", 2, 2) in seen  # layer by layer
    [cache] = convert.caches_for(Path(store.get_model(name).path))
    assert len(list(cache.glob("layer-*.pt"))) == 2
    qtbot.waitUntil(lambda: "(2 layers)" in dock.installed_cards[name].disk.text(), timeout=5000)
    assert dock.installed_cards[name].disk.text().startswith("Weights ")


def test_words_for_times_and_jobs():
    assert models_text.eta_text(None) == "" and models_text.eta_text(42) == "42 s left"
    assert models_text.eta_text(125) == "2 min 05 s left" and models_text.eta_text(3725) == "1 h 02 min left"
    j = {"kind": "download", "state": "downloading", "done": 500_000_000, "total": 2_000_000_000,
         "bytes_per_s": 25_000_000.0, "eta_s": 60.0, "file": "model-00001-of-00002.safetensors", "message": ""}
    assert models_text.job_status(j) == "Downloading · 25%"
    assert models_text.job_detail(j) == ("500.0 MB of 2.0 GB · 25.0 MB/s · 1 min 00 s left · "
                                         "model-00001-of-00002.safetensors")
    assert models_text.default_import_name("/x/SmolLM2-135M-Instruct.Q4_1.gguf") == "SmolLM2-135M-Instruct"


def test_panel_argument_and_screenshot(qapp, tmp_path, monkeypatch, dialogs):
    assert build_parser().parse_args(["--panel", "models"]).panel == "models"
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    monkeypatch.setattr(hardware_host, "real_probe", FakeProber(profile(gpu(0, "NVIDIA GeForce RTX 4070", 12, 11))))
    shot = tmp_path / "models.png"
    assert main(["--screenshot", str(shot), "--panel", "models"], factory_for(FakeBackend())) == 0
    assert not QImage(str(shot)).isNull() and dialogs.shown == []
    assert threading.active_count() < 20


def test_a_gated_model_downloads_with_the_token_typed_in_the_panel(window, hub, qtbot):
    hub.repos["org/tiny"].gated = True
    dock = window.models_dock
    dock.download("org/tiny")
    failed = wait_state(qtbot, window, "org/tiny", "failed", "done")
    assert failed["state"] == "failed" and "token" in failed["error"]
    dock.tabs.setCurrentIndex(1)
    qtbot.keyClicks(dock.token, hub.token)
    assert window.model_manager.token == hub.token
    assert dock.token.echoMode() == dock.token.EchoMode.Password  # not shown on screen
    dock.manager.dismiss(failed["id"])
    dock.download("org/tiny")
    done = wait_state(qtbot, window, "org/tiny", "done", "failed")
    assert done["state"] == "done", done["error"]
    dock.token.clear()
    assert window.model_manager.token is None


def test_search_hits_get_fit_badges_from_their_config(window, hub, qtbot):
    """After the hits, each repo's config.json is fetched and the planner says whether it fits."""
    import json

    files = dict(hub.repos["org/tiny"].files)
    config = json.loads(files["config.json"])
    config.update(model_type="gpt2", architectures=["GPT2LMHeadModel"])
    hub.repos["org/tiny-gpt2"] = type(hub.repos["org/tiny"])({**files, "config.json": json.dumps(config).encode()})
    dock = window.models_dock
    dock.query.setText("tiny")
    with qtbot.waitSignal(window.model_manager.search_done, timeout=10_000):
        dock.search_button.click()
    cards = {c.repo_id: c for c in dock.results.items}
    qtbot.waitUntil(lambda: all(not c.fit.text().startswith("Checking") for c in cards.values()), timeout=10_000)
    assert cards["org/tiny"].fit.text().startswith("Fits your GPU") and cards["org/tiny"].fit.kind == "good"
    assert cards["org/tiny-gpt2"].fit.text() == "Not supported"
    assert "gpt2" in cards["org/tiny-gpt2"].fit.toolTip()
    assert hub.bytes_sent("config.json") > 0 and hub.bytes_sent(hub.weights) == 0  # no weights fetched
