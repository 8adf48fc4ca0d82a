"""JSON mode (engine.constrained): the recognizer agrees with json.loads, token bytes are the tokenizer's,
a constrained answer is the same token for token whichever way it is decoded (plain, SubSpec trees; greedy,
sampled, penalized), and on the real model it is valid JSON where the free answer was not."""

import json
import random

import pytest
import torch
from tiny_models import ARCHS, make_tiny_model_folder

from engine.constrained import START, JsonConstraint, Schema, feed, start, token_bytes
from engine.events import summarize
from engine.generate import generate_plain
from engine.loading import load_model
from engine.sampling import SamplingParams
from engine.speculative import TreeShape, generate_subspec
from engine.substitute import build_draft

VALID = ['{}', '{"a": 1}', '{"a": [1, 2.5, -3e10, 0, -0.0, 1E+2, true, false, null]}', ' {"k": "v\\n\\u00e9\\"x"}',
         '{"nested": {"deeper": [[], {}, [{"x": "y"}]]}, "s": "été ☕"}', '{\n  "a" : "b" ,\n "c":{}\n}\n']
INVALID = ['[]', '"x"', '1', '{"a"}', '{"a":}', '{"a": 01}', '{"a": 1.}', '{"a": .5}', '{"a": tru}', '{a: 1}',
           '{"a": 1,}', '{"a": [1,]}', '{"a": "\\x"}', '{"a": "\\u12G4"}', '{"a": -}', '{"a": 1e}', '{} {}',
           '{"a": 1}}', '{"a": "line\nbreak"}', "{'a': 1}", '{"a": NaN}', '{"a": [1 2]}']


def _mutated(rng: random.Random, valid: list[str], alphabet: str) -> str:
    """One of `valid` with one or two characters deleted, inserted or replaced at random."""
    text = list(rng.choice(valid))
    for _ in range(rng.randint(1, 2)):
        i = rng.randrange(len(text) + 1)
        kind = rng.random()
        if kind < 0.4 and i < len(text):
            del text[i]
        elif kind < 0.7:
            text.insert(i, rng.choice(alphabet))
        elif i < len(text):
            text[i] = rng.choice(alphabet)
    return "".join(text)


def _accepts(text: str):
    return feed(START, text.encode())


def test_the_recognizer_agrees_with_json_loads():
    for text in VALID:
        assert isinstance(json.loads(text), dict)
        state = _accepts(text)
        assert state is not None and state.done, text
        data = text.encode()
        for i in range(len(data)):  # every beginning of a valid object can go on
            assert feed(START, data[:i]) is not None, (text, data[:i])
    for text in INVALID:
        state = _accepts(text)
        assert state is None or not state.done, text
    rng = random.Random(7)
    alphabet = '{}[]":,.-+eE0123456789 \ntruefalsnul\\abx'
    agreed = 0
    for _ in range(6000):  # valid objects mutated at random: done exactly when json.loads takes an object
        text = _mutated(rng, VALID, alphabet)
        state = _accepts(text)
        try:
            ok = isinstance(json.loads(text), dict) and text.lstrip()[:1] == "{"
        except ValueError:
            ok = False
        assert (state is not None and state.done) == ok, text
        agreed += ok
    assert 300 < agreed < 5700  # both sides were exercised


def test_whitespace_runs_are_bounded_and_a_finished_object_only_ends():
    from engine.constrained import MAX_WHITESPACE

    assert _accepts("{" + " " * MAX_WHITESPACE) is not None and _accepts("{" + " " * (MAX_WHITESPACE + 1)) is None
    assert _accepts('{\n' + " " * 20 + '"a": 1}').done  # pretty-printing fits
    assert _accepts('{"a": "' + " " * 100 + '"}').done  # (inside a string, spaces are text)


