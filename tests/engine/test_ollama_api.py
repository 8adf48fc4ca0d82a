"""Ollama's API beside the OpenAI one (engine.ollama_api, engine.server), tested with Ollama's own Python client:
the model list, show and ps; chat and generate streamed (newline-delimited JSON) or not; options with Ollama's
defaults; tool calls with object arguments; errors as {"error": "..."}; and greedy answers equal to the
OpenAI endpoint's on a real (tiny) model."""

import json
import urllib.error
import urllib.request

import ollama
import pytest
from tiny_models import make_tiny_model_folder, scripted_generate

from engine.loading import load_model
from engine.server import Backend, SubspecServer

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                            "parameters": {"type": "object",
                                                           "properties": {"city": {"type": "string"}}}}}
TEMPLATE = (
    "{% if tools %}<|tools|>{% for t in tools %}{{ t.function.name }};{% endfor %}\n{% endif %}"
    "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}"
    "{% if m.tool_calls %}{% for c in m.tool_calls %}<call>{{ c.function.name }}({{ c.function.arguments.city }})"
    "</call>{% endfor %}{% endif %}{% if m.name %}[{{ m.name }}]{% endif %}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    lm = load_model(make_tiny_model_folder(tmp_path_factory.mktemp("ollama") / "tiny", "llama"), "float32", "cpu")
    lm.tokenizer.chat_template = TEMPLATE
    answers, calls = [], []

    def record(prompt_ids, max_tokens, sampling, stops):
        calls.append({"prompt": lm.tokenizer.decode(prompt_ids), "max_tokens": max_tokens, "sampling": sampling,
                      "stops": stops})

    generate = scripted_generate(answers, record)
    with SubspecServer(Backend(lm, generate=generate), port=0).start() as srv:
        yield ollama.Client(host=srv.url, timeout=60), lm, answers, calls, srv.url


def test_the_model_is_listed_shown_and_running(served):
    client, lm, _answers, _calls, _url = served
    [listed] = client.list().models
    assert listed.model == lm.name + ":latest" and listed.details.family == "llama"
    assert listed.size == lm.config.parameter_count * 4  # float32
    shown = client.show(lm.name)
    assert shown.template == TEMPLATE and "tools" in shown.capabilities
    assert shown.modelinfo["llama.context_length"] == lm.config.max_position_embeddings
    assert [m.model for m in client.ps().models] == [lm.name + ":latest"]
    with pytest.raises(ollama.ResponseError) as err:
        client.show("llama3.1:8b")
    assert err.value.status_code == 404 and "not found" in err.value.error


def test_chat_streamed_or_not_with_ollamas_default_options(served):
    client, lm, answers, calls, _url = served
    answers.append("Paris is the capital.")
    r = client.chat(model=lm.name, messages=[{"role": "user", "content": "Capital of France?"}])
    assert r.message.content == "Paris is the capital." and r.done and r.done_reason == "stop"
    assert r.message.role == "assistant" and r.eval_count == 5 and r.prompt_eval_count > 0
    s = calls[-1]["sampling"]
    assert (s.temperature, s.top_k, s.top_p, s.repetition_penalty, s.penalty_last_n) == (0.8, 40, 0.9, 1.1, 64)
    assert "<|user|>Capital of France?" in calls[-1]["prompt"] and calls[-1]["prompt"].endswith("<|assistant|>")

    answers.append("Rome, of course.")
    chunks = list(client.chat(model=lm.name + ":latest", messages=[{"role": "user", "content": "Italy?"}],
                              stream=True, options={"temperature": 0, "num_predict": 7, "stop": ["\n\n"],
                                                    "seed": 3, "num_ctx": 8192, "repeat_last_n": -1}))
    assert "".join(c.message.content for c in chunks) == "Rome, of course." and len(chunks) > 2
    assert [c.done for c in chunks] == [False] * (len(chunks) - 1) + [True]
    assert chunks[-1].done_reason == "stop" and chunks[-1].eval_count == 4
    call = calls[-1]
    assert (call["sampling"].temperature, call["sampling"].seed, call["max_tokens"], call["stops"]) == \
        (0.0, 3, 7, ("\n\n",))
    assert call["sampling"].penalty_last_n in (0, None)  # -1: the whole context (num_ctx is Ollama's own)


def test_tool_calls_come_back_with_object_arguments(served):
    client, lm, answers, calls, _url = served
    call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    answers.append("Checking.\n" + call)
    r = client.chat(model=lm.name, messages=[{"role": "user", "content": "Weather in Paris?"}], tools=[WEATHER])
    [tc] = r.message.tool_calls
    assert (tc.function.name, tc.function.arguments) == ("get_weather", {"city": "Paris"})
    assert r.message.content == "Checking." and "get_weather;" in calls[-1]["prompt"]

    answers.append(call)
    chunks = list(client.chat(model=lm.name, messages=[{"role": "user", "content": "Paris?"}], tools=[WEATHER],
                              stream=True))
    streamed = [tc for c in chunks for tc in (c.message.tool_calls or [])]
    assert [(t.function.name, t.function.arguments) for t in streamed] == [("get_weather", {"city": "Paris"})]
    assert "<tool_call>" not in "".join(c.message.content for c in chunks)

    answers.append("Sunny.")  # the call and its result in the history, as Ollama's clients send them
    history = [{"role": "user", "content": "Paris?"},
               {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "get_weather",
                                                                                 "arguments": {"city": "Paris"}}}]},
               {"role": "tool", "content": "sunny", "tool_name": "get_weather"}]
    assert client.chat(model=lm.name, messages=history, tools=[WEATHER]).message.content == "Sunny."
    prompt = calls[-1]["prompt"]
    assert "<call>get_weather(Paris)</call>" in prompt and "<|tool|>sunny[get_weather]" in prompt


