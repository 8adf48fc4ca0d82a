"""The engine as the worker sees it: a loaded model that streams a chat answer as StepEvents.

The worker depends only on this small interface (a `name` and `stream()`), so tests swap in a fake that
replays recorded events, and later decoding methods plug in here without touching the Qt side.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator, Protocol

from engine.events import StepEvent

Progress = Callable[[str], None]

DEFAULT_PARAMS = {"max_new_tokens": 512, "temperature": 0.0, "top_p": 1.0, "top_k": 0, "seed": None,
                  "stop": (), "method": "vanilla"}


class Backend(Protocol):
    name: str

    def stream(self, messages: list[dict], params: dict) -> tuple[int, Iterator[StepEvent]]:
        """(prompt token count, the answer's events); errors may surface while iterating."""


EngineFactory = Callable[[str, Progress], Backend]


class TorchBackend:
    """The real engine. Torch is imported here, on the worker thread, so the window shows at once."""

    def __init__(self, model: str, progress: Progress):
        from engine import store
        from engine.loading import load_model

        if not Path(model).expanduser().is_dir():
            # resolve_model would import the default model silently; this way the status bar says why
            # the first start takes a while.
            store.ensure_default_model(progress)
        folder, name = store.resolve_model(model)
        progress(f"Loading {name} …")
        self.lm = load_model(folder, name=name)
        self.name = name

    def stream(self, messages: list[dict], params: dict) -> tuple[int, Iterator[StepEvent]]:
        from engine.errors import SubspecError
        from engine.generate import generate_plain
        from engine.sampling import SamplingParams

        p = {**DEFAULT_PARAMS, **params}
        if p["method"] != "vanilla":
            raise SubspecError(f"decoding method {p['method']!r} is not available yet")
        if not getattr(self.lm.tokenizer, "chat_template", None):
            raise SubspecError(f"model {self.name} has no chat template, so it cannot be used for chat")
        sampling = SamplingParams(temperature=p["temperature"], top_p=p["top_p"], top_k=p["top_k"],
                                  seed=p["seed"])
        ids = self.lm.encode_messages(messages)
        return len(ids), generate_plain(self.lm, ids, p["max_new_tokens"], sampling, tuple(p["stop"]))


def torch_backend(model: str, progress: Progress) -> Backend:
    return TorchBackend(model, progress)
