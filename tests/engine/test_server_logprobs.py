"""Log-probabilities through the APIs (engine.logprob_api): OpenAI chat's `logprobs` / `top_logprobs`, legacy
completions' `logprobs: N`, Ollama's `logprobs` / `top_logprobs`, streamed or not, read with the official
clients; the numbers are the engine's, and a SubSpec server reports what a plain one does."""

import json

import ollama
import openai
import pytest
from tiny_models import make_tiny_model_folder

from engine.events import summarize
from engine.generate import generate_plain
from engine.loading import load_model
from engine.sampling import SamplingParams
from engine.server import Backend, SubspecServer
from engine.speculative import TreeShape
from engine.substitute import build_draft
from test_server import raw


SPECIAL = {"<pad>", "<s>", "</s>"}


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    return load_model(make_tiny_model_folder(tmp_path_factory.mktemp("lp") / "tiny-llama", "llama"), "float32", "cpu")


@pytest.fixture(scope="module")
def plain(lm):
    with SubspecServer(Backend(lm), port=0).start() as srv:
        yield srv


@pytest.fixture(scope="module")
def spec(lm):
    with SubspecServer(Backend(lm, build_draft(lm.decoder, 4, 64), TreeShape(6, 3)), port=0).start() as srv:
        yield srv


def _alike(a, b, tol=1e-5):
    """The same tokens with the same log-probabilities up to rounding: a request after another shares its
    prompt's cached rows (engine.kv_cache.PromptCache), prefilled in other chunks than a fresh one's."""
    a, b = [e.model_dump() for e in a], [e.model_dump() for e in b]
    assert [(e["token"], e.get("bytes"), [t["token"] for t in e["top_logprobs"] or ()]) for e in a] == \
        [(e["token"], e.get("bytes"), [t["token"] for t in e["top_logprobs"] or ()]) for e in b]
    for x, y in zip(a, b):
        assert x["logprob"] == pytest.approx(y["logprob"], abs=tol)
        assert [t["logprob"] for t in x["top_logprobs"] or ()] == pytest.approx(
            [t["logprob"] for t in y["top_logprobs"] or ()], abs=tol)


def _openai(srv):
    return openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def _engine(lm, ids, n, top, stops=()):
    return summarize(generate_plain(lm, ids, n, SamplingParams(logprobs=top), stops), len(ids), "x")


def _chat(srv, lm, prompt, **kw):
    return _openai(srv).chat.completions.create(model=lm.name, messages=[{"role": "user", "content": prompt}],
                                                temperature=0, **kw)


def _streamed_chat(srv, lm, prompt, **kw):
    text, entries = [], []
    for chunk in _chat(srv, lm, prompt, stream=True, **kw):
        for choice in chunk.choices:
            text.append(choice.delta.content or "")
            if choice.logprobs is not None:
                entries.extend(choice.logprobs.content)
    return "".join(text), entries