def test_choose_ranks_lazily_and_picks_the_end_at_once(tmp_path):
    lm = load_model(make_tiny_model_folder(tmp_path / "tiny", "llama"), "float32", "cpu")
    c = JsonConstraint(lm.tokenizer, lm.eos_token_ids(), lm.config.vocab_size)
    brace = next(t for t, p in enumerate(c.pieces) if p == b"{")
    scores = torch.arange(lm.config.vocab_size, dtype=torch.float32)  # the highest id scores highest
    top = lm.config.vocab_size - 1
    assert c.choose(START, top, lambda: scores) == max(t for t, p in enumerate(c.pieces)
                                                        if p and feed(START, p) is not None
                                                        and feed(START, p).mode != "start")
    done = feed(START, b"{}")
    [eos] = sorted(c.eos)[:1]
    assert c.choose(done, brace, lambda: scores) == max(c.eos)  # only an end: the best-scored one
    assert c.allows(done, eos) and not c.allows(done, brace) and not c.allows(START, eos)


@pytest.fixture(scope="module", params=sorted(ARCHS))
def tiny(request, tmp_path_factory):
    lm = load_model(make_tiny_model_folder(tmp_path_factory.mktemp(request.param), request.param), "float32", "cpu")
    return lm, build_draft(lm.decoder, 4, 64)


@pytest.mark.parametrize("params", [SamplingParams(json=True), SamplingParams(temperature=0.9, seed=3, json=True),
                                    SamplingParams(temperature=1.0, top_k=5, seed=4, json=True),
                                    SamplingParams(repetition_penalty=1.4, json=True)])
def test_a_json_answer_is_the_same_whichever_way_it_is_decoded(tiny, params):
    lm, draft = tiny
    ids = lm.encode("hello world")
    plain = summarize(generate_plain(lm, ids, 30, params), len(ids), "p")
    free = summarize(generate_plain(lm, ids, 30, SamplingParams(**{**params.__dict__, "json": False})), len(ids), "p")
    assert plain.token_ids != free.token_ids  # (random weights: the constraint had to choose)
    c = JsonConstraint(lm.tokenizer, lm.eos_token_ids(), lm.config.vocab_size)
    text = b"".join(c.pieces[t] for t in plain.token_ids)
    assert text.lstrip()[:1] == b"{" and feed(START, text) is not None  # a JSON object so far
    for shape in (TreeShape(6, 3), TreeShape(1, 4), TreeShape(8, 4, budget=12), TreeShape(8, 3, auto=True)):
        spec = summarize(generate_subspec(lm, draft, ids, 30, params, shape=shape), len(ids), "s")
        assert spec.token_ids == plain.token_ids and spec.text == plain.text


def test_token_bytes_are_what_the_tokenizer_decodes(smollm2):
    tok = smollm2.tokenizer
    pieces = token_bytes(tok, smollm2.config.vocab_size)
    assert len(pieces) == smollm2.config.vocab_size
    for t in list(range(0, smollm2.config.vocab_size, 97)):
        if pieces[t] is None:
            assert t in tok.all_special_ids
            continue
        text = tok.decode([t])
        if "\ufffd" not in text:  # (a token holding part of a character decodes to U+FFFD on its own)
            assert pieces[t] == text.encode(), t
    assert token_bytes(tok, smollm2.config.vocab_size) is pieces  # made once per tokenizer


def test_json_mode_on_the_real_model_is_valid_json_and_subspec_gives_the_same(smollm2):
    smollm2_draft = build_draft(smollm2.decoder, nbits=4, group_size=64)  # g64: g32 matches the GGUF's grid
    ids = smollm2.encode("Describe a cat as a JSON object with keys name, age and color.")
    free = summarize(generate_plain(smollm2, ids, 64), len(ids), "p")
    assert free.text.startswith("```json")  # left free, the model fences its JSON in Markdown
    plain = summarize(generate_plain(smollm2, ids, 64, SamplingParams(json=True)), len(ids), "p")
    assert isinstance(json.loads(plain.text), dict) and plain.finish_reason == "eos"
    spec = summarize(generate_subspec(smollm2, smollm2_draft, ids, 64, SamplingParams(json=True),
                                      shape=TreeShape(16, 4)), len(ids), "s")
    assert spec.token_ids == plain.token_ids and spec.tau > 2


