"""The model menu (switching, a failed switch), no model installed, and a message too long for the
model's context."""

import threading
from pathlib import Path

from app_fakes import CONTEXT_ERROR, FAKE_MODELS, PROMPT, FakeBackend, recorded_answer
from PySide6.QtCore import Qt

from app.worker import EngineWorker
from engine.errors import SubspecError


def pick(window, name):
    combo = window.picker.combo
    combo.activated.emit(combo.findText(name))  # what a user's pick emits


def test_the_menu_lists_the_store_and_shows_the_loaded_model(qtbot, make_window):
    window = make_window()
    qtbot.waitUntil(lambda: window.picker.names() == FAKE_MODELS, timeout=2000)
    assert window.picker.combo.currentText() == "FakeLM-1M" and window.picker.combo.isEnabled()


def test_switching_loads_the_new_model_on_the_worker_with_progress(qtbot, make_window):
    loads, release = [], threading.Event()
    backends = {name: FakeBackend(name=name) for name in FAKE_MODELS}

    def factory(model, progress):
        loads.append((model, threading.get_ident()))
        progress(f"Loading {model} …")
        if model == "FakeLM-2M":
            release.wait(5)
        return backends.get(model, backends["FakeLM-1M"])

    window = make_window(factory=factory)
    pick(window, "FakeLM-2M")
    assert window.model_name is None and not window.send_button.isEnabled()
    assert window.load_progress.isVisibleTo(window) and not window.picker.combo.isEnabled()
    with qtbot.waitSignal(window.host.loaded, timeout=5000):
        release.set()
    assert window.model_label.text() == "FakeLM-2M" and window.picker.combo.currentText() == "FakeLM-2M"
    assert not window.load_progress.isVisibleTo(window) and window.picker.combo.isEnabled()
    assert [m for m, _t in loads] == ["fake-model", "FakeLM-2M"]
    assert threading.get_ident() not in {t for _m, t in loads}
    with qtbot.waitSignal(window.host.finished, timeout=5000):
        qtbot.keyClicks(window.prompt, PROMPT)
        qtbot.keyClick(window.prompt, Qt.Key.Key_Return)
    assert backends["FakeLM-2M"].calls and "FakeLM-2M\n" in window.transcript.toPlainText()


def test_a_failed_switch_shows_the_error_and_the_app_stays_usable(qtbot, make_window, dialogs):
    good = FakeBackend()

    def factory(model, progress):
        if model == "FakeLM-2M":
            raise SubspecError("FakeLM-2M: config.json names an unsupported architecture 'mamba'")
        return good

    window = make_window(factory=factory)
    with qtbot.waitSignal(window.host.failed, timeout=5000):
        pick(window, "FakeLM-2M")
    [shown] = dialogs.shown
    assert "unsupported architecture" in shown["text"]
    assert window.model_label.text() == "No model loaded" and window.model_name is None
    assert window.picker.combo.isEnabled() and window.picker.combo.currentIndex() == -1
    assert not window.send_button.isEnabled() and not window.load_progress.isVisibleTo(window)
    with qtbot.waitSignal(window.host.loaded, timeout=5000):
        pick(window, "FakeLM-1M")  # another model loads fine
    with qtbot.waitSignal(window.host.finished, timeout=5000):
        qtbot.keyClicks(window.prompt, PROMPT)
        qtbot.keyClick(window.prompt, Qt.Key.Key_Return)
    assert window.history[-1]["content"] == recorded_answer()


def test_no_model_installed_says_how_to_add_one_instead_of_an_error_dialog(qtbot, make_window, dialogs):
    models = []
    backend = FakeBackend()

    def factory(model, progress):
        if not models:
            raise SubspecError("no model named 'SmolLM2-135M-Instruct' in the store (installed: none)")
        return backend

    window = make_window(factory=factory, wait_loaded=False, models=models)
    qtbot.waitUntil(window.notice.isVisible, timeout=5000)
    assert "subspec models import PATH" in window.notice.label.text()
    assert window.model_label.text() == "No model installed" and dialogs.shown == []
    assert not window.send_button.isEnabled() and window.picker.names() == ["(no model)"]
    models.append("FakeLM-1M")  # the user imports one, then presses Try again
    with qtbot.waitSignal(window.host.loaded, timeout=5000):
        window.notice.button.click()
    assert not window.notice.isVisible() and window.picker.names() == ["FakeLM-1M"]
    assert window.send_button.isEnabled()


def test_the_worker_tells_a_missing_model_from_a_broken_one(qapp):
    def fails(model, progress):
        raise SubspecError("no model")

    for names, signal in (([], "missing_model"), (["other"], "failed")):
        w = EngineWorker(fails, model_lister=lambda names=names: names)
        got = {"missing_model": [], "failed": [], "models": []}
        for name, sink in got.items():
            getattr(w, name).connect(lambda *a, sink=sink: sink.append(a))
        w.load("SmolLM2-135M-Instruct")
        assert len(got[signal]) == 1 and got["models"] == [(names,)]
        assert len(got["missing_model" if signal == "failed" else "failed"]) == 0


def test_a_message_too_long_for_the_context_is_explained_in_the_window(qtbot, make_window, dialogs):
    window = make_window(FakeBackend(fail_on_call={0}, fail_after=0))
    long_text = "word " * 2000
    window.prompt.setPlainText(long_text)
    with qtbot.waitSignal(window.host.failed, timeout=5000):
        window.send_button.click()
    assert dialogs.shown == []  # bad input, not a fault: no modal dialog
    text = window.transcript.toPlainText()
    assert "too long for FakeLM-1M" in text and CONTEXT_ERROR in text and "shorten it" in text
    assert window.prompt.toPlainText() == long_text.strip() and window.conversation is None
    assert window.send_button.isEnabled() and not window.busy
    window.prompt.setPlainText("short")
    with qtbot.waitSignal(window.host.finished, timeout=5000):
        window.send_button.click()
    assert [m["content"] for m in window.history] == ["short", recorded_answer()]


def test_a_model_opened_from_a_folder_stays_in_the_menu_and_loads_by_its_path(qtbot, make_window):
    """A folder outside the store shows under its display name; after another model or an unload replaced
    it, picking it again loads the folder (its display name would not resolve)."""
    loads = []
    backends = {"my-folder": FakeBackend(name="MyFolderLM"), "FakeLM-2M": FakeBackend(name="FakeLM-2M")}

    def factory(model, progress, **options):
        loads.append(model)
        return backends[Path(model).name] if model.startswith("/") else backends.get(model, FakeBackend())

    window = make_window(factory=factory)
    with qtbot.waitSignal(window.host.loaded, timeout=5000):
        window.load_model("/home/u/models/my-folder")
    assert window.picker.names() == ["MyFolderLM", *FAKE_MODELS]
    with qtbot.waitSignal(window.host.loaded, timeout=5000):
        pick(window, "FakeLM-2M")
    with qtbot.waitSignal(window.host.unloaded, timeout=5000):
        window.unload_action.trigger()
    assert window.picker.names() == ["MyFolderLM", *FAKE_MODELS] and window.picker.combo.currentIndex() == -1
    with qtbot.waitSignal(window.host.loaded, timeout=5000):
        pick(window, "MyFolderLM")
    assert loads[-1] == "/home/u/models/my-folder" and window.model_name == "MyFolderLM"
    assert window.picker.combo.currentText() == "MyFolderLM"
