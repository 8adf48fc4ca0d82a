"""One app per data folder (app.single_instance): a second launch raises the first window and exits."""

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from app_fakes import FakeBackend, factory_for
from PySide6.QtCore import QDir, QTimer
from PySide6.QtWidgets import QApplication, QMainWindow

import app.main as app_main
from app.single_instance import LOCK_FILE, SingleInstance, server_name

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def instances():
    """SingleInstance(folder), each released at teardown even if a test fails half-way: a lock left held
    would be this process's, which Qt never calls stale."""
    made = []

    def make(folder):
        made.append(SingleInstance(folder))
        return made[-1]

    yield make
    for instance in made:
        instance.release()


def test_the_first_gets_the_lock_and_a_second_launch_raises_it(qtbot, tmp_path, instances):
    first = instances(tmp_path / "data")
    assert first.primary and not first.elsewhere and first.server is not None
    assert (tmp_path / "data" / LOCK_FILE).exists()
    second = instances(tmp_path / "data")
    assert not second.primary and second.elsewhere and second.server is None
    with qtbot.waitSignal(first.activated, timeout=3000):
        assert second.notify()


def test_only_the_activate_message_raises_the_window(qtbot, tmp_path, instances):
    from PySide6.QtNetwork import QLocalSocket

    first = instances(tmp_path)
    fired = []
    first.activated.connect(lambda: fired.append(1))
    socket = QLocalSocket()
    socket.connectToServer(first.name)
    assert socket.waitForConnected(1000)
    socket.write(b"something else\n")
    socket.flush()
    qtbot.wait(200)
    assert fired == []
    with qtbot.waitSignal(first.activated, timeout=3000):
        assert instances(tmp_path).notify()


def test_another_data_folder_is_another_instance(tmp_path, instances):
    a, b = instances(tmp_path / "a"), instances(tmp_path / "b")
    assert a.primary and b.primary and a.name != b.name


def test_one_folder_spelled_two_ways_is_one_instance(tmp_path, instances):
    (tmp_path / "data").mkdir()
    assert server_name(tmp_path / "data") == server_name(tmp_path / "x" / ".." / "data")
    assert instances(tmp_path / "data").primary
    assert not instances(tmp_path / "x" / ".." / "data").primary


def test_a_folder_that_cannot_hold_the_lock_does_not_stop_the_app(tmp_path, instances):
    """Only a lock held by someone else means another copy: an unusable folder (a file in its place here;
    read-only ones behave alike, but the tests may run as root) is reported elsewhere, not as "running"."""
    (tmp_path / "data").write_text("not a folder")
    blocked = instances(tmp_path / "data")
    assert not blocked.primary and not blocked.elsewhere


def test_after_release_the_next_launch_gets_the_lock(qtbot, tmp_path, instances):
    first = instances(tmp_path)
    first.release()
    assert not first.primary and not (tmp_path / LOCK_FILE).exists()
    again = instances(tmp_path)
    assert again.primary and again.server is not None
    with qtbot.waitSignal(again.activated, timeout=3000):  # its server is listening: the name was freed
        assert instances(tmp_path).notify()


def test_no_answer_is_reported_not_waited_for(tmp_path, instances):
    gone = instances(tmp_path)
    gone.release()  # nothing listens on the name any more
    assert not gone.notify()


def _run_holder(folder: Path, then: str) -> subprocess.Popen:
    """Another process that takes `folder`'s lock, prints "ready", then runs `then` (Python source)."""
    code = textwrap.dedent(f"""
        import os, sys
        from pathlib import Path
        from PySide6.QtCore import QCoreApplication
        from app.single_instance import SingleInstance
        qt = QCoreApplication([])
        instance = SingleInstance(Path({str(folder)!r}))
        assert instance.primary, "the holder did not get the lock"
        print("ready", flush=True)
    """) + textwrap.dedent(then)
    return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True)


