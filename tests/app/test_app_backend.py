"""TorchBackend's checks before it hands a request to the engine (no model needed for these), and what it
hands over on tiny and real models: SubSpec for the API, auto depth's controller kept across a chat."""

from types import SimpleNamespace

import pytest

from app.backend import TorchBackend
from engine.errors import SubspecError

MESSAGES = [{"role": "user", "content": "hi"}]


def backend_with(tokenizer):
    backend = TorchBackend.__new__(TorchBackend)  # skips loading: these checks come before the model runs
    backend.name, backend.lm = "tiny", SimpleNamespace(tokenizer=tokenizer)
    return backend


def test_a_model_without_a_chat_template_is_refused():
    with pytest.raises(SubspecError, match="no chat template"):
        backend_with(SimpleNamespace(chat_template=None)).stream(MESSAGES, {})


def test_an_unknown_method_is_refused():
    with pytest.raises(SubspecError, match="not available"):
        backend_with(SimpleNamespace(chat_template="x")).stream(MESSAGES, {"method": "medusa"})


def test_bad_sampling_settings_are_refused():
    with pytest.raises(SubspecError, match="top-p"):
        backend_with(SimpleNamespace(chat_template="x")).stream(MESSAGES, {"top_p": 0})


def test_a_missing_model_is_a_user_error(tmp_path):
    with pytest.raises(SubspecError, match="not a model folder"):
        TorchBackend(str(tmp_path), lambda _msg: None)


def test_continue_leaves_the_last_answer_open_for_the_model():
    seen = []

    class Tokenizer:
        chat_template = "x"

        def apply_chat_template(self, messages, **kwargs):
            seen.append(kwargs)
            return "rendered"

        def encode(self, text, add_special_tokens):
            return [1, 2, 3]

    backend = backend_with(Tokenizer())
    history = MESSAGES + [{"role": "assistant", "content": "Hello"}]
    assert backend.encode(history, continue_final=True) == [1, 2, 3]
    assert seen == [{"continue_final_message": True, "tokenize": False}]
    with pytest.raises(SubspecError, match="no answer to continue"):
        backend.encode(MESSAGES, continue_final=True)


def test_on_a_gpu_the_planner_chooses_the_resident_layers(monkeypatch, tmp_path):
    """A model bigger than the card: TorchBackend loads with the plan's split (a fake 8 GB GPU here)."""
    import json

    import torch

    import engine.hardware
    import engine.loading
    import engine.store

    from real_configs import QWEN25_7B

    (tmp_path / "config.json").write_text(json.dumps(QWEN25_7B))
    gpu = {"index": 0, "name": "fake 8 GB", "total_bytes": 8 * 2**30, "free_bytes": 8 * 2**30, "used_bytes": 0,
           "pcie": {"gen_current": 4, "gen_max": 4, "width_current": 16, "width_max": 16}}
    profile = {"gpus": [gpu], "cuda": {"available": True, "h2d_bandwidth_gbps": None, "matmul_tflops": None},
               "ram": {"total_bytes": 64 * 2**30, "available_bytes": 60 * 2**30}}
    loaded = {}

    class FakeLM:
        notes = ["out of GPU memory with 3 resident layers; retried with 1"]

    def fake_load(folder, name=None, resident_layers=None, **_):
        loaded["resident_layers"] = resident_layers
        return FakeLM()

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(engine.hardware, "probe", lambda measure=False: profile)
    monkeypatch.setattr(engine.loading, "load_model", fake_load)
    monkeypatch.setattr(engine.store, "resolve_model", lambda m: (tmp_path, "qwen-7b-shaped"))
    messages = []
    TorchBackend(str(tmp_path), messages.append)
    assert loaded["resident_layers"] is not None and 0 <= loaded["resident_layers"] < 28
    assert any("streamed from RAM" in m for m in messages)
    assert FakeLM.notes[0] in messages  # what loading had to change reaches the status bar


