"""The OpenAI-compatible server as real clients see it: the official `openai` client and raw HTTP on loopback,
against a tiny model. Greedy answers must equal the engine's own, streamed or not, alone or under load."""

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import openai
import pytest
from tiny_models import make_tiny_model_folder

from engine.cli import main as cli_main
from engine.events import StepEvent
from engine.generate import generate_plain
from engine.loading import load_model
from engine.server import Backend, SubspecServer
from engine.speculative import TreeShape
from engine.substitute import build_draft

PROMPTS = ["hello there", "the cat sat on", "abc", "what is 2+2?", "tell me a story", "zzz", "Once upon",
           "x y z"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_tiny_model_folder(tmp_path_factory.mktemp("srv") / "tiny-llama", "llama")


@pytest.fixture(scope="module")
def lm(folder):
    return load_model(folder, "float32", "cpu")


@pytest.fixture(scope="module")
def server(lm):
    with SubspecServer(Backend(lm), port=0).start() as srv:
        yield srv


def client(srv, key="unused"):
    return openai.OpenAI(base_url=srv.url + "/v1", api_key=key, max_retries=0, timeout=60)


def chat(c, model, prompt, **kw):
    return c.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                     temperature=0, **kw)


def stream_chat(c, model, prompt, **kw):
    """(text, finish_reason, usage) of a streamed chat completion."""
    parts, finish, usage = [], None, None
    for chunk in chat(c, model, prompt, stream=True, stream_options={"include_usage": True}, **kw):
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            parts.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    return "".join(parts), finish, usage


def raw(srv, method, path, body=None, headers=None):
    host, port = srv.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        data = r.read()
    finally:
        conn.close()
    return r.status, json.loads(data) if data else None


def engine_text(lm, ids, n):
    return "".join(ev.text for ev in generate_plain(lm, ids, n))


# ---------------------------------------------------------------- answers


def test_models(server, lm):
    c = client(server)
    assert [m.id for m in c.models.list().data] == [lm.name]
    assert c.models.retrieve(lm.name).id == lm.name
    with pytest.raises(openai.NotFoundError):
        c.models.retrieve("no-such-model")


def test_chat_streamed_equals_non_streamed_and_the_engine(server, lm):
    c = client(server)
    for prompt in PROMPTS[:3]:
        r = chat(c, lm.name, prompt, max_tokens=24)
        text = r.choices[0].message.content
        assert text == engine_text(lm, lm.encode(prompt), 24)
        assert r.object == "chat.completion" and r.choices[0].message.role == "assistant"
        streamed, finish, usage = stream_chat(c, lm.name, prompt, max_tokens=24)
        assert streamed == text and finish == r.choices[0].finish_reason
        for u in (r.usage, usage):
            assert u.prompt_tokens == len(lm.encode(prompt))
            assert u.total_tokens == u.prompt_tokens + u.completion_tokens
            stats = u.model_extra["subspec"]
            assert stats["method"] == "vanilla" and stats["tau"] == 1.0 and stats["tokens_per_s"] >= 0
            assert stats["speedup_estimate"] is None  # nothing measured, nothing claimed


def test_stream_sends_one_delta_per_step(server, lm):
    """Each StepEvent's text goes out as its own chunk, as it is produced."""
    host, port = server.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=30)
    body = {"model": lm.name, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10,
            "temperature": 0, "stream": True}
    conn.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
    r = conn.getresponse()
    assert r.status == 200 and r.getheader("Content-Type").startswith("text/event-stream")
    events = [line for line in r.read().decode().split("\n\n") if line]
    conn.close()
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
    texts = [ev.text for ev in generate_plain(lm, lm.encode("hi"), 10) if ev.text]
    assert [ch["choices"][0]["delta"].get("content") for ch in chunks[1:-1]] == texts
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_completions_use_no_chat_template(server, lm):
    c = client(server)
    r = c.completions.create(model=lm.name, prompt="Once upon a time", max_tokens=16, temperature=0)
    expected = engine_text(lm, lm.encode("Once upon a time", chat=False), 16)
    assert r.object == "text_completion" and r.choices[0].text == expected
    assert r.usage.prompt_tokens == len(lm.encode("Once upon a time", chat=False))
    parts = [ch.choices[0].text for ch in c.completions.create(model=lm.name, prompt="Once upon a time",
                                                               max_tokens=16, temperature=0, stream=True)]
    assert "".join(parts) == expected