def test_a_launch_in_another_process_raises_the_running_one(tmp_path, instances):
    """Also when the running copy has held its lock for an hour: it is not stale while that process lives."""
    holder = _run_holder(tmp_path, """
        instance.activated.connect(lambda: (print("activated", flush=True), qt.exit(0)))
        sys.exit(qt.exec())
    """)
    try:
        assert holder.stdout.readline().strip() == "ready"
        an_hour_ago = time.time() - 3600
        os.utime(tmp_path / LOCK_FILE, (an_hour_ago, an_hour_ago))
        second = instances(tmp_path)
        assert second.elsewhere and second.notify()
        assert holder.stdout.readline().strip() == "activated"
        assert holder.wait(10) == 0
    finally:
        holder.kill()
        holder.wait()


def test_a_crashed_instance_does_not_lock_the_folder_out(tmp_path, instances):
    """A copy that dies without unlocking (os._exit: no destructors) leaves its lock file and, on Unix, its
    socket file: the next launch must take the lock (its PID is gone) and listen on the same name."""
    holder = _run_holder(tmp_path, "os._exit(0)\n")
    assert holder.stdout.readline().strip() == "ready"
    assert holder.wait(10) == 0
    assert (tmp_path / LOCK_FILE).exists()
    if sys.platform != "win32":
        assert Path(QDir.tempPath(), server_name(tmp_path)).exists()  # the stale socket removeServer clears
    after = instances(tmp_path)
    assert after.primary and after.server is not None


# main(): the guard in the entry point.


def test_main_with_the_folder_taken_raises_that_window_and_exits_0(qtbot, subspec_home, monkeypatch, capsys,
                                                                   instances):
    running = instances(subspec_home)

    def no_window(*_a, **_k):
        raise AssertionError("a second launch built a window")

    monkeypatch.setattr(app_main, "MainWindow", no_window)
    monkeypatch.setattr(app_main, "EngineHost", no_window)
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    with qtbot.waitSignal(running.activated, timeout=3000):
        assert app_main.main([]) == 0
    assert capsys.readouterr().err.strip().endswith(
        "SubSpec Studio is already running; its window was brought to the front")


def test_a_screenshot_run_ignores_the_running_app(qapp, subspec_home, tmp_path, monkeypatch, dialogs,
                                                  instances):
    running = instances(subspec_home)
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    shot = tmp_path / "w.png"
    assert app_main.main(["--screenshot", str(shot)], factory_for(FakeBackend())) == 0
    assert shot.exists() and running.primary


def test_the_running_app_comes_to_the_front_and_unlocks_at_exit(qapp, subspec_home, monkeypatch, dialogs):
    """The whole loop: main() holds the lock while it runs, a second launch un-minimizes its window, and
    the lock is free once main() returns."""
    from app import first_run
    from app.main_window import MainWindow

    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    monkeypatch.setattr(first_run, "is_first_run", lambda: False)
    # This run's window (earlier tests leave theirs, closed, among the application's top-level widgets).
    made = []
    monkeypatch.setattr(app_main, "MainWindow", lambda *a, **k: made.append(MainWindow(*a, **k)) or made[-1])
    seen = {}

    def minimize_then_launch_again():
        window, = made
        window.showMinimized()
        seen["minimized"] = window.isMinimized()
        second = SingleInstance(subspec_home)
        seen["elsewhere"] = second.elsewhere
        seen["sent"] = second.notify()
        poll.timeout.connect(lambda: not window.isMinimized() and QApplication.instance().exit(0))
        poll.start(20)

    # Timer objects, stopped at the end: a single shot left pending would end some later test's loop.
    poll, start, deadline = QTimer(), QTimer(), QTimer()
    start.setSingleShot(True)
    start.timeout.connect(minimize_then_launch_again)
    start.start(200)
    deadline.setSingleShot(True)
    deadline.timeout.connect(lambda: QApplication.instance().exit(1))  # never raised: fail, do not hang
    deadline.start(5000)
    try:
        assert app_main.main([], factory_for(FakeBackend())) == 0
    finally:
        for timer in (poll, start, deadline):
            timer.stop()
    assert seen == {"minimized": True, "elsewhere": True, "sent": True}
    after = SingleInstance(subspec_home)
    try:
        assert after.primary
    finally:
        after.release()


def test_bring_to_front_restores_a_minimized_window(qtbot):
    window = QMainWindow()
    qtbot.addWidget(window)
    window.showMinimized()
    assert window.isMinimized()
    app_main.bring_to_front(window)
    assert not window.isMinimized() and window.isVisible()
