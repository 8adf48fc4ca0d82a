"""The engine worker (owns the model, lives on one long-lived QThread) and its GUI-thread host.

Signals that cross the thread are declared `object`, not `dict`/`list`: PySide converts those to
QVariantMap/QVariantList, which drops non-string keys and turns tuples into lists.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import threading
import traceback
from dataclasses import asdict
from typing import Callable

from PySide6.QtCore import QObject, QThread, Signal, Slot

from engine.convert import ConvertCancelled
from engine.errors import Stopped, SubspecError
from engine.events import summarize

from .backend import NO_CAPABILITIES, Backend, EngineFactory, torch_backend

ModelLister = Callable[[], list[str]]


def store_models() -> list[str]:
    from engine.store import list_models

    return [m.name for m in list_models()]


def describe_model(engine: Backend, options: dict | None = None) -> dict:
    """What the hardware panel plans from: config.json as a dict, the hardware profile the load planned
    from, the options the load was asked for (resident_layers, reserve_gb), the resident layers it got and
    its notes (all but the name optional on a backend; copied, so the two threads never share a mutable
    object)."""
    def copy(value):
        return json.loads(json.dumps(value)) if value is not None else None

    resident = getattr(engine, "resident_layers", None)
    return {"name": engine.name, "config": copy(getattr(engine, "config", None)),
            "profile": copy(getattr(engine, "plan_profile", None)), "options": copy(dict(options or {})),
            "resident_layers": None if resident is None else int(resident),
            "notes": [str(n) for n in getattr(engine, "notes", None) or []]}


def _trim_heap() -> None:
    """glibc keeps freed memory for the process (most of a model's tensors come from its heap, past its
    mmap threshold): hand it back to the system, so that unloading shows as free RAM. Elsewhere a no-op."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # musl and others: no malloc_trim
            pass