def test_the_apis_json_modes_reach_the_engine(tmp_path):
    import ollama
    import openai

    from engine.server import Backend, SubspecServer

    lm = load_model(make_tiny_model_folder(tmp_path / "tiny", "llama"), "float32", "cpu")
    seen = []

    def generate(prompt_ids, max_tokens, sampling, stops):
        seen.append(sampling.json)
        from engine.generate import generate_plain
        yield from generate_plain(lm, prompt_ids, max_tokens, sampling, stops)

    with SubspecServer(Backend(lm, generate=generate), port=0).start() as srv:
        oai = openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0, timeout=60)
        r = oai.completions.create(model=lm.name, prompt="hi there", max_tokens=12, temperature=0,
                                   extra_body={"response_format": {"type": "json_object"}})
        assert r.choices[0].text.lstrip().startswith("{")
        with pytest.raises(openai.BadRequestError, match="cannot be enforced: .* minLength"):
            oai.completions.create(model=lm.name, prompt="hi", max_tokens=4, extra_body={"response_format": {
                "type": "json_schema", "json_schema": {"name": "x", "schema": {
                    "type": "object", "properties": {"a": {"type": "string", "minLength": 3}}}}}})
        r = oai.completions.create(model=lm.name, prompt="hi there", max_tokens=40, temperature=0,
                                   extra_body={"response_format": {"type": "json_schema", "json_schema": {
                                       "name": "person", "schema": PERSON}}})
        assert feed(start(Schema(PERSON)), r.choices[0].text.encode()) is not None  # the schema's beginning
        client = ollama.Client(host=srv.url, timeout=60)
        g = client.generate(model=lm.name, prompt="hi there", raw=True, format="json", options={"num_predict": 12})
        assert g.response.lstrip().startswith("{")
        g = client.generate(model=lm.name, prompt="hi there", raw=True, format=NUMBERS, options={"num_predict": 12})
        assert g.response.lstrip().startswith("[") and feed(start(Schema(NUMBERS)), g.response.encode()) is not None
        with pytest.raises(openai.BadRequestError, match="cannot be combined"):
            oai.chat.completions.create(model=lm.name, messages=[{"role": "user", "content": "hi"}],
                                        response_format={"type": "json_object"}, tools=[{
                                            "type": "function", "function": {"name": "f"}}])
        with pytest.raises(ollama.ResponseError, match="cannot be combined"):
            client.chat(model=lm.name, messages=[{"role": "user", "content": "hi"}], format="json",
                        tools=[{"type": "function", "function": {"name": "f"}}])
    assert seen == [True, True, True, True]  # (the two json_object and the two schema requests)


# ---------------------------------------------------------------- JSON schemas

PERSON = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
                                           "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 2}},
          "required": ["name", "age"]}
PETS = {"$defs": {"Pet": {"type": "object", "title": "Pet",
                          "properties": {"kind": {"enum": ["cat", "dog"]}, "legs": {"type": "integer"}},
                          "required": ["kind"]}},
        "type": "object", "properties": {"pet": {"$ref": "#/$defs/Pet"},
                                         "note": {"anyOf": [{"type": "string"}, {"type": "null"}]},
                                         "mood": {"anyOf": [{"enum": ["calm", 3]}, {"type": "null"}]}},
        "required": ["pet"]}
NUMBERS = {"type": "array", "items": {"type": "number"}, "minItems": 1}
FLAGS = {"type": "object", "additionalProperties": {"type": "boolean"}}
SCHEMAS = {
    "person": (PERSON, ['{"name": "Ann", "age": 31}', '{"age": -4, "name": "B\\u00e9", "tags": ["x", "y"]}',
                        '{\n  "name": "",\n  "age": 0,\n  "tags": []\n}']),
    "pets": (PETS, ['{"pet": {"kind": "cat"}}', '{"note": null, "pet": {"legs": 4, "kind": "dog"}, "mood": 3}',
                    '{"pet": {"kind": "dog"}, "note": "hi", "mood": "calm"}', '{"pet": {"kind": "cat"}, "mood": null}']),
    "numbers": (NUMBERS, ['[1]', '[1.5, -2e3, 0]']),
    "flags": (FLAGS, ['{}', '{"a": true, "b": false}']),
}


