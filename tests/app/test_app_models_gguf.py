"""A repo of GGUF files from the Models panel: Download asks which GGUF (with sizes), downloads every part
of the chosen one and installs it converted; cancelling the question starts nothing."""

import sys
from pathlib import Path

import pytest
from fake_hub import Repo, serve_hub
import test_app_models_panel
from test_app_models_panel import job, wait_state

import app.dialogs as app_dialogs
from engine import download, store

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine"))
from test_gguf_split import SPLIT_STEM, write_split_default  # noqa: E402

QUANT = SPLIT_STEM
window = test_app_models_panel.window  # the Models panel's window fixture, shared


@pytest.fixture(scope="module")
def parts(tmp_path_factory, default_model_folder):
    return {p.name: p.read_bytes() for p in write_split_default(tmp_path_factory.mktemp("gguf-repo"))}


@pytest.fixture
def gguf_hub(parts, monkeypatch, fast_metadata):
    # fast_metadata: the config and tokenizer from the stored default model (the tensors still come from
    # the download); parsing them from the GGUF takes about 15 s and tests/engine/test_gguf_split.py does it.
    files = {**parts, "SmolLM2-135M-Instruct-F16.gguf": b"\0" * 30_000}
    server = serve_hub(monkeypatch, {"org/smol-gguf": Repo(files)})
    yield server
    server.stop()


def test_download_asks_which_gguf_then_installs_the_chosen_one(window, gguf_hub, qtbot, monkeypatch):
    asked = []

    def choose(_parent, _title, label, items):
        asked.append((label, items))
        return next(i for i, item in enumerate(items) if "Q4_1" in item)

    monkeypatch.setattr(app_dialogs, "choose_item", choose)
    dock = window.models_dock
    with qtbot.waitSignal(window.model_manager.gguf_choice_needed, timeout=10_000):
        dock.download("org/smol-gguf")
    [(label, items)] = asked
    assert "has only GGUF files" in label
    assert [i.split("  (")[0] for i in items] == ["SmolLM2-135M-Instruct-F16", QUANT] and "MB" in items[1]
    done = wait_state(qtbot, window, "org/smol-gguf", "done", "failed")
    assert done["state"] == "done" and done["name"] == QUANT and done["gguf"] == QUANT, done["error"]
    assert done["title"] == f"org/smol-gguf · {QUANT}"
    qtbot.waitUntil(lambda: QUANT in dock.installed_cards, timeout=5000)
    assert [m.name for m in store.list_models()] == [QUANT] and download.partial_downloads() == []
    assert gguf_hub.bytes_sent("SmolLM2-135M-Instruct-F16.gguf") == 0
    # The first, choice-less job is gone: one card, the chosen GGUF's.
    assert [window.model_manager.snapshot(jid)["title"] for jid in dock.job_cards] == [f"org/smol-gguf · {QUANT}"]


def test_cancelling_the_choice_starts_nothing(window, gguf_hub, qtbot, monkeypatch):
    monkeypatch.setattr(app_dialogs, "choose_item", lambda *_a: None)
    dock = window.models_dock
    with qtbot.waitSignal(window.model_manager.gguf_choice_needed, timeout=10_000):
        dock.download("org/smol-gguf")
    qtbot.wait(200)
    assert job(window, "org/smol-gguf") is None and not dock.job_cards
    assert store.list_models() == [] and download.partial_downloads() == []


def test_two_paused_ggufs_of_one_repo_are_two_cards_and_discarding_one_keeps_the_other(
        window, gguf_hub, qtbot, monkeypatch):
    for label in ("SmolLM2-135M-Instruct-Q4_1", "SmolLM2-135M-Instruct-Q8_0"):
        folder = download.work_folder("org/smol-gguf", "c" * 40, label)
        folder.mkdir(parents=True)
        (folder / "x.gguf.part").write_bytes(b"\0" * 1000)
        download._write_state(folder, {"repo_id": "org/smol-gguf", "commit": "c" * 40, "name": label,
                                       "total": 2000, "verified": {}, "gguf": label})
    dock = window.models_dock
    window.model_manager.rescan()
    qtbot.waitUntil(lambda: len(dock.partial_cards) == 2, timeout=5000)
    titles = sorted(c.title.text() for c in dock.partial_cards)
    assert titles == ["org/smol-gguf · SmolLM2-135M-Instruct-Q4_1", "org/smol-gguf · SmolLM2-135M-Instruct-Q8_0"]
    monkeypatch.setattr(app_dialogs, "confirm", lambda *_a: True)
    next(c for c in dock.partial_cards if c.gguf.endswith("Q8_0")).discard_button.click()
    qtbot.waitUntil(lambda: len(dock.partial_cards) == 1, timeout=5000)
    assert [p.gguf for p in download.partial_downloads()] == ["SmolLM2-135M-Instruct-Q4_1"]
    assert dock.partial_cards[0].gguf == "SmolLM2-135M-Instruct-Q4_1"
