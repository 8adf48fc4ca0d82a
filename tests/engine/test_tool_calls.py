"""Tool calling (engine.tool_calls): Hermes-format calls parsed and streamed whole, the request's tools and
tool messages checked and handed to the chat template; end to end through the API with the openai client."""

import json

import openai
import pytest
from tiny_models import make_tiny_model_folder, scripted_generate

from engine.events import StepEvent
from engine.loading import load_model
from engine.server import Backend, SubspecServer
from engine.tool_calls import ToolCallStream, ToolError, forced_call, parse_tools, split_tool_calls, template_message

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                            "parameters": {"type": "object",
                                                           "properties": {"city": {"type": "string"}}}}}
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


def test_calls_are_split_from_the_text():
    content, [call] = split_tool_calls(CALL)
    assert content is None and call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    content, calls = split_tool_calls("Let me look.\n" + CALL + CALL.replace("Paris", "Rome"))
    assert content == "Let me look." and [json.loads(c["function"]["arguments"])["city"] for c in calls] == \
        ["Paris", "Rome"]
    assert split_tool_calls("<tool_call>{not json}</tool_call>") == ("<tool_call>{not json}</tool_call>", [])
    assert split_tool_calls("no call here") == ("no call here", [])
    _content, [cut] = split_tool_calls('<tool_call>{"name": "f", "arguments": {}}')  # stopped at the tag
    assert cut["function"] == {"name": "f", "arguments": "{}"}


def test_a_stream_holds_back_what_may_be_a_call():
    s = ToolCallStream()
    pieces = ["It is ", "sunny. <to", "ol_call>\n{\"name\": \"get_weather\", ", "\"arguments\": {}}\n</tool_call>"]
    assert [s.feed(p) for p in pieces] == ["It is ", "sunny. ", "", ""]
    rest, [call] = s.finish()
    assert rest == "" and call["function"]["name"] == "get_weather"
    s = ToolCallStream()
    assert s.feed("a <") == "a " and s.feed("b") == "<b"  # not a tag after all: sent
    assert s.feed(" <tool_call>{broken") == " " and s.finish() == ("<tool_call>{broken", [])


def test_tools_and_tool_choice_are_checked():
    assert parse_tools({}) is None and parse_tools({"tools": [WEATHER]}) == [WEATHER]
    assert parse_tools({"tools": [WEATHER], "tool_choice": "none"}) is None
    assert parse_tools({"tools": [WEATHER], "tool_choice": "required"}) == [WEATHER]
    assert parse_tools({"tools": [WEATHER], "tool_choice": NAMED}) == [WEATHER]
    for body, param in (({"tools": "x"}, "tools"), ({"tools": [{"type": "function"}]}, "tools[0]"),
                        ({"tools": [WEATHER], "tool_choice": "sometimes"}, "tool_choice"),
                        ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {}}}, "tool_choice"),
                        ({"tools": [], "tool_choice": "required"}, "tool_choice"),
                        ({"tool_choice": NAMED}, "tool_choice")):
        with pytest.raises(ToolError) as err:
            parse_tools(body)
        assert err.value.param == param


NAMED = {"type": "function", "function": {"name": "get_weather"}}
HERMES = "... <tool_call>\n{{ call | tojson }}\n</tool_call> ..."  # (only whether it writes the tag counts)