class EngineWorker(QObject):
    capabilities = Signal(object)  # dict {"cuda": bool, "subspec": bool}, just before `loaded`
    model_info = Signal(object)  # dict (describe_model) for the hardware panel, just before `loaded`
    loaded = Signal(str)  # model display name
    progress = Signal(str)  # what a slow load is doing
    token = Signal(str)  # text to append to the answer
    step = Signal(object)  # dict: one StepEvent
    finished = Signal(object)  # dict: text, new_tokens, tokens_per_s, ttft_s, finish_reason, ...
    failed = Signal(str, str)  # message for the user, details (traceback)
    models = Signal(object)  # list[str]: the store's model names
    missing_model = Signal(str)  # a load failed because no model is installed at all; the error
    api_served = Signal(object)  # dict: an API request (app.api_server) answered to its end
    api_busy = Signal(bool)  # an API request runs (True) or is done (False): a chat answer waits meanwhile
    unloaded = Signal()  # the model is gone and its memory freed
    prompt_progress = Signal(int, int)  # the chat's prompt read so far: tokens read, tokens in all

    def __init__(self, engine_factory: EngineFactory | None = None,
                 stop_event: threading.Event | None = None, model_lister: ModelLister | None = None):
        super().__init__()
        self._factory = engine_factory or torch_backend
        self._lister = model_lister or store_models
        self._engine: Backend | None = None
        self.stop_event = stop_event or threading.Event()

    @Slot()
    def list_models(self) -> list[str]:
        """Reads the store here, off the GUI thread: it walks folders that may sit on a slow disk."""
        try:
            names = list(self._lister())
        except Exception:  # noqa: BLE001 - an unreadable store lists as empty; loading will say why
            names = []
        self.models.emit(names)
        return names

    @Slot(str, object)
    def load(self, model: str, options: dict | None = None) -> None:
        """`options`: the factory's keyword arguments (the hardware panel's resident_layers, reserve_gb);
        none for a plain load, so factories that take none keep working."""
        self._engine = None  # let the old model go before the new one takes its memory
        options = dict(options or {})
        try:
            if options:
                self._engine = self._factory(model, self.progress.emit, **options)
            else:
                self._engine = self._factory(model, self.progress.emit)
        except Exception as exc:  # noqa: BLE001 - the worker must survive anything a load raises
            names = self.list_models()  # a first load may have imported the default model meanwhile
            if isinstance(exc, SubspecError) and not names and os.sep not in model and "/" not in model:
                self.missing_model.emit(str(exc))
            else:
                self._fail(exc)
            return
        self.list_models()
        if hasattr(type(self._engine), "stop_event"):  # (TorchBackend: Stop also ends a draft build)
            self._engine.stop_event = self.stop_event
        if hasattr(type(self._engine), "prompt_progress"):  # (TorchBackend: a long prompt's reading)
            self._engine.prompt_progress = self.prompt_progress.emit
        caps = getattr(self._engine, "capabilities", None) or NO_CAPABILITIES
        self.capabilities.emit({k: bool(v) for k, v in caps.items()})
        self.model_info.emit(describe_model(self._engine, options))
        self.loaded.emit(self._engine.name)

    @Slot()
    def unload(self) -> None:
        """Let the model go and give its memory back (RAM, and VRAM to the driver: other programs see it)."""
        self._engine = None
        if "torch" in sys.modules:  # nothing of torch to free if no model ever loaded it
            from engine.loading import free_device_memory

            free_device_memory()  # collects, then empties the CUDA cache
        else:
            gc.collect()
        _trim_heap()
        self.unloaded.emit()

    @Slot(object, object)
    def generate(self, messages: list[dict], params: dict) -> None:
        if self._engine is None:
            self.failed.emit("No model is loaded.", "")
            return
        stopped = False
        events = None
        prompt_tokens = 0
        notes: list[str] = []  # what the engine changed to answer (kept with the answer's stats)

        def relay(evs):
            nonlocal stopped
            if self.stop_event.is_set():
                stopped = True
                return
            for ev in evs:
                if ev.note:
                    notes.append(ev.note)
                self.step.emit(asdict(ev))
                if ev.text:
                    self.token.emit(ev.text)
                yield ev
                if self.stop_event.is_set() and not ev.finish_reason:
                    stopped = True
                    return

        try:
            prompt_tokens, events = self._engine.stream(list(messages), dict(params))
            method = params.get("method", "vanilla")
            extra = {"model": self._engine.name}
            if method == "subspec":
                extra.update(depth=params.get("depth"), width=params.get("width"), auto=bool(params.get("auto")))
            # A backend may bring its own clock: the tests' fake replays recorded timings on a virtual one.
            result = summarize(relay(events), prompt_tokens, method, clock=getattr(self._engine, "clock", None),
                               extra=extra)
        except (ConvertCancelled, Stopped) as exc:  # Stop before a word: an answer stopped, not an error
            result = summarize(iter(()), prompt_tokens, params.get("method", "vanilla"),
                               extra={"model": self._engine.name})
            stopped = True
            notes.append(f"stopped while building the SubSpec draft: {exc}" if isinstance(exc, ConvertCancelled)
                         else "stopped while the prompt was read (what was read is kept for the next answer)")
        except Exception as exc:  # noqa: BLE001 - any engine failure becomes a dialog, not a dead thread
            self._fail(exc)
            return
        finally:
            close = getattr(events, "close", None)
            if close:
                close()  # ends the answer now (its KV cache freed, or kept for the next turn), not when collected
        summary = {k: v for k, v in result.as_json().items() if k != "token_ids"}
        if stopped:
            summary["finish_reason"] = "stopped"
        if notes:
            summary["notes"] = notes
        context = getattr(self._engine, "context_limit", None)
        if context:  # the context the prompt was fitted into: the window's context meter
            summary["context_tokens"] = int(context)
        self.finished.emit(summary)

    @property
    def engine(self) -> Backend | None:
        return self._engine

    @Slot(object)
    def serve(self, call) -> None:
        """One API request (an app.api_server.ApiCall): its events go back to the server's thread through
        the call, never to the chat's signals. Runs here, between chat answers, so the two never overlap."""
        events = None
        new_tokens = 0
        try:
            if call.cancel.is_set():
                return  # the client left, or the server stopped, while it waited behind other work
            self.api_busy.emit(True)
            generate = getattr(self._engine, "generate_ids", None)
            if generate is None:
                raise SubspecError("No model is loaded." if self._engine is None
                                   else f"model {self._engine.name} cannot be served over the API")
            decoding = getattr(call, "decoding", None) or {"method": "vanilla"}
            if hasattr(type(self._engine), "api_cancel"):  # (TorchBackend: a client gone stops a long prefill)
                self._engine.api_cancel = call.cancel
            events = generate(list(call.prompt_ids), call.max_tokens, call.sampling, tuple(call.stops),
                              decoding)
            for ev in events:
                call.put(ev)
                new_tokens += len(ev.token_ids)
                if call.cancel.is_set() and not ev.finish_reason:
                    return
        except Stopped:  # cancelled while its prompt was read (a client gone, the server closing)
            call.put(SubspecError("the request was cancelled while its prompt was read"))
            return
        except Exception as exc:  # noqa: BLE001 - the request answers with it; the worker goes on
            call.put(exc)
            return
        finally:
            close = getattr(events, "close", None)
            if close:
                close()
            call.end()
            self.api_busy.emit(False)  # (also after a request that never ran: harmless)
        self.api_served.emit({"prompt_tokens": len(call.prompt_ids), "new_tokens": new_tokens})

    def _fail(self, exc: Exception) -> None:
        details = "".join(traceback.format_exception(exc))
        message = str(exc) if isinstance(exc, SubspecError) else f"Unexpected error: {type(exc).__name__}: {exc}"
        self.failed.emit(message, details)