def test_chat_logprobs_are_the_engines_streamed_or_not(plain, lm):
    r = _chat(plain, lm, "the cat sat", max_tokens=20, logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    want = _engine(lm, lm.encode("the cat sat"), 20, 3)
    assert len(content) == r.usage.completion_tokens == 20
    # One character a token here; a special token (the random model writes <pad>) is named in the
    # log-probabilities and, as decoding skips it, absent from the text.
    assert "".join(e.token for e in content if e.token not in SPECIAL) == r.choices[0].message.content
    for e, lp in zip(content, want.logprobs):
        assert e.token == lm.tokenizer.convert_ids_to_tokens(lp.token_id) and bytes(e.bytes) == e.token.encode()
        assert e.logprob == pytest.approx(lp.logprob, abs=1e-5)
        assert [t.logprob for t in e.top_logprobs] == pytest.approx([v for _, v in lp.top], abs=1e-5)
        assert len(e.top_logprobs) == 3 and e.top_logprobs[0].token == e.token  # greedy: the likeliest
    text, streamed = _streamed_chat(plain, lm, "the cat sat", max_tokens=20, logprobs=True, top_logprobs=3)
    assert text == r.choices[0].message.content
    _alike(streamed, content)


def test_without_top_logprobs_each_token_alone_and_without_logprobs_none(plain, lm):
    r = _chat(plain, lm, "abc", max_tokens=5, logprobs=True)
    assert [e.top_logprobs for e in r.choices[0].logprobs.content] == [[]] * 5
    assert _chat(plain, lm, "abc", max_tokens=5).choices[0].logprobs is None
    assert _chat(plain, lm, "abc", max_tokens=5, logprobs=False).choices[0].logprobs is None


def test_a_special_token_among_the_alternatives_is_named(plain, lm):
    r = _chat(plain, lm, "zz", max_tokens=4, logprobs=True, top_logprobs=20)
    tokens = {t.token for e in r.choices[0].logprobs.content for t in e.top_logprobs}
    assert "</s>" in tokens or "<pad>" in tokens or "<s>" in tokens  # (20 of 97: the specials' names are text)


def test_subspec_reports_what_plain_decoding_reports(plain, spec, lm):
    for prompt in ("hello there", "Once upon"):
        want = _chat(plain, lm, prompt, max_tokens=30, logprobs=True, top_logprobs=2)
        got = _chat(spec, lm, prompt, max_tokens=30, logprobs=True, top_logprobs=2)
        assert got.usage.model_extra["subspec"]["method"] == "subspec"
        a, b = got.choices[0].logprobs.content, want.choices[0].logprobs.content
        assert [e.token for e in a] == [e.token for e in b]
        assert [e.logprob for e in a] == pytest.approx([e.logprob for e in b], abs=1e-4)
        _, streamed = _streamed_chat(spec, lm, prompt, max_tokens=30, logprobs=True, top_logprobs=2)
        assert [e.token for e in streamed] == [e.token for e in b]


def test_a_stop_string_cuts_the_tokens_and_their_logprobs_together(plain, spec, lm):
    free = _engine(lm, lm.encode("the cat sat", chat=True), 30, 0)
    stop = free.text[8:10]
    for srv in (plain, spec):
        r = _chat(srv, lm, "the cat sat", max_tokens=30, logprobs=True, stop=[stop])
        assert r.choices[0].finish_reason == "stop"
        assert len(r.choices[0].logprobs.content) == r.usage.completion_tokens
        _, streamed = _streamed_chat(srv, lm, "the cat sat", max_tokens=30, logprobs=True, stop=[stop])
        assert len(streamed) == r.usage.completion_tokens


def test_completions_logprobs_in_the_legacy_shape(plain, lm):
    prompt = "abc"
    r = _openai(plain).completions.create(model=lm.name, prompt=prompt, max_tokens=8, temperature=0, logprobs=2)
    lp = r.choices[0].logprobs
    want = _engine(lm, lm.encode(prompt, chat=False), 8, 2)
    assert "".join(t for t in lp.tokens if t not in SPECIAL) == r.choices[0].text
    assert lp.token_logprobs == pytest.approx([x.logprob for x in want.logprobs], abs=1e-5)
    # the alternatives and the chosen token ("up to logprobs + 1"); greedy, so the chosen is among the two
    assert all(len(top) == 2 and tok in top for top, tok in zip(lp.top_logprobs, lp.tokens))
    assert lp.text_offset == [len(prompt) + i for i in range(8)]  # into the prompt and completion together
    # streamed: the same, offsets counted on across chunks
    tokens, offsets = [], []
    for chunk in _openai(plain).completions.create(model=lm.name, prompt=prompt, max_tokens=8, temperature=0,
                                                   logprobs=2, stream=True):
        if chunk.choices and chunk.choices[0].logprobs:
            tokens += chunk.choices[0].logprobs.tokens
            offsets += chunk.choices[0].logprobs.text_offset
    assert tokens == lp.tokens and offsets == lp.text_offset
    # a prompt of token ids: offsets from its decoded text
    ids = lm.encode("xyz", chat=False)
    r = _openai(plain).completions.create(model=lm.name, prompt=ids, max_tokens=3, temperature=0, logprobs=0)
    assert r.choices[0].logprobs.text_offset[0] == len(lm.tokenizer.decode(ids))
    assert all(len(top) == 1 for top in r.choices[0].logprobs.top_logprobs)
    # a special token takes no room in the text: the offsets stay offsets into it
    r = _openai(plain).completions.create(model=lm.name, prompt="zz", max_tokens=24, temperature=0, logprobs=0)
    lp = r.choices[0].logprobs
    assert any(t in SPECIAL for t in lp.tokens)  # (this random model writes <pad> here)
    for t, at in zip(lp.tokens, lp.text_offset):
        if t not in SPECIAL:
            assert ("zz" + r.choices[0].text)[at:at + len(t)] == t


def test_ollama_logprobs_streamed_or_not(plain, spec, lm):
    client = ollama.Client(host=plain.url, timeout=60)
    opts = {"temperature": 0, "num_predict": 12}
    r = client.chat(model=lm.name, messages=[{"role": "user", "content": "hi"}], options=opts, logprobs=True,
                    top_logprobs=2)
    assert len(r.logprobs) == r.eval_count == 12
    assert "".join(e.token for e in r.logprobs if e.token not in SPECIAL) == r.message.content
    assert all(len(e.top_logprobs) == 2 for e in r.logprobs)
    streamed = [e for part in client.chat(model=lm.name, messages=[{"role": "user", "content": "hi"}], options=opts,
                                          logprobs=True, top_logprobs=2, stream=True) for e in part.logprobs or ()]
    _alike(streamed, r.logprobs)
    g = ollama.Client(host=spec.url, timeout=60).generate(model=lm.name, prompt="hi", options=opts, logprobs=True)
    assert [e.token for e in g.logprobs] == [e.token for e in r.logprobs]
    assert [e.logprob for e in g.logprobs] == pytest.approx([e.logprob for e in r.logprobs], abs=1e-4)
    assert client.chat(model=lm.name, messages=[{"role": "user", "content": "hi"}], options=opts).logprobs is None


@pytest.mark.parametrize("path,body,param", [
    ("/v1/chat/completions", {"top_logprobs": 2}, "top_logprobs"),
    ("/v1/chat/completions", {"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ("/v1/chat/completions", {"logprobs": True, "top_logprobs": -1}, "top_logprobs"),
    ("/v1/chat/completions", {"logprobs": True, "top_logprobs": 2.5}, "top_logprobs"),
    ("/v1/chat/completions", {"logprobs": "yes"}, "logprobs"),
    ("/v1/chat/completions", {"logprobs": 3}, "logprobs"),
    ("/v1/completions", {"logprobs": 21}, "logprobs"),
    ("/v1/completions", {"logprobs": True}, "logprobs"),
    ("/v1/chat/completions", {"logprobs": 1}, "logprobs"),
    ("/v1/completions", {"top_logprobs": 2}, "top_logprobs"),
    ("/api/chat", {"top_logprobs": 21}, "top_logprobs"),
    ("/api/generate", {"logprobs": True, "top_logprobs": 50}, "top_logprobs"),
])
def test_bad_logprob_fields_are_400s(plain, lm, path, body, param):
    base = ({"prompt": "hi"} if "generate" in path or path.endswith("/completions") and "chat" not in path
            else {"messages": [{"role": "user", "content": "hi"}]})
    status, out = raw(plain, "POST", path, json.dumps({"model": lm.name, **base, **body}),
                      {"Content-Type": "application/json"})
    assert status == 400
    if path.startswith("/api/"):
        assert "logprobs" in out["error"]
    else:
        assert out["error"]["param"] == param and "logprobs" in out["error"]["message"]


def test_neutral_values_and_ollamas_own_rules(plain, lm):
    r = _openai(plain).completions.create(model=lm.name, prompt="abc", max_tokens=3, logprobs=False)
    assert r.choices[0].logprobs is None  # (false: none, as before log-probabilities were served)
    # Ollama range-checks top_logprobs and, without logprobs: true, reports nothing (OpenAI refuses it).
    status, out = raw(plain, "POST", "/api/generate", json.dumps(
        {"model": lm.name, "prompt": "hi", "stream": False, "top_logprobs": 2, "options": {"num_predict": 3}}),
        {"Content-Type": "application/json"})
    assert status == 200 and "logprobs" not in out


def test_text_offsets_count_a_character_split_across_tokens_once():
    from engine.logprob_api import CompletionOffsets, TokenPiece
    from engine.events import TokenLogprob

    frog = "🐸".encode()  # four bytes, here in two tokens
    pieces = {1: frog[:2], 2: frog[2:], 3: b"a", 4: b"</s>"}

    def piece(token_id):
        raw = pieces[token_id]
        return TokenPiece(raw.decode("utf-8", errors="replace"), list(raw), token_id == 4)

    offsets = CompletionOffsets(prompt_chars=5)
    first = offsets.logprobs([TokenLogprob(1, -0.1), TokenLogprob(2, -0.2)], piece)
    second = offsets.logprobs([TokenLogprob(4, -0.3), TokenLogprob(3, -0.4), TokenLogprob(1, -0.5)], piece)
    text = "🐸a"  # what the answer reads (the special token skipped)
    assert first["text_offset"] + second["text_offset"] == [5, 5, 6, 6, 7]
    assert len(text) == 2 and second["text_offset"][1] == 5 + text.index("a")
