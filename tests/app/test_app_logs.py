"""The rotating log file, Help > Open logs folder, and the error dialog's "Copy details"."""

import logging
import sys

import pytest
from app_fakes import FakeBackend, factory_for
from PySide6.QtWidgets import QApplication, QMessageBox

from app import dialogs as app_dialogs
from app import logs
from app.main import main
from engine.errors import SubspecError


@pytest.fixture(autouse=True)
def no_leftover_handler():
    """setup() leaves its handler on the root logger (the app logs until it exits); a test's temporary file
    must not keep receiving the rest of the session's records."""
    yield
    if logs._handler is not None:
        logging.getLogger().removeHandler(logs._handler)
        logs._handler.close()
        logs._handler = None


def test_the_log_goes_to_the_user_log_folder_under_subspec_home(subspec_home):
    path = logs.setup()
    assert path == subspec_home / "logs" / "subspec-studio.log"  # the test's home, never the real one
    logs.log.info("hello from the test")
    logging.getLogger("subspec.engine").debug("below INFO: not written")
    logging.getLogger("some.library").info("a library's INFO: not written")
    logging.getLogger("some.library").warning("a library's warning")
    logs._handler.flush()
    text = path.read_text()
    assert "INFO subspec [MainThread] hello from the test" in text
    assert "a library's warning" in text
    assert "not written" not in text


def test_the_log_rotates_and_keeps_a_bounded_number_of_files(tmp_path):
    path = logs.setup(tmp_path, max_bytes=2000, backups=2)
    for i in range(200):
        logs.log.info("line %03d %s", i, "x" * 40)
    logs._handler.flush()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["subspec-studio.log", "subspec-studio.log.1", "subspec-studio.log.2"]
    assert all((tmp_path / f).stat().st_size <= 2000 for f in files)
    assert "line 199" in path.read_text()  # the newest in the live file
    assert "line 000" not in "".join((tmp_path / f).read_text() for f in files)  # the oldest rotated away


def test_setup_again_replaces_its_handler(tmp_path):
    logs.setup(tmp_path / "a")
    logs.setup(tmp_path / "b")
    ours = [h for h in logging.getLogger().handlers if getattr(h, "baseFilename", "").endswith("subspec-studio.log")]
    assert [h.baseFilename for h in ours] == [str(tmp_path / "b" / "subspec-studio.log")]


def test_a_missing_stderr_is_sent_to_the_log(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "stderr", None)  # a windowed app on Windows
    path = logs.setup(tmp_path)
    print("partial", end="", file=sys.stderr)
    print(" line", file=sys.stderr)
    logs._handler.flush()
    assert "subspec.stderr [MainThread] partial line" in path.read_text()


def test_a_log_that_cannot_rotate_goes_on_in_the_same_file(tmp_path, monkeypatch):
    """Windows: another copy of the app has the file open, so renaming it fails. Without the fallback,
    logging reports the failure on stderr, which in a windowed app is this log, and recurses; and the
    backups, shifted before the failing rename, were lost one a try."""
    import os

    monkeypatch.setattr(sys, "stderr", None)  # a windowed app on Windows: stderr is the log
    for n in (1, 2):
        (tmp_path / f"subspec-studio.log.{n}").write_text(f"backup {n}\n")
    path = logs.setup(tmp_path, max_bytes=2000, backups=2)
    real_rename = os.rename

    def held_open(src, dst):
        if str(src) == str(path):
            raise PermissionError(13, "The process cannot access the file because it is being used")
        return real_rename(src, dst)

    monkeypatch.setattr(os, "rename", held_open)
    for i in range(100):
        logs.log.info("line %03d %s", i, "x" * 40)
    logs._handler.flush()
    text = path.read_text()
    assert "line 000" in text and "line 099" in text  # nothing lost, no recursion
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "subspec-studio.log", "subspec-studio.log.1", "subspec-studio.log.2"]
    assert [(tmp_path / f"subspec-studio.log.{n}").read_text() for n in (1, 2)] == ["backup 1\n", "backup 2\n"]


def test_what_logging_writes_to_a_missing_stderr_while_logging_is_dropped(tmp_path, monkeypatch):
    """A handler that fails reports it on sys.stderr; in a windowed app that is the log itself."""
    monkeypatch.setattr(sys, "stderr", None)
    logs.setup(tmp_path)
    failures = []

    class Broken(logging.Handler):
        def emit(self, record):  # as logging's own handlers do: a failure goes to handleError
            failures.append(record.getMessage())
            try:
                raise OSError(28, "No space left on device")
            except OSError:
                self.handleError(record)

    broken = Broken()
    logging.getLogger().addHandler(broken)
    try:
        logs.log.info("one record")  # handleError prints the traceback to sys.stderr, a _LogStream
    finally:
        logging.getLogger().removeHandler(broken)
    # The report of the first failure reached the log (and failed too), but nothing reported the report.
    assert failures[0] == "one record" and failures.count("--- Logging error ---") == 1