def test_max_tokens_gives_length(server, lm):
    r = chat(client(server), lm.name, "hello there", max_tokens=5)
    assert r.usage.completion_tokens == 5 and r.choices[0].finish_reason == "length"


def test_stop_strings(server, lm):
    c = client(server)
    full = chat(c, lm.name, "the cat sat on", max_tokens=40).choices[0].message.content
    assert len(full) > 12
    stop = full[8:10]
    expected = full[:full.index(stop)]
    for value in (stop, [stop, "never-seen-string"]):
        r = chat(c, lm.name, "the cat sat on", max_tokens=40, stop=value)
        assert r.choices[0].message.content == expected and r.choices[0].finish_reason == "stop"
        assert stream_chat(c, lm.name, "the cat sat on", max_tokens=40, stop=value)[:2] == (expected, "stop")


def test_eos_gives_stop(server, lm):
    c = client(server)
    ids = [t for ev in generate_plain(lm, lm.encode("abc"), 20) for t in ev.token_ids]
    eos = ids[6]
    lm.eos_token_ids = lambda: {eos}
    try:
        r = chat(c, lm.name, "abc", max_tokens=20)
    finally:
        del lm.eos_token_ids
    assert r.choices[0].finish_reason == "stop" and r.usage.completion_tokens == ids.index(eos)


def test_seeded_sampling_repeats(server, lm):
    c = client(server)
    kw = dict(model=lm.name, messages=[{"role": "user", "content": "hi"}], max_tokens=20, temperature=1.0,
              top_p=0.9, seed=1234)
    a, b = (c.chat.completions.create(**kw).choices[0].message.content for _ in range(2))
    assert a == b


def test_penalties_are_the_engines(server, lm):
    from engine.sampling import SamplingParams

    c = client(server)
    ids = lm.encode("hi")
    for kw, engine_kw in ((dict(repetition_penalty=3.0), None), (dict(presence_penalty=1.5, frequency_penalty=0.5), None),
                          (dict(repeat_penalty=3.0), dict(repetition_penalty=3.0)),  # llama.cpp's names
                          (dict(repeat_penalty=3.0, repetition_penalty=None), dict(repetition_penalty=3.0)),
                          (dict(repeat_penalty=3.0, repeat_last_n=4), dict(repetition_penalty=3.0, penalty_last_n=4)),
                          (dict(repeat_penalty=3.0, repeat_last_n=-1), dict(repetition_penalty=3.0))):
        r = c.chat.completions.create(model=lm.name, messages=[{"role": "user", "content": "hi"}], max_tokens=20,
                                      temperature=0, extra_body=kw)
        expected = "".join(ev.text for ev in generate_plain(lm, ids, 20, SamplingParams(**(engine_kw or kw))))
        assert r.choices[0].message.content == expected != engine_text(lm, ids, 20), kw
    r = c.chat.completions.create(model=lm.name, messages=[{"role": "user", "content": "hi"}], max_tokens=20,
                                  temperature=0, extra_body=dict(repeat_penalty=3.0, repeat_last_n=0))
    assert r.choices[0].message.content == engine_text(lm, ids, 20)  # llama.cpp's 0: no penalties


