"""Serve API's settings: the port, whether other computers may connect (then only with an API key), an
optional API key on this computer too, and the web pages allowed to call it from a browser (CORS).

What LM Studio's, Jan's and Ollama's servers let a user set (their port, "serve on local network", an API
key, allowed origins), kept in QSettings. A value a hand-edited settings file makes unreadable reads as its
default, so the switch always starts.
"""

from __future__ import annotations

import secrets
import socket
from dataclasses import dataclass, replace

from PySide6.QtWidgets import (QCheckBox, QDialog, QDialogButtonBox, QFormLayout, QHBoxLayout, QLabel,
                               QLineEdit, QPushButton, QSpinBox, QVBoxLayout, QWidget)

from engine.origins import is_origin  # (standard library only: no torch at start-up)

API_PORT = 8642  # engine.server.DEFAULT_PORT, without importing it (and torch) at start-up
LOOPBACK = "127.0.0.1"  # this computer only: no other machine can connect
EVERYWHERE = "0.0.0.0"  # every IPv4 interface: the local network (and whatever else can reach this machine)
GROUP = "serve_api"


@dataclass(frozen=True)
class ApiSettings:
    port: int = API_PORT
    network: bool = False  # listen on every interface, not only this computer's loopback
    api_key: str = ""  # required as "Authorization: Bearer <key>" when set; always set when `network`
    origins: tuple[str, ...] = ()  # web page origins allowed besides this computer's own pages ("*": any)

    @property
    def host(self) -> str:
        return EVERYWHERE if self.network else LOOPBACK

    def problem(self) -> str | None:
        """Why these settings cannot be served (None: they can). (Port 0, any free port, is the tests'.)"""
        if not 0 <= self.port <= 65535:
            return f"The port must be a number from 1 to 65535, not {self.port}."
        key = self.api_key.strip()
        if self.network and not key:
            return ("Serving to other computers needs an API key: without one, anyone who can reach this "
                    "computer could use the model. Make one with Generate.")
        if not key and {"*", "null"} & set(self.origins):
            return ("Allowing any web page (* or null) needs an API key: without one, any website open in your "
                    "browser could use the model and read its answers. Make one with Generate.")
        if key and not (key.isascii() and key.isprintable() and " " not in key):
            return "An API key can hold letters, digits and ASCII punctuation only (no spaces)."
        return None


def load(settings) -> ApiSettings:
    default = ApiSettings()
    try:
        port = int(settings.value(f"{GROUP}/port", default.port))
    except (TypeError, ValueError, OverflowError):
        port = default.port
    network = settings.value(f"{GROUP}/network", "false")
    key = settings.value(f"{GROUP}/api_key", "")
    origins = settings.value(f"{GROUP}/origins", "")
    if isinstance(origins, list):  # an INI file's "a, b" reads back as a list
        origins = " ".join(str(o) for o in origins)
    loaded = ApiSettings(port=port if 1 <= port <= 65535 else default.port,
                         network=network is True or str(network).lower() == "true",
                         api_key=key.strip() if isinstance(key, str) else "",
                         origins=tuple(o for o in origins.split() if is_origin(o)) if isinstance(origins, str) else ())
    # Settings that could not be served as they are (a hand-edited file: a network server or any web page
    # without a key) fall back to this computer and to this computer's pages.
    if loaded.problem():
        loaded = replace(loaded, network=False, origins=tuple(o for o in loaded.origins if o not in ("*", "null")))
    return loaded if loaded.problem() is None else replace(loaded, api_key="")


def save(settings, api: ApiSettings) -> None:
    settings.setValue(f"{GROUP}/port", api.port)
    settings.setValue(f"{GROUP}/network", "true" if api.network else "false")
    settings.setValue(f"{GROUP}/api_key", api.api_key)
    settings.setValue(f"{GROUP}/origins", " ".join(api.origins))