def test_a_scripted_run_logs_its_start_and_the_load(qapp, tmp_path, monkeypatch, dialogs, subspec_home):
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    assert main(["--model", "fake-model", "--screenshot", str(tmp_path / "w.png")], factory_for(FakeBackend())) == 0
    text = (subspec_home / "logs" / "subspec-studio.log").read_text()
    assert "SubSpec Studio" in text and "starting: Python" in text and "--screenshot" in text
    assert "engine: Loading fake-model" in text and "model loaded: FakeLM-1M" in text and "exit code 0" in text


def test_a_scripted_runs_engine_error_is_logged(qapp, tmp_path, monkeypatch, dialogs, subspec_home):
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    factory = factory_for(FakeBackend(), load_error=SubspecError("no model named 'nope'"))
    assert main(["--model", "nope", "--screenshot", str(tmp_path / "w.png")], factory) == 1
    text = (subspec_home / "logs" / "subspec-studio.log").read_text()
    assert "ERROR" in text and "no model named 'nope'" in text


class FakeDesktop:
    def __init__(self, answer=True):
        self.opened = []
        self.answer = answer

    def openUrl(self, url):
        self.opened.append(url.toLocalFile())
        return self.answer


def test_help_open_logs_folder_opens_the_log_folder(make_window, monkeypatch, subspec_home):
    desktop = FakeDesktop()
    monkeypatch.setattr(logs, "QDesktopServices", desktop)
    window = make_window()
    menu = window.help_menu
    assert menu.title() == "&Help" and menu.menuAction() in window.menuBar().actions()
    action = next(a for a in menu.actions() if a.objectName() == "open_logs")
    assert action.text() == "Open logs folder"
    action.trigger()
    assert desktop.opened == [str(subspec_home / "logs")] and (subspec_home / "logs").is_dir()


def test_without_a_file_manager_the_folder_is_shown_copyable(make_window, monkeypatch, dialogs, subspec_home):
    monkeypatch.setattr(logs, "QDesktopServices", FakeDesktop(answer=False))
    window = make_window()
    next(a for a in window.help_menu.actions() if a.objectName() == "open_logs").trigger()
    [shown] = dialogs.shown
    assert str(subspec_home / "logs") in shown["text"] and shown["details"] == str(subspec_home / "logs")
    assert [b.text() for b in shown["buttons"]] == ["Copy details"]


def test_help_welcome_opens_the_welcome_dialog(make_window, monkeypatch):
    from app import first_run
    from test_app_first_run import cpu_only

    monkeypatch.setattr(first_run, "real_probe", cpu_only)
    window = make_window()
    next(a for a in window.help_menu.actions() if a.objectName() == "welcome").trigger()
    [dialog] = [w for w in window.findChildren(first_run.WelcomeDialog) if w.isVisible()]
    dialog.close()


def test_the_error_dialog_copies_its_details_and_stays_open(qtbot, tmp_path):
    logs.setup(tmp_path)
    box = app_dialogs.error_box(None, "Engine error", "CUDA out of memory", "Traceback (most recent call last):\n  boom")
    qtbot.addWidget(box)
    box.show()
    [copy] = [b for b in box.buttons() if b.text() == "Copy details"]
    QApplication.clipboard().clear()
    copy.click()
    copied = QApplication.clipboard().text()
    assert copied.startswith("Engine error: CUDA out of memory\n\nTraceback (most recent call last):\n  boom\n\n")
    assert "SubSpec Studio" in copied and "Python" in copied
    assert f"Log: {tmp_path / 'subspec-studio.log'}" in copied
    assert box.isVisible() and copy.text() == "Copied"  # copying does not close the dialog
    [ok] = [b for b in box.buttons() if box.buttonRole(b) == QMessageBox.ButtonRole.AcceptRole]
    ok.click()
    assert not box.isVisible()


def test_every_error_shown_is_logged_and_offers_the_copy(dialogs, tmp_path):
    path = logs.setup(tmp_path)
    app_dialogs.show_error(None, "Engine error", "the model file is truncated", "details here")
    logs._handler.flush()
    [shown] = dialogs.shown
    assert [b.text() for b in shown["buttons"]] == ["Copy details"]
    text = path.read_text()
    assert "ERROR subspec.app" in text and "Engine error: the model file is truncated\ndetails here" in text