def test_generate_templated_raw_and_the_load_request(served):
    client, lm, answers, calls, _url = served
    answers.append("Blue.")
    r = client.generate(model=lm.name, prompt="Sky colour?", system="Be brief.")
    assert r.response == "Blue." and r.done
    prompt = calls[-1]["prompt"]
    assert prompt.index("<|system|>Be brief.") < prompt.index("<|user|>Sky colour?")
    assert prompt.endswith("<|assistant|>")
    answers.append(" over the lazy dog")
    chunks = list(client.generate(model=lm.name, prompt="The quick brown fox jumps", raw=True, stream=True,
                                  options={"num_predict": 9}))
    assert "".join(c.response for c in chunks) == " over the lazy dog" and chunks[-1].done
    assert "<|user|>" not in calls[-1]["prompt"] and calls[-1]["max_tokens"] == 9
    before = len(calls)
    loaded = client.generate(model=lm.name, prompt="")  # Ollama's "load the model": no generation
    assert loaded.done and loaded.done_reason == "load" and len(calls) == before
    _url = served[4]
    for body, reason in (({}, "load"), ({"keep_alive": 0}, "unload"), ({"prompt": None}, "load")):
        status, raw = _post(_url, "/api/generate", {"model": lm.name, **body})  # no prompt at all: the docs' way
        assert status == 200 and json.loads(raw)["done_reason"] == reason and len(calls) == before
    status, raw = _post(_url, "/api/chat", {"model": lm.name, "messages": [], "keep_alive": "0"})
    assert json.loads(raw)["done_reason"] == "unload" and json.loads(raw)["message"]["content"] == ""


def test_with_think_on_the_thought_comes_in_its_own_field(served):
    client, lm, answers, calls, _url = served
    answer = "<think>\nThe user greets.\n</think>\n\nHello there!"
    answers.append(answer)
    r = client.chat(model=lm.name, messages=[{"role": "user", "content": "Hi"}], think=True)
    assert (r.message.thinking, r.message.content) == ("\nThe user greets.\n", "Hello there!")
    answers.append(answer)
    chunks = list(client.generate(model=lm.name, prompt="Hi", think=True, stream=True))
    assert "".join(c.thinking or "" for c in chunks) == "\nThe user greets.\n"
    assert "".join(c.response for c in chunks) == "Hello there!"
    answers.append(answer)  # think left unset: the text as the model wrote it
    assert client.chat(model=lm.name, messages=[{"role": "user", "content": "Hi"}]).message.content == answer


