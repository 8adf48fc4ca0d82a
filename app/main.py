"""`subspec-studio` / `python -m app`: start the chat window."""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import tempfile
import traceback
from pathlib import Path

from PySide6.QtCore import QObject, QSettings, QTimer, Slot
from PySide6.QtGui import QAction
from PySide6.QtWidgets import QApplication

from engine.store import DEFAULT_MODEL, store_root

from . import api_settings, dialogs, first_run, logs, theme
from .backend import EngineFactory
from .conversations import ConversationStore
from .main_window import MainWindow, default_settings
from .paths import APP_NAME
from .single_instance import SingleInstance
from .worker import EngineHost

DEMO_PROMPT = "What is the capital of France?"
PANELS = ("stats", "hardware", "models", "welcome")
GRAB_RETRY_MS = 100
SCRIPT_TIMEOUT_S = 600  # a scripted run that hangs (a stuck load) must still end, with an error


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="subspec-studio", description="SubSpec Studio: chat with local LLMs.")
    p.add_argument("--model", help=f"a store name or a model folder (default: the model loaded last time, while "
                                   f"it is installed, else {DEFAULT_MODEL}; scripted runs: {DEFAULT_MODEL})")
    p.add_argument("--demo", action="store_true", help=f"send {DEMO_PROMPT!r} once the model is loaded")
    p.add_argument("--screenshot", metavar="PATH",
                   help="run the demo exchange, save the window as a PNG to PATH and exit")
    p.add_argument("--panel", choices=PANELS, default="stats",
                   help="the side panel to show: decoding stats (default), the hardware panel or the models "
                        "panel; "
                        "welcome: the first-run dialog (with --screenshot, the picture is of the dialog)")
    p.add_argument("--appearance", choices=theme.SCHEMES,
                   help="light or dark for this run (not saved; View > Appearance saves a choice)")
    return p


class ScriptedExchange(QObject):
    """Sends one prompt when the model is ready; with a screenshot path, grabs the window (or the welcome
    dialog, when one is given) after the answer and quits (exit code 1 on any failure, so scripts and CI
    notice)."""

    def __init__(self, window: MainWindow, screenshot: str | None,
                 welcome: first_run.WelcomeDialog | None = None):
        super().__init__(window)
        self.window = window
        self.screenshot = screenshot
        self.welcome = welcome
        window.host.loaded.connect(self._send)
        self.deadline = QTimer(self)
        self.deadline.setSingleShot(True)
        self.deadline.timeout.connect(lambda: self._quit(1, "timed out"))
        if screenshot:
            window.host.finished.connect(self._finished)
            self.deadline.start(SCRIPT_TIMEOUT_S * 1000)

    @Slot(str)
    def _send(self, _name: str) -> None:
        self.window.host.loaded.disconnect(self._send)  # once: a later model switch must not resend
        # In a conversation of its own: the one reopened from the last session is the user's (and a
        # screenshot must not show it, nor the model answer with it as history).
        self.window.new_conversation()
        self.window.prompt.setPlainText(DEMO_PROMPT)
        self.window.send()

    @Slot(object)
    def _finished(self, _summary: dict) -> None:
        # Let the last token and the status bar paint before grabbing.
        QTimer.singleShot(150, self, self._grab)

    def _grab(self) -> None:
        if _on_screen(self.window.hardware_dock) and self.window.hardware_dock.profile is None:
            QTimer.singleShot(GRAB_RETRY_MS, self, self._grab)  # its first probe (a torch import) may lag
            return
        if _on_screen(self.window.models_dock) and not self.window.models_dock.ready():
            QTimer.singleShot(GRAB_RETRY_MS, self, self._grab)  # the store's scan and the fit badges
            return
        if self.welcome is not None and not self.welcome.probed:
            QTimer.singleShot(GRAB_RETRY_MS, self, self._grab)  # so is the welcome's
            return
        path = Path(self.screenshot)
        path.parent.mkdir(parents=True, exist_ok=True)
        if not (self.welcome or self.window).grab().save(str(path)):
            self._quit(1, f"could not write {path}")
            return
        print(f"saved {path}", file=sys.stderr)
        # What the model answered, with its stats, as one JSON line: the run's conversation lives in memory
        # only (the user's data is left alone), and a script may want more than the picture.
        saved = self.window._saved()
        if saved and saved[-1].role == "assistant":
            last = saved[-1]
            print(json.dumps({"answer": last.content, "complete": last.complete, "stats": last.stats}),
                  flush=True)
        self._quit(0)

    def _quit(self, code: int, why: str = "") -> None:
        self.deadline.stop()  # a finished run must not be ended again, minutes later, by its deadline
        if why:
            print(f"error: {why}", file=sys.stderr)
        QApplication.instance().exit(code)


def _on_screen(dock) -> bool:
    """Whether a dock shows: one restored into a tab group behind another tab is neither hidden nor (for
    Qt) invisible, but nothing of it is on screen and it never scans or probes, so a screenshot waiting for
    it would wait for ever."""
    return dock.isVisible() and not dock.visibleRegion().isEmpty()


def bring_to_front(window: MainWindow) -> None:
    """What a second launch asks for: the existing window, restored if minimized, on top and focused."""
    if window.isMinimized():
        window.showNormal()
    else:
        window.show()  # hidden (closed to a tray, say) or already normal: shown as it was
    window.raise_()
    window.activateWindow()