def _conforms(value, schema, root) -> bool:
    """A small reference validator for the subset the engine enforces (properties listed: no others)."""
    if "$ref" in schema:
        target = root
        for part in schema["$ref"][2:].split("/"):
            target = target[part]
        return _conforms(value, target, root)
    if "anyOf" in schema:
        return any(_conforms(value, b, root) for b in schema["anyOf"])
    if "enum" in schema:
        return json.dumps(value) in {json.dumps(v) for v in schema["enum"]}
    kind = schema.get("type")
    checks = {"object": lambda v: isinstance(v, dict), "array": lambda v: isinstance(v, list),
              "string": lambda v: isinstance(v, str), "boolean": lambda v: isinstance(v, bool),
              "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
              "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
              "null": lambda v: v is None}
    if kind is not None and not checks[kind](value):
        return False
    if isinstance(value, dict):
        props = schema.get("properties", {})
        more = schema.get("additionalProperties", not props)
        for k, v in value.items():
            sub = props.get(k, more if isinstance(more, dict) else {} if more else None)
            if sub is None or not _conforms(v, sub, root):
                return False
        return set(schema.get("required", [])) <= set(value)
    if isinstance(value, list):
        n = len(value)
        if n < schema.get("minItems", 0) or n > schema.get("maxItems", n):
            return False
        return all(_conforms(v, schema.get("items", {}), root) for v in value)
    return True


def _loads_strict(text):
    def no_duplicates(pairs):
        keys = [k for k, _v in pairs]
        if len(keys) != len(set(keys)):
            raise ValueError("duplicate key")
        return dict(pairs)
    return json.loads(text, object_pairs_hook=no_duplicates,
                      parse_constant=lambda name: (_ for _ in ()).throw(ValueError(name)))


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_a_schemas_recognizer_agrees_with_a_validator(name):
    from engine.constrained import Schema, start

    schema, valid = SCHEMAS[name]
    begin = start(Schema(schema))
    for text in valid:
        assert _conforms(_loads_strict(text), schema, schema), text
        state = feed(begin, text.encode())
        assert state is not None and state.done, text
        for i in range(len(text.encode())):  # every beginning of a conforming value can go on
            assert feed(begin, text.encode()[:i]) is not None, (text, text.encode()[:i])
    rng = random.Random(11)
    alphabet = '{}[]":,.-e0123456789 \nnametgsuldrcokpi\\'
    agreed = 0
    for _ in range(5000):
        text = _mutated(rng, valid, alphabet)
        state = feed(begin, text.encode())
        try:
            ok = text.lstrip()[:1] in "{[" and _conforms(_loads_strict(text), schema, schema)
        except (ValueError, RecursionError):
            ok = False
        assert (state is not None and state.done) == ok, (name, text)
        agreed += ok
    assert agreed > 100


@pytest.mark.parametrize("schema, why", [
    ({"type": "string"}, "root must be an object"),
    ({"type": "object", "properties": {"a": {"type": "string", "pattern": "^x"}}}, "pattern"),
    ({"type": "object", "properties": {"a": {"type": "integer", "minimum": 0}}}, "minimum"),
    ({"allOf": [{"type": "object"}]}, "allOf"),
    ({"type": "object", "properties": {"a": {"$ref": "https://x/y"}}}, "local $refs"),
    ({"type": "object", "properties": {"a": {"$ref": "#/$defs/Nope"}}}, "points nowhere"),
    ({"type": "object", "required": ["b"], "properties": {"a": {}}}, "required must list"),
    ({"type": "object", "properties": {"a": {"anyOf": [{"type": "object"}, {"type": "object"}]}}}, "same type"),
    ({"type": "wizard"}, "unknown type"),
])
def test_schemas_it_cannot_enforce_are_refused_with_the_reason(schema, why):
    from engine.constrained import Schema, SchemaError

    with pytest.raises(SchemaError, match=why.replace("$", "\\$")):
        Schema(schema)


