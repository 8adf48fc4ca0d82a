"""The app's log: a rotating file in the user log folder (app.paths.log_dir()), opened from Help > Open logs
folder.

What goes in: the start (versions, platform, arguments), model loads, engine failures, every error the user
is shown and every uncaught exception, with tracebacks. That is what someone helping needs, and a
double-clicked app has nowhere else to put it: no terminal, and on Windows a windowed app has no stderr at
all (writing to it would raise), so those streams are pointed at the log too.
"""

from __future__ import annotations

import logging
import os
import platform
import sys
import threading
from logging.handlers import RotatingFileHandler
from pathlib import Path

from PySide6.QtCore import QUrl, qVersion
from PySide6.QtGui import QDesktopServices
from PySide6.QtWidgets import QWidget

from .paths import APP_NAME, log_dir

LOG_FILE = f"{APP_NAME}.log"
MAX_BYTES = 1 << 20  # a few days of normal use; tracebacks are the big entries
BACKUPS = 4  # subspec-studio.log.1 ... .4: at most 5 MiB in all
FORMAT = "%(asctime)s %(levelname)s %(name)s [%(threadName)s] %(message)s"

log = logging.getLogger("subspec")


class _RotatingFile(RotatingFileHandler):
    """A rotating log that goes on in the same file when it cannot rotate: on Windows a second copy of the
    app holding the file open makes the rename fail, and logging would report that on stderr, which in a
    windowed app is this very log. It tries again at the next record."""

    def doRollover(self) -> None:
        if self.stream is not None:
            self.stream.close()
            self.stream = None
        # The backups shift before the live file is renamed: if that rename is going to fail, shifting
        # them would lose one each try. So the rename is tried first, undone, and rotation only then done.
        trial = self.baseFilename + ".rotating"
        try:
            os.rename(self.baseFilename, trial)
            os.rename(trial, self.baseFilename)
            super().doRollover()
        except OSError:
            self.maxBytes = 0  # rotation off for this run: another copy holds the file, and will rotate it
            if self.stream is None:
                self.stream = self._open()


_handler: RotatingFileHandler | None = None


def setup(directory: Path | None = None, max_bytes: int = MAX_BYTES, backups: int = BACKUPS) -> Path:
    """Write the "subspec" loggers (INFO and up) and everyone else's warnings to a rotating file, and return
    its path. Called again (tests start the app many times in one process) it replaces its own handler."""
    global _handler
    directory = directory or log_dir()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOG_FILE
    handler = _RotatingFile(path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8")
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.setLevel(logging.INFO)
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
        _handler.close()
    root.addHandler(handler)
    _handler = handler
    # Ours at INFO; other libraries keep the root's level (WARNING): propagated records are filtered by the
    # handler's level, not by the root logger's.
    log.setLevel(logging.INFO)
    for name in ("stdout", "stderr"):
        if getattr(sys, name) is None:  # a windowed app on Windows (pythonw, PyInstaller console=False)
            setattr(sys, name, _LogStream(logging.getLogger(f"subspec.{name}")))
    return path


def log_file() -> Path | None:
    """The file being written, or None before setup()."""
    return Path(_handler.baseFilename) if _handler is not None else None


def log_start(argv: list[str]) -> None:
    log.info("SubSpec Studio %s starting: %s; arguments %s", version(), environment(), argv)


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version(APP_NAME)
    except PackageNotFoundError:  # a checkout run without `pip install -e .`
        return "(not installed)"


def environment() -> str:
    frozen = " (bundled)" if getattr(sys, "frozen", False) else ""
    return (f"Python {platform.python_version()}{frozen}, Qt {qVersion()}, "
            f"{platform.system()} {platform.release()} {platform.machine()}")


def watch(host) -> None:
    """Log what the engine thread reports that matters afterwards: loads and their slow steps. (Failures
    are logged where they are shown: app.dialogs.show_error, or app.main for an unattended run.)"""
    host.progress.connect(lambda text: log.info("engine: %s", text))
    host.loaded.connect(lambda name: log.info("model loaded: %s", name))
    host.missing_model.connect(lambda message: log.warning("no model installed: %s", message))


def open_logs_folder(parent: QWidget | None = None) -> bool:
    """Show the log folder in the file manager; without one, say where it is (copyable)."""
    folder = log_file().parent if log_file() is not None else log_dir()
    folder.mkdir(parents=True, exist_ok=True)
    if QDesktopServices.openUrl(QUrl.fromLocalFile(str(folder))):
        return True
    from . import dialogs

    log.warning("no file manager opened %s", folder)
    dialogs.show_error(parent, "Logs folder", f"No file manager could open the logs folder:\n{folder}",
                       str(folder))
    return False


class _LogStream:
    """A file-like stand-in for a missing stdout/stderr: whole lines go to a logger."""

    def __init__(self, logger: logging.Logger):
        self.logger = logger
        self.pending = ""
        self._inside = threading.local()

    def write(self, text: str) -> int:
        # logging reports its own failures (a full disk, say) on stderr, which is this stream: what is
        # written while a line is being logged is dropped, or every record would recurse until the stack ends.
        if getattr(self._inside, "active", False):
            return len(text)
        self._inside.active = True
        try:
            self.pending += text
            *lines, self.pending = self.pending.split("\n")
            for line in lines:
                if line.strip():
                    self.logger.info(line)
        finally:
            self._inside.active = False
        return len(text)

    def flush(self) -> None:
        if self.pending.strip():
            self.logger.info(self.pending)
        self.pending = ""

    def isatty(self) -> bool:
        return False
