"""A fake engine for the app tests: replays StepEvents recorded from the real SmolLM2-135M-Instruct, so
the GUI is exercised with real token boundaries and finish reasons but without torch or a model.

Re-record (timings will differ, nothing depends on them): PYTHONPATH=. python tests/app/app_fakes.py
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from engine.errors import SubspecError
from engine.events import StepEvent

RECORDING = Path(__file__).with_name("data") / "capital_of_france.json"
PROMPT = "What is the capital of France?"


def answer(qtbot, window, text=PROMPT) -> dict:
    """Type `text`, press Enter, wait for the answer; its summary."""
    from PySide6.QtCore import Qt

    with qtbot.waitSignal(window.host.finished, timeout=5000) as blocker:
        qtbot.keyClicks(window.prompt, text)
        qtbot.keyClick(window.prompt, Qt.Key.Key_Return)
    return blocker.args[0]
CONTEXT_ERROR = "prompt (99999 tokens) + max new tokens (512) exceeds the model's context of 8192 tokens"
FAKE_MODELS = ["FakeLM-1M", "FakeLM-2M"]


def numbered_answers():
    """Events whose answer n reads "Answer n.": each call's text differs, so a replaced answer is told apart."""
    import itertools

    counter = itertools.count(1)

    def events():
        n = next(counter)
        return [StepEvent(0, (1,), "Answer"), StepEvent(1, (2,), f" {n}"), StepEvent(2, (3,), ".", finish_reason="eos")]
    return events


def markdown_events():
    """An answer with a fenced code block, a token or so at a time."""
    parts = ["Use", " this", ":\n\n", "```py", "thon\n", "print(", "'hi')", "\nx = 1", "\n```", "\nDone", "."]
    return [StepEvent(i, (200 + i,), p, finish_reason="eos" if i == len(parts) - 1 else None)
            for i, p in enumerate(parts)]


def recorded_events() -> list[StepEvent]:
    raw = json.loads(RECORDING.read_text())
    return [StepEvent(**{**e, "token_ids": tuple(e["token_ids"])}) for e in raw["events"]]


def recorded_answer() -> str:
    return "".join(e.text for e in recorded_events())


class FakeTokenizer:
    """Characters as token ids: enough for engine.server to count and check a prompt."""

    chat_template = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"

    def encode(self, text, add_special_tokens=True):
        return [ord(c) % 49152 for c in text]


@dataclass(frozen=True)
class FakeConfig:
    max_position_embeddings: int = 8192
    vocab_size: int = 49152


