"""Downloads that never lose a byte: resumable across calls and restarts, retried on drops, resets and
5xx answers, every file checked against the hub's sha256 (weights) or git sha1 (small files) before the
model is installed, cancelled within a second.

What huggingface_hub 2.4 does not do, and this module does: its `.incomplete` file is deleted on any error
(a second call starts from byte 0), it retries a dropped connection only within one call and only in
10 MiB steps, never after a reset or a 5xx, checks sizes but not checksums, and sees a cancel only every
10 MiB. Here a download lives in its own folder under the store (`downloads/<org>--<name>@<commit>/`):
finished, verified files under their names, the file in flight as `<name>.part`, and `state.json`
recording what was verified. A later run of the same repo and commit picks up where the last one stopped
with an HTTP Range request. Nothing appears in the model list until every file is verified and the folder
has been renamed into the store's models in one step.

A repo of GGUF files (what most big models are published as) is downloaded one GGUF at a time, every part
of a split one, the chosen label in `state.json`; once verified it is converted into the store like an
imported GGUF (engine/gguf_import.py) and the GGUF files are deleted. Each label has its own folder, so a
paused Q8_0 survives downloading a Q4_K_M of the same repo.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import hashlib
import json
import os
import shutil
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from . import files as fs, hub, store
from .errors import SubspecError

STATE = "state.json"
PART = ".part"
ORPHAN_AGE_S = 30 * 24 * 3600  # partial downloads nobody resumed for a month are cleaned up


class DownloadCancelled(SubspecError):
    """The user stopped the download; `kept` says whether its partial files stay for a resume."""

    def __init__(self, message: str, kept: bool):
        super().__init__(message)
        self.kept = kept


class _Retryable(Exception):
    """A failure worth another try after a pause: a drop, a reset, a stall, a 5xx or a 429."""


@dataclass(frozen=True)
class RetryPolicy:
    tries: int = 8  # consecutive tries without a single new byte before giving up
    first_delay_s: float = 0.5
    max_delay_s: float = 30.0
    connect_timeout_s: float = 20.0
    read_timeout_s: float = 30.0  # a connection silent this long is treated as dropped

    def delay(self, attempt: int) -> float:
        return min(self.max_delay_s, self.first_delay_s * 2 ** max(0, attempt - 1))


@dataclass(frozen=True)
class DownloadProgress:
    """One snapshot for a progress bar: the file in flight and the whole model."""
    repo_id: str
    state: str  # resolving | downloading | retrying | verifying | installing (a GGUF: converting) | done
    file: str = ""
    file_done: int = 0
    file_size: int = 0
    done: int = 0
    total: int = 0
    bytes_per_s: float = 0.0
    message: str = ""

    @property
    def eta_s(self) -> float | None:
        if self.bytes_per_s <= 0 or self.total <= self.done:
            return None
        return (self.total - self.done) / self.bytes_per_s

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 0.0


def downloads_dir() -> Path:
    d = store.store_root() / "downloads"
    d.mkdir(parents=True, exist_ok=True)
    return d


FOLDER_NAME_MAX = 64  # Windows paths stop at 260 characters unless long paths are switched on


def work_folder(repo_id: str, commit: str, gguf: str | None = None) -> Path:
    """A download's folder: readable (repo, commit, GGUF label) and, past FOLDER_NAME_MAX characters, cut
    and made unique by a hash. A repo id of up to 96 characters, a GGUF label that repeats the file's
    stem, then that file's name inside would pass 260 (state.json has the full names)."""
    label = "" if gguf is None else "#" + gguf.replace("/", "--")
    name = f"{repo_id.replace('/', '--')}@{commit[:12]}{label}"
    if len(name) > FOLDER_NAME_MAX and not (downloads_dir() / name).is_dir():  # (one an older version began)
        digest = hashlib.sha256(name.encode()).hexdigest()[:12]
        name = f"{name[:FOLDER_NAME_MAX - 13]}~{digest}"
    return downloads_dir() / name


def _local(work: Path, f: hub.RemoteFile) -> Path:
    """Where a remote file lives in its download folder: flat (a GGUF may sit in a subfolder of its repo)."""
    return work / f.name.rpartition("/")[2]


