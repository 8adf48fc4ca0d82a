"""Model > Unload: the model goes and its memory with it; the conversation stays, and a load brings a model
back (Load again, or the model menu)."""

import threading

from app_fakes import PROMPT, FakeBackend, factory_for
from PySide6.QtCore import Qt


def test_unload_frees_the_model_and_load_again_brings_it_back(qtbot, make_window):
    loads, options = [], []
    backend = FakeBackend()
    window = make_window(backend, factory=factory_for(backend, loads=loads, load_options=options))
    with qtbot.waitSignal(window.host.finished, timeout=5000):
        qtbot.keyClicks(window.prompt, PROMPT)
        qtbot.keyClick(window.prompt, Qt.Key.Key_Return)
    assert window.host.loaded_engine() is not None and window.unload_action.isEnabled()
    with qtbot.waitSignal(window.host.unloaded, timeout=5000):
        window.unload_action.trigger()
    assert window.host.loaded_engine() is None  # the worker let go of it
    assert window.model_name is None and not window.send_button.isEnabled()
    assert not window.unload_action.isEnabled() and window.picker.current is None
    assert not window.notice.isHidden() and window.notice.button.text() == "Load again"
    assert PROMPT in window.transcript.toPlainText()  # the conversation stays
    with qtbot.waitSignal(window.host.loaded, timeout=5000):
        window.notice.button.click()
    assert window.model_name == "FakeLM-1M" and window.send_button.isEnabled() and window.notice.isHidden()
    # What was asked for the first time (a folder's path, say; not the display name), as it was loaded.
    assert loads == ["fake-model", "fake-model"] and options[1] == options[0]


def test_load_again_keeps_the_layout_it_was_loaded_with(qtbot, make_window):
    loads, options = [], []
    backend = FakeBackend()
    window = make_window(backend, factory=factory_for(backend, loads=loads, load_options=options))
    with qtbot.waitSignal(window.host.loaded, timeout=5000):
        window.load_model("/home/u/models/my-folder", {"resident_layers": 3})
    with qtbot.waitSignal(window.host.unloaded, timeout=5000):
        window.unload_action.trigger()
    with qtbot.waitSignal(window.host.loaded, timeout=5000):
        window.notice.button.click()
    assert loads[-1] == "/home/u/models/my-folder" and options[-1]["resident_layers"] == 3


def test_no_unload_while_an_answer_is_being_written(qtbot, make_window):
    gate = threading.Event()
    window = make_window(FakeBackend(gate=gate))
    with qtbot.waitSignal(window.host.token, timeout=5000):
        qtbot.keyClicks(window.prompt, PROMPT)
        qtbot.keyClick(window.prompt, Qt.Key.Key_Return)
    assert not window.unload_action.isEnabled()
    window.unload_model()  # (the menu item is disabled; a call anyway does nothing)
    assert window.model_name == "FakeLM-1M"
    with qtbot.waitSignal(window.host.finished, timeout=5000):
        gate.set()
    assert window.unload_action.isEnabled()


def test_unloading_the_real_model_gives_its_memory_back(qapp, default_model_folder):
    """SmolLM2 on the CPU, float32 (about 540 MB of weights): after Unload the process holds at least half
    of that less. glibc kept the freed tensors for the process until malloc_trim; elsewhere the allocator's
    own policy decides, so this runs on Linux."""
    import sys

    import psutil
    import pytest

    if not sys.platform.startswith("linux"):
        pytest.skip("malloc_trim is glibc's")
    from app.worker import EngineWorker

    process = psutil.Process()
    worker = EngineWorker()
    worker.load(str(default_model_folder))
    engine = worker.engine
    weights = sum(t.numel() * t.element_size() for t in engine.lm.decoder.state_dict().values())
    del engine
    loaded = process.memory_info().rss
    worker.unload()
    assert worker.engine is None and loaded - process.memory_info().rss > weights / 2