def test_a_recursive_schema_compiles_and_constrains():
    from engine.constrained import Schema, start

    tree = {"$defs": {"Node": {"type": "object", "properties": {"v": {"type": "integer"},
                                                               "kids": {"type": "array",
                                                                        "items": {"$ref": "#/$defs/Node"}}},
                               "required": ["v"]}}, "$ref": "#/$defs/Node"}
    begin = start(Schema(tree))
    assert feed(begin, b'{"v": 1, "kids": [{"v": 2, "kids": [{"v": 3}]}]}').done
    assert feed(begin, b'{"v": 1, "kids": [{"w": 2}]}') is None


def test_a_schema_answer_on_the_real_model_conforms_and_subspec_gives_the_same(smollm2):
    draft = build_draft(smollm2.decoder, nbits=4, group_size=64)
    ids = smollm2.encode("Invent a person. Answer in JSON with their name, age and up to two tags.")
    params = SamplingParams(json=True, json_schema=json.dumps(PERSON))
    plain = summarize(generate_plain(smollm2, ids, 96, params), len(ids), "p")
    value = _loads_strict(plain.text)
    assert plain.finish_reason == "eos" and _conforms(value, PERSON, PERSON) and set(value) >= {"name", "age"}
    spec = summarize(generate_subspec(smollm2, draft, ids, 96, params, shape=TreeShape(16, 4)), len(ids), "s")
    assert spec.token_ids == plain.token_ids


def test_the_reviews_schemas_refused_or_enforced():
    from engine.constrained import Schema, SchemaError, start

    node = {"type": "object", "properties": {"c": {"$ref": "#/$defs/N"}}, "required": ["c"]}
    for endless in ({"$defs": {"N": node}, "$ref": "#/$defs/N"},  # {"c": {"c": ... for ever
                    {"$defs": {"N": node}, "type": "object", "properties": {"x": {"$ref": "#/$defs/N"}}},
                    {"$defs": {"A": {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/A"}}},
                     "$ref": "#/$defs/A"}):
        with pytest.raises(SchemaError, match="never be finished"):
            Schema(endless)
    # pydantic's recursive Optional: child: Optional["Node"]
    optional = {"$defs": {"Node": {"type": "object", "properties": {
        "child": {"anyOf": [{"$ref": "#/$defs/Node"}, {"type": "null"}]}}}}, "$ref": "#/$defs/Node"}
    begin = start(Schema(optional))
    assert feed(begin, b'{"child": {"child": null}}').done and feed(begin, b'{"child": 3}') is None
    for malformed in ({"type": 5}, {"type": ["object", ["x"]]}, {"type": "object", "required": [["a"]]},
                      {"$ref": ["#/x"]}, {"$ref": {}}, {"type": "object", "properties": {"\ud800": {}}},
                      {"enum": [float("nan")]}, {"type": "string", "enum": ["x", 1]}, {"enum": ["x"], "const": "x"},
                      {"$ref": "#/$defs/A", "maxItems": 1, "$defs": {"A": {"type": "array"}}},
                      {"$defs": {"A": {"$ref": "#/$defs/B"}, "B": {"$ref": "#/$defs/A"}}, "type": "object",
                       "properties": {"x": {"$ref": "#/$defs/A"}}}):
        with pytest.raises(SchemaError):
            Schema(malformed)
    spelled = start(Schema({"type": "object", "properties": {"a": {"type": "integer"}},
                            "additionalProperties": True}))
    assert feed(spelled, b'{"\\u0061": "x"}') is None and feed(spelled, b'{"a": 1, "\\u0061": 2}') is None
    assert feed(START, b'{"a": 1, "\\u0061": 2}') is None and feed(START, b'{"\\n": 1}').done
    assert Schema({"type": "array", "minItems": 2.0}).nodes  # (a whole number written as 2.0 is one)
