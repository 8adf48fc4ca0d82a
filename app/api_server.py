"""The toolbar's "Serve API" switch: the loaded model behind engine.server's OpenAI-compatible API (on
127.0.0.1 unless its settings say otherwise: app.api_settings), without a second thread running the model.

engine.server has its own model thread; here it only relays. Its `generate` is an ApiBridge that hands
each request to the app's EngineWorker (a queued signal, EngineHost.serve) and waits for the StepEvents
the worker puts back, so chat answers and API requests run one at a time on the one thread that owns the
model. engine.server imports torch, so it is imported when the switch is first turned on, not with the
window.
"""

from __future__ import annotations

import errno
import queue
import socket
import threading
from dataclasses import replace
from typing import Callable

from PySide6.QtCore import QObject, Qt, Signal
from PySide6.QtGui import QAction
from PySide6.QtWidgets import QLabel, QMenu, QStatusBar, QToolBar, QToolButton

from engine.errors import SubspecError

from . import api_settings
from .api_settings import ApiSettings, ApiSettingsDialog

_END = object()


class ApiCall:
    """One API request on its way to the app's worker and its events on their way back.

    The worker calls put() per StepEvent, put(exc) on an error, end() last; it stops between two steps
    once `cancel` is set (the client went away, or the server is stopping)."""

    def __init__(self, prompt_ids: list, max_tokens: int, sampling, stops: tuple, decoding: dict | None = None,
                 cancel: threading.Event | None = None):
        self.prompt_ids, self.max_tokens, self.sampling, self.stops = prompt_ids, max_tokens, sampling, stops
        self.decoding = decoding or {"method": "vanilla"}  # the window's method when the request came
        # The server's own cancel for the request: a client gone while this waits behind a chat answer is
        # skipped by the worker (the server only notices between events, and there are none yet).
        self.cancel = cancel if cancel is not None else threading.Event()
        self._items: queue.Queue = queue.Queue()

    def put(self, item) -> None:
        self._items.put(item)

    def end(self) -> None:
        self._items.put(_END)

    def take(self):
        return self._items.get()


class ApiBridge:
    """engine.server's GenerateFn: runs on the server's relay thread and blocks there, never on the GUI's
    or the model's thread."""

    def __init__(self, dispatch: Callable[[ApiCall], None]):
        self._dispatch = dispatch
        self._lock = threading.Lock()
        self._calls: set[ApiCall] = set()
        self._closed = False
        # The chat's decoding method, replaced (never mutated) from the GUI thread, read by relay threads.
        self.decoding: dict = {"method": "vanilla"}
        self._next: dict | None = None  # what next_method() said the next request decodes with

    def next_method(self) -> str:
        """The method the next request decodes with, taken now and used by it (engine.server's model
        thread asks just before it starts the request, on the thread that then runs it): what its usage
        reports is what decoded it, even if the window's switch moves in between."""
        self._next = self.decoding
        return self._next.get("method", "vanilla")

    accepts_cancel = True  # engine.server passes each request's cancel event

    def __call__(self, prompt_ids, max_tokens, sampling, stops, cancel: threading.Event | None = None):
        # A generator from the first line, so the server's closing() always reaches the finally below.
        decoding, self._next = self._next or self.decoding, None
        call = ApiCall(list(prompt_ids), max_tokens, sampling, tuple(stops), decoding, cancel)
        try:
            with self._lock:
                if self._closed:
                    raise _shutting_down()
                self._calls.add(call)
            self._dispatch(call)
            while (item := call.take()) is not _END:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            call.cancel.set()  # a no-op after the end; otherwise the worker stops at its next step
            with self._lock:
                self._calls.discard(call)

    def close(self) -> None:
        """Cancel every request: the waiting ones answer 503 at once, the running one stops at its next step."""
        with self._lock:
            self._closed = True
            calls = list(self._calls)
        for call in calls:
            # The 503 first: a worker that sees the cancel ends the call, and nothing after its end is read.
            call.put(_shutting_down())
            call.cancel.set()


def _shutting_down() -> Exception:
    from engine.server import ApiError

    return ApiError(503, "the server is shutting down", "server_error")