def test_end_to_end_with_the_real_default_model(default_model_folder, tmp_path):
    """The real engine behind the real window: a scripted exchange on SmolLM2, saved as a PNG."""
    import os
    import subprocess
    import sys

    shot = tmp_path / "shot.png"
    env = {**os.environ, "SUBSPEC_HOME": str(tmp_path / "home"), "QT_QPA_PLATFORM": "offscreen"}
    r = subprocess.run([sys.executable, "-m", "app", "--model", str(default_model_folder), "--screenshot", str(shot)],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    assert shot.stat().st_size > 10_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import json

    # The run's conversation is kept in memory (a screenshot leaves the user's data alone) and printed.
    assert not (tmp_path / "home" / "conversations.db").exists()
    answer = json.loads(r.stdout.strip().splitlines()[-1])
    assert answer["complete"] and "Paris" in answer["answer"]  # SmolLM2's greedy answer to the scripted question
    stats = answer["stats"]  # the context meter's numbers: SmolLM2's own 8192-token window on a CPU
    assert stats["context_tokens"] == 8192 and 0 < stats["prompt_tokens"] + stats["new_tokens"] < 8192


def test_api_requests_with_subspec_give_the_plain_answer(tmp_path):
    """generate_ids (the app's API path) with the chat's SubSpec settings: the same tokens as plain."""
    from tiny_models import make_tiny_model_folder

    from engine.sampling import SamplingParams

    backend = TorchBackend(str(make_tiny_model_folder(tmp_path / "tiny")), lambda _msg: None)
    ids = backend.lm.encode("hello world")
    greedy = SamplingParams(temperature=0)

    def tokens(decoding):
        return [t for ev in backend.generate_ids(ids, 24, greedy, (), decoding) for t in ev.token_ids]

    plain = tokens({"method": "vanilla"})
    spec_events = list(backend.generate_ids(ids, 24, greedy, (), {"method": "subspec", "depth": 6, "width": 3}))
    assert [t for ev in spec_events for t in ev.token_ids] == plain and len(plain) == 24
    assert max(ev.tree_nodes for ev in spec_events) > 1  # it really drafted
    assert backend.draft is not None


AUTO = {"method": "subspec", "depth": 8, "width": 3, "auto": True, "max_new_tokens": 16}


def chat_answer(backend, params, text="hello"):
    """One chat answer through stream(): its decode passes (the prefill's event left out) and tokens."""
    _n, events = backend.stream([{"role": "user", "content": text}], params)
    events = list(events)
    return [ev for ev in events if ev.iteration > 0], [t for ev in events for t in ev.token_ids]


def test_the_chat_keeps_one_depth_control_across_answers(tmp_path):
    """Auto depth on a real tiny model: the tree shape says auto, and the second answer goes on from what
    the first measured instead of exploring again; another tree shape starts over."""
    from tiny_models import make_tiny_model_folder

    from engine.speculative import TreeShape

    backend = TorchBackend(str(make_tiny_model_folder(tmp_path / "tiny")), lambda _msg: None)
    assert backend.control is None
    first, tokens = chat_answer(backend, AUTO)
    control = backend.control
    assert control is not None and control.fits(8, 3, None)
    assert control.passes == len(first)  # the engine measured every pass with the backend's controller
    # Auto depth's exploration: a quarter-depth tree, then plain decoding (a fixed tree would be 8 deep).
    assert [ev.depth for ev in first[:2]] == [2, 0]
    assert tokens == chat_answer(backend, {**AUTO, "method": "vanilla"})[1]  # lossless all the same

    second, _tokens = chat_answer(backend, AUTO, "hello again")
    assert backend.control is control and control.passes == len(first) + len(second)

    chat_answer(backend, {**AUTO, "width": 2})  # another tree: measurements for 8x3 do not apply
    assert backend.control is not control and backend.control.fits(8, 2, None)
    fixed, _tokens = chat_answer(backend, {**AUTO, "auto": False})
    assert fixed[0].depth == 8 and backend.depth_control(TreeShape(8, 3)) is None


def test_api_requests_keep_a_depth_control_of_their_own(tmp_path):
    from tiny_models import make_tiny_model_folder

    from engine.sampling import SamplingParams

    backend = TorchBackend(str(make_tiny_model_folder(tmp_path / "tiny")), lambda _msg: None)
    decoding = {"method": "subspec", "depth": 8, "width": 3, "auto": True}
    ids = backend.encode([{"role": "user", "content": "hi"}], False)
    first = [ev for ev in backend.generate_ids(ids, 12, SamplingParams(), (), decoding) if ev.iteration > 0]
    api = backend.api_control
    assert api is not None and api.passes == len(first) and backend.control is None
    second = [ev for ev in backend.generate_ids(ids, 12, SamplingParams(), (), decoding) if ev.iteration > 0]
    assert backend.api_control is api and api.passes == len(first) + len(second)
    chat_answer(backend, AUTO)
    assert backend.control is not None and backend.control is not api and api.passes == len(first) + len(second)


def test_a_reload_starts_a_new_depth_control(qapp, tmp_path):
    """A (re)load through the worker makes a new backend, so measurements of the old model never steer the
    new one; its summary says the answer used auto depth."""
    from tiny_models import make_tiny_model_folder

    from app.worker import EngineWorker

    folder = str(make_tiny_model_folder(tmp_path / "tiny"))
    worker = EngineWorker(model_lister=lambda: [])
    summaries = []
    worker.finished.connect(summaries.append)
    worker.failed.connect(lambda message, details: pytest.fail(message + details))
    messages = [{"role": "user", "content": "hello"}]
    worker.load(folder)
    worker.generate(messages, AUTO)
    worker.generate(messages, AUTO)
    control = worker.engine.control
    assert control is not None and control.passes == sum(s["iterations"] for s in summaries)
    assert summaries[0]["auto"] is True and summaries[0]["method"] == "subspec"
    worker.load(folder)
    assert worker.engine.control is None
    worker.generate(messages, AUTO)
    assert worker.engine.control is not control and worker.engine.control.passes == summaries[-1]["iterations"]


@pytest.mark.parametrize("limited_by", ["model", "plan"])
def test_a_conversation_longer_than_the_context_answers_on_its_latest_turns_and_says_so(smollm2, monkeypatch,
                                                                                     limited_by):
    """SmolLM2 with its context cut to 512 tokens (its own window, or on a GPU the KV cache its plan
    reserved): a 12-turn chat (about 1,100 tokens) is answered on its latest turns, the system message kept,
    exactly as if the earlier turns had never been said; the first event says how many messages were left
    out, and the worker keeps that note with the answer."""
    from dataclasses import replace

    from engine.events import summarize
    from engine.generate import generate_plain
    from engine.sampling import SamplingParams

    backend = TorchBackend.__new__(TorchBackend)
    backend.name = "SmolLM2"
    backend.lm = smollm2
    if limited_by == "model":
        monkeypatch.setattr(smollm2.decoder, "config", replace(smollm2.config, max_position_embeddings=512))
    else:
        backend.context_tokens = 512
    msgs = [{"role": "system", "content": "You are terse."}]
    for i in range(12):
        msgs += [{"role": "user", "content": f"question {i}: " + "why " * 30},
                 {"role": "assistant", "content": f"answer {i}: " + "because " * 30}]
    msgs.append({"role": "user", "content": "Name a colour."})
    prompt_tokens, events = backend.stream(msgs, {"max_new_tokens": 8, "temperature": 0, "method": "vanilla"})
    events = list(events)
    assert prompt_tokens <= 512 - 8 and backend.context_limit == 512  # the limit the worker reports
    note = events[0].note
    assert note.startswith("the conversation is longer than SmolLM2's context of 512 tokens: its first ")
    dropped = int(note.split("its first ")[1].split()[0])
    assert dropped > 0 and dropped % 2 == 0 and not any(ev.note for ev in events[1:])
    kept = msgs[:1] + msgs[1 + dropped:]
    ids = smollm2.encode_messages(kept)
    assert len(ids) == prompt_tokens
    want = summarize(generate_plain(smollm2, ids, 8, SamplingParams(temperature=0)), len(ids), "vanilla")
    assert [t for ev in events for t in ev.token_ids] == list(want.token_ids)


def test_the_chats_repetition_penalty_and_min_p_reach_the_engine(tmp_path):
    """The conversation's "More" settings decode as the engine's SamplingParams with them: the same tokens
    as generate_plain given those, plain or SubSpec, and not the unpenalized answer."""
    from tiny_models import make_tiny_model_folder

    from engine.generate import generate_plain
    from engine.sampling import SamplingParams

    backend = TorchBackend(str(make_tiny_model_folder(tmp_path / "tiny")), lambda _msg: None)
    # A seed whose draws the penalty changes: the tiny model's logits are small, so dividing them by 3 moves a
    # Gumbel-max draw only now and then (in about half of the seeds tried).
    penalized = {"max_new_tokens": 24, "repetition_penalty": 3.0, "min_p": 0.2, "temperature": 0.9, "seed": 8}
    n, events = backend.stream(MESSAGES, {**penalized, "method": "vanilla"})
    tokens = [t for ev in events for t in ev.token_ids]
    ids = backend.encode(MESSAGES, False)
    expected = [t for ev in generate_plain(backend.lm, ids, 24, SamplingParams(
        temperature=0.9, seed=8, min_p=0.2, repetition_penalty=3.0, penalty_last_n=64)) for t in ev.token_ids]
    assert tokens == expected
    assert chat_answer(backend, {**AUTO, **penalized}, "hi")[1] == tokens
    assert chat_answer(backend, {**penalized, "repetition_penalty": 1.0}, "hi")[1] != tokens
    # The chat's window (llama.cpp's last 64 tokens by default) reaches the engine too.
    windowed = chat_answer(backend, {**penalized, "penalty_last_n": 3}, "hi")[1]
    assert windowed == [t for ev in generate_plain(backend.lm, ids, 24, SamplingParams(
        temperature=0.9, seed=8, min_p=0.2, repetition_penalty=3.0, penalty_last_n=3)) for t in ev.token_ids]
    assert windowed != tokens


def test_an_answer_length_past_the_context_keeps_half_for_the_conversation_and_ends_at_the_room_left(tmp_path):
    """A tiny model with a 64-token context: an answer length of 10,000 keeps the conversation's prompt
    within half of it (earlier turns left out as usual), runs the answer to the end of the context, and
    says why it ended there; an answer length that fits changes nothing and says nothing."""
    from tiny_models import make_tiny_model_folder

    backend = TorchBackend(str(make_tiny_model_folder(tmp_path / "tiny")), lambda _msg: None)
    backend.context_tokens = 64
    backend.lm.eos_token_ids = lambda: set()  # the tiny model's answers run to their length
    msgs = [{"role": "user", "content": "a b c d e f"}, {"role": "assistant", "content": "g h i j k l"},
            {"role": "user", "content": "m n"}]
    prompt, events = backend.stream(msgs, {"max_new_tokens": 10_000, "method": "vanilla"})
    events = list(events)
    assert prompt <= 32 and "first 2 messages were left out" in events[0].note
    tokens = [t for ev in events for t in ev.token_ids]
    assert len(tokens) == 64 - prompt and events[-1].finish_reason == "length"
    assert events[-1].note == f"the answer ends at {64 - prompt} tokens, the room tiny's context of 64 tokens " \
                              f"leaves after the prompt"
    prompt, events = backend.stream(msgs[-1:], {"max_new_tokens": 5, "method": "vanilla"})
    events = list(events)
    assert sum(len(ev.token_ids) for ev in events) == 5 and not any(ev.note for ev in events)


# The part of Qwen3's chat template that the switch changes: with enable_thinking false the answer starts
# after an empty thought, so the model answers at once.
THINKING_TEMPLATE = (
    "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}{% endif %}")


def test_the_think_switch_reaches_a_template_that_has_one(tmp_path):
    from tiny_models import make_tiny_model_folder

    backend = TorchBackend(str(make_tiny_model_folder(tmp_path / "tiny")), lambda _msg: None)
    assert backend.capabilities["thinking"] is False  # its template has no switch: the app shows none
    backend.lm.tokenizer.chat_template = THINKING_TEMPLATE
    assert backend.lm.thinking_switch
    lengths = {}
    for thinking in (None, True, False):
        prompt, events = backend.stream(MESSAGES, {"max_new_tokens": 1, "thinking": thinking})
        list(events)
        lengths[thinking] = prompt
    assert lengths[None] == lengths[True] < lengths[False]  # off: the empty thought is in the prompt
    # Continue passes the switch too (a template that reads it outside the generation prompt shows it).
    backend.lm.tokenizer.chat_template = "{% if enable_thinking is false %}/no_think {% endif %}" + THINKING_TEMPLATE
    history = MESSAGES + [{"role": "assistant", "content": "Hel"}]
    assert len(backend.encode(history, True, {"enable_thinking": False})) > len(backend.encode(history, True))


def test_stop_ends_a_draft_build_and_the_next_subspec_answer_builds_it(tmp_path):
    import threading

    from tiny_models import make_tiny_model_folder

    from engine.convert import ConvertCancelled

    backend = TorchBackend(str(make_tiny_model_folder(tmp_path / "tiny")), lambda _msg: None)
    backend.stop_event = threading.Event()
    backend.stop_event.set()  # Stop pressed while the first SubSpec answer builds its draft
    with pytest.raises(ConvertCancelled, match="stay cached"):
        backend.stream(MESSAGES, {"method": "subspec", "max_new_tokens": 2})
    assert backend.draft is None
    backend.stop_event.clear()
    _prompt, events = backend.stream(MESSAGES, {"method": "subspec", "max_new_tokens": 2})
    assert sum(len(ev.token_ids) for ev in events) == 2 and backend.draft is not None


def test_the_answer_format_json_makes_every_answer_one_json_object(tmp_path):
    from tiny_models import make_tiny_model_folder

    backend = TorchBackend(str(make_tiny_model_folder(tmp_path / "tiny")), lambda _msg: None)
    texts = {}
    for fmt in ("text", "json"):
        _prompt, events = backend.stream(MESSAGES, {"max_new_tokens": 24, "answer_format": fmt})
        texts[fmt] = "".join(e.text for e in events)
    assert texts["json"].lstrip().startswith("{") and not texts["text"].lstrip().startswith("{")
    # A template that opens a thought in the prompt (QwQ's) has it closed first in JSON mode: the JSON is the answer.
    backend.lm.tokenizer.chat_template = "{% for m in messages %}{{ m.content }}{% endfor %}<think>\n"
    plain = backend.encode(MESSAGES, False)
    closed = backend.encode(MESSAGES, False, None, json_mode=True)
    assert len(closed) > len(plain) and "</think>" in backend.lm.tokenizer.decode(closed)


def test_a_json_schema_answer_format_is_checked_before_the_answer_starts(tmp_path):
    import json

    from tiny_models import make_tiny_model_folder

    from app.backend import answer_schema

    for text, why in (("", "no schema is given"), ("{not json", "cannot be used"),
                      ('{"type": "object", "properties": {"a": {"pattern": "x"}}}', "pattern"),
                      ('{"type": "string"}', "root must be")):
        with pytest.raises(SubspecError, match=why):
            answer_schema({"answer_schema": text})
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    backend = TorchBackend(str(make_tiny_model_folder(tmp_path / "tiny")), lambda _msg: None)
    _prompt, events = backend.stream(MESSAGES, {"max_new_tokens": 24, "answer_format": "schema",
                                                "answer_schema": json.dumps(schema)})
    text = "".join(e.text for e in events)
    assert text.replace(" ", "").startswith('{"n":')  # the only key the schema takes


def test_the_chats_next_turn_prefills_only_its_new_message(smollm2):
    """The backend keeps each answer's KV cache for the next (engine.kv_cache.PromptCache): the chat's second
    turn reuses the first's prompt and answer, and answers as a backend without the cache does."""
    from engine.events import summarize
    from engine.kv_cache import PromptCache

    def backend(cache):
        b = TorchBackend.__new__(TorchBackend)
        b.name, b.lm, b.prompt_cache = "SmolLM2", smollm2, cache
        return b

    cached, fresh = backend(PromptCache()), backend(None)
    msgs = [{"role": "user", "content": "Name a colour."}]
    params = {"max_new_tokens": 12, "temperature": 0, "method": "vanilla"}
    results = {}
    for name, b in (("cached", cached), ("fresh", fresh)):
        turn = list(msgs)
        first_tokens, events = b.stream(turn, params)
        first = summarize(events, first_tokens, "vanilla")
        turn += [{"role": "assistant", "content": first.text}, {"role": "user", "content": "And another?"}]
        prompt_tokens, events = b.stream(turn, params)
        results[name] = (prompt_tokens, summarize(events, prompt_tokens, "vanilla"))
    (n, cached_answer), (_, fresh_answer) = results["cached"], results["fresh"]
    assert cached_answer.text == fresh_answer.text
    # At least the first turn's prompt and most of its answer (as the template writes it back) came from the cache.
    assert fresh_answer.cached_tokens == 0 and first_tokens + 6 < cached_answer.cached_tokens < n


def test_a_stop_while_the_prompt_is_read_ends_the_chats_and_the_apis_answers(tmp_path):
    """TorchBackend hands the engine a prompt_progress that reports to the worker's signal and raises
    Stopped once the chat's Stop (or, for an API request, its cancel) is set."""
    import threading

    from tiny_models import make_tiny_model_folder

    from engine.errors import Stopped
    from engine.sampling import SamplingParams

    backend = TorchBackend(str(make_tiny_model_folder(tmp_path / "tiny")), lambda _msg: None, resident_layers=1)
    backend.stop_event = threading.Event()
    seen = []

    def report(done, total):
        seen.append((done, total))
        if len(seen) == 1:
            backend.stop_event.set()  # Stop pressed while the first layer's progress shows

    backend.prompt_progress = report
    prompt, events = backend.stream(MESSAGES, {"max_new_tokens": 4})
    with pytest.raises(Stopped):
        next(iter(events))
    assert seen == [(prompt // 3, prompt)]  # three layers: a third of the pass read when it stopped
    backend.stop_event.clear()
    _prompt, events = backend.stream(MESSAGES, {"max_new_tokens": 4})
    assert sum(len(ev.token_ids) for ev in events) == 4 and seen[-1] == (prompt, prompt)
    ids = backend.encode(MESSAGES, False)
    backend.api_cancel = threading.Event()
    backend.api_cancel.set()  # the client went away while its request waited
    with pytest.raises(Stopped):
        next(iter(backend.generate_ids(ids[:-1] + [ids[-1] % 50 + 3], 4, SamplingParams(), ())))
