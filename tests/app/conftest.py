"""App tests: offscreen Qt and a fake engine, so they need no display, no model and no network."""

import os

os.environ["QT_QPA_PLATFORM"] = "offscreen"  # before anything imports Qt

import pytest  # noqa: E402
from app_fakes import FAKE_MODELS, FakeBackend, factory_for  # noqa: E402


@pytest.fixture(autouse=True)
def subspec_home(tmp_path, monkeypatch):
    """Every test gets its own store: conversations.db and studio.ini land in a temporary folder."""
    home = tmp_path / "subspec-home"
    monkeypatch.setenv("SUBSPEC_HOME", str(home))
    return home


class DialogRecorder:
    """Stands in for QMessageBox: records what would have been shown instead of blocking on exec()."""

    def __init__(self):
        self.shown: list[dict] = []
        recorder = self

        class FakeBox:
            class Icon:
                Critical = 3
                Information = 1

            class ButtonRole:
                ActionRole = 3

            class StandardButton:
                Ok = 0x400

            def __init__(self, parent=None):
                import threading

                self.info = {"parent": parent, "thread": threading.get_ident()}

            def setIcon(self, icon):
                self.info["icon"] = icon

            def setWindowTitle(self, title):
                self.info["title"] = title

            def setText(self, text):
                self.info["text"] = text

            def setDetailedText(self, details):
                self.info["details"] = details

            def setStandardButtons(self, buttons):
                self.info["standard_buttons"] = buttons

            def addButton(self, text, role):
                from PySide6.QtWidgets import QPushButton

                button = QPushButton(text)
                button.clicked.connect(lambda: None)  # a message box's buttons come connected (to close it)
                self.info.setdefault("buttons", []).append(button)
                return button

            def exec(self):
                recorder.shown.append(self.info)
                return 0

        self.box = FakeBox


@pytest.fixture
def dialogs(monkeypatch):
    import app.dialogs

    recorder = DialogRecorder()
    monkeypatch.setattr(app.dialogs, "QMessageBox", recorder.box)
    return recorder


@pytest.fixture
def make_window(qtbot, dialogs):
    """make_window(backend=None, load_error=None, factory=None, wait_loaded=True, models=FAKE_MODELS) ->
    MainWindow on a fake engine whose store lists `models`; every window's thread is joined at teardown
    even if a test fails half-way."""
    from app.main_window import MainWindow
    from app.worker import EngineHost

    hosts, windows = [], []  # strong references: qtbot keeps only weak ones

    def make(backend=None, load_error=None, factory=None, wait_loaded=True, models=FAKE_MODELS):
        backend = backend or FakeBackend()
        host = EngineHost(factory or factory_for(backend, load_error), model_lister=lambda: list(models))
        hosts.append(host)
        window = MainWindow(host)
        qtbot.addWidget(window)
        window.backend = backend
        windows.append(window)
        window.show()
        if wait_loaded:
            with qtbot.waitSignal(host.loaded, timeout=5000):
                window.load_model("fake-model")
        else:
            window.load_model("fake-model")
        return window

    yield make
    for host in hosts:
        host.shutdown()
