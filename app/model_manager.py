"""The model manager behind the Models panel: hub searches, downloads, imports, substitute conversions,
deletes and store scans, each on its own Python thread.

It belongs to the main window, not to the panel: closing or hiding the panel leaves every download running,
and closing the window pauses them (their partial files stay for a resume) and joins the threads.

Jobs (downloads, imports, conversions) are described to the GUI by plain dicts, one snapshot per change:
{id, kind: download | import | convert, title, name (the store name), repo_id, revision, state, active,
done, total, fraction (None: no fraction to show), bytes_per_s, eta_s, file, message, error, resumable}.
A worker thread never touches a widget: it emits `_update` on this object, which lives on the GUI thread, so
Qt queues the call there (signals declared `object`, as in app.worker).
"""

from __future__ import annotations

import itertools
import logging
import threading
import traceback
from dataclasses import dataclass, field
from typing import Callable

from PySide6.QtCore import QObject, Signal, Slot

from engine.errors import SubspecError

log = logging.getLogger("subspec.app")

ANY_GGUF = object()  # download_job: a job of any GGUF label (or none)
ACTIVE = frozenset({"queued", "resolving", "downloading", "retrying", "verifying", "installing", "importing",
                    "converting", "pausing", "cancelling"})
JOIN_S = 30.0  # a paused download stops within a second, a conversion after its current layer
CONFIGS_PER_SEARCH = 20  # config.json fetched for the first N hits, for their fit badges


def scan_store() -> dict:
    """The installed models with their disk use (weights and substitute cache), the partial downloads and
    the free space: what the panel lists. It walks folders, so it runs off the GUI thread."""
    from engine import convert, download, store

    models = []
    for m in store.list_models():
        caches = convert.caches_for(m.path)
        models.append({**m.as_json(), "substitute_bytes": sum(store.folder_size(p) for p in caches),
                       "substitute_layers": max((len(list(p.glob("layer-*.pt"))) for p in caches), default=0)})
    partials = [p.as_json() for p in download.partial_downloads()]
    cache = store.folder_size(convert.cache_root())
    root = store.store_root()
    total = sum(m["size_bytes"] for m in models) + sum(p["have_bytes"] for p in partials) + cache
    return {"root": str(root), "models": models, "partials": partials, "substitute_cache_bytes": cache,
            "total_bytes": total, "free_bytes": download.free_bytes(root)}


def _message(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, SubspecError) else f"Unexpected error: {type(exc).__name__}: {exc}"


@dataclass
class _Job:
    snapshot: dict
    thread: threading.Thread | None = None
    download: object | None = None  # engine.download.Download while one runs
    cancel: threading.Event = field(default_factory=threading.Event)  # a conversion's