def test_thinking_split_holds_partial_tags_back():
    from engine.ollama_api import ThinkingSplit, split_thinking

    split = ThinkingSplit()
    pieces = ["<th", "ink>", "plan", " it</th", "ink", ">\n", "\nDo", "ne."]
    got = [split.feed(p) for p in pieces] + [split.finish()]
    assert "".join(t for t, _ in got) == "plan it" and "".join(a for _, a in got) == "Done."
    assert got[0] == ("", "") and got[3] == (" it", "")  # "</th" waited for the rest of the tag
    assert split_thinking("No thought here.") == ("", "No thought here.")
    assert split_thinking("<think>cut short") == ("cut short", "")
    assert split_thinking("<thi") == ("", "<thi")  # (a text that only began like the tag)


def test_a_negative_seed_is_a_new_seed_for_each_answer(served):
    client, lm, answers, calls, _url = served
    answers.append("ok")
    client.generate(model=lm.name, prompt="x", options={"seed": -1, "temperature": 0.5})
    assert calls[-1]["sampling"].seed is None  # (not one fixed seed every time)
    answers.append("ok")
    status, raw = _post(_url, "/api/generate", {"model": lm.name, "prompt": "x", "stream": None,
                                                "options": {"seed": 42, "temperature": 0.5}})
    lines = [json.loads(line) for line in raw.decode().splitlines()]  # null: Ollama's default, streamed
    assert status == 200 and lines[-1]["done"] and calls[-1]["sampling"].seed == 42


def _post(url, path, body):
    req = urllib.request.Request(url + path, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@pytest.mark.parametrize("body, why", [
    ({"messages": [{"role": "user", "content": "hi"}], "format": "yaml"}, "format"),
    ({"messages": [{"role": "user", "content": "hi"}],
      "format": {"type": "object", "properties": {"a": {"type": "string", "pattern": "^x"}}}}, "pattern"),
    ({"messages": [{"role": "user", "content": "hi", "images": ["aGk="]}]}, "images"),
    ({"messages": [{"role": "user", "content": "hi"}], "options": {"mirostat": 2}}, "mirostat"),
    ({"messages": [{"role": "user", "content": "hi"}], "options": {"num_predict": "lots"}}, "num_predict"),
    ({"messages": [{"role": "user", "content": "hi"}], "stream": "yes"}, "stream"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "role"),
    ({"messages": {}}, "messages"),
    ({"messages": [{"role": "user", "content": "hi"}], "tools": {}}, "tools"),
    ({"model": ["x"], "messages": [{"role": "user", "content": "hi"}]}, "model"),
])
def test_what_it_cannot_honour_is_a_400_in_ollamas_error_shape(served, body, why):
    _client, lm, _answers, calls, url = served
    before = len(calls)
    status, raw = _post(url, "/api/chat", {"model": lm.name, **body} if "model" not in body else body)
    error = json.loads(raw)["error"]
    assert status == 400 and isinstance(error, str) and why in error and len(calls) == before
    status, raw = _post(url, "/api/chat", {"messages": []})
    assert status == 400 and json.loads(raw) == {"error": "model is required"}


def test_greedy_answers_equal_the_openai_endpoints(tmp_path):
    import openai

    lm = load_model(make_tiny_model_folder(tmp_path / "tiny", "llama"), "float32", "cpu")
    with SubspecServer(Backend(lm), port=0).start() as srv:
        client = ollama.Client(host=srv.url, timeout=120)
        oai = openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0, timeout=120)
        ours = client.generate(model=lm.name, prompt="The quick brown fox", raw=True,
                               options={"temperature": 0, "num_predict": 12, "repeat_penalty": 1.0})
        theirs = oai.completions.create(model=lm.name, prompt="The quick brown fox", temperature=0, max_tokens=12)
        assert ours.response == theirs.choices[0].text and ours.eval_count == theirs.usage.completion_tokens == 12
        assert ours.done_reason == "length" and ours.total_duration > ours.eval_duration > 0
