"""File operations that hold on Windows too.

On Windows a file another program has open cannot be renamed, replaced or deleted, and neither can a
folder holding one; antivirus scanners and the search indexer open freshly written files for a moment,
so a rename right after a download or an import can fail once and succeed a second later. Those failures
are PermissionError (a sharing violation); on POSIX a PermissionError means what it says, so only Windows
waits and tries again. Read-only files (a model copied from a read-only source keeps the attribute) stop
a delete on Windows only; `rmtree` clears the attribute and goes on.
"""

from __future__ import annotations

import os
import shutil
import stat
import sys
import time
from pathlib import Path
from typing import Callable, TypeVar

T = TypeVar("T")
SHARING_WAIT_S = 10.0  # long enough for a scanner to let go of a multi-GB file it opened


def retry_shared(operation: Callable[[], T], wait_s: float = SHARING_WAIT_S, windows: bool | None = None) -> T:
    """`operation()`, tried again for up to `wait_s` while Windows says another program has a file open."""
    windows = os.name == "nt" if windows is None else windows
    deadline = time.monotonic() + wait_s
    delay = 0.05
    while True:
        try:
            return operation()
        except PermissionError:
            if not windows or time.monotonic() >= deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.5)


def replace(src: Path | str, dst: Path | str) -> None:
    """os.replace, waiting out a reader that has `dst` open for a moment (Windows)."""
    retry_shared(lambda: os.replace(src, dst))


def rmtree(path: Path | str, ignore_errors: bool = False) -> None:
    """shutil.rmtree that also deletes read-only files (Windows refuses those). Only a delete refused for
    permission is retried, on the file itself: anything else (a symlinked folder, which shutil will not
    follow) fails as shutil's would, or is skipped with `ignore_errors`, the rest deleted either way."""
    def handle(function, failed_path, exc) -> None:
        if function in (os.unlink, os.remove, os.rmdir) and isinstance(exc, PermissionError):
            try:
                os.chmod(failed_path, stat.S_IWRITE)
                function(failed_path)
                return
            except OSError as again:
                exc = again
        if not ignore_errors:
            raise exc

    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=handle)
    else:
        shutil.rmtree(path, onerror=lambda function, p, info: handle(function, p, info[1]))