def test_a_required_or_named_call_is_forced_by_the_answers_opening():
    assert forced_call({"tool_choice": "auto"}, [WEATHER], HERMES) == ""
    assert forced_call({}, [WEATHER], HERMES) == "" and forced_call({"tool_choice": "required"}, None, HERMES) == ""
    assert forced_call({"tool_choice": "required"}, [WEATHER], HERMES) == '<tool_call>\n{"name":'
    assert forced_call({"tool_choice": NAMED}, [WEATHER], HERMES) == \
        '<tool_call>\n{"name": "get_weather", "arguments":'
    with pytest.raises(ToolError, match="not among the tools"):
        forced_call({"tool_choice": {"type": "function", "function": {"name": "get_time"}}}, [WEATHER], HERMES)
    with pytest.raises(ToolError, match="cannot be forced"):
        forced_call({"tool_choice": "required"}, [WEATHER], "{{ messages }}")  # no call format at all
    llama, mistral = "... <|python_tag|> ...", "... [TOOL_CALLS] [ ..."
    assert forced_call({"tool_choice": "required"}, [WEATHER], llama) == '{"name":'
    assert forced_call({"tool_choice": NAMED}, [WEATHER], llama) == '{"name": "get_weather", "parameters":'
    assert forced_call({"tool_choice": NAMED}, [WEATHER], mistral) == \
        '[TOOL_CALLS] [{"name": "get_weather", "arguments":'
    from engine.tool_calls import LLAMA3_JSON, MISTRAL, ToolParsing
    _c, [call] = ToolParsing(LLAMA3_JSON, frozenset({"get_weather"})).split(
        forced_call({"tool_choice": NAMED}, [WEATHER], llama) + ' {"city": "Oslo"}}')
    assert call["function"]["arguments"] == '{"city": "Oslo"}'
    _c, [call] = ToolParsing(MISTRAL, frozenset({"get_weather"})).split(
        forced_call({"tool_choice": "required"}, [WEATHER], mistral) + ' "get_weather", "arguments": {}}]')
    assert call["function"]["name"] == "get_weather"
    # What the model writes after the opening completes a call the parser reads.
    prefill = forced_call({"tool_choice": NAMED}, [WEATHER], HERMES)
    _content, [call] = split_tool_calls(prefill + ' {"city": "Oslo"}}\n</tool_call>')
    assert call["function"] == {"name": "get_weather", "arguments": '{"city": "Oslo"}'}


# A template in the shape of Qwen2.5's: the tools listed in the system turn, calls and results in the turns.
TOOLS_TEMPLATE = (
    "{% if tools %}<|tools|>{% for t in tools %}{{ t.function.name }};{% endfor %} (call in <tool_call></tool_call>)"
    "\n{% endif %}"
    "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}"
    "{% if m.tool_calls %}{% for c in m.tool_calls %}<call>{{ c.function.name }}({{ c.function.arguments.city }})"
    "</call>{% endfor %}{% endif %}\n{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    lm = load_model(make_tiny_model_folder(tmp_path_factory.mktemp("tools") / "tiny", "llama"), "float32", "cpu")
    lm.tokenizer.chat_template = TOOLS_TEMPLATE
    answers, prompts = [], []

    generate = scripted_generate(answers, lambda ids, *_rest: prompts.append(lm.tokenizer.decode(ids)))
    with SubspecServer(Backend(lm, generate=generate), port=0).start() as srv:
        yield openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0, timeout=60), lm, answers, prompts