class EngineHost(QObject):
    """The GUI thread's handle on the worker: starts its thread, forwards requests, and re-emits the
    worker's signals from the GUI thread, so any receiver (even a lambda) runs there."""

    capabilities = Signal(object)
    model_info = Signal(object)
    loaded = Signal(str)
    progress = Signal(str)
    token = Signal(str)
    step = Signal(object)
    finished = Signal(object)
    failed = Signal(str, str)
    models = Signal(object)
    missing_model = Signal(str)
    api_served = Signal(object)
    api_busy = Signal(bool)
    unloaded = Signal()
    prompt_progress = Signal(int, int)
    _load = Signal(str, object)
    _unload = Signal()
    _list = Signal()
    _generate = Signal(object, object)
    _serve = Signal(object)

    def __init__(self, engine_factory: EngineFactory | None = None, parent: QObject | None = None,
                 model_lister: ModelLister | None = None):
        super().__init__(parent)
        # Held here, not only on the worker: the worker's C++ side is deleted when the thread ends.
        self.stop_event = threading.Event()
        self.thread = QThread()
        self.thread.setObjectName("engine")
        self.worker = EngineWorker(engine_factory, self.stop_event, model_lister)
        self.worker.moveToThread(self.thread)
        self._load.connect(self.worker.load)
        self._list.connect(self.worker.list_models)
        self._generate.connect(self.worker.generate)
        self._serve.connect(self.worker.serve)
        self._unload.connect(self.worker.unload)
        for name in ("capabilities", "model_info", "loaded", "progress", "token", "step", "finished", "failed",
                     "models", "missing_model", "api_served", "api_busy", "unloaded", "prompt_progress"):
            getattr(self.worker, name).connect(getattr(self, name))
        self.thread.finished.connect(self.worker.deleteLater)
        self.thread.start()

    def load(self, model: str, options: dict | None = None) -> None:
        """`options`: see EngineWorker.load."""
        self._load.emit(model, dict(options or {}))

    def unload(self) -> None:
        """The answer arrives as `unloaded`."""
        self._unload.emit()

    def list_models(self) -> None:
        """The answer arrives as `models`."""
        self._list.emit()

    def generate(self, messages: list[dict], params: dict) -> None:
        # Cleared here, not in the worker, so a Stop pressed before the worker picks the request up counts.
        self.stop_event.clear()
        self._generate.emit([dict(m) for m in messages], dict(params))

    def serve(self, call) -> None:
        """Queue an API request (app.api_server.ApiCall) behind whatever the worker is doing. Thread-safe:
        the API server calls this from its own thread."""
        self._serve.emit(call)

    def loaded_engine(self) -> Backend | None:
        """The worker's engine, for the API server to read its name and tokenizer. Use it only while the
        worker is idle; everything that runs the model goes through the worker."""
        return self.worker.engine

    def stop(self) -> None:
        self.stop_event.set()

    def shutdown(self) -> None:
        """Stop any answer, end the thread and wait for it. A model load cannot be interrupted, so this
        may wait for one to finish; returning earlier would destroy a running QThread."""
        if self.thread.isRunning():
            self.stop()
            self.thread.quit()
            self.thread.wait()