class LocalApi:
    """engine.server serving one app engine through the app's worker; start() raises OSError when the
    port is taken and SubspecError when the engine cannot be served."""

    def __init__(self, engine, dispatch: Callable[[ApiCall], None], config: ApiSettings,
                 decoding: dict | None = None):
        from engine.server import Backend, SubspecServer

        if getattr(engine, "lm", None) is None or not callable(getattr(engine, "generate_ids", None)):
            raise SubspecError(f"model {getattr(engine, 'name', '?')} cannot be served over the API")
        problem = config.problem()
        if problem:  # (the dialog and load() never hand over such settings; refused here too)
            raise SubspecError(problem)
        self.bridge = ApiBridge(dispatch)
        if decoding:
            self.bridge.decoding = dict(decoding)
        # Backend copies the tokenizer for the server's handler threads; the caller makes sure the worker
        # is idle meanwhile (the switch only turns on between answers).
        # Requests decode like the chat (the bridge's `decoding`): their usage says which method that was.
        # Requests fit the context the chat does: on a GPU the KV cache the plan reserved, not the model's own
        # (a longer request would run out of memory mid-answer instead of being told its size).
        backend = Backend(engine.lm, generate=self.bridge, name=engine.name, method=self.bridge.next_method,
                          context=getattr(engine, "context_limit", None))
        # (Only origins: the dialog accepts nothing else, and load() drops what a hand-edited file garbled.)
        self.server = SubspecServer(backend, config.host, config.port, api_key=config.api_key or None, quiet=True,
                                    cors_origins=config.origins)
        self.server.allow_origin_hint = "add {origin} to SubSpec Studio's Serve API settings, Allowed web pages"
        self.server.start()
        self.config = config

    @property
    def url(self) -> str:
        """The base URL clients use: on the network, this computer's address there (the server listens on
        0.0.0.0, which is no address to connect to)."""
        if self.config.network:
            port = self.server.server_address[1]
            return f"http://{api_settings.network_address() or socket.gethostname()}:{port}/v1"
        return self.server.url + "/v1"

    def close(self) -> None:
        self.bridge.close()
        self.server.close()