def free_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free


@dataclass(frozen=True)
class PartialDownload:
    repo_id: str
    commit: str
    name: str
    folder: str
    have_bytes: int
    total_bytes: int
    updated: float
    gguf: str | None = None  # the GGUF label of a GGUF download (resume with it)

    def as_json(self) -> dict:
        return dict(self.__dict__)


def _read_state(folder: Path) -> dict | None:
    try:
        return json.loads((folder / STATE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def _write_state(folder: Path, state: dict) -> None:
    tmp = folder / (STATE + ".tmp")
    tmp.write_text(json.dumps(state, indent=2), encoding="utf-8")
    fs.replace(tmp, folder / STATE)  # a kill mid-write must not leave a torn state file


def partial_downloads() -> list[PartialDownload]:
    """Downloads that stopped before finishing (paused, killed, failed): what a resume would continue."""
    out = []
    for folder in sorted(downloads_dir().iterdir()):
        state = _read_state(folder) if folder.is_dir() else None
        if state is None:
            continue
        try:
            have = sum(f.stat().st_size for f in folder.iterdir() if f.is_file() and f.name != STATE)
            mtime = folder.stat().st_mtime
        except FileNotFoundError:  # discarded or installed by another thread while listed: gone, not partial
            continue
        out.append(PartialDownload(state["repo_id"], state["commit"], state["name"], str(folder),
                                   min(have, state["total"]), state["total"], mtime, state.get("gguf")))
    return out


ANY = object()  # discard_partial's "every GGUF label of the repo, and its safetensors download"


def discard_partial(repo_id: str, gguf=ANY) -> int:
    """Delete the partial downloads of `repo_id` (of one GGUF label, None: its safetensors one; by default
    all of them); returns the bytes freed. A download running right now (its folder locked) is left alone."""
    freed = 0
    for p in partial_downloads():
        if p.repo_id != repo_id or (gguf is not ANY and p.gguf != gguf):
            continue
        try:
            lock = _try_lock(Path(p.folder))
        except OSError:  # gone since it was listed (installed or discarded meanwhile)
            continue
        if lock is None:
            continue
        freed += store.folder_size(Path(p.folder))
        _remove_locked(Path(p.folder), lock)
    return freed


LOCK_SUFFIX = ".lock"


def lock_path(folder: Path) -> Path:
    """A download folder's lock file, beside the folder rather than in it: Windows can neither rename nor
    delete a folder that holds an open file, and a folder is renamed into the store (or deleted) while its
    lock is held."""
    return folder.with_name(folder.name + LOCK_SUFFIX)


def _try_lock(folder: Path):
    """An exclusive lock on a download folder, or None when another process holds it (two processes
    appending to one .part file would corrupt it). Held by an open file, so a killed process lets go:
    flock on POSIX, a one-byte msvcrt lock on Windows. Let go with `_release`."""
    for _ in range(3):
        try:
            fh = open(lock_path(folder), "a+b")
        except OSError:  # Windows: the file is being deleted by the download that just finished
            return None
        try:
            try:
                import fcntl
            except ImportError:  # Windows
                import msvcrt

                fh.seek(0)
                msvcrt.locking(fh.fileno(), msvcrt.LK_NBLCK, 1)
                return fh  # (Windows cannot delete a file that is open, so it is the one at the path)
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.close()
            return None
        # A download that finished between our open and our lock removed the lock file: we hold a lock on a
        # file no one else can open, and the next process would lock a new one. Only the file still at the
        # path counts; open that one.
        if _same_file(fh, lock_path(folder)):
            return fh
        fh.close()
    return None


def _same_file(fh, path: Path) -> bool:
    try:
        here, there = os.fstat(fh.fileno()), os.stat(path)
    except OSError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def _release(lock, folder: Path) -> None:
    """Let go of `folder`'s lock; its lock file goes too once the folder is gone (installed or deleted).
    (A process that opened the lock file just before it was removed, and locks it after, notices:
    `_try_lock` checks that the file it locked is still the one at the path.)"""
    try:
        import msvcrt
    except ImportError:
        # POSIX: the lock file goes while still locked, so nobody can lock it between our letting go and
        # its removal (and then hold a lock on a file the next process no longer finds).
        if not folder.exists():
            with contextlib.suppress(OSError):
                lock_path(folder).unlink(missing_ok=True)
        lock.close()
        return
    # Windows cannot delete an open file: unlocked (closing releases too, but Windows may do that late: a
    # resume right after would fail), closed, then removed.
    try:
        lock.seek(0)
        msvcrt.locking(lock.fileno(), msvcrt.LK_UNLCK, 1)
    except OSError:
        pass
    lock.close()
    if not folder.exists():
        try:
            lock_path(folder).unlink(missing_ok=True)
        except OSError:  # another process has it open this instant; clean_orphans gets it later
            pass


def _delete_work(work: Path) -> None:
    """Delete a download's folder, ours (locked) and done with. A converted GGUF still memory-mapped in a
    reference cycle cannot be deleted on Windows: collected first."""
    gc.collect()
    fs.rmtree(work, ignore_errors=True)


def _remove_locked(folder: Path, lock) -> None:
    """Delete a download folder whose lock we hold, then let go of the lock."""
    try:
        fs.rmtree(folder, ignore_errors=True)
    finally:
        _release(lock, folder)


def clean_orphans(keep: Path | None = None, superseded_repo: str | None = None, gguf: str | None = None) -> None:
    """Partial downloads of an older commit of the repo (and GGUF label) being downloaded now, downloads
    nobody resumed for a month, and folders without a state file (killed before writing it) are removed."""
    now = time.time()
    for folder in downloads_dir().iterdir():
        if folder.name.endswith(LOCK_SUFFIX) and folder.is_file():
            owner = folder.with_name(folder.name[:-len(LOCK_SUFFIX)])
            if not owner.exists() and owner != keep:
                try:
                    folder.unlink(missing_ok=True)  # left by a process killed after its folder went
                except OSError:  # Windows: held open this instant by a process about to let go
                    pass
            continue
        if not folder.is_dir() or folder == keep:
            continue
        state = _read_state(folder)
        try:
            stale = now - folder.stat().st_mtime > ORPHAN_AGE_S
        except OSError:
            continue
        superseded = (state is not None and state.get("repo_id") == superseded_repo
                      and state.get("gguf") == gguf)
        if superseded or stale or (state is None and now - folder.stat().st_mtime > 3600):
            lock = _try_lock(folder)
            if lock is None:
                continue  # another process is downloading into it right now
            _remove_locked(folder, lock)


def file_checksum_ok(path: Path, remote: hub.RemoteFile, cancelled: Callable[[], bool] = lambda: False) -> bool:
    """sha256 for LFS files; for small files the git blob sha1 (sha1 over "blob <size>\\0" + content)."""
    if remote.sha256:
        h, want = hashlib.sha256(), remote.sha256
    elif remote.git_sha1:
        h, want = hashlib.sha1(), remote.git_sha1
        h.update(b"blob %d\0" % remote.size)
    else:
        raise SubspecError(f"the hub gave no checksum for {remote.name}")
    digest = store.hash_file(path, h, cancelled)
    if digest is None:
        raise DownloadCancelled("cancelled while verifying", kept=True)
    return digest == want.lower()


class _Rate:
    """Bytes per second over the last few seconds (a whole-download average hides a stall)."""

    def __init__(self, window_s: float = 5.0):
        self.window_s = window_s
        self.samples: deque[tuple[float, int]] = deque()
        self.total = 0

    def add(self, n: int) -> None:
        now = time.monotonic()
        self.total += n
        self.samples.append((now, self.total))
        while len(self.samples) > 2 and now - self.samples[0][0] > self.window_s:
            self.samples.popleft()

    def value(self) -> float:
        if len(self.samples) < 2:
            return 0.0
        (t0, b0), (t1, b1) = self.samples[0], self.samples[-1]
        return (b1 - b0) / (t1 - t0) if t1 > t0 else 0.0


@dataclass
class Download:
    """One model download. `run()` blocks (call it on a worker thread); `cancel()` and `pause()` may be
    called from any thread and take effect within a second, even while the connection is stalled."""
    repo_id: str
    revision: str | None = None
    name: str | None = None
    token: str | None = None
    on_progress: Callable[[DownloadProgress], None] | None = None
    gguf: str | None = None  # for a repo of GGUF files: which one (hub.gguf_files: a label, or part of one)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    progress_interval_s: float = 0.1

    def __post_init__(self):
        self._stop = threading.Event()
        self._discard = False
        self._lock = threading.Lock()
        self._socket: socket.socket | None = None
        self._last = DownloadProgress(self.repo_id, "resolving")
        self._last_emit = 0.0
        self._rate = _Rate()

    # --- control, from any thread -------------------------------------------------------------------
    def cancel(self) -> None:
        """Stop and delete the partial files."""
        self._discard = True
        self._interrupt()

    def pause(self) -> None:
        """Stop and keep the partial files: a later download of the same repo resumes."""
        self._interrupt()

    def _interrupt(self) -> None:
        self._stop.set()
        with self._lock:
            sock = self._socket
        if sock is not None:
            try:  # wakes a read blocked on a silent connection at once
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    # --- the download -------------------------------------------------------------------------------
    def run(self) -> store.ModelInfo:
        work = lock = None
        try:
            self._emit(state="resolving", message=f"asking {hub.endpoint()} about {self.repo_id}", force=True)
            remote = hub.remote_model(self.repo_id, self.revision, self.token)
            label = None
            if self.gguf:
                from .gguf_import import model_name

                label, files = hub.gguf_files(remote, self.gguf)
                name = self.name or model_name(Path(files[0].name))
            else:
                files = hub.needed_files(remote, hub.remote_index(remote, self.token))
                name = self.name or self.repo_id.split("/")[1]
            store.check_new_name(name)
            work = work_folder(self.repo_id, remote.commit, label)
            clean_orphans(keep=work, superseded_repo=self.repo_id, gguf=label)
            work.mkdir(parents=True, exist_ok=True)
            lock = _try_lock(work)
            if lock is None:
                work = None  # not ours to delete on cancel
                raise SubspecError(f"{self.repo_id} is already being downloaded by another process")
            state = _read_state(work) or {}
            verified: dict[str, str] = state.get("verified", {})
            total = sum(f.size for f in files)
            state = {"repo_id": self.repo_id, "commit": remote.commit, "name": name, "total": total,
                     "verified": verified, **({"gguf": label} if label else {})}
            _write_state(work, state)
            if label:
                self._check_gguf(remote, files, work, verified)
            else:
                self._check_disk(work, files)
            done = sum(f.size for f in files if f.name in verified and _local(work, f).is_file())
            self._emit(state="downloading", total=total, done=done, force=True)
            for f in files:
                if f.name in verified and _local(work, f).is_file():
                    continue
                done = self._fetch(remote, f, work, done)
                verified[f.name] = f.checksum  # `state` holds this very dict
                _write_state(work, state)
                if f.name == "config.json":
                    self._check_architecture(work)
            extra = {"repo_id": self.repo_id, "commit": remote.commit, "checksums": verified}
            source = f"hf://{self.repo_id}@{remote.commit}"
            if label:
                info = self._convert(work, _local(work, files[0]), name, label, total, f"{source}/{label}", extra)
            else:
                self._emit(state="installing", message=f"checking and installing {name}", force=True)
                try:
                    info = store.install_folder(work, name, source=source, extra=extra)
                except store.InstallMoveError as exc:  # the files are fine: the next try only installs
                    _write_state(work, state)  # the install's clean-up took the state file with the extras
                    raise SubspecError(f"{exc}. The verified download is kept in {work}; run the download "
                                       f"again to install it") from exc
                except SubspecError:
                    self._discard = True  # verified but unusable here: keeping it would only fill the disk
                    raise
            self._emit(state="done", done=total, message=f"installed {info.name}", force=True)
            return info
        except DownloadCancelled as exc:
            if self._discard and work is not None:
                _delete_work(work)
            raise DownloadCancelled("download cancelled; partial files deleted" if self._discard else
                                    "download paused; run it again to resume", kept=not self._discard) from exc
        except SubspecError:
            if self._discard and work is not None:
                _delete_work(work)
            raise
        finally:
            if lock is not None:  # (then `work` is the folder it locks)
                _release(lock, work)

    @staticmethod
    def _have_bytes(work: Path, files: list[hub.RemoteFile]) -> int:
        """Bytes of `files` already here, finished or in flight (.part)."""
        have = 0
        for f in files:
            for p in (_local(work, f), work / (_local(work, f).name + PART)):
                if p.is_file():
                    have += min(p.stat().st_size, f.size)
        return have

    def _check_disk(self, work: Path, files: list[hub.RemoteFile]) -> None:
        need = sum(f.size for f in files) - self._have_bytes(work, files)
        store.check_free_space(work.parent, need, self.repo_id, free_bytes(work))

    def _check_gguf(self, remote: hub.RemoteModel, files: list[hub.RemoteFile], work: Path, verified: dict) -> None:
        """Before any weights: every part's header (one request each, stopped after a few MB): an
        unsupported architecture or a split that does not add up is refused, and the disk must hold what
        is left to download plus the bf16 conversion (the GGUF goes once converted)."""
        # Until a byte of the GGUF is here, a refusal leaves nothing worth resuming: its folder goes too.
        fresh = self._have_bytes(work, files) == 0
        try:
            self._check_gguf_headers(remote, files, work, verified)
        except DownloadCancelled:
            raise  # a pause stays a pause (it is a SubspecError too)
        except SubspecError:
            self._discard = self._discard or fresh
            raise

    def _check_gguf_headers(self, remote: hub.RemoteModel, files: list[hub.RemoteFile], work: Path,
                            verified: dict) -> None:
        from .gguf_header import file_chunks, read_header
        from .gguf_import import GGUF_ARCHITECTURES, OUT_DTYPE_BYTES

        headers = []
        for f in files:
            self._emit(state="resolving", message=f"reading the header of {f.name}", force=True)
            local = _local(work, f)
            if f.name in verified and local.is_file():
                headers.append(read_header(file_chunks(local)(), f.name))
            else:
                headers.append(self._remote_header(remote, f))
        arch = headers[0].architecture
        if arch not in GGUF_ARCHITECTURES:
            self._discard = True
            raise SubspecError(f"{self.repo_id}: {files[0].name} is a {arch!r} model; supported: "
                               f"{', '.join(sorted(GGUF_ARCHITECTURES))}. Nothing was downloaded")
        declared = headers[0].metadata.get("split.count", 1)
        if declared != len(files):
            raise SubspecError(f"{self.repo_id}: {files[0].name} says the GGUF has {declared} parts; the hub "
                               f"lists {len(files)}")
        converted = sum(h.elements for h in headers) * OUT_DTYPE_BYTES
        left = sum(f.size for f in files) - self._have_bytes(work, files)
        store.check_free_space(work.parent, left + converted,
                               f"{self.repo_id} ({_gb(left)} to download, then {_gb(converted)} once converted "
                               f"to bf16)", free_bytes(work))

    def _remote_header(self, remote: hub.RemoteModel, f: hub.RemoteFile):
        """A GGUF's header straight from the hub: the body is read only as far as the header goes."""
        import httpx2
        from huggingface_hub.utils import get_session

        from .gguf_header import read_header

        url = hub.file_url(remote.repo_id, remote.commit, f.name)
        headers = {**hub.auth_headers(self.token), "Accept-Encoding": "identity"}
        timeout = httpx2.Timeout(self.retry.read_timeout_s, connect=self.retry.connect_timeout_s)
        for attempt in range(1, self.retry.tries + 1):
            if self._stop.is_set():
                raise DownloadCancelled("stopped", kept=True)
            try:
                with get_session().stream("GET", url, headers=headers, timeout=timeout, follow_redirects=True) as r:
                    self._remember_socket(r)
                    if r.status_code in (401, 403):
                        raise SubspecError(f"{self.repo_id}: access denied ({r.status_code}); a gated or private "
                                           f"model needs a token (--token, HF_TOKEN or `hf auth login`)")
                    if r.status_code == 429 or r.status_code >= 500:
                        raise _Retryable(f"the server answered {r.status_code}")
                    if r.status_code != 200:
                        raise SubspecError(f"{self.repo_id}: unexpected answer {r.status_code} for {f.name}")
                    return read_header(r.iter_bytes(), f.name)
            except (_Retryable, httpx2.TransportError) as exc:
                if self._stop.is_set():
                    raise DownloadCancelled("stopped", kept=True) from exc
                if attempt == self.retry.tries:
                    raise SubspecError(f"{self.repo_id}: could not read the header of {f.name} ({exc}); "
                                       f"run the download again") from exc
                if self._stop.wait(self.retry.delay(attempt)):
                    raise DownloadCancelled("stopped", kept=True) from exc
            finally:
                with self._lock:
                    self._socket = None
        raise AssertionError("unreachable")

    def _check_architecture(self, work: Path) -> None:
        """Before any weights: a model we cannot run is refused after one small file (a GGUF: from its
        header, `_check_gguf`)."""
        from .config import ModelConfig

        try:
            ModelConfig.from_file(work)
        except SubspecError as exc:
            self._discard = True
            raise SubspecError(f"{self.repo_id}: {exc}") from exc

    def _convert(self, work: Path, first: Path, name: str, label: str, total: int, source: str,
                 extra: dict) -> store.ModelInfo:
        """The verified GGUF into the store (bf16 safetensors, as an import), then its files deleted. A
        pause or cancel stops at the next tensor; paused, the GGUF stays for a resume to convert again."""
        from .gguf_import import ImportCancelled

        self._emit(state="installing", message=f"converting {label} to bf16", done=0, force=True)
        cancelled = False
        try:
            info = store.import_model(first, name, progress=lambda m: self._emit(message=m, force=True),
                                      cancel=self._stop, fraction=lambda f: self._emit(done=int(f * total)),
                                      origin=source, extra=extra)
        except ImportCancelled:
            # Raised below, not here: chained, the exception would keep the converter's frames alive,
            # and with them its memory maps of the GGUF, which Windows then refuses to delete on a cancel.
            cancelled = True
        except SubspecError as exc:
            if self._discard:
                raise
            # Kept either way: downloading it again would cost far more than the space it holds. Only a
            # full disk is worth another try as it is.
            size = _gb(store.folder_size(work))
            retry = (isinstance(exc, store.InstallMoveError) or "disk space" in str(exc)
                     or "disk is full" in str(exc))
            hint = ("free some space if that is what it says, and run the download again: it converts "
                    "without downloading" if retry else
                    f"this GGUF cannot be converted here; discard it to free {size} (Discard in the app's "
                    f"Downloads, or `subspec models remove {self.repo_id}`, which removes every partial "
                    f"download of that repo)")
            raise SubspecError(f"{exc}. The downloaded GGUF ({size}) is kept in {work}: {hint}") from exc
        if cancelled:
            raise DownloadCancelled("stopped", kept=True)
        _delete_work(work)
        return info

    def _fetch(self, remote: hub.RemoteModel, f: hub.RemoteFile, work: Path, done: int) -> int:
        part = work / (_local(work, f).name + PART)
        url = hub.file_url(remote.repo_id, remote.commit, f.name)
        headers = {**hub.auth_headers(self.token), "Accept-Encoding": "identity"}
        failures = 0
        while True:
            have = part.stat().st_size if part.is_file() else 0
            if have > f.size:
                part.unlink()
                have = 0
            self._emit(state="downloading", file=f.name, file_size=f.size, file_done=have,
                       done=done + have, force=True)
            if have == f.size:
                break
            if self._stop.is_set():
                raise DownloadCancelled("stopped", kept=True)
            try:
                got = self._stream(url, headers, part, have, f, done)
            except _Retryable as exc:
                if self._stop.is_set():
                    raise DownloadCancelled("stopped", kept=True) from exc
                got_any = part.is_file() and part.stat().st_size > have
                failures = 0 if got_any else failures + 1
                if failures >= self.retry.tries:
                    raise SubspecError(f"{f.name}: giving up after {failures} tries without progress "
                                       f"({exc}); the {_gb(part.stat().st_size if part.is_file() else 0)} "
                                       f"already here are kept: run the download again to resume") from exc
                wait = self.retry.delay(max(failures, 1))
                self._emit(state="retrying", message=f"{exc}; retrying in {wait:.1f} s", force=True)
                if self._stop.wait(wait):
                    raise DownloadCancelled("stopped", kept=True) from exc
                continue
            if got < 0:  # the server sent a different file than the range asked for: start it over
                part.unlink(missing_ok=True)
        self._emit(state="verifying", file=f.name, message=f"verifying {f.name}", force=True)
        if not file_checksum_ok(part, f, self._stop.is_set):
            part.unlink(missing_ok=True)
            raise SubspecError(f"{f.name} does not match the hub's checksum ({f.checksum}); the corrupt "
                               f"file was deleted and nothing was installed: run the download again")
        fs.replace(part, _local(work, f))
        return done + f.size

    def _stream(self, url: str, headers: dict, part: Path, have: int, f: hub.RemoteFile, done: int) -> int:
        """One HTTP request for the rest of a file. Returns the bytes written, -1 when the answer cannot
        continue the partial file; raises _Retryable on anything a later try may get past."""
        import httpx2
        from huggingface_hub import errors as hf_errors
        from huggingface_hub.utils import get_session

        if have:
            headers = {**headers, "Range": f"bytes={have}-"}
        timeout = httpx2.Timeout(self.retry.read_timeout_s, connect=self.retry.connect_timeout_s)
        written = 0
        try:
            with get_session().stream("GET", url, headers=headers, timeout=timeout,
                                      follow_redirects=True) as r:
                self._remember_socket(r)
                status = r.status_code
                if status in (401, 403):
                    raise SubspecError(f"{self.repo_id}: access denied ({status}); a gated or private model "
                                       f"needs a token (--token, HF_TOKEN or `hf auth login`)")
                if status == 404:
                    raise SubspecError(f"{self.repo_id}: {f.name} is not on the hub (404)")
                if status == 429 or status >= 500:
                    raise _Retryable(f"the server answered {status}")
                if status == 416:
                    return -1
                if status == 200 and have:
                    return -1  # the server ignored the range: the whole file follows, start it over
                if status == 206 and not r.headers.get("content-range", "").startswith(f"bytes {have}-"):
                    return -1
                if status not in (200, 206):
                    raise SubspecError(f"{self.repo_id}: unexpected answer {status} for {f.name}")
                try:
                    with open(part, "ab") as fh:
                        for chunk in r.iter_bytes():  # as received: a drop loses no buffered bytes
                            if self._stop.is_set():
                                raise DownloadCancelled("stopped", kept=True)
                            fh.write(chunk)
                            written += len(chunk)
                            self._rate.add(len(chunk))
                            self._emit(state="downloading", file=f.name, file_size=f.size,
                                       file_done=have + written, done=done + have + written)
                except OSError as exc:
                    if exc.errno == errno.ENOSPC:
                        raise SubspecError(f"the disk is full while writing {f.name}: free some space and "
                                           f"run the download again; the bytes already written are kept") from exc
                    raise
                if have + written < f.size:
                    raise _Retryable("the connection closed early")
                return written
        except hf_errors.OfflineModeIsEnabled as exc:
            raise SubspecError("offline mode is on (HF_HUB_OFFLINE): unset it to download") from exc
        except httpx2.TransportError as exc:
            if self._stop.is_set():
                raise DownloadCancelled("stopped", kept=True) from exc
            raise _Retryable(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__) from exc
        finally:
            with self._lock:
                self._socket = None

    def _remember_socket(self, response) -> None:
        stream = response.extensions.get("network_stream")
        sock = stream.get_extra_info("socket") if stream is not None else None
        with self._lock:
            self._socket = sock
        if self._stop.is_set():
            self._interrupt()

    def _emit(self, force: bool = False, **changes) -> None:
        if changes.get("state", self._last.state) != self._last.state:
            changes.setdefault("message", "")  # a message belongs to its state ("retrying in 2 s" ends with it)
        self._last = replace(self._last, bytes_per_s=self._rate.value(), **changes)
        now = time.monotonic()
        if self.on_progress and (force or now - self._last_emit >= self.progress_interval_s):
            self._last_emit = now
            self.on_progress(self._last)


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB"
