"""A repo of GGUF files from the Models panel: Download asks which GGUF (with sizes), downloads every part
of the chosen one and installs it converted; cancelling the question starts nothing."""

import sys
from pathlib import Path

import pytest
from fake_hub import FakeHub, Repo
import test_app_models_panel
from test_app_models_panel import job, wait_state

import app.dialogs as app_dialogs
from engine import download, gguf_import, store

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine"))
from test_gguf_split import write_gguf  # noqa: E402

QUANT = "SmolLM2-135M-Instruct-Q4_1"
window = test_app_models_panel.window  # the Models panel's window fixture, shared


@pytest.fixture(scope="module")
def parts(tmp_path_factory, default_model_folder):
    folder = tmp_path_factory.mktemp("gguf-repo")
    return {p.name: p.read_bytes() for p in write_gguf(store.default_gguf(), folder / f"{QUANT}.gguf", 100)}


@pytest.fixture
def gguf_hub(parts, monkeypatch, default_model_folder):
    import huggingface_hub.constants
    from transformers import AutoConfig, AutoTokenizer

    server = FakeHub({"org/smol-gguf": Repo({**parts, "SmolLM2-135M-Instruct-F16.gguf": b"\0" * 30_000})}).start()
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    # The config and tokenizer from the stored default model (the tensors still come from the download):
    # parsing them from the GGUF takes about 15 s and is covered by tests/engine/test_gguf_split.py.
    monkeypatch.setattr(gguf_import, "_hf_config_and_tokenizer", lambda _path: (
        AutoConfig.from_pretrained(default_model_folder), AutoTokenizer.from_pretrained(default_model_folder)))
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