@dataclass
class FakeLM:
    """What engine.server.Backend reads of a LoadedModel: the name, tokenizer, config and encoders."""

    name: str
    tokenizer: FakeTokenizer = field(default_factory=FakeTokenizer)
    config: FakeConfig = field(default_factory=FakeConfig)

    def encode_messages(self, messages):
        return self.tokenizer.encode("".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>")

    def encode(self, text, chat=True):
        return self.encode_messages([{"role": "user", "content": text}]) if chat else self.tokenizer.encode(text)


class FakeBackend:
    """Plays `events` back (a callable, so a test can hand out an endless stream), `delay_s` apart.

    `fail_on_call` lists the stream() calls (0-based) that raise `fail_error` after `fail_after` events.
    `gate`, when given, is waited on before every event after the first, so a test can hold an answer
    mid-stream deterministically.

    `step_ms` ({method: ms}) replaces wall time by a virtual clock (the worker times answers with a
    backend's `clock` when it has one) that advances that much per event: speeds become exact numbers.
    `method_events` ({method: events}) replays other events for that method."""

    def __init__(self, name="FakeLM-1M", events=recorded_events, delay_s=0.0, fail_on_call=(),
                 fail_after=0, gate: threading.Event | None = None, capabilities=None,
                 fail_error: Exception | None = None, step_ms: dict | None = None,
                 method_events: dict | None = None, context_limit: int | None = None):
        self.name = name
        if context_limit is not None:  # the context the worker reports with each answer (the meter's)
            self.context_limit = context_limit
        self.capabilities = capabilities or {"cuda": False, "subspec": True}
        self.events = events
        self.delay_s = delay_s
        self.fail_on_call = set(fail_on_call)
        self.fail_after = fail_after
        self.fail_error = fail_error or SubspecError(CONTEXT_ERROR)
        self.gate = gate
        self.step_ms = step_ms
        self.method_events = method_events or {}
        self.now = 0.0
        if step_ms is not None:
            self.clock = lambda: self.now
        self.calls: list[tuple[list[dict], dict]] = []
        self.thread_ids: list[int] = []
        self.lm = FakeLM(name)  # for the API server (app.api_server)
        self.api_calls: list[tuple[list, int]] = []
        self.api_decoding: list[dict | None] = []
        self.api_thread_ids: list[int] = []

    def stream(self, messages, params):
        call = len(self.calls)
        self.calls.append((messages, params))
        self.thread_ids.append(threading.get_ident())
        return 12, self._play(call, params.get("method", "vanilla"))

    def generate_ids(self, prompt_ids, max_tokens, sampling, stops, decoding=None):
        """An API request: the same events as a chat answer, at most `max_tokens` of them."""
        self.api_calls.append((list(prompt_ids), max_tokens))
        self.api_decoding.append(decoding)
        self.api_thread_ids.append(threading.get_ident())
        events = self._play(-1, (decoding or {}).get("method", "vanilla"))
        return (ev for _, ev in zip(range(max_tokens), events))

    def _play(self, call, method):
        events = self.method_events.get(method, self.events)
        for i, ev in enumerate(events()):
            if call in self.fail_on_call and i == self.fail_after:
                raise self.fail_error
            if i and self.gate is not None:
                self.gate.wait(5)
            if self.delay_s:
                time.sleep(self.delay_s)
            if self.step_ms is not None:
                self.now += self.step_ms[method] / 1e3
            yield ev


def subspec_events(accepted=(2, 0, 3, 1)):
    """The recorded answer regrouped as SubSpec would emit it: the prefill's token, then steps that each
    accept `accepted[i]` draft tokens plus the target's own (the last step takes what is left)."""
    flat = [(tid, ev.text) for ev in recorded_events() for tid in ev.token_ids]
    out = [StepEvent(0, (flat[0][0],), flat[0][1], prefill_ms=20.0, step_ms=20.0)]
    i, it = 1, 0
    while i < len(flat):
        n = accepted[it % len(accepted)] + 1
        chunk = flat[i:i + n]
        i += len(chunk)
        it += 1
        out.append(StepEvent(it, tuple(t for t, _ in chunk), "".join(x for _, x in chunk),
                             accepted=len(chunk) - 1, tree_nodes=289, depth=48, draft_ms=6.0, verify_ms=4.0,
                             step_ms=10.0,
                             finish_reason="eos" if i >= len(flat) else None))
    return out


def endless_events():
    i = 0
    while True:
        yield StepEvent(i, (100 + i,), f" w{i}")
        i += 1


def factory_for(backend: FakeBackend, load_error: Exception | None = None, loads: list | None = None,
                load_options: list | None = None):
    """`loads` collects the model names asked for, `load_options` each load's options (the hardware panel's
    resident_layers, reserve_gb; {} for a plain load)."""
    def factory(model, progress, **options):
        if loads is not None:
            loads.append(model)
        if load_options is not None:
            load_options.append(options)
        progress(f"Loading {model} …")
        if load_error is not None:
            raise load_error
        # What the real engine reports back: the layers it kept on the device (None: not said, as on a plain
        # load here; the fake has no layers to count).
        backend.resident_layers = options.get("resident_layers")
        return backend
    return factory


def _record() -> None:
    from engine.generate import generate_plain
    from engine.loading import load_model
    from engine.sampling import SamplingParams
    from engine.store import DEFAULT_MODEL, resolve_model

    folder, name = resolve_model(DEFAULT_MODEL)
    lm = load_model(folder, name=name, device="cpu")
    ids = lm.encode_messages([{"role": "user", "content": PROMPT}])
    events = [asdict(e) for e in generate_plain(lm, ids, 64, SamplingParams())]
    RECORDING.parent.mkdir(exist_ok=True)
    lines = ",\n".join("  " + json.dumps(e) for e in events)
    RECORDING.write_text(f'{{"model": {json.dumps(name)}, "prompt": {json.dumps(PROMPT)}, "events": [\n{lines}\n]}}\n')
    print(f"wrote {len(events)} events to {RECORDING}")


if __name__ == "__main__":
    _record()