def _print_and_exit(title: str, message: str, details: str) -> None:
    """Error handling for unattended runs: a modal dialog there would wait forever."""
    print(f"error: {title}: {message}\n{details}", file=sys.stderr)
    logs.log.error("%s: %s\n%s", title, message, details)
    QApplication.instance().exit(1)


def _scripted_excepthook(exc_type, exc, tb) -> None:
    traceback.print_exception(exc_type, exc, tb)
    logs.log.error("uncaught exception\n%s", "".join(traceback.format_exception(exc_type, exc, tb)))
    app = QApplication.instance()
    if app is not None:
        app.exit(1)


def main(argv: list[str] | None = None, engine_factory: EngineFactory | None = None) -> int:
    """`engine_factory` replaces the torch engine (tests run the scripted exchange on a fake)."""
    args = build_parser().parse_args(argv)
    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setApplicationName("SubSpec Studio")
    # Wayland and the docks find the window's icon through the installed packaging/subspec-studio.desktop.
    app.setDesktopFileName(APP_NAME)
    app.setWindowIcon(dialogs.app_icon())
    try:
        logs.setup()
    except OSError as exc:  # an unwritable log folder must not keep the app from starting
        print(f"warning: no log file: {exc}", file=sys.stderr)
    logs.log_start(sys.argv[1:] if argv is None else argv)
    unattended = bool(args.screenshot)
    if unattended:
        sys.excepthook = _scripted_excepthook
    else:
        dialogs.install_excepthook()
    # One window per data folder: a second copy would overwrite the first's conversations and settings.
    # Scripted runs skip it (they write none of the user's data), so a screenshot can be taken while the
    # app is open.
    instance = None if unattended else SingleInstance(store_root())
    if instance is not None and instance.elsewhere:
        message = "SubSpec Studio is already running"
        if instance.notify():  # it can fail: that copy runs on another machine sharing the folder, say
            message += "; its window was brought to the front"
        print(message, file=sys.stderr)
        logs.log.info("%s; exiting", message)
        return 0
    host = EngineHost(engine_factory)
    logs.watch(host)
    app.aboutToQuit.connect(host.shutdown)
    scratch = tempfile.TemporaryDirectory(prefix="subspec-studio-run-") if unattended else None
    if scratch is not None:
        # A scripted run leaves the user's data alone (it may run beside the open app, which the
        # single-instance guard would otherwise refuse): its conversation in memory, its settings in a copy
        # (read as the user's, written to the copy: the window size it closes with, its conversation).
        settings_file = Path(scratch.name) / "studio.ini"
        with contextlib.suppress(OSError):
            shutil.copyfile(default_settings().fileName(), settings_file)
        settings = QSettings(str(settings_file), QSettings.Format.IniFormat)
        # Serve API left on in the app is not this run's to start: it would take the open app's port (and
        # fail the run) or open one, on the network perhaps, for a picture.
        api_settings.save_serving(settings, False)
        window = MainWindow(host, on_error=_print_and_exit, store=ConversationStore(":memory:"), settings=settings)
    else:
        window = MainWindow(host)
    if instance is not None:
        instance.activated.connect(lambda: bring_to_front(window))
    if args.appearance:
        theme.apply(args.appearance)  # after the window, which applies the saved one
        window.view_menu.findChild(QAction, f"appearance_{args.appearance}").setChecked(True)
    if args.screenshot:
        # The picture should not depend on a layout saved earlier (on a small screen, say, or offscreen,
        # where restoring clamps the window to an 800 px wide virtual screen).
        window.resize(*MainWindow.DEFAULT_SIZE)
    if args.panel == "hardware":
        window.show_hardware()
    elif args.panel == "models":
        window.show_models()
    # Asked for by name: shown even in a scripted run, and the first-run marker is left alone.
    welcome = first_run.WelcomeDialog(window) if args.panel == "welcome" else None
    script = ScriptedExchange(window, args.screenshot, welcome) if args.demo or args.screenshot else None
    window.show()
    if welcome is not None:
        welcome.show()
    # A scripted run (a screenshot, a demo) is the same on every machine: the default model unless named.
    # --model is for this run: the next start opens the model last picked in the app.
    window.remember_model = not args.model
    if script is not None:  # and with the default settings, not those the user's app last loaded it with
        window.load_model(args.model or DEFAULT_MODEL, {})
    else:
        window.load_model(args.model or window.startup_model())
    if not unattended and welcome is None and first_run.is_first_run():
        # A scripted run never shows it: nobody would close it, and it would cover the screenshot.
        QTimer.singleShot(0, window, lambda: first_run.show_welcome(window))
    code = app.exec()
    logs.log.info("exit code %d", code)
    if script is not None:
        # However the run ended (an engine error exits without going through the script), its deadline
        # must not fire later in the same application (tests share one).
        script.deadline.stop()
    if welcome is not None:
        welcome.close()  # its own top-level window: closing the main one would not hide it
    window.close()  # a scripted run ends with the window still open; this joins the engine thread
    if instance is not None:
        instance.release()  # last: closing the window above still writes to the data folder
    if scratch is not None:
        scratch.cleanup()
    return code


if __name__ == "__main__":
    sys.exit(main())