class ModelManager(QObject):
    job_changed = Signal(object)  # dict: one job's snapshot
    job_removed = Signal(int)  # a job the panel should forget (cancelled, dismissed)
    inventory = Signal(object)  # dict: scan_store()
    search_done = Signal(object)  # {"query", "hits": [SearchHit.as_json()], "error": str}
    # A search hit's config.json, fetched after the hits so the panel can say whether it fits:
    # {"repo_id", "config": dict | None, "error": str}
    config_found = Signal(object)
    # Something was installed, removed or failed: {"kind", "ok", "name", "message"}. The window shows it.
    notice = Signal(object)
    # A repo of GGUF files only, asked for without a choice: {"repo_id", "revision", "choices": {label: bytes}}.
    # Its job is gone; the panel asks which GGUF and downloads that one.
    gguf_choice_needed = Signal(object)
    _update = Signal(object)  # (job id, changes) from a worker thread
    _gguf_choice = Signal(object)
    _scanned = Signal(object)
    _searched = Signal(object)
    _configured = Signal(object)
    _noticed = Signal(object)
    _rescan_request = Signal(object)

    def __init__(self, parent: QObject | None = None, scanner: Callable[[], dict] = scan_store):
        super().__init__(parent)
        self._scanner = scanner
        self._ids = itertools.count(1)
        self.jobs: dict[int, _Job] = {}
        self.last_inventory: dict | None = None
        self.closed = False
        self._lock = threading.Lock()  # the thread list: workers add nothing, the GUI thread both adds and joins
        self._threads: list[threading.Thread] = []
        self._scan_pending = False
        self._scan_again = False
        self._search_seq = 0
        # A hub token typed in the panel, for gated or private models; kept for this session only (not
        # written anywhere). None: HF_TOKEN or `hf auth login`'s token, as the engine finds them.
        self.token: str | None = None
        self._update.connect(self._apply)
        self._scanned.connect(self._on_scanned)
        self._searched.connect(self._on_searched)
        self._configured.connect(self._on_configured)
        self._noticed.connect(self.notice)
        self._gguf_choice.connect(self._on_gguf_choice)
        self._rescan_request.connect(self._on_rescan_request)  # a bound slot: queued to this (GUI) thread

    # --- threads ----------------------------------------------------------------------------------------
    def _start(self, target: Callable[[], None], name: str, joined: bool = True) -> threading.Thread:
        # Daemon threads, so that a hub search stuck on a dead network cannot keep the process alive; every
        # thread that writes to the store is joined in shutdown().
        t = threading.Thread(target=target, name=name, daemon=True)
        if joined:
            with self._lock:
                self._threads = [x for x in self._threads if x.is_alive()] + [t]
        t.start()
        return t

    def _emit(self, signal, payload) -> None:
        """From a worker thread. After shutdown the window may be gone; a late report is simply dropped."""
        try:
            signal.emit(payload)
        except RuntimeError:  # the C++ object was deleted with the window
            pass

    def _notify(self, notice: dict) -> None:
        """From a worker thread: what finished or failed, for the panel's notice line; failures are logged
        too (the log holds every error the app shows)."""
        (log.info if notice["ok"] else log.warning)("%s", notice["message"])
        self._emit(self._noticed, notice)

    # --- the store --------------------------------------------------------------------------------------
    def rescan(self) -> None:
        """Ask for a scan; one at a time, and one more after it when asked again meanwhile."""
        if self.closed:
            return
        if self._scan_pending:
            self._scan_again = True
            return
        self._scan_pending = True

        def work():
            try:
                result = self._scanner()
            except Exception as exc:  # noqa: BLE001 - an unreadable store shows as an error, the app goes on
                log.exception("store scan failed")
                result = {"error": _message(exc), "models": [], "partials": []}
            self._emit(self._scanned, result)

        self._start(work, "models-scan")

    @Slot(object)
    def _on_rescan_request(self, _none) -> None:
        self.rescan()

    @Slot(object)
    def _on_scanned(self, result: dict) -> None:
        self._scan_pending = False
        self.last_inventory = result
        self.inventory.emit(result)
        if self._scan_again:
            self._scan_again = False
            self.rescan()

    @property
    def scanning(self) -> bool:
        return self._scan_pending

    def installed_names(self) -> list[str]:
        return [m["name"] for m in (self.last_inventory or {}).get("models", [])]

    # --- search -----------------------------------------------------------------------------------------
    def search(self, query: str, limit: int = 30) -> None:
        """The answer comes as `search_done`; an older search answering late is dropped."""
        self._search_seq += 1
        seq, token = self._search_seq, self.token

        def work():
            from engine import hub

            try:
                hits, error = [h.as_json() for h in hub.search(query, limit=limit, token_=token)], ""
            except Exception as exc:  # noqa: BLE001 - shown in the panel
                hits, error = [], _message(exc)
            self._emit(self._searched, {"seq": seq, "query": query, "hits": hits, "error": error})
            # Then each hit's config.json (a few KB each), in order, until a newer search starts.
            for h in hits[:CONFIGS_PER_SEARCH]:
                if seq != self._search_seq or self.closed:
                    return
                try:
                    found = {"config": hub.remote_config(h["repo_id"], token_=token), "error": ""}
                except Exception as exc:  # noqa: BLE001 - the badge says it could not tell
                    found = {"config": None, "error": _message(exc)}
                self._emit(self._configured, {"seq": seq, "repo_id": h["repo_id"], **found})

        self._start(work, "models-search", joined=False)  # it only reads

    @Slot(object)
    def _on_configured(self, found: dict) -> None:
        if found["seq"] == self._search_seq:
            self.config_found.emit(found)

    @Slot(object)
    def _on_searched(self, result: dict) -> None:
        if result["seq"] == self._search_seq:
            self.search_done.emit(result)

    # --- jobs -------------------------------------------------------------------------------------------
    def _new_job(self, kind: str, title: str, **fields) -> int:
        jid = next(self._ids)
        snap = {"id": jid, "kind": kind, "title": title, "name": "", "repo_id": "", "revision": None,
                "state": "queued", "active": True, "done": 0, "total": 0, "fraction": None, "bytes_per_s": 0.0,
                "eta_s": None, "file": "", "message": "", "error": "", "resumable": False, **fields}
        self.jobs[jid] = _Job(snap)
        self.job_changed.emit(dict(snap))
        return jid

    @Slot(object)
    def _apply(self, item) -> None:
        jid, changes = item
        job = self.jobs.get(jid)
        if job is None:
            return
        job.snapshot.update(changes)
        job.snapshot["active"] = job.snapshot["state"] in ACTIVE
        self.job_changed.emit(dict(job.snapshot))

    def _report(self, jid: int, **changes) -> None:
        self._emit(self._update, (jid, changes))

    def _failed(self, jid: int, kind: str, subject: str, what: str, exc: BaseException, /, **changes) -> None:
        """From a worker's `except`: the job failed. Its card shows the error (and `changes` to the job),
        the notice line says `what` failed, and an unexpected error (not a SubspecError) goes to the log
        with its traceback."""
        if not isinstance(exc, SubspecError):
            log.error("%s failed\n%s", what, traceback.format_exc())
        self._report(jid, state="failed", error=_message(exc), **changes)
        self._notify({"kind": kind, "ok": False, "name": subject, "message": f"{what} failed: {_message(exc)}"})

    def snapshot(self, jid: int) -> dict | None:
        job = self.jobs.get(jid)
        return dict(job.snapshot) if job else None

    def download_job(self, repo_id: str, gguf=ANY_GGUF) -> int | None:
        """The job of this repo that is running, paused or failed (not one that finished or was cancelled):
        of this GGUF label (None: the repo's safetensors download), by default of any."""
        for jid, job in self.jobs.items():
            s = job.snapshot
            if s["kind"] == "download" and s["repo_id"].lower() == repo_id.lower() and \
                    s["state"] not in ("done", "cancelled") and (gguf is ANY_GGUF or s.get("gguf") == gguf):
                return jid
        return None

    def downloading(self, repo_id: str) -> bool:
        """Whether any download of this repo (any GGUF label) is running now."""
        return any(j.snapshot["kind"] == "download" and j.snapshot["active"]
                   and j.snapshot["repo_id"].lower() == repo_id.lower() for j in self.jobs.values())

    def pending_names(self) -> set[str]:
        """The store names downloads and imports still running or paused will install under."""
        return {j.snapshot["name"] for j in self.jobs.values()
                if j.snapshot["kind"] in ("download", "import") and j.snapshot["name"]
                and j.snapshot["state"] not in ("done", "cancelled", "failed")}

    def download(self, repo_id: str, revision: str | None = None, name: str | None = None,
                 gguf: str | None = None) -> int:
        """Start (or, when its partial files are there, resume) a download; returns its job id. A repo
        already downloading is not started twice: its job id comes back (a paused or failed one resumes).
        `gguf`: which GGUF of a repo of GGUF files (a label of engine.hub.gguf_sets); without it such a repo
        ends its job at once and `gguf_choice_needed` lists the choices."""
        existing = self.download_job(repo_id, gguf)
        if existing is not None:
            if not self.jobs[existing].snapshot["active"]:
                self.resume(existing)
            return existing
        title = f"{repo_id} · {gguf}" if gguf else repo_id
        jid = self._new_job("download", title, repo_id=repo_id, revision=revision, name=name or "", gguf=gguf)
        self._run_download(jid)
        return jid

    @Slot(object)
    def _on_gguf_choice(self, item) -> None:
        jid, choice = item
        job = self.jobs.pop(jid, None)
        if job is not None:
            self.job_removed.emit(jid)
        self.gguf_choice_needed.emit(choice)

    def resume(self, jid: int) -> None:
        job = self.jobs.get(jid)
        if job is None or job.snapshot["kind"] != "download" or job.snapshot["active"]:
            return
        self._apply((jid, {"state": "queued", "error": "", "message": "resuming", "resumable": False}))
        self._run_download(jid)

    def _run_download(self, jid: int) -> None:
        from engine.download import Download

        snap = self.jobs[jid].snapshot
        repo_id = snap["repo_id"]

        def progress(p) -> None:
            self._report(jid, state=p.state, file=p.file, done=p.done, total=p.total,
                         fraction=p.fraction if p.total else None, bytes_per_s=p.bytes_per_s, eta_s=p.eta_s,
                         message=p.message)

        gguf = snap.get("gguf")
        job = Download(repo_id, revision=snap["revision"], name=snap["name"] or None, token=self.token,
                       on_progress=progress, gguf=gguf)
        self.jobs[jid].download = job

        def work():
            from engine.download import DownloadCancelled, partial_downloads
            from engine.hub import GGUFChoiceNeeded

            try:
                info = job.run()
            except GGUFChoiceNeeded as exc:
                if gguf is None:  # nothing was fetched: the panel asks which GGUF
                    self._emit(self._gguf_choice, (jid, {"repo_id": repo_id, "revision": snap["revision"],
                                                         "choices": exc.choices}))
                    return
                self._failed(jid, "download", repo_id, f"Download of {repo_id}", exc, bytes_per_s=0.0, eta_s=None)
            except DownloadCancelled as exc:
                changes = {"state": "paused" if exc.kept else "cancelled", "message": str(exc),
                           "bytes_per_s": 0.0, "eta_s": None, "resumable": exc.kept}
                if exc.kept:  # pin the commit the partial files belong to, so a resume continues them
                    for p in partial_downloads():
                        if p.repo_id == repo_id and p.gguf == gguf:
                            changes.update(revision=p.commit, name=p.name, done=p.have_bytes, total=p.total_bytes,
                                           fraction=p.have_bytes / p.total_bytes if p.total_bytes else None)
                self._report(jid, **changes)
            except Exception as exc:  # noqa: BLE001 - shown on the job's card; the thread ends cleanly
                kept = [p for p in partial_downloads() if p.repo_id == repo_id and p.gguf == gguf]
                changes = {"bytes_per_s": 0.0, "eta_s": None, "resumable": bool(kept)}
                if kept:
                    changes.update(revision=kept[0].commit, name=kept[0].name)
                self._failed(jid, "download", repo_id, f"Download of {repo_id}", exc, **changes)
            else:
                self._report(jid, state="done", name=info.name, fraction=1.0, bytes_per_s=0.0, eta_s=None,
                             message=f"Installed as {info.name}")
                self._notify({"kind": "download", "ok": True, "name": info.name,
                              "message": f"Downloaded and installed {info.name}"})
            self._emit(self._rescan_request, None)

        self.jobs[jid].thread = self._start(work, f"download-{repo_id}")

    def pause(self, jid: int) -> None:
        job = self.jobs.get(jid)
        if job is not None and job.download is not None and job.snapshot["active"]:
            self._apply((jid, {"state": "pausing", "message": "pausing"}))
            job.download.pause()

    def cancel(self, jid: int) -> None:
        """A running download stops and deletes its partial files; a paused or failed one's files are
        deleted here; a conversion stops after its current layer (those finished stay cached); an import
        stops after its current file or tensor and installs nothing."""
        job = self.jobs.get(jid)
        if job is None:
            return
        s = job.snapshot
        if s["kind"] in ("convert", "import"):
            if s["active"]:
                where = "this layer" if s["kind"] == "convert" else "this file or tensor"
                self._apply((jid, {"state": "cancelling", "message": f"stopping after {where}"}))
                job.cancel.set()
            return
        if s["kind"] != "download":
            return
        if s["active"] and job.download is not None:
            self._apply((jid, {"state": "cancelling", "message": "cancelling"}))
            job.download.cancel()
            return
        self.dismiss(jid)
        if s["resumable"]:
            self.discard_partial(s["repo_id"], s.get("gguf"))

    def dismiss(self, jid: int) -> None:
        """Forget a finished, failed or paused job (a paused one's files stay, listed as a partial)."""
        job = self.jobs.get(jid)
        if job is not None and not job.snapshot["active"]:
            del self.jobs[jid]
            self.job_removed.emit(jid)
            if job.snapshot["resumable"]:
                self.rescan()  # its files now show among the partial downloads

    def discard_partial(self, repo_id: str, gguf: str | None = None) -> None:
        """Delete the partial files of this repo's download (of this GGUF label; None: its safetensors one)."""
        def work():
            from engine.download import discard_partial

            try:
                discard_partial(repo_id, gguf)
            except OSError as exc:
                self._notify({"kind": "discard", "ok": False, "name": repo_id,
                              "message": f"Could not delete the partial download of {repo_id}: {exc}"})
            self._emit(self._rescan_request, None)

        self._start(work, "models-discard")

    def import_model(self, source: str, name: str | None = None) -> int:
        from pathlib import Path

        jid = self._new_job("import", Path(source).name, name=name or "", state="importing",
                            message=f"checking {source}")

        cancel = self.jobs[jid].cancel

        def work():
            from engine import store
            from engine.gguf_import import ImportCancelled

            try:
                info = store.import_model(source, name, progress=lambda msg: self._report(jid, message=msg),
                                          cancel=cancel, fraction=lambda f: self._report(jid, fraction=f))
            except ImportCancelled as exc:
                self._report(jid, state="cancelled", message=str(exc))
            except Exception as exc:  # noqa: BLE001 - shown on the job's card
                self._failed(jid, "import", source, f"Import of {source}", exc)
            else:
                late = " (the cancel came after the last step; Delete removes it)" if cancel.is_set() else ""
                self._report(jid, state="done", name=info.name, fraction=1.0,
                             message=f"Installed as {info.name}{late}")
                self._notify({"kind": "import", "ok": True, "name": info.name,
                              "message": f"Imported {info.name}"})
            self._emit(self._rescan_request, None)

        self.jobs[jid].thread = self._start(work, "models-import")
        return jid

    def convert(self, name: str, nbits: int | None = None, group_size: int = 64, dtype: str | None = None) -> int:
        """Build and cache a stored model's substitutes (engine.convert). `nbits`: one width for every layer,
        or None for what the app's loads here will use (the plan's: 8-bit where VRAM allows). `dtype`: what
        the app's loads compute in (None: bfloat16 with CUDA, float32 without, as engine.loading's "auto")."""
        for jid, job in self.jobs.items():
            if job.snapshot["kind"] == "convert" and job.snapshot["name"] == name and job.snapshot["active"]:
                return jid
        jid = self._new_job("convert", name, name=name, state="converting",
                            message=f"loading {name}", total=0)
        cancel = self.jobs[jid].cancel

        def work():
            from engine import convert, store
            from engine.substitute import bits_label

            try:
                compute = dtype
                if compute is None:
                    import torch

                    compute = "bfloat16" if torch.cuda.is_available() else "float32"
                info = store.get_model(name)
                bits = convert.planned_bits(info.path) if nbits is None else nbits
                label = bits_label(bits)

                def progress(done, total):
                    self._report(jid, done=done, total=total, fraction=done / total if total else None,
                                 message=f"building {label} substitutes: layer {done} of {total}")

                caches = convert.convert(info.path, bits, group_size, progress, cancel, dtype=compute)
            except convert.ConvertCancelled as exc:
                self._report(jid, state="cancelled", message=str(exc))
            except Exception as exc:  # noqa: BLE001 - shown on the model's card
                self._failed(jid, "convert", name, f"Building the substitutes of {name}", exc)
            else:
                layers = len({i for c in caches for i in c.cached_layers()})
                self._report(jid, state="done", fraction=1.0, message=f"{layers} layers of substitutes cached")
            self._emit(self._rescan_request, None)

        self.jobs[jid].thread = self._start(work, f"convert-{name}")
        return jid

    def delete_model(self, name: str) -> None:
        """Remove a stored model and its substitute caches (the caller has asked the user)."""
        def work():
            from engine import convert, store
            from engine.cli_models import human_bytes

            try:
                info = store.get_model(name)
                freed = info.size_bytes + convert.remove_caches(info.path)
                store.remove_model(name)
            except Exception as exc:  # noqa: BLE001 - e.g. a file another program holds open
                self._notify({"kind": "delete", "ok": False, "name": name,
                              "message": f"Could not delete {name}: {_message(exc)}"})
            else:
                self._notify({"kind": "delete", "ok": True, "name": name,
                              "message": f"Deleted {name} ({human_bytes(freed)} freed)"})
            self._emit(self._rescan_request, None)

        self._start(work, "models-delete")

    # --- the end ----------------------------------------------------------------------------------------
    def running(self) -> list[dict]:
        return [dict(j.snapshot) for j in self.jobs.values() if j.snapshot["active"]]

    def shutdown(self, timeout_s: float = JOIN_S) -> list[str]:
        """Pause every download (its partial files stay: the next start lists it to resume), stop every
        conversion after its current layer, and join the threads. Returns the names of threads still running
        after `timeout_s` (an import stops after its current file or tensor; a temporary folder left by one
        that did not is dropped at the next import)."""
        self.closed = True
        for job in self.jobs.values():
            if job.snapshot["active"]:
                if job.download is not None:
                    job.download.pause()
                job.cancel.set()
        with self._lock:
            threads = list(self._threads)
        import time

        deadline = time.monotonic() + timeout_s
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        left = [t.name for t in threads if t.is_alive()]
        if left:
            log.warning("still running at exit: %s", ", ".join(left))
        return left
