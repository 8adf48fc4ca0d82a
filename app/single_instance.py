"""One running app per data folder: a second launch brings the first window to the front and exits.

Two copies on the same folder would each work from their own stale copy of the conversations and settings
and overwrite or delete each other's messages, so (as LM Studio, Jan and Ollama's app do) only one runs.

The lock is a QLockFile in the data folder (engine.store.store_root(), where conversations.db and
studio.ini live): the folder, not the user, is what must not be shared, and SUBSPEC_HOME moves both. The
holder listens on a QLocalServer named after that folder; a later launch that cannot take the lock connects
there, says "activate", and exits.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from PySide6.QtCore import QLockFile, QObject, Signal, Slot
from PySide6.QtNetwork import QLocalServer, QLocalSocket

LOCK_FILE = "studio.lock"
MESSAGE = b"activate\n"
WAIT_MS = 1000  # a live copy answers at once; one that does not must not hang this launch


def server_name(folder: Path) -> str:
    """A local-socket name per data folder (a hash: two folders, say two test runs, never share one).
    Resolved and case-normalized so that two spellings of one folder find the same instance."""
    key = os.path.normcase(str(Path(folder).resolve()))
    return f"subspec-studio-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


class SingleInstance(QObject):
    """`primary` is True when this launch holds the folder's lock (and then `activated` fires each time a
    later launch asks for the window); otherwise call notify() and exit."""

    activated = Signal()

    def __init__(self, folder: Path, parent: QObject | None = None):
        super().__init__(parent)
        self.folder = Path(folder)
        self.name = server_name(self.folder)
        self.server: QLocalServer | None = None
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError:
            pass  # tryLock then fails, but not with LockFailedError: the app starts (see below)
        self.lock = QLockFile(str(self.folder / LOCK_FILE))
        # The app holds the lock for hours, and Qt's docs call a lock older than staleLockTime (30 s by
        # default) stale. With 0 it is never stale by age, only when the process whose PID is written in it
        # is gone (a crash), which Qt checks on each try.
        self.lock.setStaleLockTime(0)
        self.primary = self.lock.tryLock(0)
        # Only "someone else holds it" means another copy: an unusable folder (PermissionError,
        # UnknownError) is no reason to refuse to start, and the app reports what it cannot write itself.
        self.elsewhere = not self.primary and self.lock.error() == QLockFile.LockError.LockFailedError
        if self.primary:
            self._listen()

    def _listen(self) -> None:
        server = QLocalServer(self)
        server.setSocketOptions(QLocalServer.SocketOption.UserAccessOption)  # other users cannot poke it
        # A crashed copy leaves its socket file behind on Unix, where listen() can fail with
        # AddressInUseError (Qt's docs); holding the lock, we know nobody is using it.
        QLocalServer.removeServer(self.name)
        if server.listen(self.name):
            server.newConnection.connect(self._accept)
            self.server = server
        # else: the lock still keeps a second copy out; it only cannot raise this window.

    @Slot()
    def _accept(self) -> None:
        while self.server is not None and (socket := self.server.nextPendingConnection()) is not None:
            # A slot of ours, not a lambda holding `self` and the socket: such a lambda, owned by the
            # socket's connection, kept this object alive until the socket's deleteLater, and dropping it
            # there deleted the socket a second time (a crash).
            socket.readyRead.connect(self._read)
            socket.disconnected.connect(socket.deleteLater)
            if socket.bytesAvailable():  # already here before readyRead was connected
                self._read(socket)

    @Slot()
    def _read(self, socket: QLocalSocket | None = None) -> None:
        socket = self.sender() if socket is None else socket
        if bytes(socket.readAll().data()).startswith(MESSAGE.strip()):
            self.activated.emit()

    def notify(self) -> bool:
        """Ask the instance holding the lock to show its window; whether the message got there (it cannot
        when that copy runs on another machine sharing the folder, or has not started listening yet)."""
        if os.name == "nt":
            # Windows lets only the foreground process (this launch, just started by the user) give the
            # focus away; without this the other window's taskbar button would only flash.
            import ctypes

            ctypes.windll.user32.AllowSetForegroundWindow(-1)  # ASFW_ANY
        socket = QLocalSocket()
        socket.connectToServer(self.name)
        if not socket.waitForConnected(WAIT_MS):
            return False
        socket.write(MESSAGE)
        # Blocking waits: there is no event loop yet, and the process exits right after this.
        sent = socket.bytesToWrite() == 0 or socket.waitForBytesWritten(WAIT_MS)
        socket.disconnectFromServer()
        return sent

    def release(self) -> None:
        """Stop listening and unlock (the app's last step, after the window has saved what it saves)."""
        if self.server is not None:
            self.server.close()
            self.server = None
        if self.primary:
            self.lock.unlock()
            self.primary = False