class ApiSwitch(QObject):
    """The checkable "Serve API" action (a split button: its arrow opens the settings) and the label beside
    it (the address and requests served)."""

    failed = Signal(str, str)  # title, message

    def __init__(self, toolbar: QToolBar, status_bar: QStatusBar, host, settings=None):
        """The button goes in the toolbar; the label in the status bar (the toolbar has no room left for an
        address), shown only while it says something. `settings`: the QSettings its settings live in (None:
        the defaults, not kept)."""
        super().__init__(toolbar)
        self.host = host
        self.settings = settings
        self.config = api_settings.load(settings) if settings is not None else ApiSettings()
        self.api: LocalApi | None = None
        self.served = 0
        self.decoding: dict = {"method": "vanilla"}
        self.dialog: ApiSettingsDialog | None = None
        self.action = QAction("Serve API", toolbar)
        self.action.setCheckable(True)
        self.action.toggled.connect(self._toggled)
        self.settings_action = QAction("Settings…", toolbar)
        self.settings_action.setObjectName("serve_api_settings")
        self.settings_action.triggered.connect(self.edit_settings)
        menu = QMenu(toolbar)
        menu.addAction(self.settings_action)
        self.button = QToolButton()
        self.button.setDefaultAction(self.action)
        self.button.setPopupMode(QToolButton.ToolButtonPopupMode.MenuButtonPopup)
        self.button.setMenu(menu)
        toolbar.addWidget(self.button)
        self._describe()
        self.label = QLabel("")
        self.label.setContentsMargins(4, 0, 4, 0)
        self.label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)  # copy the URL
        status_bar.addPermanentWidget(self.label)
        self.label.hide()
        self._available = False
        # Serving is wanted but waits for the worker: a model is loading (or none is loaded), or new settings
        # came mid-answer. Kept across starts: the app serves again once its model is loaded, as it was left.
        self._resume = settings is not None and api_settings.load_serving(settings)
        if self._resume:
            self._set_checked(True)
            self._say("API starts when the model is loaded", "Serve API was on when the app last closed")
        self._enable()
        host.api_served.connect(self._on_served)

    @property
    def port(self) -> int:
        return self.config.port

    @port.setter
    def port(self, port: int) -> None:  # (tests serve on port 0: whichever is free)
        self.config = replace(self.config, port=port)

    def _describe(self) -> None:
        where = ("other computers on the network too, with the API key" if self.config.network
                 else "this computer only" + (", with the API key" if self.config.api_key else ""))
        self.action.setToolTip(f"Serve the loaded model on an OpenAI-compatible API (at /v1, and Ollama's at /api) "
                               f"on port {self.config.port} ({where}); API requests and chat answers take turns. "
                               f"The arrow: settings")

    def edit_settings(self) -> None:
        """Opens the settings dialog (not modal to the code: tests and the event loop go on); OK saves them
        and restarts a running server with them."""
        dialog = self.dialog = ApiSettingsDialog(self.config, self.button.window())
        dialog.finished.connect(lambda _result: self._settings_done(dialog))
        dialog.open()

    def _settings_done(self, dialog: ApiSettingsDialog) -> None:
        if self.dialog is dialog:
            self.dialog = None
        dialog.deleteLater()
        if dialog.result_settings is None or dialog.result_settings == self.config:  # cancelled, or no change
            return
        self.config = dialog.result_settings
        if self.settings is not None:
            api_settings.save(self.settings, self.config)
        self._describe()
        if self.running:
            self._close_server()
            if self._available:
                self.start()
            else:  # mid-answer: the worker is busy; serve again, with these settings, once it is free
                self._resume = True
                self._say("Restarting after this answer", "Serve API starts again with its new settings when the "
                                                           "answer in progress ends")

    @property
    def running(self) -> bool:
        return self.api is not None

    @property
    def url(self) -> str | None:
        return self.api.url if self.api else None

    def set_decoding(self, params: dict) -> None:
        """API requests decode like the chat: SubSpec (with its tree) when the chat's switch is on. A
        change applies to requests that arrive afterwards."""
        self.decoding = dict(params)
        if self.api is not None:
            self.api.bridge.decoding = dict(params)

    def set_available(self, available: bool) -> None:
        """Whether it may turn on now (a model is loaded and the worker idle); turning off always may."""
        self._available = available
        self._enable()
        if available and self._resume:
            self._resume = False
            self.start()

    def start(self) -> bool:
        if self.api is not None:
            return True
        engine = self.host.loaded_engine()
        if engine is None or not self._available:
            self._fail("Serve API", "Load a model first; the API serves the model loaded here.")
            return False
        try:
            self.api = LocalApi(engine, self.host.serve, self.config, self.decoding)
        except OSError as exc:
            where = f"{self.config.host}:{self.config.port}"
            if exc.errno == errno.EADDRINUSE:
                message = (f"Port {self.config.port} is already in use ({where}), perhaps by another SubSpec "
                           f"server. Stop that program, or choose another port (the arrow beside Serve API, "
                           f"Settings…), then turn Serve API on again.")
            else:
                message = f"Cannot serve on {where}: {exc.strerror or exc}"
            self._fail("Serve API", message)
            return False
        except SubspecError as exc:
            self._fail("Serve API", str(exc))
            return False
        self.served = 0
        self._show()
        self._set_checked(True)
        return True

    def stop(self) -> None:
        """Stops serving and frees the port; blocks until the server's threads are done (well under a second:
        a running request is cancelled at its next step)."""
        self._resume = False
        self._close_server()
        self._say("", "")
        self._set_checked(False)
        self._enable()

    def pause(self) -> None:
        """The model it serves is going (another is loading, or it is unloaded): the port closes, and serving
        starts again on the next model loaded, as LM Studio's server stays on across models. The switch stays
        on meanwhile; turning it off cancels."""
        if self.running:
            self._close_server()
            self._resume = True
            self._say("API paused: no model loaded", "Serve API starts again when a model is loaded")
        self._enable()

    def _close_server(self) -> None:
        api, self.api = self.api, None
        if api is not None:
            api.close()

    def _enable(self) -> None:
        self.action.setEnabled(self._available or self.running or self._resume)

    def _remember(self, serving: bool) -> None:
        if self.settings is not None:
            api_settings.save_serving(self.settings, serving)

    def _toggled(self, on: bool) -> None:
        """The user's click: what it leaves is what the next start of the app does."""
        if on:
            self._remember(self.start())
        else:
            self.stop()
            self._remember(False)

    def _set_checked(self, on: bool) -> None:
        blocked = self.action.blockSignals(True)
        self.action.setChecked(on)
        self.action.blockSignals(blocked)

    def _fail(self, title: str, message: str) -> None:
        self._resume = False
        self._remember(False)  # (a port taken at start-up is said once, not at every start)
        self._set_checked(False)
        self._say("Not serving", message)
        self._enable()
        self.failed.emit(title, message)

    def _on_served(self, _summary=None) -> None:
        if self.api is not None:
            self.served += 1
            self._show()

    def _show(self) -> None:
        n = self.served
        how = (" (network, key)" if self.config.network else " (key)" if self.config.api_key else "")
        tip = ("The OpenAI-compatible API's base URL and the requests it has answered (Ollama's clients: the same "
               "address without /v1)")
        if self.config.network:
            tip += f"; on this computer also http://127.0.0.1:{self.api.server.server_address[1]}/v1"
        self._say(f"API {self.api.url}{how} · {n} request{'' if n == 1 else 's'}", tip)

    def _say(self, text: str, tip: str) -> None:
        self.label.setText(text)
        self.label.setToolTip(tip)
        self.label.setVisible(bool(text))
