"""The entry point: arguments, the scripted screenshot run, and the uncaught-exception dialog."""

import sys
import threading

from app_fakes import FakeBackend, factory_for
from PySide6.QtGui import QImage

from app import dialogs as app_dialogs
from app.main import DEMO_PROMPT, build_parser, main
from engine.errors import SubspecError
from engine.store import DEFAULT_MODEL


def test_arguments():
    args = build_parser().parse_args([])
    assert args.model is None and args.screenshot is None and not args.demo  # chosen at start (below)
    args = build_parser().parse_args(["--model", "/models/x", "--demo", "--screenshot", "s.png"])
    assert (args.model, args.demo, args.screenshot) == ("/models/x", True, "s.png")


def test_screenshot_run_answers_saves_a_png_and_exits_0(qapp, tmp_path, monkeypatch, dialogs):
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    backend = FakeBackend()
    loads = []
    shot = tmp_path / "shots" / "window.png"
    assert main(["--model", "some-model", "--screenshot", str(shot)], factory_for(backend, loads=loads)) == 0
    assert loads == ["some-model"]
    assert backend.calls[0][0] == [{"role": "user", "content": DEMO_PROMPT}]
    image = QImage(str(shot))
    assert not image.isNull() and (image.width(), image.height()) == (1240, 760)  # never a saved layout
    assert dialogs.shown == []


def test_a_screenshot_run_leaves_the_last_conversation_alone(qapp, tmp_path, monkeypatch, dialogs):
    """It used to send the demo prompt into the conversation reopened from the last session: the user's
    conversation grew a turn, the model answered with it as history, and the picture showed it."""
    from app.conversations import ConversationStore
    from app.main_window import default_settings

    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    store = ConversationStore()
    mine = store.create("my private chat").id
    store.add_message(mine, "user", "my private question")
    settings = default_settings()
    settings.setValue("last_conversation", mine)
    settings.setValue("last_model", "my-big-model")  # and a picture of the default model, whatever was used last
    import socket

    taken = socket.socket()  # the open app serves its API: the run must not try that port (nor any other)
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    settings.setValue("serve_api/serving", "true")
    settings.setValue("serve_api/port", taken.getsockname()[1])
    settings.sync()
    backend = FakeBackend()
    loads = []
    try:
        assert main(["--screenshot", str(tmp_path / "shot.png")], factory_for(backend, loads=loads)) == 0
    finally:
        taken.close()
    assert loads == [DEFAULT_MODEL] and backend.api_calls == []
    assert backend.calls[0][0] == [{"role": "user", "content": DEMO_PROMPT}]
    assert [m.content for m in store.messages(mine)] == ["my private question"]
    # Nothing of the run is left in the user's data: no conversation, no settings (it may run beside the
    # open app, which writes them too).
    assert [c.title for c in store.conversations()] == ["my private chat"]
    settings.sync()
    assert int(settings.value("last_conversation")) == mine and settings.value("geometry") is None
    assert settings.value("last_model") == "my-big-model" and settings.value("serve_api/serving") == "true"


def test_screenshot_run_exits_1_on_an_engine_error_without_a_dialog(qapp, tmp_path, monkeypatch, dialogs,
                                                                     capsys):
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    shot = tmp_path / "window.png"
    factory = factory_for(FakeBackend(), load_error=SubspecError("no model named 'nope'"))
    assert main(["--model", "nope", "--screenshot", str(shot)], factory) == 1
    assert not shot.exists() and dialogs.shown == []
    assert "no model named 'nope'" in capsys.readouterr().err


def test_uncaught_exceptions_show_a_dialog_even_from_another_thread(qtbot, monkeypatch, dialogs):
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    app_dialogs.install_excepthook()

    def raise_and_report():
        try:
            raise ValueError("bad value")
        except ValueError:
            sys.excepthook(*sys.exc_info())

    raise_and_report()
    worker = threading.Thread(target=raise_and_report)
    worker.start()
    worker.join()
    qtbot.waitUntil(lambda: len(dialogs.shown) == 2, timeout=2000)
    for shown in dialogs.shown:
        assert shown["title"] == "Unexpected error" and "ValueError: bad value" in shown["text"]
        assert "Traceback" in shown["details"]
        assert shown["thread"] == threading.get_ident()  # widgets are only ever made on the GUI thread


def test_no_scripted_deadline_outlives_its_run(qapp, tmp_path, monkeypatch, dialogs):
    """A run that ends on an engine error must not leave its 10-minute deadline running in the shared
    application, where it would later end some other event loop."""
    from PySide6.QtCore import QTimer

    from app.main import ScriptedExchange

    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    factory = factory_for(FakeBackend(), load_error=SubspecError("no model named 'nope'"))
    assert main(["--model", "nope", "--screenshot", str(tmp_path / "w.png")], factory) == 1
    live = [t for s in qapp.allWidgets() for x in s.findChildren(ScriptedExchange)
            for t in x.findChildren(QTimer) if t.isActive()]
    assert live == []


def test_a_dock_behind_another_tab_is_not_on_screen(qtbot):
    """A screenshot waits for the docks that show; a dock restored behind another tab is neither hidden nor,
    for Qt, invisible, yet never scans or probes: waiting for it hung scripted runs (a saved layout with the
    Models panel tabbed behind Hardware)."""
    from PySide6.QtCore import Qt
    from PySide6.QtWidgets import QDockWidget, QLabel, QMainWindow

    from app.main import _on_screen

    window = QMainWindow()
    qtbot.addWidget(window)
    window.setCentralWidget(QLabel("chat"))
    front, back = QDockWidget("front"), QDockWidget("back")
    for dock in (front, back):
        dock.setWidget(QLabel(dock.windowTitle()))
        window.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, dock)
    window.tabifyDockWidget(back, front)
    window.resize(800, 600)
    window.show()
    front.raise_()
    qtbot.waitUntil(lambda: _on_screen(front))
    assert not back.isHidden() and not _on_screen(back)
    back.raise_()
    qtbot.waitUntil(lambda: _on_screen(back))
    assert not _on_screen(front)
