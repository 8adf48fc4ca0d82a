"""The "Serve API" switch on the fake engine: engine.server on loopback, its requests run by the app's worker."""

import json
import re
import socket
import threading
import time
import urllib.error
import urllib.request

from dataclasses import replace

import pytest
from app_fakes import PROMPT, FakeBackend, endless_events, recorded_answer
from PySide6.QtCore import Qt

from app import api_settings

URL = re.compile(r"^http://127\.0\.0\.1:(\d+)/v1$")


@pytest.fixture
def api_window(make_window):
    def make(**kw):
        window = make_window(**kw)
        window.api.port = 0  # an ephemeral port: tests never collide with a real server on 8642
        return window
    return make


def turn_on(window):
    assert window.api.action.isEnabled()
    window.api.action.trigger()
    assert window.api.running and window.api.action.isChecked()
    return int(URL.match(window.api.url).group(1))


def post(url, body, timeout=10):
    req = urllib.request.Request(url + "/chat/completions", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return resp.status, resp.read().decode()


def chat(url, **extra):
    status, raw = post(url, {"messages": [{"role": "user", "content": PROMPT}], **extra})
    assert status == 200
    return json.loads(raw)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def refused(port):
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def send(qtbot, window, text=PROMPT):
    qtbot.keyClicks(window.prompt, text)
    qtbot.keyClick(window.prompt, Qt.Key.Key_Return)


def test_the_switch_serves_a_chat_completion_through_the_apps_worker(qtbot, api_window):
    window = api_window()
    with qtbot.waitSignal(window.host.finished, timeout=5000):
        send(qtbot, window)  # a chat answer first: its thread is the model's thread
    port = turn_on(window)
    assert port > 0 and window.api.label.text() == f"API {window.api.url} · 0 requests"
    assert window.api.label in window.statusBar().findChildren(type(window.api.label))  # the toolbar is full
    assert not window.api.label.isHidden()

    answer = chat(window.api.url, max_tokens=64)
    assert answer["object"] == "chat.completion" and answer["model"] == "FakeLM-1M"
    assert answer["choices"][0]["message"] == {"role": "assistant", "content": recorded_answer()}
    assert answer["choices"][0]["finish_reason"] == "stop"
    assert answer["usage"]["completion_tokens"] == 7
    qtbot.waitUntil(lambda: window.api.served == 1, timeout=5000)
    assert window.api.label.text() == f"API {window.api.url} · 1 request"

    # The server's tokenizer made the prompt; the app's worker thread, the one chat uses, ran it.
    [(prompt_ids, max_tokens)] = window.backend.api_calls
    assert max_tokens == 64 and prompt_ids == window.backend.lm.encode_messages([{"role": "user", "content": PROMPT}])
    assert window.backend.api_thread_ids == window.backend.thread_ids[:1]
    assert window.transcript.toPlainText().count(recorded_answer()) == 1  # API answers stay out of the chat

    status, raw = post(window.api.url, {"messages": [{"role": "user", "content": "hi"}], "stream": True})
    text = "".join(json.loads(line[6:])["choices"][0]["delta"].get("content", "")
                   for line in raw.splitlines() if line.startswith("data: {"))
    assert status == 200 and text == recorded_answer() and raw.rstrip().endswith("data: [DONE]")
    qtbot.waitUntil(lambda: window.api.served == 2, timeout=5000)
    assert window.api.label.text().endswith("· 2 requests")


def test_a_chat_answer_waiting_for_an_api_request_says_so(qtbot, api_window):
    gate = threading.Event()
    window = api_window(backend=FakeBackend(gate=gate))
    turn_on(window)
    got = []
    client = threading.Thread(target=lambda: got.append(chat(window.api.url)), daemon=True)
    with qtbot.waitSignal(window.host.api_busy, timeout=5000):
        client.start()  # held after its first event until the gate opens
    with qtbot.waitSignal(window.host.api_busy, timeout=5000):  # (the chat waits behind it)
        send(qtbot, window)
        assert window.busy and window.stats_label.text() == "waiting for an API request to finish …"
        gate.set()
    qtbot.waitUntil(lambda: not window.busy and bool(got), timeout=5000)
    assert window.stats_label.text().endswith("s") and "waiting" not in window.stats_label.text()


def test_api_requests_wait_for_the_chat_answer_in_progress(qtbot, api_window):
    gate = threading.Event()
    window = api_window(backend=FakeBackend(gate=gate))
    turn_on(window)
    with qtbot.waitSignal(window.host.token, timeout=5000):
        send(qtbot, window)  # held after its first token until the gate opens
    got = []
    client = threading.Thread(target=lambda: got.append(chat(window.api.url)), daemon=True)
    client.start()
    qtbot.wait(300)
    assert window.busy and window.backend.api_calls == []  # queued behind the chat answer, not beside it
    with qtbot.waitSignal(window.host.finished, timeout=5000):
        gate.set()
    qtbot.waitUntil(lambda: bool(got), timeout=5000)
    assert got[0]["choices"][0]["message"]["content"] == recorded_answer()
    assert len(set(window.backend.thread_ids + window.backend.api_thread_ids)) == 1


def test_turning_it_off_frees_the_port(qtbot, api_window):
    window = api_window()
    port = turn_on(window)
    chat(window.api.url)
    window.api.action.trigger()
    assert not window.api.running and not window.api.action.isChecked() and window.api.label.text() == ""
    assert window.api.label.isHidden()  # nothing to say: no empty slot in the status bar
    refused(port)
    with socket.socket() as s:  # the port can be taken again
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen()
    window.api.port = port
    assert turn_on(window) == port  # and served again
    assert chat(window.api.url)["choices"][0]["message"]["content"] == recorded_answer()


def test_closing_the_window_stops_the_server(qtbot, api_window):
    window = api_window()
    port = turn_on(window)
    chat(window.api.url)
    window.close()
    assert not window.api.running
    refused(port)


def test_closing_the_window_cancels_a_running_api_request(qtbot, api_window):
    window = api_window(backend=FakeBackend(events=endless_events, delay_s=0.01))
    port = turn_on(window)
    got = []

    def client():
        try:
            got.append(post(window.api.url, {"messages": [{"role": "user", "content": "go"}], "max_tokens": 5000}))
        except (urllib.error.HTTPError, OSError) as exc:
            got.append(exc)

    threading.Thread(target=client, daemon=True).start()
    qtbot.waitUntil(lambda: bool(window.backend.api_calls), timeout=5000)
    started = time.monotonic()
    window.close()
    assert time.monotonic() - started < 5
    refused(port)
    qtbot.waitUntil(lambda: bool(got), timeout=5000)
    assert isinstance(got[0], Exception)  # 503, or the connection closed: never a hang
    assert window.api.served == 0


def test_switching_models_keeps_serving_on_the_new_one(qtbot, api_window):
    """The server serves the loaded model: the port closes while another loads and opens again on it (a
    client pointed at the app keeps working across a switch, as with LM Studio's server)."""
    window = api_window()
    port = turn_on(window)
    window.api.port = port  # (port 0 picked it once; the next start reopens that one)
    with qtbot.waitSignal(window.host.loaded, timeout=5000):
        window.switch_model("FakeLM-2M")
        assert not window.api.running and window.api.action.isChecked()  # paused while it loads
        assert window.api.label.text() == "API paused: no model loaded"
        refused(port)
    assert window.api.running and window.api.action.isChecked() and window.api.url == f"http://127.0.0.1:{port}/v1"
    assert chat(window.api.url)["choices"][0]["message"]["content"] == recorded_answer()


def test_unloading_pauses_serving_and_turning_it_off_meanwhile_cancels(qtbot, api_window):
    window = api_window()
    port = turn_on(window)
    with qtbot.waitSignal(window.host.unloaded, timeout=5000):
        window.unload_model()
    refused(port)
    assert window.api.action.isChecked() and window.api.action.isEnabled()  # it can be turned off meanwhile
    with qtbot.waitSignal(window.host.loaded, timeout=5000):
        window._retry_load()  # Load again
    assert window.api.running
    with qtbot.waitSignal(window.host.unloaded, timeout=5000):
        window.unload_model()
    window.api.action.trigger()  # off while paused
    assert not window.api.action.isChecked() and not window.api.action.isEnabled() and window.api.label.isHidden()
    with qtbot.waitSignal(window.host.loaded, timeout=5000):
        window._retry_load()
    assert not window.api.running and not window.api.action.isChecked()


def test_serving_is_kept_across_starts(qtbot, make_window):
    window = make_window()
    window.api.config = replace(window.api.config, port=free_port())
    api_settings.save(window.settings, window.api.config)
    turn_on(window)
    window.close()
    again = make_window()  # on when last closed: on again once the model is loaded
    assert again.api.running and chat(again.api.url)["choices"][0]["message"]["content"] == recorded_answer()
    again.api.action.trigger()
    again.close()
    assert not make_window().api.running  # turned off: stays off


def test_a_port_taken_at_start_up_is_said_once(qtbot, make_window, dialogs):
    window = make_window()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        window.api.config = replace(window.api.config, port=taken.getsockname()[1])
        api_settings.save(window.settings, window.api.config)
        api_settings.save_serving(window.settings, True)
        window.close()
        again = make_window()
        assert not again.api.running and not again.api.action.isChecked()
        assert "already in use" in dialogs.shown[-1]["text"]
        again.close()
        shown = len(dialogs.shown)
        make_window()
        assert len(dialogs.shown) == shown  # not at every start: the switch was left off


def test_requests_fit_the_context_the_chat_has(qtbot, api_window):
    """On a GPU the plan's KV cache, not the model's own context: a longer request would run out of memory
    mid-answer instead of being told its size."""
    window = api_window(backend=FakeBackend(context_limit=300))  # the model's own: 8192
    turn_on(window)
    with pytest.raises(urllib.error.HTTPError) as refused_:
        post(window.api.url, {"messages": [{"role": "user", "content": "x" * 400}]})
    body = json.loads(refused_.value.read())
    assert refused_.value.code == 400 and "context of 300 tokens" in body["error"]["message"]
    assert window.backend.api_calls == []
    assert chat(window.api.url)["choices"][0]["message"]["content"]  # a short one is answered


def test_a_port_in_use_says_so_and_the_switch_goes_back_off(qtbot, api_window, dialogs):
    window = api_window()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        window.api.port = taken.getsockname()[1]
        window.api.action.trigger()
        assert not window.api.running and not window.api.action.isChecked()
        assert window.api.action.isEnabled()
    [shown] = dialogs.shown
    assert shown["title"] == "Serve API" and "already in use" in shown["text"]
    assert str(window.api.port) in shown["text"]
    assert window.api.label.text() == "Not serving" and "already in use" in window.api.label.toolTip()


def test_the_switch_is_off_until_a_model_is_loaded(qtbot, api_window):
    window = api_window(wait_loaded=False)
    assert not window.api.action.isEnabled()
    qtbot.waitUntil(lambda: window.model_name is not None, timeout=5000)
    assert window.api.action.isEnabled()


def test_api_requests_decode_like_the_chat(qtbot, api_window):
    """With the SubSpec switch on, API requests use SubSpec and the chat's tree; switching it off (or
    changing the tree) applies to the next request."""
    window = api_window(backend=FakeBackend(capabilities={"cuda": True, "subspec": True}))
    assert window.method.toggle.isChecked()  # on by default on a GPU
    window.method.depth.setValue(24)
    turn_on(window)
    methods = [chat(window.api.url, max_tokens=16)["usage"]["subspec"]["method"]]
    window.method.toggle.setChecked(False)
    methods.append(chat(window.api.url, max_tokens=16)["usage"]["subspec"]["method"])
    window.method.toggle.setChecked(True)
    window.method.width.setValue(4)
    window.method.auto.setChecked(False)
    methods.append(chat(window.api.url, max_tokens=16)["usage"]["subspec"]["method"])
    assert methods == ["subspec", "vanilla", "subspec"]  # what the usage says is what decoded it
    assert window.backend.api_decoding == [{"method": "subspec", "depth": 24, "width": 6, "auto": True},
                                           {"method": "vanilla"},
                                           {"method": "subspec", "depth": 24, "width": 4, "auto": False}]


def test_a_request_whose_client_left_while_it_waited_is_never_run(qtbot, api_window):
    """The server only notices a client gone between two events; a request queued behind a chat answer has
    none yet, so the worker used to run it (a whole prefill, for no one) once the chat was done."""
    gate = threading.Event()
    window = api_window(backend=FakeBackend(gate=gate))
    port = turn_on(window)
    with qtbot.waitSignal(window.host.token, timeout=5000):
        send(qtbot, window)  # held after its first token until the gate opens
    body = json.dumps({"messages": [{"role": "user", "content": "go"}]}).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        qtbot.wait(300)  # queued behind the chat answer
    qtbot.wait(600)  # the server polls its waiting clients (engine.server.POLL_S)
    with qtbot.waitSignal(window.host.finished, timeout=5000):
        gate.set()
    assert chat(window.api.url, max_tokens=4)["usage"]["completion_tokens"] == 4  # still serving, and
    assert len(window.backend.api_calls) == 1  # only that request ran


def test_ollamas_clients_are_served_too(qtbot, api_window):
    import ollama

    window = api_window()
    with qtbot.waitSignal(window.host.finished, timeout=5000):
        send(qtbot, window)
    turn_on(window)
    client = ollama.Client(host=window.api.url.removesuffix("/v1"), timeout=10)
    r = client.chat(model="FakeLM-1M", messages=[{"role": "user", "content": PROMPT}], options={"num_predict": 32})
    assert r.message.content == recorded_answer() and r.done_reason == "stop" and r.eval_count == 7
    [(prompt_ids, max_tokens)] = window.backend.api_calls  # run by the app's worker, like an OpenAI request
    assert max_tokens == 32 and prompt_ids == window.backend.lm.encode_messages([{"role": "user", "content": PROMPT}])
    qtbot.waitUntil(lambda: window.api.served == 1, timeout=5000)