def test_eight_concurrent_clients_get_their_own_answers(server, lm):
    c = client(server)
    expected = {p: chat(c, lm.name, p, max_tokens=20).choices[0].message.content for p in PROMPTS}
    answers, errors = {}, []
    start = threading.Barrier(len(PROMPTS))

    def ask(i, prompt):
        try:
            mine = client(server)
            start.wait()
            if i % 2:
                answers[prompt] = stream_chat(mine, lm.name, prompt, max_tokens=20)[0]
            else:
                answers[prompt] = chat(mine, lm.name, prompt, max_tokens=20).choices[0].message.content
        except Exception as exc:  # surfaced below: an exception in a thread would otherwise vanish
            errors.append(exc)

    threads = [threading.Thread(target=ask, args=(i, p)) for i, p in enumerate(PROMPTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and answers == expected


# ---------------------------------------------------------------- SubSpec


@pytest.fixture(scope="module")
def spec_server(lm):
    backend = Backend(lm, build_draft(lm.decoder, 4, 64), TreeShape(4, 2))
    assert backend.measure_baseline(16) is not None
    with SubspecServer(backend, port=0).start() as srv:
        yield srv


def test_greedy_subspec_answers_equal_plain_ones(server, spec_server, lm):
    plain, spec = client(server), client(spec_server)
    for prompt in PROMPTS[:3]:
        want = chat(plain, lm.name, prompt, max_tokens=30)
        got = chat(spec, lm.name, prompt, max_tokens=30)
        assert got.choices[0].message.content == want.choices[0].message.content
        assert got.choices[0].finish_reason == want.choices[0].finish_reason
        assert stream_chat(spec, lm.name, prompt, max_tokens=30)[0] == want.choices[0].message.content
        stats = got.usage.model_extra["subspec"]
        assert stats["method"] == "subspec" and stats["tau"] >= 1.0
        assert stats["speedup_estimate"] is not None and stats["baseline_tokens_per_s"] > 0
    r = spec.completions.create(model=lm.name, prompt="abc", max_tokens=20, temperature=0)
    assert r.choices[0].text == engine_text(lm, lm.encode("abc", chat=False), 20)


# ---------------------------------------------------------------- errors


def _chat_body(**kw):
    return {"model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}], **kw}


BAD = [
    ("/v1/chat/completions", {"model": "tiny-llama"}, "messages"),
    ("/v1/chat/completions", {"messages": "hi"}, "messages"),
    ("/v1/chat/completions", {"messages": []}, "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ("/v1/chat/completions", _chat_body(max_tokens=-1), "max_tokens"),
    ("/v1/chat/completions", _chat_body(max_tokens="10"), "max_tokens"),
    ("/v1/chat/completions", _chat_body(max_tokens=1.5), "max_tokens"),
    ("/v1/chat/completions", _chat_body(temperature=3), "temperature"),
    ("/v1/chat/completions", _chat_body(temperature="hot"), "temperature"),
    ("/v1/chat/completions", _chat_body(top_p=0), "top_p"),
    ("/v1/chat/completions", _chat_body(stream="yes"), "stream"),
    ("/v1/chat/completions", _chat_body(stop=5), "stop"),
    ("/v1/chat/completions", _chat_body(seed="x"), "seed"),
    ("/v1/chat/completions", _chat_body(min_p=2), "min_p"),
    ("/v1/chat/completions", _chat_body(n=2), "n"),
    ("/v1/chat/completions", _chat_body(presence_penalty=2.5), "presence_penalty"),
    ("/v1/chat/completions", _chat_body(frequency_penalty="1"), "frequency_penalty"),
    ("/v1/chat/completions", _chat_body(repetition_penalty=0), "repetition_penalty"),
    ("/v1/chat/completions", _chat_body(repetition_penalty=True), "repetition_penalty"),
    ("/v1/chat/completions", _chat_body(repetition_penalty=1e-45), "repetition_penalty"),
    ("/v1/chat/completions", _chat_body(presence_penalty=10**400), "presence_penalty"),
    ("/v1/chat/completions", _chat_body(repeat_penalty=1.1, repetition_penalty=1.2), "repeat_penalty"),
    ("/v1/chat/completions", _chat_body(repeat_penalty=0, repetition_penalty=None), "repeat_penalty"),
    ("/v1/chat/completions", _chat_body(repeat_last_n=-2), "repeat_last_n"),
    ("/v1/chat/completions", _chat_body(repeat_last_n=64.5), "repeat_last_n"),
    # Accepted and ignored, these would answer something else than asked (a biased or fill-in-the-middle
    # answer looks right and is not): refused, their neutral values accepted (below).
    ("/v1/chat/completions", _chat_body(logit_bias={"42": -100}), "logit_bias"),
    ("/v1/chat/completions", _chat_body(chat_template_kwargs=["enable_thinking"]), "chat_template_kwargs"),
    ("/v1/chat/completions", _chat_body(chat_template_kwargs={"enable_thinking": [1]}), "chat_template_kwargs"),
    ("/v1/chat/completions", _chat_body(chat_template_kwargs={"tokenize": True}), "chat_template_kwargs"),
    ("/v1/chat/completions", _chat_body(chat_template_kwargs={"conversation": 1}), "chat_template_kwargs"),
    ("/v1/chat/completions", _chat_body(chat_template_kwargs={"raise_exception": "x"}), "chat_template_kwargs"),
    ("/v1/chat/completions", _chat_body(chat_template_kwargs={"not a name": 1}), "chat_template_kwargs"),
    ("/v1/completions", {"prompt": "def f(", "suffix": "    return x"}, "suffix"),
    ("/v1/completions", {"prompt": "hi", "best_of": 3}, "best_of"),
    ("/v1/completions", {"prompt": 5}, "prompt"),
    ("/v1/completions", {"prompt": [99999]}, "prompt"),
    ("/v1/completions", {"prompt": "hi", "max_tokens": 0}, "max_tokens"),
]


@pytest.mark.parametrize("path,body,param", BAD, ids=[f"{p.split('/')[-1]}-{i}" for i, (p, _, _) in enumerate(BAD)])
def test_bad_fields_answer_400_with_an_error_object(server, path, body, param):
    status, out = raw(server, "POST", path, json.dumps(body), {"Content-Type": "application/json"})
    assert status == 400
    assert set(out["error"]) == {"message", "type", "param", "code"}
    assert out["error"]["param"] == param and out["error"]["type"] == "invalid_request_error"
    assert "Traceback" not in out["error"]["message"]


def test_malformed_json_wrong_paths_and_methods(server, lm):
    for body in (b"{not json", b"[1, 2]", b"\xff\xfe", b""):
        status, out = raw(server, "POST", "/v1/chat/completions", body)
        assert status == 400 and "JSON" in out["error"]["message"]
    assert raw(server, "GET", "/v1/nothing")[0] == 404
    assert raw(server, "POST", "/nothing", b"{}")[0] == 404
    status, out = raw(server, "GET", "/v1/chat/completions")
    assert status == 405 and out["error"]["code"] == "method_not_allowed"
    with pytest.raises(openai.NotFoundError) as exc:  # as OpenAI and Ollama answer it
        chat(client(server), "gpt-4o", "hi")
    assert exc.value.status_code == 404 and exc.value.body["code"] == "model_not_found"
    neutral = _chat_body(model=lm.name, max_tokens=2, presence_penalty=0, frequency_penalty=0.0,
                         repetition_penalty=1, logit_bias={}, best_of=1, min_p=0.1)
    assert raw(server, "POST", "/v1/chat/completions", json.dumps(neutral))[0] == 200
    assert chat(client(server), lm.name, "hi", max_tokens=3).usage.completion_tokens == 3  # still serving


def test_api_key(lm):
    with SubspecServer(Backend(lm), port=0, api_key="sekret").start() as srv:
        status, out = raw(srv, "GET", "/v1/models")
        assert status == 401 and out["error"]["code"] == "invalid_api_key"
        assert raw(srv, "POST", "/v1/chat/completions", json.dumps(_chat_body()))[0] == 401
        with pytest.raises(openai.AuthenticationError):
            client(srv, "wrong").models.list()
        assert raw(srv, "GET", "/v1/models", headers={"Authorization": "Bearer sekret"})[0] == 200
        assert chat(client(srv, "sekret"), lm.name, "hi", max_tokens=4).usage.completion_tokens == 4


# ---------------------------------------------------------------- the queue and cancellation


class SlowGenerator:
    """Stands in for the model: one "x" per 20 ms, and a record of how many steps each generation ran."""

    def __init__(self):
        self.runs: list[int] = []
        self.running = threading.Event()
        self.ended = threading.Event()

    def __call__(self, prompt_ids, max_tokens, sampling, stops):
        return self._run(max_tokens)

    def _run(self, n):
        steps = 0
        self.ended.clear()
        self.running.set()
        try:
            for i in range(n):
                time.sleep(0.02)
                steps += 1
                yield StepEvent(i, (10,), "x", finish_reason="length" if i == n - 1 else None)
        finally:
            self.running.clear()
            self.runs.append(steps)
            self.ended.set()


@pytest.fixture
def slow(lm):
    gen = SlowGenerator()
    with SubspecServer(Backend(lm, generate=gen), port=0, queue_size=1).start() as srv:
        yield srv, gen


def _first_content(stream):
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            return chunk


def test_full_queue_answers_429_and_disconnects_cancel(slow, lm):
    srv, gen = slow
    c = client(srv)
    running = chat(c, lm.name, "a", max_tokens=200, stream=True)
    assert _first_content(running) is not None  # generating now: the queue is empty again
    waiting = chat(c, lm.name, "b", max_tokens=200, stream=True)  # takes the one queue slot
    with pytest.raises(openai.RateLimitError) as exc:
        chat(c, lm.name, "c", max_tokens=5)
    assert exc.value.status_code == 429 and exc.value.body["code"] == "queue_full"
    t0 = time.perf_counter()
    running.close()
    waiting.close()
    # Both are cancelled: a new request is answered long before 200 steps (4 s) would have run. Until the
    # worker has taken "b" off the queue, the queue is still full, so retry on 429 as a client would.
    while True:
        try:
            answer = chat(c, lm.name, "d", max_tokens=5)
            break
        except openai.RateLimitError:
            assert time.perf_counter() - t0 < 5
            time.sleep(0.05)
    assert answer.choices[0].message.content == "xxxxx" and time.perf_counter() - t0 < 5
    assert gen.runs[0] < 200 and gen.runs[-1] == 5


@pytest.mark.parametrize("stream", [True, False])
def test_client_disconnect_cancels_the_generation(slow, lm, stream):
    srv, gen = slow
    host, port = srv.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=30)
    body = {"model": lm.name, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 200, "stream": stream}
    conn.request("POST", "/v1/chat/completions", json.dumps(body))
    assert gen.running.wait(10)
    conn.close()
    assert gen.ended.wait(5) and len(gen.runs) == 1 and gen.runs[0] < 200
    assert chat(client(srv), lm.name, "again", max_tokens=3).choices[0].message.content == "xxx"


def test_a_failing_generation_answers_an_error_and_the_worker_lives_on(lm, capsys):
    calls = []

    def broken(prompt_ids, max_tokens, sampling, stops):
        calls.append(1)
        if len(calls) <= 2:
            yield StepEvent(0, (10,), "x")
            raise RuntimeError("simulated device failure")
        yield StepEvent(0, (10,), "y", finish_reason="length")

    with SubspecServer(Backend(lm, generate=broken), port=0).start() as srv:
        c = client(srv)
        with pytest.raises(openai.InternalServerError) as exc:
            chat(c, lm.name, "hi", max_tokens=5)
        assert exc.value.body["type"] == "server_error" and "simulated" in exc.value.body["message"]
        with pytest.raises(openai.APIError, match="simulated"):
            stream_chat(c, lm.name, "hi", max_tokens=5)  # the error arrives as an event mid-stream
        assert chat(c, lm.name, "hi", max_tokens=1).choices[0].message.content == "y"
    assert "Traceback" in capsys.readouterr().err  # logged on the server's side only


def test_a_follow_up_request_reuses_the_cached_prompt_and_says_so(server, spec_server, lm):
    """The server keeps the last request's KV cache (engine.kv_cache.PromptCache): a conversation's next
    request prefills only its new part, reported as OpenAI's usage.prompt_tokens_details.cached_tokens and
    answered as a fresh prefill would."""
    for srv in (server, spec_server):
        c = client(srv)
        first = chat(c, lm.name, "the cat sat on", max_tokens=12)
        history = [{"role": "user", "content": "the cat sat on"},
                   {"role": "assistant", "content": first.choices[0].message.content},
                   {"role": "user", "content": "and then?"}]
        follow = c.chat.completions.create(model=lm.name, messages=history, temperature=0, max_tokens=12)
        cached = follow.usage.prompt_tokens_details.cached_tokens
        assert 0 < cached < follow.usage.prompt_tokens
        ids = lm.encode_messages(history)
        assert follow.choices[0].message.content == engine_text(lm, ids, 12)
        again = c.chat.completions.create(model=lm.name, messages=history, temperature=0, max_tokens=12)
        assert again.usage.prompt_tokens_details.cached_tokens == len(ids) - 1  # all but the last token
        assert again.choices[0].message.content == follow.choices[0].message.content


def test_a_client_resetting_its_idle_connection_prints_no_traceback(server, capfd):
    """HTTP clients' pools reset idle keep-alive connections (the openai client's did, in this suite); the
    handler's wait for the next request then fails, and socketserver printed a traceback for it."""
    import socket
    import struct

    host, port = server.server_address[:2]
    sock = socket.create_connection((host, port), timeout=10)
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert b"200 OK" in sock.recv(4096)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with a reset
    sock.close()
    time.sleep(0.3)
    assert raw(server, "GET", "/health")[0] == 200  # still serving
    assert "Traceback" not in capfd.readouterr().err


def test_http10_stream_and_garbage_requests(server, lm):
    import socket

    host, port = server.server_address[:2]
    body = json.dumps({"model": lm.name, "prompt": "abc", "max_tokens": 6, "temperature": 0, "stream": True})
    with socket.create_connection((host, port), timeout=30) as sock:
        sock.sendall(f"POST /v1/completions HTTP/1.0\r\nContent-Length: {len(body)}\r\n\r\n{body}".encode())
        reply = b"".join(iter(lambda: sock.recv(65536), b"")).decode()
    head, _, events = reply.partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 200") and "chunked" not in head and events.endswith("data: [DONE]\n\n")
    texts = [json.loads(e[6:])["choices"][0]["text"] for e in events.split("\n\n") if e and e != "data: [DONE]"]
    assert "".join(texts) == engine_text(lm, lm.encode("abc", chat=False), 6)
    with socket.create_connection((host, port), timeout=30) as sock:
        sock.sendall(b"GET /v1/models SPARE-WORD HTTP/1.1\r\n\r\n")
        reply = b"".join(iter(lambda: sock.recv(65536), b"")).decode()
    assert reply.startswith("HTTP/1.1 400") and json.loads(reply.partition("\r\n\r\n")[2])["error"]
    assert raw(server, "POST", "/v1/completions", b"{}", {"Content-Length": "-1"})[0] == 400
    conn = http.client.HTTPConnection(host, port, timeout=30)
    # Greedy: with the default temperature (1.0) a sampled EOS could end the answer before max_tokens.
    body = json.dumps({"prompt": "abc", "max_tokens": 2, "temperature": 0}).encode()
    conn.request("POST", "/v1/completions", iter([body[:5], body[5:]]), encode_chunked=True)
    r = conn.getresponse()
    expected = sum(len(ev.token_ids) for ev in generate_plain(lm, lm.encode("abc", chat=False), 2))
    assert expected == 2  # greedy does not stop early here, so max_tokens is what ends it
    assert r.status == 200 and json.loads(r.read())["usage"]["completion_tokens"] == 2
    conn.close()


# ---------------------------------------------------------------- the command


def test_serve_rejects_bad_options_with_exit_2(capsys):
    assert cli_main(["serve", "--port", "70000"]) == 2
    assert "--port must be between 0 and 65535" in capsys.readouterr().err
    assert cli_main(["serve", "--queue", "0"]) == 2


def _sigint_state(pid: int) -> str:
    """SIGINT in a process's blocked and ignored signal masks (/proc), for a failure message."""
    try:
        status = dict(line.split(":\t", 1) for line in open(f"/proc/{pid}/status").read().splitlines() if ":\t" in line)
    except OSError as exc:
        return f"unknown ({exc})"
    bit = 1 << (signal.SIGINT - 1)
    return ", ".join(f"{k} {'has' if int(status.get(k, '0'), 16) & bit else 'lacks'} SIGINT"
                     for k in ("SigBlk", "SigIgn", "SigCgt"))


# `python -m engine serve ...` with Python's own Ctrl+C handler: a shell's background job (`make test &` in a
# script) starts with SIGINT ignored, which every child inherits and Python then leaves ignored.
SERVE = ("import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
         "sys.argv = ['engine', *sys.argv[1:]]; runpy.run_module('engine', run_name='__main__')")


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_subspec_serve_command(folder, stop):
    proc = subprocess.Popen([sys.executable, "-c", SERVE, "serve", str(folder), "--port", "0", "--api-key", "k",
                             "--cors-origin", "https://chat.example"],
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONFAULTHANDLER": "1"})
    # A hung server fails the test instead of hanging it; generous, since a loaded 2-core machine once took
    # over 30 s to shut a healthy one down.
    watchdog = threading.Timer(300, proc.kill)
    watchdog.start()
    try:
        url = None
        for line in proc.stderr:
            if m := re.search(r"serving tiny-llama \(vanilla\) at (http://127\.0\.0\.1:\d+/v1)", line):
                url = m.group(1)
                break
        assert url, "the server never said where it listens"
        c = openai.OpenAI(base_url=url, api_key="k", max_retries=0, timeout=60)
        r = c.chat.completions.create(model="tiny-llama", messages=[{"role": "user", "content": "hi"}],
                                      max_tokens=4, temperature=0)
        assert r.usage.completion_tokens == 4
        host, port = re.match(r"http://(.+):(\d+)/v1", url).groups()
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        conn.request("GET", "/v1/models", headers={"Origin": "https://chat.example", "Authorization": "Bearer k"})
        answer = conn.getresponse()
        assert answer.status == 200 and answer.getheader("Access-Control-Allow-Origin") == "https://chat.example"
        conn.close()
        proc.send_signal(stop)
        try:
            code = proc.wait(120)
        except subprocess.TimeoutExpired:  # say where it hangs: faulthandler dumps every thread on SIGABRT
            state = _sigint_state(proc.pid)
            proc.send_signal(signal.SIGABRT)
            rest = proc.stderr.read()
            pytest.fail(f"the server did not stop on {stop.name}; {state}; stderr after the request:\n{rest[-6000:]}")
        assert code == 0 and "shutting down" in proc.stderr.read()
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# ---------------------------------------------------------------- browsers, probes, oversized bodies


def test_browser_pages_on_this_machine_may_call_the_api_and_others_are_refused(lm):
    """A page from another origin is allowed by the browser only after an OPTIONS preflight (which carries
    no key) and only reads answers carrying Access-Control-Allow-Origin. Pages served from this machine and
    desktop shells are allowed, as Ollama allows them; any other origin gets 403 (the app's server has no
    key: a website must not use the model), unless named with cors_origins (--cors-origin)."""
    body = json.dumps(_chat_body(model=lm.name, max_tokens=2))
    with SubspecServer(Backend(lm), port=0, api_key="sekret", cors_origins=("https://chat.example",)).start() as srv:
        host, port = srv.server_address[:2]
        for origin in ("http://localhost:3000", "http://127.0.0.1:8080", "vscode-webview://abc",
                       "https://chat.example"):
            conn = http.client.HTTPConnection(host, port, timeout=30)
            conn.request("OPTIONS", "/v1/chat/completions", headers={
                "Origin": origin, "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization,content-type"})
            r = conn.getresponse()
            r.read()
            assert r.status == 204 and r.getheader("Access-Control-Allow-Origin") == origin, origin
            assert "POST" in r.getheader("Access-Control-Allow-Methods")
            assert r.getheader("Access-Control-Allow-Headers") == "authorization,content-type"
            conn.request("POST", "/v1/chat/completions", body=body, headers={
                "Origin": origin, "Content-Type": "application/json", "Authorization": "Bearer sekret"})
            r = conn.getresponse()
            assert r.status == 200 and r.getheader("Access-Control-Allow-Origin") == origin, origin
            r.read()
            conn.close()
        for origin in ("https://evil.example", "http://localhost.evil.example", "null"):
            status, out = raw(srv, "POST", "/v1/chat/completions", body,
                              {"Origin": origin, "Authorization": "Bearer sekret"})
            assert status == 403 and out["error"]["code"] == "origin_not_allowed", origin
            assert f"--cors-origin {origin}" in out["error"]["message"]
        status, _ = raw(srv, "GET", "/v1/models", headers={"Origin": "http://localhost:5173"})
        assert status == 401  # an allowed page still needs the key
    # Streamed answers carry the header too (a browser reads them as they come).
    with SubspecServer(Backend(lm), port=0, cors_origins=("*",)).start() as srv:
        host, port = srv.server_address[:2]
        conn = http.client.HTTPConnection(host, port, timeout=30)
        conn.request("POST", "/v1/chat/completions", body=json.dumps({**json.loads(body), "stream": True}),
                     headers={"Origin": "https://anywhere.example", "Content-Type": "application/json"})
        r = conn.getresponse()
        assert r.status == 200 and r.getheader("Access-Control-Allow-Origin") == "https://anywhere.example"
        assert b"[DONE]" in r.read()
        conn.close()


def test_max_tokens_beyond_the_context_is_shortened_and_a_prompt_filling_it_refused(server, lm):
    context = server.backend.context
    body = _chat_body(model=lm.name, max_tokens=context * 4, temperature=0)
    status, out = raw(server, "POST", "/v1/chat/completions", json.dumps(body))
    assert status == 200 and out["usage"]["total_tokens"] <= context  # answered, within the context
    body = {"model": lm.name, "prompt": list(range(1, 3)) * context, "max_tokens": 5}
    status, out = raw(server, "POST", "/v1/completions", json.dumps(body))
    assert status == 400 and out["error"]["code"] == "context_length_exceeded"


def test_named_origins_match_as_browsers_send_them():
    from engine.server import origin_allowed

    named = ("https://Chat.Example:443/", "http://tools.example:8080")
    assert origin_allowed("https://chat.example", named) and origin_allowed("http://tools.example:8080", named)
    assert not origin_allowed("http://chat.example", named)  # another scheme is another origin
    assert not origin_allowed("http://tools.example", named) and not origin_allowed("https://evil.example", named)
    # "null" (any site can send it: a sandboxed frame, a data: URL) matches only when named as such.
    assert not origin_allowed("null", ("myapp.test", "https://chat.example")) and origin_allowed("null", ("null",))


def test_serve_refuses_a_cors_origin_that_is_not_one(capsys):
    assert cli_main(["serve", "--cors-origin", "localhost:3000"]) == 2
    assert "--cors-origin takes a web page's origin" in capsys.readouterr().err


def test_on_loopback_only_requests_for_a_loopback_host_are_answered(server, lm):
    """DNS rebinding: a website whose name is made to resolve to 127.0.0.1 is, to the browser, the same
    origin as this server; its requests name the website's host."""
    for host in ("evil.example", "evil.example:8642", "localhost.evil.example"):
        status, out = raw(server, "GET", "/v1/models", headers={"Host": host})
        assert status == 403 and out["error"]["code"] == "host_not_allowed", host
    for host in ("localhost", f"localhost:{server.server_address[1]}", "127.0.0.1", "LOCALHOST.", "[::1]:80"):
        assert raw(server, "GET", "/v1/models", headers={"Host": host})[0] == 200, host


def test_health_root_head_and_paths_without_v1(lm):
    with SubspecServer(Backend(lm), port=0, api_key="sekret").start() as srv:
        assert raw(srv, "GET", "/") == (200, {"status": "ok"})  # liveness needs no key
        assert raw(srv, "GET", "/health") == (200, {"status": "ok"})
        host, port = srv.server_address[:2]
        conn = http.client.HTTPConnection(host, port, timeout=30)
        conn.request("HEAD", "/")
        r = conn.getresponse()
        assert r.status == 200 and r.read() == b"" and int(r.getheader("Content-Length")) > 0
        conn.close()
        assert raw(srv, "GET", "/models")[0] == 401  # everything else needs the key, /v1 or not
        key = {"Authorization": "Bearer sekret"}
        assert raw(srv, "GET", "/models", headers=key)[1]["data"][0]["id"] == lm.name
        # Greedy: with the default temperature (1.0) a sampled EOS can end the answer first (it did, once).
        status, out = raw(srv, "POST", "/chat/completions",
                          json.dumps(_chat_body(model=lm.name, max_tokens=2, temperature=0)), key)
        assert status == 200 and out["usage"]["completion_tokens"] == 2
        status, out = raw(srv, "GET", "/nothing", headers=key)
        assert status == 404 and "GET /nothing" in out["error"]["message"]


def test_an_oversized_body_is_answered_413_even_to_a_client_that_sends_it_all_first(server):
    """http.client (like many scripts' clients) writes the whole body before reading: the server used to
    answer and close at once, and such a client got a broken pipe instead of the error."""
    from engine.server import MAX_BODY_BYTES

    status, out = raw(server, "POST", "/v1/chat/completions", b"x" * (MAX_BODY_BYTES + 1),
                      {"Content-Type": "application/json"})
    assert status == 413 and "exceeds" in out["error"]["message"]


def test_chat_template_kwargs_reach_the_template(folder):
    """vLLM's and SGLang's chat_template_kwargs: {"enable_thinking": false} turns Qwen3's thinking off."""
    lm = load_model(folder, "float32", "cpu")
    lm.tokenizer.chat_template = (
        "{% for m in messages %}{{ m.content }}\n{% endfor %}"
        "{% if enable_thinking is defined and enable_thinking is false %}<think></think>{% endif %}")
    with SubspecServer(Backend(lm), port=0).start() as srv:
        usage = [chat(client(srv), lm.name, "hi", max_tokens=1, **extra).usage.prompt_tokens
                 for extra in ({}, {"extra_body": {"chat_template_kwargs": {"enable_thinking": False}}},
                               {"extra_body": {"chat_template_kwargs": {"unused_by_it": 1}}})]
    assert usage[0] == usage[2] < usage[1]


def test_a_client_gone_while_its_prompt_is_read_ends_the_reading(lm):
    """`subspec serve`'s own generation takes the request's cancel: set while the prompt is read, the next
    prefill step ends the answer (engine.errors.Stopped), and the worker answers nobody for it."""
    import threading

    from engine.errors import Stopped
    from engine.sampling import SamplingParams
    from engine.server import GenRequest

    backend = Backend(lm)
    ids = lm.encode("a prompt whose client left", chat=False)
    cancel = threading.Event()
    events = backend.generate(GenRequest(ids, 4, SamplingParams(), ()), cancel)
    cancel.set()
    with pytest.raises(Stopped):
        next(iter(events))
    assert sum(len(e.token_ids) for e in backend.generate(GenRequest(ids, 4, SamplingParams(), ()),
                                                           threading.Event())) == 4