def load_serving(settings) -> bool:
    """Whether Serve API was on when the app last closed (the switch's state, not one of its settings)."""
    return str(settings.value(f"{GROUP}/serving", "false")).lower() == "true"


def save_serving(settings, serving: bool) -> None:
    settings.setValue(f"{GROUP}/serving", "true" if serving else "false")


def parse_origins(text: str) -> tuple[str, ...]:
    """Origins separated by spaces or commas; ValueError naming the first that is not one."""
    origins = tuple(dict.fromkeys(o for o in text.replace(",", " ").split()))
    for origin in origins:
        if not is_origin(origin):
            raise ValueError(f"{origin!r} is not a web page's origin: write it as the browser's address bar "
                             f"starts, like http://localhost:3000 or https://chat.example.com (or * for any page)")
    return origins


def network_address() -> str | None:
    """This computer's address on its local network (the interface its default route leaves by), for the
    URL other computers use; None when it has no network. A UDP connect sends nothing."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("10.255.255.255", 1))
            address = probe.getsockname()[0]
    except OSError:
        return None
    return None if address.startswith(("0.", "127.")) else address


class ApiSettingsDialog(QDialog):
    """Edits ApiSettings; `result_settings` holds what OK accepted. OK stays on the dialog with the reason
    while the settings cannot be served, so nothing typed is lost."""

    def __init__(self, current: ApiSettings, parent: QWidget | None = None):
        super().__init__(parent)
        self.setWindowTitle("Serve API settings")
        self.setMinimumWidth(540)
        self.result_settings: ApiSettings | None = None
        self.port = QSpinBox()
        self.port.setRange(1, 65535)  # (below 1024 needs administrator rights on Linux and macOS: said at start)
        self.port.setValue(min(max(current.port, 1), 65535))
        self.port.setAccessibleName("Port")
        self.network = QCheckBox("Other computers on my network may use it")
        self.network.setChecked(current.network)
        self.network.setToolTip("Listen on every network interface, not only this computer's. Requests then need "
                                "the API key")
        self.api_key = QLineEdit(current.api_key)
        self.api_key.setAccessibleName("API key")
        self.api_key.setPlaceholderText("none: any program on this computer may use it")
        self.api_key.setToolTip("Clients send it as 'Authorization: Bearer <key>' (an OpenAI client's api_key). "
                                "Kept in the app's settings file")
        self.generate = QPushButton("Generate")
        self.generate.setToolTip("A new random key")
        self.generate.clicked.connect(lambda: self.api_key.setText(secrets.token_urlsafe(24)))
        key_row = QHBoxLayout()
        key_row.addWidget(self.api_key, 1)
        key_row.addWidget(self.generate)
        self.origins = QLineEdit(" ".join(current.origins))
        self.origins.setAccessibleName("Allowed web pages")
        self.origins.setPlaceholderText("e.g. https://chat.example.com  (pages on this computer always may)")
        self.origins.setToolTip("Web pages that may call the API from a browser (CORS), separated by spaces; * for "
                                "any. Pages served from this computer (localhost) and desktop apps always may")
        form = QFormLayout()
        form.addRow("Port", self.port)
        form.addRow("", self.network)
        form.addRow("API key", key_row)
        form.addRow("Allowed web pages", self.origins)
        self.problem = QLabel("")
        self.problem.setWordWrap(True)
        self.problem.setStyleSheet("color: #c62828")
        self.problem.hide()
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.problem)
        layout.addWidget(buttons)

    def settings(self) -> ApiSettings:
        """What the boxes say; ValueError with the reason when it cannot be served."""
        api = ApiSettings(port=self.port.value(), network=self.network.isChecked(),
                          api_key=self.api_key.text().strip(), origins=parse_origins(self.origins.text()))
        why = api.problem()
        if why:
            raise ValueError(why)
        return api

    def accept(self) -> None:
        try:
            self.result_settings = self.settings()
        except ValueError as exc:
            self.problem.setText(str(exc))
            self.problem.show()
            return
        super().accept()
