"""Serve API's settings: the port, the local network (only with a key), an API key, allowed web pages; kept
across starts, applied to a running server at once, and a hand-edited settings file never stops the switch."""

import json
import socket
import threading
import urllib.error
import urllib.request

import pytest
from app_fakes import PROMPT, FakeBackend, recorded_answer
from PySide6.QtCore import QSettings, Qt
from PySide6.QtWidgets import QDialogButtonBox

from app import api_settings
from app.api_settings import ApiSettings, parse_origins


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(url, key=None, origin=None, host=None):
    """(status, headers, body) of a chat completion at `url` (a base URL ending in /v1)."""
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    if origin:
        headers["Origin"] = origin
    if host:
        headers["Host"] = host
    body = json.dumps({"messages": [{"role": "user", "content": PROMPT}], "max_tokens": 16}).encode()
    req = urllib.request.Request(url + "/chat/completions", body, headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.headers, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, json.loads(exc.read())


def settings_dialog(window):
    window.api.settings_action.trigger()
    dialog = window.api.dialog
    assert dialog is not None and dialog.isVisible()
    return dialog


def press_ok(dialog):
    dialog.findChild(QDialogButtonBox).button(QDialogButtonBox.StandardButton.Ok).click()


def local(window) -> str:
    return f"http://127.0.0.1:{window.api.api.server.server_address[1]}/v1"


def test_the_settings_round_trip_and_garbage_reads_as_the_defaults(tmp_path):
    settings = QSettings(str(tmp_path / "s.ini"), QSettings.Format.IniFormat)
    assert api_settings.load(settings) == ApiSettings()  # nothing saved: this computer, port 8642, no key
    mine = ApiSettings(port=9000, network=True, api_key="k3y", origins=("https://chat.example.com",))
    api_settings.save(settings, mine)
    settings.sync()
    assert api_settings.load(QSettings(str(tmp_path / "s.ini"), QSettings.Format.IniFormat)) == mine
    for port in ("lots", "99999", "-1", "1e999"):
        settings.setValue("serve_api/port", port)
        assert api_settings.load(settings).port == 8642
    settings.setValue("serve_api/port", 9000)
    settings.setValue("serve_api/api_key", "")  # a network server without a key: served on this computer only
    assert api_settings.load(settings) == ApiSettings(port=9000, origins=("https://chat.example.com",))
    settings.setValue("serve_api/api_key", "two words")
    assert api_settings.load(settings) == ApiSettings(port=9000, origins=("https://chat.example.com",))
    settings.setValue("serve_api/api_key", "")
    settings.setValue("serve_api/origins", "* https://chat.example.com")  # any page, without a key: not that
    assert api_settings.load(settings).origins == ("https://chat.example.com",)
    (tmp_path / "hand.ini").write_text("[serve_api]\norigins=https://a.example, https://b.example\n")
    by_hand = QSettings(str(tmp_path / "hand.ini"), QSettings.Format.IniFormat)  # typed by hand, with a comma
    assert api_settings.load(by_hand).origins == ("https://a.example", "https://b.example")


def test_origins_are_checked_where_they_are_typed():
    assert parse_origins(" https://chat.example.com,http://localhost:3000  * ") == \
        ("https://chat.example.com", "http://localhost:3000", "*")
    assert parse_origins("") == ()
    for bad in ("chat.example.com", "https://chat.example.com/path", "http://"):
        with pytest.raises(ValueError, match="is not a web page's origin"):
            parse_origins(f"http://ok.example {bad}")
    assert "needs an API key" in ApiSettings(network=True).problem()
    assert ApiSettings(network=True, api_key="k").problem() is None
    for anyone in ("*", "null"):  # any website the user visits, or any sandboxed frame
        assert "needs an API key" in ApiSettings(origins=(anyone,)).problem()
        assert ApiSettings(origins=(anyone,), api_key="k").problem() is None
    for bad in ("two words", "clé", "tab\tkey"):  # a header is latin-1: a non-ASCII key could never match
        assert "ASCII" in ApiSettings(api_key=bad).problem()


def test_a_key_set_while_serving_applies_at_once_and_is_kept(qtbot, make_window):
    window = make_window()
    port = free_port()
    dialog = settings_dialog(window)
    dialog.port.setValue(port)
    press_ok(dialog)
    assert not dialog.isVisible() and window.api.port == port
    window.api.action.trigger()
    assert window.api.running and window.api.url == f"http://127.0.0.1:{port}/v1"
    assert request(window.api.url)[0] == 200  # no key yet: any program on this computer

    dialog = settings_dialog(window)
    assert dialog.port.value() == port  # the dialog shows what is in use
    dialog.api_key.setText("s3cret")
    press_ok(dialog)
    assert window.api.running  # restarted with the key, on the same port
    assert window.api.label.text().startswith(f"API http://127.0.0.1:{port}/v1 (key)")
    status, _headers, body = request(window.api.url)
    assert status == 401 and body["error"]["code"] == "invalid_api_key"
    assert request(window.api.url, key="wrong")[0] == 401
    status, _headers, body = request(window.api.url, key="s3cret")
    assert status == 200 and body["choices"][0]["message"]["content"] == recorded_answer()
    window.close()

    again = make_window()  # kept across starts
    assert (again.api.config.port, again.api.config.api_key) == (port, "s3cret")
    assert "with the API key" in again.api.action.toolTip()


def test_the_network_needs_a_key_and_then_serves_other_hosts(qtbot, make_window):
    window = make_window()
    dialog = settings_dialog(window)
    dialog.port.setValue(free_port())
    dialog.network.setChecked(True)
    press_ok(dialog)  # no key: refused where it was typed, nothing lost, nothing saved
    assert dialog.isVisible() and "needs an API key" in dialog.problem.text() and not dialog.problem.isHidden()
    assert not window.api.config.network and dialog.network.isChecked()
    dialog.generate.click()
    key = dialog.api_key.text()
    assert len(key) >= 24
    press_ok(dialog)
    assert not dialog.isVisible() and window.api.config.network and window.api.config.api_key == key

    window.api.action.trigger()
    assert window.api.api.server.server_address[0] == "0.0.0.0"  # every interface
    assert "0.0.0.0" not in window.api.url  # an address other computers can use
    assert "(network, key)" in window.api.label.text() and "127.0.0.1" in window.api.label.toolTip()
    # Another computer names this one by its own address: no loopback Host check on the network.
    assert request(local(window), key=key, host="studio.lan:8642")[0] == 200
    assert request(local(window), host="studio.lan:8642")[0] == 401


def test_allowed_web_pages_may_call_it_from_a_browser(qtbot, make_window):
    window = make_window()
    window.api.port = 0
    window.api.action.trigger()
    status, _headers, body = request(window.api.url, origin="https://chat.example.com")
    assert status == 403 and body["error"]["code"] == "origin_not_allowed"
    assert "Serve API settings" in body["error"]["message"]  # where the app's user allows it
    dialog = settings_dialog(window)
    dialog.port.setValue(free_port())
    dialog.origins.setText("chat.example.com")  # not an origin: said, and kept in the box
    press_ok(dialog)
    assert dialog.isVisible() and "is not a web page's origin" in dialog.problem.text()
    assert dialog.origins.text() == "chat.example.com"
    dialog.origins.setText("https://chat.example.com")
    press_ok(dialog)
    status, headers, _body = request(window.api.url, origin="https://chat.example.com")
    assert status == 200 and headers["Access-Control-Allow-Origin"] == "https://chat.example.com"
    assert request(window.api.url, origin="https://evil.example.com")[0] == 403


def test_cancel_changes_nothing(qtbot, make_window):
    window = make_window()
    before = window.api.config
    dialog = settings_dialog(window)
    dialog.port.setValue(9999)
    dialog.api_key.setText("x")
    dialog.reject()
    assert window.api.config == before and window.api.dialog is None
    assert api_settings.load(window.settings) == before


def test_settings_changed_mid_answer_apply_when_the_answer_ends(qtbot, make_window):
    gate = threading.Event()
    window = make_window(backend=FakeBackend(gate=gate))
    window.api.port = free_port()
    window.api.action.trigger()
    before = window.api.api
    dialog = settings_dialog(window)
    press_ok(dialog)  # nothing changed: the server (and whatever it is answering) is left alone
    assert window.api.api is before
    with qtbot.waitSignal(window.host.token, timeout=5000):
        qtbot.keyClicks(window.prompt, PROMPT)
        qtbot.keyClick(window.prompt, Qt.Key.Key_Return)  # held after its first token until the gate opens
    port = free_port()
    dialog = settings_dialog(window)
    dialog.port.setValue(port)
    press_ok(dialog)  # the worker is busy: the new server cannot start now
    assert not window.api.running and window.api.label.text() == "Restarting after this answer"
    with qtbot.waitSignal(window.host.finished, timeout=5000):
        gate.set()
    qtbot.waitUntil(lambda: window.api.running, timeout=5000)
    assert window.api.url == f"http://127.0.0.1:{port}/v1" and window.api.action.isChecked()
    assert request(window.api.url)[0] == 200