def test_a_call_comes_back_as_tool_calls_streamed_or_not(served):
    client, lm, answers, prompts = served
    messages = [{"role": "user", "content": "Weather in Paris?"}]
    answers.append("Checking.\n" + CALL)
    r = client.chat.completions.create(model=lm.name, messages=messages, tools=[WEATHER])
    [call] = r.choices[0].message.tool_calls
    assert r.choices[0].finish_reason == "tool_calls" and r.choices[0].message.content == "Checking."
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    assert "get_weather;" in prompts[-1]  # the template listed the tool

    answers.append("Checking.\n" + CALL)
    chunks = list(client.chat.completions.create(model=lm.name, messages=messages, tools=[WEATHER], stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    streamed = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert text == "Checking.\n" and "<tool_call>" not in text  # the call never went out as text
    assert [tc.function.name for tc in streamed] == ["get_weather"] and streamed[0].id.startswith("call_")
    assert chunks[-1].choices[0].finish_reason == "tool_calls"

    # The call and its result go back in the history, arguments as the template reads them (an object).
    answers.append("It is sunny in Paris.")
    history = messages + [{"role": "assistant", "content": None, "tool_calls": [
        {"id": call.id, "type": "function", "function": {"name": "get_weather", "arguments": call.function.arguments}}]},
        {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"}]
    r = client.chat.completions.create(model=lm.name, messages=history, tools=[WEATHER])
    assert r.choices[0].message.content == "It is sunny in Paris." and r.choices[0].finish_reason == "stop"
    assert "<call>get_weather(Paris)</call>" in prompts[-1] and "<|tool|>sunny, 21 C" in prompts[-1]

    answers.append("No tools asked: " + CALL)  # without tools, text is text
    r = client.chat.completions.create(model=lm.name, messages=messages)
    assert r.choices[0].message.content.endswith("</tool_call>") and not r.choices[0].message.tool_calls


def test_tool_choice_required_or_named_forces_a_call_streamed_or_not(served):
    client, lm, answers, prompts = served
    messages = [{"role": "user", "content": "Hello!"}]
    answers.append(' "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>')  # goes on from the opening
    r = client.chat.completions.create(model=lm.name, messages=messages, tools=[WEATHER], tool_choice="required")
    [call] = r.choices[0].message.tool_calls
    assert r.choices[0].finish_reason == "tool_calls" and r.choices[0].message.content is None
    assert json.loads(call.function.arguments) == {"city": "Oslo"}
    # The prompt opened the call (the tiny test tokenizer has no newline: it reads back as <pad>).
    assert prompts[-1].replace("<pad>", "\n").endswith('<|assistant|><tool_call>\n{"name":')

    answers.append(' {"city": "Rome"}}\n</tool_call>')
    chunks = list(client.chat.completions.create(model=lm.name, messages=messages, tools=[WEATHER], stream=True,
                                                 tool_choice=NAMED))
    streamed = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == ""
    assert [(tc.function.name, json.loads(tc.function.arguments)) for tc in streamed] == \
        [("get_weather", {"city": "Rome"})]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert prompts[-1].replace("<pad>", "\n").endswith('<tool_call>\n{"name": "get_weather", "arguments":')

    answers.append(" I would rather not.")  # a model that breaks out of the call: what it wrote, as text
    r = client.chat.completions.create(model=lm.name, messages=messages, tools=[WEATHER], tool_choice="required")
    assert r.choices[0].message.content == '<tool_call>\n{"name": I would rather not.'
    assert not r.choices[0].message.tool_calls and r.choices[0].finish_reason == "stop"
    with pytest.raises(openai.BadRequestError, match="not among the tools"):
        client.chat.completions.create(model=lm.name, messages=messages, tools=[WEATHER],
                                       tool_choice={"type": "function", "function": {"name": "get_time"}})

    second = '\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Bern"}}\n</tool_call>'
    for stream in (False, True):  # a named function is one call of it: later calls are not made
        answers.append(' {"city": "Rome"}}\n</tool_call>' + second)
        r = client.chat.completions.create(model=lm.name, messages=messages, tools=[WEATHER], tool_choice=NAMED,
                                           stream=stream)
        if stream:
            calls = [tc for c in r if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
        else:
            calls = r.choices[0].message.tool_calls
        assert [json.loads(c.function.arguments)["city"] for c in calls] == ["Rome"]
    answers.append(' "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>' + second)
    r = client.chat.completions.create(model=lm.name, messages=messages, tools=[WEATHER], tool_choice="required")
    assert len(r.choices[0].message.tool_calls) == 2  # "required": one call or more


def test_a_model_whose_template_has_no_tools_refuses_them(tmp_path):
    lm = load_model(make_tiny_model_folder(tmp_path / "tiny", "llama"), "float32", "cpu")
    lm.tokenizer.chat_template = "{% for m in messages %}{{ m.content }}{% endfor %}"
    with SubspecServer(Backend(lm), port=0).start() as srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0, timeout=60)
        with pytest.raises(openai.BadRequestError, match="has no tools"):
            client.chat.completions.create(model=lm.name, messages=[{"role": "user", "content": "hi"}],
                                           tools=[WEATHER])
        with pytest.raises(openai.BadRequestError, match="cannot be forced"):
            client.chat.completions.create(model=lm.name, messages=[{"role": "user", "content": "hi"}],
                                           tools=[WEATHER], tool_choice="required")


def test_a_call_left_open_does_not_swallow_the_next_and_thoughts_make_no_calls():
    _content, [call] = split_tool_calls('<tool_call>{"name": "a", "argu\n' + CALL)
    assert call["function"]["name"] == "get_weather"  # the broken one stays text, the next is still a call
    thought = "<think>\nI could " + CALL + " but no.\n</think>\n\nIt is sunny."
    assert split_tool_calls(thought) == (thought, [])
    content, [call] = split_tool_calls("<think>\nfind out\n</think>\n\n" + CALL)
    assert call["function"]["name"] == "get_weather" and content == "<think>\nfind out\n</think>"
    assert split_tool_calls("<think>\nstill " + CALL)[1] == []  # a thought still open
    _c, [bare] = split_tool_calls('<tool_call>{"name": "now", "arguments": null}</tool_call>')
    assert bare["function"]["arguments"] == "{}"  # not "null": clients call f(**json.loads(arguments))
    _c, [city] = split_tool_calls(CALL.replace("Paris", "Zürich"))
    assert city["function"]["arguments"] == '{"city": "Zürich"}'
    _c, [quoted] = split_tool_calls('<tool_call>{"name": "f", "arguments": "{\\"a\\": 1}"}</tool_call>')
    assert quoted["function"]["arguments"] == '{"a": 1}'  # arguments written as a JSON string: read through
    for odd in ('"Paris"', "[1, 2]", "3", '"not json"'):  # clients call f(**arguments): these stay text
        text = '<tool_call>{"name": "f", "arguments": ' + odd + '}</tool_call>'
        assert split_tool_calls(text) == (text, [])


def test_template_variables_of_template_sets_and_transformers_tags():
    from engine.server import template_variables

    tool_use = "{% for t in tools %}{{ t }}{% endfor %}{% for m in messages %}{% if loop.first %}{% break %}" \
               "{% endif %}{% endfor %}"
    named = {"default": "{% for m in messages %}{{ m.content }}{% endfor %}", "tool_use": tool_use}
    assert template_variables(named) == {"messages"} and template_variables(named, tools=True) == {"tools", "messages"}
    assert template_variables([{"name": "default", "template": "{{ messages }}"}]) == {"messages"}
    assert template_variables("{% for m in messages %}{% generation %}{{ m.content }}{% endgeneration %}"
                              "{% endfor %}") == {"messages"}  # a TRL fine-tune's template
    assert template_variables("{% unknown_tag %}") is None  # cannot tell: kwargs and tools pass through


def test_a_forced_call_after_a_template_that_opens_a_thought_closes_it_first(tmp_path):
    lm = load_model(make_tiny_model_folder(tmp_path / "tiny", "llama"), "float32", "cpu")
    lm.tokenizer.chat_template = ("{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}"
                                  "<|assistant|><think>\n")  # as QwQ's and Qwen3-Thinking's do
    prompt = lm.tokenizer.decode(lm.encode_messages([{"role": "user", "content": "hi"}], prefill="<tool_call>"))
    assert prompt.endswith("<tool_call>") and prompt.index("<think>") < prompt.index("</think>")
    plain = lm.tokenizer.decode(lm.encode_messages([{"role": "user", "content": "hi"}]))
    assert "</think>" not in plain  # without a forced call the model thinks as its template asks
    closed = lm.tokenizer.decode(lm.encode_messages([{"role": "user", "content": "hi"}], close_thought=True))
    assert closed.index("<think>") < closed.index("</think>")  # JSON mode: the answer is the JSON, not a thought


def test_llama3_and_mistral_calls_are_whole_answers_to_the_requests_tools():
    from engine.tool_calls import HERMES, LLAMA3_JSON, MISTRAL, ToolParsing, call_format

    assert call_format("... <tool_call> ...") == HERMES and call_format("{{ messages }}") == HERMES
    assert call_format("{{- '<|python_tag|>' }}") == LLAMA3_JSON and call_format("[TOOL_CALLS]") == MISTRAL
    llama = ToolParsing(LLAMA3_JSON, frozenset({"get_weather", "get_time"}))
    content, [call] = llama.split('{"name": "get_weather", "parameters": {"city": "Paris"}}')
    assert content is None and call["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    _c, calls = llama.split('{"name": "get_weather", "parameters": {"city": "Rome; Italy"}}; '
                            '{"name": "get_time", "parameters": {}}')
    assert [c["function"]["name"] for c in calls] == ["get_weather"]  # Llama's templates take one call back
    for text in ('{"name": "delete_all", "parameters": {}}',  # not one of the request's tools
                 '{"answer": 42}', 'The weather: {"name": "get_weather", "parameters": {}}', "Sunny."):
        assert llama.split(text) == (text, [])
    mistral = ToolParsing(MISTRAL, frozenset({"get_weather"}))
    _c, [call] = mistral.split(' [{"name": "get_weather", "arguments": {"city": "Oslo"}}]')
    assert call["function"]["arguments"] == '{"city": "Oslo"}'
    assert mistral.split('[1, 2]') == ('[1, 2]', [])
    thought, [call] = llama.split('<think>\nweather\n</think>\n\n{"name": "get_weather", "parameters": {}}')
    assert thought == "<think>\nweather\n</think>" and call["function"]["name"] == "get_weather"


def test_a_whole_answer_call_is_held_back_and_other_answers_stream():
    from engine.tool_calls import LLAMA3_JSON, ToolParsing

    parsing = ToolParsing(LLAMA3_JSON, frozenset({"get_weather"}))
    s = parsing.stream()
    assert [s.feed(p) for p in [" ", '{"name": "get_weather", ', '"parameters": {"city": "Paris"}}']] == ["", "", ""]
    rest, [call] = s.finish()
    assert rest == "" and call["function"]["name"] == "get_weather"
    s = parsing.stream()
    assert [s.feed(p) for p in ["It is", " sunny."]] == ["It is", " sunny."] and s.finish() == ("", [])
    s = parsing.stream()
    assert s.feed('{"') == "" and s.feed('answer": ') == '{"answer": ' and s.feed("42}") == "42}"
    assert s.finish() == ("", [])  # JSON that cannot be a call streams once its first characters say so
    s = parsing.stream()
    assert s.feed("[1](http://x)") == "[1](http://x)"  # (nor is a Markdown link held back)
    s = parsing.stream()
    assert s.feed("<think>hm") == "<think>hm" and s.feed("</think>\n") == "</think>"
    assert s.feed('{"name": "get_weather", "parameters": {}}') == "" and len(s.finish()[1]) == 1


def test_a_llama3_style_template_gets_its_calls_back_as_tool_calls(tmp_path):
    lm = load_model(make_tiny_model_folder(tmp_path / "tiny", "llama"), "float32", "cpu")
    lm.tokenizer.chat_template = ("{% if tools %}Respond with {\"name\": function name, \"parameters\": dictionary of "
                                  "argument name and its value}{% endif %}{% for m in messages %}<|{{ m.role }}|>"
                                  "{{ m.content }}{% endfor %}<|assistant|>{# <|python_tag|> #}")
    answers = ['{"name": "get_weather", "parameters": {"city": "Lima"}}', '{"temperature": 21}',
               ' "get_weather", "parameters": {"city": "Quito"}}']

    def generate(prompt_ids, max_tokens, sampling, stops):
        yield StepEvent(0, (1,), answers.pop(0), finish_reason="eos")

    with SubspecServer(Backend(lm, generate=generate), port=0).start() as srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0, timeout=60)
        r = client.chat.completions.create(model=lm.name, messages=[{"role": "user", "content": "Lima?"}],
                                           tools=[WEATHER])
        [call] = r.choices[0].message.tool_calls
        assert r.choices[0].finish_reason == "tool_calls" and json.loads(call.function.arguments) == {"city": "Lima"}
        r = client.chat.completions.create(model=lm.name, messages=[{"role": "user", "content": "JSON?"}],
                                           tools=[WEATHER], stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in r if c.choices) == '{"temperature": 21}'
        r = client.chat.completions.create(model=lm.name, messages=[{"role": "user", "content": "Quito?"}],
                                           tools=[WEATHER], tool_choice="required", stream=True)
        calls = [tc for c in r if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
        assert [json.loads(tc.function.arguments) for tc in calls] == [{"city": "Quito"}]


def test_odd_model_output_and_client_histories_never_break_a_request():
    from engine.tool_calls import MISTRAL, UNKNOWN, ToolParsing, call_format, mistral_ids

    deep = "[" * 5000 + "]" * 5000  # past Python's recursion limit
    assert split_tool_calls("<tool_call>" + deep + "</tool_call>")[1] == []
    assert ToolParsing(MISTRAL, frozenset({"f"})).split(deep) == (deep, [])
    assert split_tool_calls('<tool_call>{"name": "f", "arguments": {"x": NaN}}</tool_call>')[1] == []
    assert template_message({"role": "assistant", "content": "hi", "tool_calls": []}, 0) == {}
    assert template_message({"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": deep}}]},
                            0)["tool_calls"][0]["function"]["arguments"] == deep  # kept as written
    # Newer Mistral templates: [TOOL_CALLS]name[ARGS]{...}, both special tokens: not readable, not forced.
    newer = "{{ '[TOOL_CALLS]' + name + '[ARGS]' + args }}"
    assert call_format(newer) == UNKNOWN and ToolParsing(UNKNOWN, frozenset({"f"})).split('f{"a": 1}')[1] == []
    with pytest.raises(ToolError, match="cannot be forced"):
        forced_call({"tool_choice": "required"}, [WEATHER], newer)
    # Mistral's templates take 9 alphanumeric characters as ids, the same on a call and on its result.
    history = [{"role": "user", "content": "x"},
               {"role": "assistant", "tool_calls": [{"id": "call_0123456789abcdef", "function": {"name": "f"}},
                                                    {"function": {"name": "g"}}]},
               {"role": "tool", "tool_call_id": "call_0123456789abcdef", "content": "1"},
               {"role": "tool", "content": "2"}]
    fixed = mistral_ids(history)
    ids = [c["id"] for c in fixed[1]["tool_calls"]]
    assert all(len(i) == 9 and i.isalnum() for i in ids) and [fixed[2]["tool_call_id"], fixed[3]["tool_call_id"]] == ids
    _c, [call] = ToolParsing(MISTRAL, frozenset({"f"})).split('[{"name": "f", "arguments": {}}]')
    assert len(call["id"]) == 9 and call["id"].isalnum()


def test_a_forced_whole_answer_call_may_be_followed_by_text_and_is_held_while_streamed():
    from engine.tool_calls import LLAMA3_JSON, MISTRAL, ToolParsing

    forced = ToolParsing(LLAMA3_JSON, frozenset({"get_weather"}), forced=True)
    content, [call] = forced.split('{"name": "get_weather", "parameters": {}}\n\nThis checks the weather.')
    assert content == "This checks the weather." and call["function"]["name"] == "get_weather"
    free = ToolParsing(LLAMA3_JSON, frozenset({"get_weather"}))
    assert free.split('{"name": "get_weather", "parameters": {}} ok')[1] == []  # unforced: all of it, or text
    s = ToolParsing(MISTRAL, frozenset({"get_weather"}), forced=True).stream()
    assert s.feed('[TOOL_CALLS] [{"name":') == "" and s.feed(' "get_weather", "arguments": {}}]') == ""
    rest, [call] = s.finish()
    assert rest == "" and call["function"]["name"] == "get_weather"
