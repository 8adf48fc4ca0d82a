"""The engine as the worker sees it: a loaded model that streams a chat answer as StepEvents.

The worker depends only on this small interface (`name`, `capabilities` and `stream()`), so tests swap in
a fake that replays recorded events, and decoding methods plug in here without touching the Qt side.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator, Protocol

from engine.errors import SubspecError, prompt_reading
from engine.events import StepEvent

Progress = Callable[[str], None]

METHODS = ("vanilla", "subspec")
def answer_schema(p: dict) -> str:
    """The conversation's JSON schema (More > JSON schema) as engine.constrained takes it; one it cannot read
    or enforce is a SubspecError that says why (the answer is not started, the message stays)."""
    from engine.constrained import SchemaError, schema_text

    text = str(p.get("answer_schema") or "").strip()
    if not text:
        raise SubspecError("Answer format is JSON schema, but no schema is given (More > JSON schema)")
    try:
        return schema_text(text)
    except SchemaError as exc:
        raise SubspecError(f"The JSON schema (More > JSON schema) cannot be used: {exc}") from None


DEFAULT_PARAMS = {"max_new_tokens": 512, "temperature": 0.0, "top_p": 1.0, "top_k": 0, "seed": None,
                  "min_p": 0.0, "repetition_penalty": 1.0,
                  # The chat's repetition penalty looks at the last 64 tokens, as llama.cpp, Ollama and LM Studio
                  # do by default: over a whole long conversation it would weigh on every common word.
                  "penalty_last_n": 64,
                  "stop": (), "method": "vanilla", "depth": 48, "width": 6, "auto": False,
                  "continue_final": False,
                  "thinking": None}  # a reasoning model's switch (True/False), where its template has one
# What a backend that does not say otherwise can do: plain decoding only.
NO_CAPABILITIES = {"cuda": False, "subspec": False}


class Backend(Protocol):
    name: str
    capabilities: dict  # plain data: {"cuda": bool, "subspec": bool}
    # Optional, for the hardware panel's plan: `config` (config.json as a dict), `plan_profile` (the
    # engine.hardware profile the load was planned from), `resident_layers` (decoder layers on the device
    # as loaded) and `notes` (what the load changed from what was asked).
    # Optional, for "Serve API" (app.api_server): `lm` (tokenizer, config and encode_messages/encode, as
    # engine.loading.LoadedModel) and `generate_ids(prompt_ids, max_tokens, sampling, stops)` -> StepEvents.

    def stream(self, messages: list[dict], params: dict) -> tuple[int, Iterator[StepEvent]]:
        """(prompt token count, the answer's events); errors may surface while iterating."""


# factory(model, progress) -> Backend; a load with options (the hardware panel's reload: resident_layers,
# reserve_gb) calls factory(model, progress, **options), so factories that take none still serve plain loads.
EngineFactory = Callable[..., Backend]


class TorchBackend:
    """The real engine. Torch is imported here, on the worker thread, so the window shows at once."""

    DRAFT_GROUP_SIZE = 64
    # Auto depth's measurements (engine.depth_control.DepthControl) for this model and draft, kept across
    # the chat's answers so a conversation does not explore again on every answer. A load makes a new
    # backend, a draft build or another tree shape a new controller.
    control = None
    api_control = None  # the same for the API's requests (another workload: kept apart from the chat's)
    # On a GPU, the KV cache length the plan reserved memory for: the chat's context (its rolling window)
    # stays within it. None: the model's own context (a CPU, where memory is not planned).
    context_tokens: int | None = None
    stop_event = None  # the chat's Stop (the worker's threading.Event): it also ends a draft build
    prompt_cache = None  # the last answer's KV cache, for the next (engine.kv_cache.PromptCache; made by a load)
    prompt_progress = None  # (tokens read, tokens in all) while the chat's prompt is read: the worker's signal
    api_cancel = None  # the API request's cancel (a threading.Event the worker sets here for each request)

    def __init__(self, model: str, progress: Progress, resident_layers: int | None = None,
                 reserve_gb: float | None = None, context: int | None = None):
        """`resident_layers`: force that many decoder layers on the device (the hardware panel's override);
        `reserve_gb`: VRAM the plan leaves free for other programs (make_plan's default when None);
        `context`: the tokens a GPU plan reserves KV cache for (make_plan's default when None; a CPU plans
        no memory and keeps the model's own context)."""
        from engine import store
        from engine.loading import free_device_memory, load_model

        if not Path(model).expanduser().is_dir():
            # resolve_model would import the default model silently; this way the status bar says why
            # the first start takes a while.
            store.ensure_default_model(progress)
        folder, name = store.resolve_model(model)
        import torch

        # Kept for the hardware panel, which shows the plan this load was made from.
        self.config = self._read_config(folder)
        self.plan_profile = None
        self.notes: list[str] = []  # what this load changed from what was asked, for the status bar and panel
        bits = None  # the plan's substitute bits per streamed layer (8-bit where memory allows)
        prefill_tokens = None  # the plan's prompt tokens per prefill pass of the streamed layers
        if torch.cuda.is_available():
            free_device_memory()  # the previous model's cached blocks would read as VRAM in use
            resident, bits, prefill_tokens = self._planned_split(folder, progress, resident_layers, reserve_gb,
                                                                 context)
        else:
            # Nothing to plan on a CPU; an explicit override still streams layers (slower, as asked).
            resident = resident_layers
        progress(f"Loading {name} …")
        self.lm = load_model(folder, name=name, resident_layers=resident, substitute_bits=bits,
                             prefill_tokens=prefill_tokens)
        self.notes += self.lm.notes  # e.g. it backed off after running out of VRAM
        for note in self.notes:
            progress(note)
        self.name = name
        self.progress = progress
        self.draft = None
        # The last answer's KV cache, for the chat's and the API's next: each turn prefills only what is new
        # (engine.kv_cache.PromptCache). It goes with this backend (an unload, a reload).
        from engine.kv_cache import PromptCache

        self.prompt_cache = PromptCache(slots=self.context_tokens)  # (on a GPU, the plan's KV cache)

        # On a CPU the substitute draft costs about as much as the target, so SubSpec only pays on a GPU;
        # the window picks its default from this.
        self.capabilities = {"cuda": bool(torch.cuda.is_available()), "subspec": True,
                             "thinking": bool(getattr(self.lm, "thinking_switch", False))}

    @property
    def resident_layers(self) -> int:
        """Decoder layers on the device as loaded (after an out-of-memory back-off, fewer than planned)."""
        resident = self.lm.resident_layers
        return self.lm.config.num_layers if resident is None else resident

    @property
    def context_limit(self) -> int:
        """Prompt plus answer, in tokens: the model's own context, on a GPU within the plan's KV cache."""
        return min(self.lm.config.max_position_embeddings, self.context_tokens or 1 << 62)

    @staticmethod
    def _read_config(folder) -> dict | None:
        import json

        try:
            return json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None  # a GGUF-imported folder may lack one; the panel then shows no plan

    def _planned_split(self, folder, progress: Progress, forced: int | None, reserve_gb: float | None,
                       context: int | None) -> tuple[int | None, dict | None, int | None]:
        """On a GPU the planner decides how many layers stay resident under the free VRAM (the rest stream
        from RAM), the bits of the streamed layers' substitutes, which the draft is built with, and the
        prompt tokens per prefill pass of the streamed layers.
        A model that cannot fit at all is a user error the window shows."""
        from engine.config import ModelConfig
        from engine.hardware import probe
        from engine.planner import PlanError, make_plan

        # Probed on every load, never cached: another program may have taken or freed VRAM since the last.
        self.plan_profile = probe()
        config = ModelConfig.from_file(folder)
        options = {} if reserve_gb is None else {"reserve_gb": reserve_gb}
        if context is not None:
            options["context"] = context
        plan = None
        if forced is not None:
            try:
                plan = make_plan(config, self.plan_profile, resident_layers=forced, **options)
            except PlanError as exc:
                # Checked against the free VRAM of the previous load; this load's may be smaller.
                self.notes.append(f"{forced} resident layers no longer fit ({exc}); loaded with the plan's choice")
        if plan is None:
            plan = make_plan(config, self.plan_profile, **options)
        if plan.device == "cuda":
            self.context_tokens = plan.kv_length
        if plan.device != "cuda" or not plan.offloaded_layers:
            return None, None, None
        progress(f"Plan: {plan.resident_layers} layers on the GPU, {plan.offloaded_layers} streamed from RAM …")
        return plan.resident_layers, plan.draft_bits, plan.prefill_pass_tokens

    def get_draft(self, cancel=None):
        """Built on the first SubSpec request and kept for this model: it takes seconds, and many users
        never switch the method on. `cancel` (a threading.Event, the chat's Stop) ends the build between
        layers with engine.convert.ConvertCancelled; the layers built stay cached for the next try."""
        if self.draft is None:
            def report(done, total):
                self.progress(f"Building the SubSpec draft: layer {done}/{total} …")

            # At the plan's bits (the load's `substitute_bits`), else engine.loading's default width.
            self.draft = self.lm.build_draft(None, self.DRAFT_GROUP_SIZE, progress=report, cancel=cancel)
            self.control = self.api_control = None  # timings measured with another draft do not hold
            self.progress(self.name)
        return self.draft

    def depth_control(self, shape, kind: str = "control"):
        """The chat's (`kind` "control") or the API's ("api_control") auto-depth controller for `shape`
        (None for a fixed-depth tree): the one kept from earlier answers while it was made for this shape,
        else a new one."""
        from engine.depth_control import control_for

        control = control_for(shape, getattr(self, kind))
        if control is not None:
            setattr(self, kind, control)
        return control

    def stream(self, messages: list[dict], params: dict) -> tuple[int, Iterator[StepEvent]]:
        from engine.sampling import SamplingParams

        p = {**DEFAULT_PARAMS, **params}
        if p["method"] not in METHODS:
            raise SubspecError(f"decoding method {p['method']!r} is not available")
        if not getattr(self.lm.tokenizer, "chat_template", None):
            raise SubspecError(f"model {self.name} has no chat template, so it cannot be used for chat")
        sampling = SamplingParams(temperature=p["temperature"], top_p=p["top_p"], top_k=p["top_k"],
                                  seed=p["seed"], min_p=p["min_p"], repetition_penalty=p["repetition_penalty"],
                                  penalty_last_n=p["penalty_last_n"], json=p.get("answer_format") in ("json", "schema"),
                                  json_schema=answer_schema(p) if p.get("answer_format") == "schema" else None)
        from engine.context_window import ROOM_AFTER_DROPPING, fit_conversation

        # A conversation longer than the context keeps going on its latest turns (the user is told). On a
        # GPU the context is what the plan reserved KV memory for, not the model's whole window.
        limit = self.context_limit
        # The answer's room comes off the history's, but never more than half the context: a long answer
        # length must not push a conversation out of its own prompt. Past the room left, the answer is
        # shortened (as the API server shortens max_tokens), and says so.
        wanted = int(p["max_new_tokens"])
        template = {"enable_thinking": bool(p["thinking"])} if p["thinking"] is not None else None
        ids, dropped = fit_conversation(lambda m: self.encode(m, bool(p["continue_final"]), template, sampling.json),
                                        messages, limit - min(wanted, limit // 2), slack=ROOM_AFTER_DROPPING)
        p["max_new_tokens"] = max(1, min(wanted, limit - len(ids)))
        stops = tuple(p["stop"])
        reading = prompt_reading(self.stop_event, self.prompt_progress)  # Stop ends a long prompt's reading too
        if p["method"] == "subspec":
            from engine.speculative import TreeShape, generate_subspec

            # Checked before the slow draft build.
            shape = TreeShape(int(p["depth"]), int(p["width"]), auto=bool(p["auto"]))
            draft = self.get_draft(self.stop_event)
            events = generate_subspec(self.lm, draft, ids, p["max_new_tokens"], sampling, stops,
                                      shape=shape, control=self.depth_control(shape), prompt_cache=self.prompt_cache,
                                      prompt_progress=reading)
        else:
            from engine.generate import generate_plain

            events = generate_plain(self.lm, ids, p["max_new_tokens"], sampling, stops, prompt_cache=self.prompt_cache,
                                    prompt_progress=reading)
        if dropped:
            events = _noted(events, f"the conversation is longer than {self.name}'s context of {limit} tokens: "
                                    f"its first {dropped} messages were left out of this answer's prompt")
        if p["max_new_tokens"] < wanted:
            events = _noted(events, f"the answer ends at {p['max_new_tokens']} tokens, the room "
                                    f"{self.name}'s context of {limit} tokens leaves after the prompt",
                            when=lambda ev: ev.finish_reason == "length")
        return len(ids), events

    def generate_ids(self, prompt_ids: list[int], max_tokens: int, sampling, stops: tuple,
                     decoding: dict | None = None) -> Iterator[StepEvent]:
        """An API request (app.api_server), already tokenized by the server, decoded like the chat
        (`decoding`: {"method": "vanilla"} or {"method": "subspec", "depth": D, "width": K, "auto": bool}).
        Runs on the worker thread like stream(). With auto depth the API's requests share a controller
        of their own (requests do not explore afresh; the chat's measurements stay the chat's)."""
        decoding = decoding or {"method": "vanilla"}
        reading = prompt_reading(self.api_cancel)  # a client gone ends its prompt's reading
        if decoding.get("method") == "subspec":
            from engine.speculative import TreeShape, generate_subspec

            shape = TreeShape(int(decoding["depth"]), int(decoding["width"]), auto=bool(decoding.get("auto")))
            draft = self.get_draft()
            return generate_subspec(self.lm, draft, list(prompt_ids), max_tokens, sampling, tuple(stops),
                                    shape=shape, control=self.depth_control(shape, "api_control"),
                                    prompt_cache=self.prompt_cache, prompt_progress=reading)
        from engine.generate import generate_plain

        return generate_plain(self.lm, list(prompt_ids), max_tokens, sampling, tuple(stops),
                              prompt_cache=self.prompt_cache, prompt_progress=reading)

    def encode(self, messages: list[dict], continue_final: bool, template: dict | None = None,
               json_mode: bool = False) -> list[int]:
        """`template`: chat template variables (Qwen3's enable_thinking); `json_mode`: a thought the template
        opens is closed first (LoadedModel.encode_messages)."""
        if not continue_final:
            if json_mode:
                return self.lm.encode_messages(messages, template, close_thought=True)
            return self.lm.encode_messages(messages, template)
        if not messages or messages[-1]["role"] != "assistant":
            raise SubspecError("there is no answer to continue")
        # The template leaves the last answer open (no end-of-turn token), so the model goes on writing it.
        tokenizer = self.lm.tokenizer
        rendered = tokenizer.apply_chat_template(messages, continue_final_message=True, tokenize=False,
                                                 **(template or {}))
        return list(tokenizer.encode(rendered, add_special_tokens=False))


def _noted(events: Iterator[StepEvent], note: str, when=lambda ev: True) -> Iterator[StepEvent]:
    """`events` with `note` on the first one `when` accepts (where the app's status bar and the answer's
    notes find it)."""
    from dataclasses import replace

    pending = True
    try:
        for ev in events:
            if pending and when(ev):
                ev, pending = replace(ev, note="; ".join(n for n in (note, ev.note) if n)), False
            yield ev
    finally:
        close = getattr(events, "close", None)
        if close:
            close()  # the worker closes this generator to end the answer at once: pass that on


def torch_backend(model: str, progress: Progress, **options) -> Backend:
    """`options`: TorchBackend's keyword arguments (resident_layers, reserve_gb)."""
    return TorchBackend(model, progress, **options)
