"""An OpenAI-compatible HTTP server over one loaded model: `/v1/models`, `/v1/chat/completions` and
`/v1/completions`, streamed as server-sent events or not; and Ollama's API beside it (`/api/chat`,
`/api/generate`, `/api/tags`, `/api/show`, `/api/ps`, `/api/version`; engine.ollama_api translates).

One worker thread owns the model and runs one generation at a time; requests wait in a bounded queue and a
full queue answers 429 at once, so a burst of clients cannot pile up unbounded work. Handler threads only
parse, tokenize (with their own tokenizer copy) and relay the worker's StepEvents to their client. A client
that goes away cancels its generation between two steps.

Every error a client can cause is an OpenAI-style error object with a 4xx status, never a traceback.
"""

from __future__ import annotations

import contextlib
import functools
import copy
import dataclasses
import datetime
import hmac
import json
import math
import os
import queue
import select
import socket
import socketserver
import sys
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Iterator

from .errors import Stopped, SubspecError, prompt_reading
from .origins import is_loopback, origin_allowed
from .events import GenerationResult, StepEvent, summarize
from . import logprob_api, ollama_api
from .tool_calls import (ToolError, ToolParsing, forced_call, mistral_ids, named_choice, parse_tools,
                         template_message)
from .sampling import SamplingParams
from .depth_control import control_for
from .kv_cache import PromptCache
from .speculative import TreeShape

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8642
DEFAULT_QUEUE = 16
# OpenAI's default is "the rest of the context"; a cap keeps a forgotten max_tokens from allocating a KV
# cache for a 32k context and running for minutes.
DEFAULT_MAX_TOKENS = 2048
MAX_BODY_BYTES = 8 << 20
DRAIN_BYTES = 64 << 20  # an oversized body is read and dropped up to this, so its client gets to see the 413
POLL_S = 0.2  # how often a waiting handler checks that its client is still connected
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant", "tool": "tool"}
FINISH = {"eos": "stop", "stop": "stop", "length": "length"}

# (prompt_ids, max_tokens, sampling, stop_strings) -> events; injectable so tests can slow it down. One with
# `accepts_cancel = True` is also given the request's cancel event (cancel=...): it may wait before its first
# event (the app's bridge waits for the app's worker), and a client gone meanwhile should cost nothing.
GenerateFn = Callable[[list, int, SamplingParams, tuple], Iterator[StepEvent]]


class ApiError(Exception):
    """An error answered to the client as {"error": {...}} with an HTTP status."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def as_json(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


class ClientGone(Exception):
    pass


# ---------------------------------------------------------------- request fields


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    try:
        return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)
    except OverflowError:  # an integer too large for a float (JSON allows 10**400)
        return False


def _number(body: dict, name: str, default, low: float, high: float, low_open: bool = False):
    v = body.get(name)
    if v is None:
        return default
    ok = _is_number(v) and (low < v if low_open else low <= v) and v <= high
    if not ok:
        lo = "(" if low_open else "["
        raise bad(f"'{name}' must be a number in {lo}{low:g}, {high:g}], got {v!r}", name)
    return float(v)


def _int(body: dict, name: str, low: int = 0):
    v = body.get(name)
    if v is None:
        return None
    if not _is_int(v) or v < low:
        raise bad(f"'{name}' must be an integer >= {low}, got {v!r}", name)
    return v


def _bool(body: dict, name: str) -> bool:
    v = body.get(name, False)
    if v is None:
        return False
    if not isinstance(v, bool):
        raise bad(f"'{name}' must be true or false, got {v!r}", name)
    return v


def _stops(body: dict) -> tuple[str, ...]:
    v = body.get("stop")
    if v is None:
        return ()
    if isinstance(v, str):
        return (v,)
    if isinstance(v, list) and all(isinstance(s, str) for s in v):
        return tuple(v)
    raise bad("'stop' must be a string or an array of strings", "stop")


def _json_mode(body: dict) -> tuple[bool, str | None]:
    """response_format: {"type": "json_object"} is JSON mode (any object); {"type": "json_schema",
    "json_schema": {"schema": ...}} an answer that follows the schema (engine.constrained, which refuses what
    it cannot enforce); "text" or none, free text. (JSON mode or not, the schema's JSON text or None.)"""
    fmt = body.get("response_format")
    if fmt is None:
        return False, None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind not in ("text", "json_object", "json_schema"):
        raise bad("response_format must be {\"type\": \"text\"}, {\"type\": \"json_object\"} or "
                  "{\"type\": \"json_schema\", \"json_schema\": {\"name\": ..., \"schema\": {...}}}",
                  "response_format")
    if kind != "json_schema":
        return kind == "json_object", None
    spec = fmt.get("json_schema")
    schema = spec.get("schema") if isinstance(spec, dict) else None
    if not isinstance(schema, dict):
        raise bad("response_format json_schema needs a \"json_schema\": {\"schema\": {...}}", "response_format")
    return True, checked_schema(schema, "response_format")


def checked_schema(schema: dict, param: str) -> str:
    """A schema as the JSON text SamplingParams carries (engine.constrained.schema_text); one it cannot
    enforce is a 400 that says why."""
    from .constrained import SchemaError, schema_text

    try:
        return schema_text(schema)
    except SchemaError as exc:
        raise bad(f"this JSON schema cannot be enforced: {exc}", param) from None


def _sampling(body: dict) -> SamplingParams:
    seed = body.get("seed")
    if seed is not None and not _is_int(seed):
        raise bad(f"'seed' must be an integer, got {seed!r}", "seed")
    json_mode, schema = _json_mode(body)
    return SamplingParams(
        temperature=_number(body, "temperature", 1.0, 0, 2),  # OpenAI's defaults: T = 1, top_p = 1
        top_p=_number(body, "top_p", 1.0, 0, 1, low_open=True),
        top_k=_int(body, "top_k") or 0,
        min_p=_number(body, "min_p", 0.0, 0, 1),  # not OpenAI's, but llama.cpp's and vLLM's: clients send it
        **_penalties(body),
        seed=None if seed is None else seed % 2**63,  # any integer a client sends maps to one seed
        json=json_mode,
        json_schema=schema,
    )


def _penalties(body: dict) -> dict:
    """OpenAI's presence and frequency penalties; the repetition penalty as vLLM, text-generation-webui and
    SillyTavern send it (`repetition_penalty`) or llama.cpp (`repeat_penalty`), and llama.cpp's window
    `repeat_last_n` (-1: the whole context, as without it; 0: no penalties)."""
    given = [name for name in ("repetition_penalty", "repeat_penalty") if body.get(name) is not None]  # null: unset
    if len(given) == 2 and body["repeat_penalty"] != body["repetition_penalty"]:
        raise bad("'repeat_penalty' and 'repetition_penalty' are the same setting: send one", "repeat_penalty")
    name = given[0] if given else "repetition_penalty"
    out = {"presence_penalty": _number(body, "presence_penalty", 0.0, -2, 2),  # OpenAI's range
           "frequency_penalty": _number(body, "frequency_penalty", 0.0, -2, 2),
           "repetition_penalty": _number(body, name, 1.0, 0.01, 10)}
    last_n = _int(body, "repeat_last_n", low=-1)
    if last_n is None or last_n == -1:
        return out
    if last_n == 0:
        return {"presence_penalty": 0.0, "frequency_penalty": 0.0, "repetition_penalty": 1.0}
    return {**out, "penalty_last_n": last_n}


def template_variables(template, tools: bool = False) -> frozenset[str] | None:
    """The names a chat template reads from its context (jinja2.meta), or None when that cannot be told (a
    template jinja cannot parse here: then everything is passed on, as before this check). A set of named
    templates (Hermes, Command-R: {"default": ..., "tool_use": ...}, or transformers' list of them) is read
    as transformers picks from it: "tool_use" with tools, else "default"."""
    template = chosen_template(template, tools)
    return _string_template_variables(template) if template is not None else None


def chosen_template(template, tools: bool = False) -> str | None:
    """The template transformers renders with: of a set of named ones (Hermes, Command-R: {"default": ...,
    "tool_use": ...}, or transformers' list of them), "tool_use" with tools, else "default"."""
    if isinstance(template, list):
        template = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
    if isinstance(template, dict):
        template = template.get("tool_use" if tools and "tool_use" in template else "default")
    return template if isinstance(template, str) else None


@functools.lru_cache(maxsize=8)
def _string_template_variables(template: str) -> frozenset[str] | None:
    import jinja2
    from jinja2 import ext, meta

    class Generation(ext.Extension):  # transformers' {% generation %} marks (TRL fine-tunes): ignored here
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.Scope(body, lineno=lineno)

    try:
        env = jinja2.Environment(extensions=[ext.loopcontrols, Generation])
        return frozenset(meta.find_undeclared_variables(env.parse(template)))
    except jinja2.TemplateError:
        return None


def _template_kwargs(body: dict) -> dict | None:
    """`chat_template_kwargs` (as vLLM and SGLang take it): variables for the model's chat template, such as
    {"enable_thinking": false} for Qwen3. Plain JSON values only; names the template does not use do nothing."""
    value = body.get("chat_template_kwargs")
    if value is None:
        return None
    if not isinstance(value, dict) or not all(isinstance(k, str) and k.isidentifier() for k in value) or not all(
            v is None or isinstance(v, (bool, int, float, str)) for v in value.values()):
        raise bad("'chat_template_kwargs' must be an object of names to plain values (true, 1, \"text\")",
                  "chat_template_kwargs")
    # The template's own inputs, and apply_chat_template's arguments (which would change what it returns).
    # (Names the template does not read are dropped later; these would change what it renders.)
    reserved = {"messages", "add_generation_prompt", "tools", "documents", "continue_final_message", "tokenize",
                "padding", "truncation", "max_length", "return_tensors", "return_dict", "chat_template",
                "return_assistant_tokens_mask", "tokenizer_kwargs", "raise_exception", "strftime_now",
                "sanitize_control_tokens", "bos_token", "eos_token", "unk_token", "pad_token",
                "conversation", "self"} & set(value)
    if reserved:
        raise bad(f"chat_template_kwargs may not set {', '.join(sorted(reserved))}", "chat_template_kwargs")
    return value


def _reject_unsupported(body: dict, chat: bool = False) -> None:
    """Options we cannot honour fail loudly rather than being silently ignored. `chat`: tools are a chat's
    (engine.tool_calls), not a completion's."""
    if body.get("n") not in (None, 1):
        raise bad("only n = 1 is supported", "n")
    if body.get("echo"):
        raise bad("echo is not supported", "echo")
    if body.get("functions"):
        raise bad("the legacy 'functions' are not supported: send them as 'tools'", "functions")
    if body.get("tools") and not chat:
        raise bad("tools are for /v1/chat/completions", "tools")
    _json_mode(body)
    if body.get("logit_bias"):
        raise bad("logit_bias is not supported", "logit_bias")
    if body.get("suffix"):  # fill-in-the-middle: an answer ignoring the suffix would look right and be wrong
        raise bad("suffix (fill-in-the-middle) is not supported", "suffix")
    if body.get("best_of") not in (None, 1):
        raise bad("only best_of = 1 is supported", "best_of")


def _content(value, i: int) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        parts = []
        for part in value:
            if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                raise bad(f"messages[{i}].content: only text parts are supported", f"messages[{i}].content")
            parts.append(part["text"])
        return "\n".join(parts)
    raise bad(f"messages[{i}].content must be a string or an array of text parts", f"messages[{i}].content")


def parse_messages(value) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise bad("'messages' must be a non-empty array", "messages")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict):
            raise bad(f"messages[{i}] must be an object", f"messages[{i}]")
        role = m.get("role")
        if role not in ROLES:
            raise bad(f"messages[{i}].role must be one of {', '.join(ROLES)}, got {role!r}", f"messages[{i}].role")
        try:
            extra = template_message(m, i) if role in ("assistant", "tool") else {}
        except ToolError as exc:
            raise bad(str(exc), exc.param) from None
        out.append({"role": ROLES[role], "content": _content(m.get("content"), i), **extra})
    return out


# ---------------------------------------------------------------- the model side


@dataclass(frozen=True)
class GenRequest:
    prompt_ids: list
    max_tokens: int
    sampling: SamplingParams
    stops: tuple


@dataclass
class Job:
    request: GenRequest
    events: queue.Queue = field(default_factory=queue.Queue)  # StepEvents, then a GenerationResult or ApiError
    cancel: threading.Event = field(default_factory=threading.Event)


class Backend:
    """The loaded model, its optional draft, and how a request becomes events.

    SubSpec runs when a draft is given; plain decoding otherwise."""

    def __init__(self, lm, draft=None, shape: TreeShape = TreeShape(), generate: GenerateFn | None = None,
                 name: str | None = None, method: Callable[[], str] | None = None, context: int | None = None):
        """`method`: says which method the next request decodes with, where `generate` decides that itself
        (the app's bridge decodes like its chat, switch and all); by default, whether there is a draft.
        `context`: prompt plus answer at most, where less than the model's own (a GPU plan's KV cache)."""
        self.lm = lm
        self.draft = draft
        self.shape = shape
        # Requests are decoded one at a time, so one auto-depth controller serves them all and keeps what
        # earlier requests measured.
        self.control = control_for(shape)
        # The last request's KV cache: a chat client's next request (its history and a new message), or one
        # with the same system prompt, prefills only what is new (engine.kv_cache.PromptCache).
        self.prompt_cache = PromptCache(slots=context)  # (on a GPU, a plan's KV cache; else twice what is asked)
        self.name = name or lm.name
        self.method = "subspec" if draft is not None else "vanilla"
        self._method_now = method
        self._context = context
        self.baseline_tokens_per_s: float | None = None
        self.created = int(time.time())
        self._generate = generate or self._default_generate
        # The worker decodes with lm.tokenizer while handlers encode; a Rust tokenizer shared across
        # threads can fail with "Already borrowed", so handlers get their own copy behind a lock.
        self._encoder = dataclasses.replace(lm, tokenizer=copy.deepcopy(lm.tokenizer))
        self._encode_lock = threading.Lock()

    @property
    def context(self) -> int:
        return min(self.lm.config.max_position_embeddings, self._context or 1 << 62)

    def method_now(self) -> str:
        """The method the next request decodes with (what its usage reports)."""
        return self._method_now() if self._method_now else self.method

    def generate(self, req: GenRequest, cancel: threading.Event | None = None) -> Iterator[StepEvent]:
        if getattr(self._generate, "accepts_cancel", False):
            return self._generate(req.prompt_ids, req.max_tokens, req.sampling, req.stops, cancel=cancel)
        return self._generate(req.prompt_ids, req.max_tokens, req.sampling, req.stops)

    def _default_generate(self, prompt_ids, max_tokens, sampling, stops, cancel=None):
        """A client gone (`cancel`) while a long prompt is read ends the reading at its next step
        (engine.errors.Stopped), what was read kept in the prompt cache."""
        from .generate import generate_plain
        from .speculative import generate_subspec

        reading = prompt_reading(cancel)
        if self.draft is not None:
            return generate_subspec(self.lm, self.draft, prompt_ids, max_tokens, sampling, stops, self.shape,
                                    control=self.control, prompt_cache=self.prompt_cache, prompt_progress=reading)
        return generate_plain(self.lm, prompt_ids, max_tokens, sampling, stops, prompt_cache=self.prompt_cache,
                              prompt_progress=reading)

    _default_generate.accepts_cancel = True

    def encode_chat(self, messages: list[dict], template_kwargs: dict | None = None,
                    tools: list[dict] | None = None, prefill: str = "", close_thought: bool = False) -> list[int]:
        """`prefill`: how the answer begins (engine.tool_calls.forced_call), written after the template's
        generation prompt. `close_thought`: JSON mode (LoadedModel.encode_messages)."""
        from jinja2 import TemplateError

        if not getattr(self._encoder.tokenizer, "chat_template", None):
            raise bad(f"model {self.name} has no chat template; use /v1/completions", "messages")
        with self._encode_lock:
            try:
                # Only the variables this template reads: others would do nothing, or clash with
                # apply_chat_template's own arguments (a TypeError).
                used = template_variables(self._encoder.tokenizer.chat_template, bool(tools))
                if "[TOOL_CALLS]" in (self.chat_template(bool(tools)) or ""):
                    messages = mistral_ids(messages)  # its templates raise on OpenAI's call ids
                template_kwargs = {k: v for k, v in (template_kwargs or {}).items() if used is None or k in used}
                if tools:
                    if used is not None and "tools" not in used:
                        raise bad(f"model {self.name}'s chat template has no tools: it was not trained to call them",
                                  "tools")
                    template_kwargs["tools"] = tools
                if prefill or close_thought:
                    return self._encoder.encode_messages(messages, template_kwargs, prefill=prefill,
                                                         close_thought=close_thought)
                if template_kwargs:
                    return self._encoder.encode_messages(messages, template_kwargs)
                return self._encoder.encode_messages(messages)
            except (TemplateError, ValueError, TypeError) as exc:
                raise bad(f"the chat template rejected these messages: {exc}", "messages") from None

    def chat_template(self, tools: bool = False) -> str | None:
        """The chat template requests are rendered with (of a set, the one tools pick)."""
        return chosen_template(getattr(self._encoder.tokenizer, "chat_template", None), tools)

    def encode_text(self, text: str) -> list[int]:
        with self._encode_lock:
            return self._encoder.encode(text, chat=False)

    def decode_text(self, ids: list[int]) -> str:
        with self._encode_lock:
            return self._encoder.tokenizer.decode(ids)

    def token_piece(self, token_id: int) -> logprob_api.TokenPiece:
        """A token's text and bytes, as the APIs report log-probabilities (engine.logprob_api)."""
        with self._encode_lock:
            return logprob_api.token_piece(self._encoder.tokenizer, self.lm.config.vocab_size, token_id)

    def measure_baseline(self, tokens: int = 32) -> float | None:
        """Plain decoding's tokens/s here, so a SubSpec answer's speedup is a measured ratio, not a guess.
        Call before serving (it runs on the calling thread)."""
        from .generate import generate_plain

        ids = self.encode_text("The quick brown fox")
        for _ in generate_plain(self.lm, ids, 4):
            pass  # warm-up: a cold first pass would make plain decoding look slower than it is
        result = summarize(generate_plain(self.lm, ids, tokens), len(ids), "vanilla")
        self.baseline_tokens_per_s = result.tokens_per_s if result.new_tokens >= 4 else None
        return self.baseline_tokens_per_s

    def usage(self, result: GenerationResult) -> dict:
        base = self.baseline_tokens_per_s
        speedup = result.tokens_per_s / base if base and result.new_tokens > 1 else None
        return {
            "prompt_tokens": result.prompt_tokens, "completion_tokens": result.new_tokens,
            "total_tokens": result.prompt_tokens + result.new_tokens,
            # OpenAI's: the prompt's tokens a kept cache held (engine.kv_cache.PromptCache), not prefilled
            "prompt_tokens_details": {"cached_tokens": result.cached_tokens},
            "subspec": {
                "method": result.method, "tau": round(result.tau, 3), "iterations": result.iterations,
                "tokens_per_s": round(result.tokens_per_s, 2), "ttft_s": round(result.ttft_s, 4),
                # This request's decoding speed over plain decoding measured at start-up; null if never measured.
                "speedup_estimate": None if speedup is None else round(speedup, 2),
                "baseline_tokens_per_s": None if base is None else round(base, 2),
            },
        }


class Worker:
    """The one thread that runs generations, fed by a bounded queue."""

    def __init__(self, backend: Backend, queue_size: int = DEFAULT_QUEUE):
        if queue_size < 1:
            raise SubspecError(f"the queue must hold at least 1 request, got {queue_size}")
        self.backend = backend
        self._jobs: queue.Queue = queue.Queue(queue_size)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="subspec-model", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        with self._lock:
            if self._stopping.is_set():
                raise _shutting_down()
            try:
                self._jobs.put_nowait(job)
            except queue.Full:
                raise ApiError(429, "the server is busy: its request queue is full; retry shortly",
                               "rate_limit_error", code="queue_full") from None

    def close(self, timeout: float = 10.0) -> None:
        """Fail the waiting requests, stop the running one at its next step, end the thread."""
        with self._lock:
            self._stopping.set()
            pending = []
            with contextlib.suppress(queue.Empty):
                while True:
                    pending.append(self._jobs.get_nowait())
            self._jobs.put(None)  # cannot block: the queue was just emptied and no submit gets in
        for job in pending:
            job.events.put(_shutting_down())
        self._thread.join(timeout)

    def _loop(self) -> None:
        while (job := self._jobs.get()) is not None:
            self._run(job)

    def _run(self, job: Job) -> None:
        try:
            if self._stopping.is_set():
                raise _shutting_down()
            if not job.cancel.is_set():
                method = self.backend.method_now()
                job.events.put(summarize(self._relay(job), len(job.request.prompt_ids), method))
        except ApiError as err:
            job.events.put(err)
        except Stopped:  # cancelled while the prompt was read: its client left (should one still wait, it is told)
            job.events.put(ApiError(503, "the request was cancelled while its prompt was read", "server_error"))
        except SubspecError as exc:
            job.events.put(bad(str(exc)))
        except Exception as exc:  # a failed generation must answer its request, not end the worker
            traceback.print_exc()
            job.events.put(ApiError(500, f"generation failed: {type(exc).__name__}: {exc}", "server_error"))

    def _relay(self, job: Job) -> Iterator[StepEvent]:
        with contextlib.closing(self.backend.generate(job.request, job.cancel)) as events:
            for ev in events:
                job.events.put(ev)
                yield ev
                if self._stopping.is_set():
                    raise _shutting_down()
                if job.cancel.is_set():
                    return


def _shutting_down() -> ApiError:
    return ApiError(503, "the server is shutting down", "server_error")


# ---------------------------------------------------------------- response shapes


@dataclass(frozen=True)
class Reading:
    """How an answer's events become a chat or completion response, besides its text."""
    tools: ToolParsing | None = None  # the request's tools: calls are parsed out of the answer
    prefill: str = ""  # what the prompt already wrote of the answer (a forced call's opening): read from there
    single: bool = False  # tool_choice named a function: its one call
    logprobs: Callable | None = None  # entries -> the shape's `logprobs` (engine.logprob_api); None: not asked

    def calls(self, content, calls: list) -> tuple:
        """(content, calls) as the response gives them: one call where the request named its function."""
        return content, calls[:1] if self.single else calls


class ChatShape:
    object, chunk_object, id_prefix = "chat.completion", "chat.completion.chunk", "chatcmpl-"
    logprob_request = staticmethod(logprob_api.chat_request)

    @staticmethod
    def logprob_format(piece, prompt_chars: int):
        """entries -> a choice's `logprobs` (engine.logprob_api)."""
        return lambda entries: logprob_api.chat(entries, piece)

    @staticmethod
    def choice(text: str, finish: str | None, logprobs: dict | None = None) -> dict:
        return {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": logprobs,
                "finish_reason": finish}

    @staticmethod
    def delta(text: str | None, finish: str | None, first: bool = False, logprobs: dict | None = None) -> dict:
        d = {} if text is None else {"content": text}
        if first:
            d["role"] = "assistant"
        return {"index": 0, "delta": d, "logprobs": logprobs, "finish_reason": finish}


class CompletionShape:
    object = chunk_object = "text_completion"
    id_prefix = "cmpl-"
    logprob_request = staticmethod(logprob_api.completion_request)

    @staticmethod
    def logprob_format(piece, prompt_chars: int):
        return functools.partial(logprob_api.CompletionOffsets(prompt_chars).logprobs, piece=piece)

    @staticmethod
    def choice(text: str, finish: str | None, logprobs: dict | None = None) -> dict:
        return {"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish}

    @staticmethod
    def delta(text: str | None, finish: str | None, first: bool = False, logprobs: dict | None = None) -> dict:
        return {"index": 0, "text": text or "", "logprobs": logprobs, "finish_reason": finish}


def _finish(result: GenerationResult) -> str:
    return FINISH.get(result.finish_reason or "", "length")


# ---------------------------------------------------------------- HTTP


def _peer_closed(sock: socket.socket) -> bool:
    """True when the client has closed its end: readable with nothing to read."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):
        return True


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the OpenAI client reuses its connections
    server_version = "SubSpecStudio/0.1"
    timeout = 300  # an idle keep-alive connection is dropped after this long
    server: "SubspecServer"

    # ---- plumbing

    def version_string(self) -> str:
        return self.server_version  # without the Python version http.server would add

    def log_message(self, format, *args):
        if not self.server.quiet:
            super().log_message(format, *args)

    def send_error(self, code, message=None, explain=None):
        # http.server's own errors (bad request line, oversized headers) as JSON too.
        self.close_connection = True
        self._send_json(code, ApiError(code, message or self.responses.get(code, ("error",))[0]).as_json())

    def _send_json(self, status: int, obj: dict, headers: dict | None = None) -> None:
        data = json.dumps(obj, ensure_ascii=False).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self._cors_headers()
        if self.close_connection or not getattr(self, "_body_read", True):
            self.close_connection = True  # an unread request body would be parsed as the next request
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        self._responded = True

    def _cors_headers(self) -> None:
        origin = getattr(self, "_cors_origin", None)
        if origin:  # a page allowed to read our answers (browsers hide them from any other)
            self.send_header("Access-Control-Allow-Origin", origin)
            self.send_header("Vary", "Origin")

    def _check_origin(self) -> None:
        """A browser names the page making the request (Origin); non-browser clients send none. On a
        loopback address the Host must be a loopback name too: a website whose name is made to resolve to
        127.0.0.1 (DNS rebinding) is the same origin as this server to the browser, and sends its own name."""
        self._cors_origin = None
        if self.server.loopback and not _loopback_host(self.headers.get("Host", "")):
            raise ApiError(403, f"this server answers requests for localhost only, not for host "
                                f"{self.headers.get('Host')!r}", code="host_not_allowed")
        origin = self.headers.get("Origin")
        if not origin:
            return
        if not origin_allowed(origin, self.server.cors_origins):
            raise ApiError(403, f"requests from web pages at {origin} are not allowed; to allow them, "
                                f"{self.server.allow_origin_hint.format(origin=origin)}", code="origin_not_allowed")
        self._cors_origin = origin

    def _preflight(self) -> None:
        """A browser's OPTIONS before a request with a JSON body or an Authorization header (it carries no
        key, so it is answered before the key is checked)."""
        self.send_response(204)
        if not self._body_read:  # (a preflight has no body; one that does is not read: the connection ends)
            self.close_connection = True
            self.send_header("Connection", "close")
        self._cors_headers()
        self.send_header("Access-Control-Allow-Methods", "GET, HEAD, POST, OPTIONS")
        asked = self.headers.get("Access-Control-Request-Headers")
        self.send_header("Access-Control-Allow-Headers", asked or "Authorization, Content-Type")
        self.send_header("Access-Control-Max-Age", "600")
        self.send_header("Content-Length", "0")
        self.end_headers()
        self._responded = True

    def _send_api_error(self, err: ApiError) -> None:
        headers = {"Retry-After": "1"} if err.status == 429 else None
        ollama = self.path.split("?", 1)[0].startswith("/api/")  # Ollama's clients read {"error": "..."}
        self._send_json(err.status, {"error": err.message} if ollama else err.as_json(), headers)

    def _dispatch(self, routes: dict) -> None:
        self._responded = False
        self._body_read = not self._has_body()
        self._checked_at = time.monotonic()
        try:
            self._check_origin()
            if self.command == "OPTIONS":
                return self._preflight()
            path = self.path.split("?", 1)[0].rstrip("/")
            if path in ("", "/health"):  # liveness, without a key: says nothing about the model
                if path not in routes:
                    raise self._no_route(path)
                return routes[path]()
            self._check_auth()
            if not path.startswith("/v1/") and ("/v1" + path in self.server.ROUTES or path.startswith("/models/")):
                path = "/v1" + path  # llama.cpp answers without the /v1 too, and clients use both
            handler = routes.get(path) or self._model_route(path)
            if handler is None:
                raise self._no_route(path)
            handler()
        except ApiError as err:
            if not self._responded:
                self._send_api_error(err)
        except (ClientGone, ConnectionError, TimeoutError):
            self.close_connection = True
        except Exception:
            traceback.print_exc()
            self.close_connection = True
            if not self._responded:
                self._send_api_error(ApiError(500, "internal server error", "server_error"))

    def _no_route(self, path: str) -> ApiError:
        if path in self.server.ROUTES:
            return ApiError(405, f"{self.command} is not allowed on {path or '/'}", code="method_not_allowed")
        return ApiError(404, f"unknown path {self.command} {path or '/'}", code="not_found")

    def _has_body(self) -> bool:
        chunked = "chunked" in self.headers.get("Transfer-Encoding", "").lower()
        return chunked or self.headers.get("Content-Length", "0").strip() not in ("", "0")

    def _model_route(self, path: str):
        if self.command in ("GET", "HEAD") and path.startswith("/v1/models/"):
            return lambda: self._get_model(path.removeprefix("/v1/models/"))
        return None

    def _check_auth(self) -> None:
        key = self.server.api_key
        if not key:
            return
        given = self.headers.get("Authorization", "")
        if not (given.startswith("Bearer ") and hmac.compare_digest(given[7:].strip().encode(), key.encode())):
            raise ApiError(401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                           code="invalid_api_key")

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            data = self._read_chunked()
        else:
            try:
                n = int(self.headers.get("Content-Length") or 0)
                if n < 0:
                    raise ValueError
            except ValueError:
                self.close_connection = True  # where this request ends is unknown
                raise bad("bad Content-Length header") from None
            if n > MAX_BODY_BYTES:
                self._drain(n)
                raise ApiError(413, f"the request body exceeds {MAX_BODY_BYTES} bytes")
            data = self.rfile.read(n)
        self._body_read = True
        return data

    def _drain(self, n: int) -> None:
        """Read and drop an oversized body (up to DRAIN_BYTES): a client that sends its whole body before
        reading would otherwise get a broken pipe instead of the 413. The connection closes after."""
        self.close_connection = True
        left = min(n, DRAIN_BYTES)
        with contextlib.suppress(OSError):
            while left > 0 and (chunk := self.rfile.read(min(left, 1 << 16))):
                left -= len(chunk)

    def _read_chunked(self) -> bytes:
        data = b""
        while True:
            try:
                size = int(self.rfile.readline(1024).split(b";")[0], 16)
                if size < 0:
                    raise ValueError
            except ValueError:
                self.close_connection = True
                raise bad("malformed chunked request body") from None
            if size == 0:
                while self.rfile.readline(1024).strip():
                    pass  # trailer headers
                return data
            if len(data) + size > MAX_BODY_BYTES:
                raise ApiError(413, f"the request body exceeds {MAX_BODY_BYTES} bytes")
            data += self.rfile.read(size)
            self.rfile.readline(1024)

    def _json_body(self) -> dict:
        raw = self._read_body()
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise bad(f"the request body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise bad("the request body must be a JSON object")
        return body

    # ---- HTTP verbs

    def do_GET(self):
        self._dispatch({"": self._health, "/health": self._health, "/v1/models": self._list_models,
                        "/api/version": self._ollama_version, "/api/tags": self._ollama_tags,
                        "/api/ps": self._ollama_ps})

    do_HEAD = do_GET  # the same answers without their bodies (_send_json leaves them out)

    def do_POST(self):
        self._dispatch({"/v1/chat/completions": self._chat, "/v1/completions": self._completion,
                        "/api/chat": self._ollama_chat, "/api/generate": self._ollama_generate,
                        "/api/show": self._ollama_show})

    def _not_allowed(self):
        self._dispatch({})

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _not_allowed  # (OPTIONS: a browser's preflight, any path)

    # ---- endpoints

    def _model_card(self) -> dict:
        b = self.server.backend
        return {"id": b.name, "object": "model", "created": b.created, "owned_by": "subspec-studio"}

    def _health(self):
        self._send_json(200, {"status": "ok"})

    def _list_models(self):
        self._send_json(200, {"object": "list", "data": [self._model_card()]})

    def _get_model(self, name: str):
        if name != self.server.backend.name:
            raise ApiError(404, f"no model named {name!r}", param="model", code="model_not_found")
        self._send_json(200, self._model_card())

    def _chat(self):
        body = self._json_body()
        messages = parse_messages(body.get("messages"))
        self._check_common(body, chat=True)
        backend = self.server.backend
        try:
            tools = parse_tools(body)
            prefill = forced_call(body, tools, backend.chat_template(bool(tools)))
        except ToolError as exc:
            raise bad(str(exc), exc.param) from None
        json_mode = _json_mode(body)[0]
        if json_mode and tools:
            raise bad("JSON mode (response_format json_object) and tools cannot be combined: a tool call is not "
                      "a bare JSON object", "response_format")
        ids = backend.encode_chat(messages, _template_kwargs(body), tools, prefill, close_thought=json_mode)
        parsing = ToolParsing.of(tools, backend.chat_template(True), forced=bool(prefill)) if tools else None
        self._generate(body, ids, ChatShape,
                       Reading(parsing, prefill, single=bool(tools) and named_choice(body) is not None))

    def _completion(self):
        body = self._json_body()
        prompt = self._prompt(body.get("prompt"))
        self._check_common(body)
        backend = self.server.backend
        ids = prompt if isinstance(prompt, list) else backend.encode_text(prompt)
        self._generate(body, ids, CompletionShape,
                       prompt_chars=lambda: len(prompt if isinstance(prompt, str) else backend.decode_text(ids)))

    def _check_common(self, body: dict, chat: bool = False) -> None:
        model = body.get("model")
        if model is not None and model != self.server.backend.name:
            raise ApiError(404, f"unknown model {model!r}; this server serves {self.server.backend.name!r}",
                           param="model", code="model_not_found")
        _reject_unsupported(body, chat)

    def _prompt(self, value) -> str | list:
        if isinstance(value, list) and len(value) == 1 and isinstance(value[0], (str, list)):
            value = value[0]  # a batch of one
        if isinstance(value, str):
            return value
        vocab = self.server.backend.lm.config.vocab_size
        if isinstance(value, list) and value and all(_is_int(t) and 0 <= t < vocab for t in value):
            return value
        raise bad("'prompt' must be a string or one array of token ids", "prompt")

    # ---- generation

    def _request(self, body: dict, prompt_ids: list, logprobs: int | None = None) -> GenRequest:
        """`logprobs`: report each token's log-probability with this many alternatives (None: not asked)."""
        if not prompt_ids:
            raise bad("the prompt is empty", "prompt")
        room = self.server.backend.context - len(prompt_ids)
        max_tokens = _int(body, "max_completion_tokens", 1)
        max_tokens = _int(body, "max_tokens", 1) if max_tokens is None else max_tokens
        if room < 1:
            raise bad(f"the prompt ({len(prompt_ids)} tokens) fills the model's context of "
                      f"{self.server.backend.context} tokens, leaving no room for an answer",
                      "prompt" if "prompt" in body else "messages", "context_length_exceeded")
        # More than the room left is shortened to it (the answer then ends with finish_reason "length"), as
        # Ollama, llama.cpp and LM Studio do: clients often ask for the model's whole context.
        max_tokens = min(DEFAULT_MAX_TOKENS if max_tokens is None else max_tokens, room)
        try:
            sampling = _sampling(body)
            if logprobs is not None:
                sampling = dataclasses.replace(sampling, logprobs=logprobs)
        except SubspecError as exc:
            raise bad(str(exc)) from None
        return GenRequest(list(prompt_ids), max_tokens, sampling, _stops(body))

    def _generate(self, body: dict, prompt_ids: list, shape, reading: "Reading | None" = None,
                  prompt_chars: Callable[[], int] = lambda: 0) -> None:
        """`reading`: how the answer becomes the response (a chat's tool calls). `prompt_chars`: the prompt's
        length in characters (where legacy completions' log-probabilities count their text offsets from)."""
        reading = reading or Reading()
        stream = _bool(body, "stream")
        opts = body.get("stream_options") or {}
        include_usage = stream and isinstance(opts, dict) and opts.get("include_usage") is True
        try:
            logprobs = shape.logprob_request(body)
        except logprob_api.LogprobError as exc:
            raise bad(str(exc), exc.param) from None
        job = Job(self._request(body, prompt_ids, logprobs))
        if logprobs is not None:
            reading = dataclasses.replace(
                reading, logprobs=shape.logprob_format(self.server.backend.token_piece, prompt_chars()))
        self.server.worker.submit(job)
        meta = {"id": shape.id_prefix + uuid.uuid4().hex[:24], "created": int(time.time()),
                "model": self.server.backend.name}
        try:
            if stream:
                self._stream(job, shape, meta, include_usage, reading)
            else:
                self._collect(job, shape, meta, reading)
        finally:
            job.cancel.set()  # a no-op after the end; stops the worker when the client went away

    def _next(self, job: Job):
        """The job's next item; raises ClientGone (and cancels) if the client disconnects meanwhile.
        The check runs on a clock, not only when idle: a non-streamed answer never writes until the end."""
        while True:
            try:
                item = job.events.get(timeout=POLL_S)
            except queue.Empty:
                item = None
            now = time.monotonic()
            if now - self._checked_at >= POLL_S:
                self._checked_at = now
                if _peer_closed(self.connection):
                    job.cancel.set()
                    raise ClientGone
            if item is not None:
                return item

    def _collect(self, job: Job, shape, meta: dict, reading: "Reading") -> None:
        while isinstance(item := self._next(job), StepEvent):
            pass
        if isinstance(item, ApiError):
            raise item
        usage = self.server.backend.usage(item)
        text = reading.prefill + item.text
        choice = shape.choice(text, _finish(item), reading.logprobs(item.logprobs) if reading.logprobs else None)
        if reading.tools:
            content, calls = reading.calls(*reading.tools.split(text))
            if calls:
                choice = {**choice, "message": {"role": "assistant", "content": content, "tool_calls": calls},
                          "finish_reason": "tool_calls"}
        self._send_json(200, {**meta, "object": shape.object, "choices": [choice], "usage": usage})

    def _stream(self, job: Job, shape, meta: dict, include_usage: bool, reading: "Reading") -> None:
        self._start_events()
        chunk = {**meta, "object": shape.chunk_object}
        if shape is ChatShape:
            self._event({**chunk, "choices": [shape.delta("", None, first=True)]})
        held = reading.tools.stream() if reading.tools else None  # a tool call goes out whole, once it can be parsed
        if held is not None:
            held.feed(reading.prefill)  # a forced call's opening: held (it begins with <tool_call>) with what follows
        while isinstance(item := self._next(job), StepEvent):
            text = held.feed(item.text) if held is not None else item.text
            # A step's tokens go with its chunk, even one whose text is held back (a stop string may begin
            # there, or a tool call): clients add up the chunks' log-probabilities.
            logprobs = reading.logprobs(item.logprobs) if reading.logprobs and item.logprobs else None
            if text or logprobs:
                self._event({**chunk, "choices": [shape.delta(text, None, logprobs=logprobs)]})
        if isinstance(item, ApiError):
            self._event(item.as_json())
        else:
            finish = _finish(item)
            if held is not None:
                rest, calls = reading.calls(*held.finish())
                if rest:
                    self._event({**chunk, "choices": [shape.delta(rest, None)]})
                if calls:
                    finish = "tool_calls"
                    self._event({**chunk, "choices": [{"index": 0, "delta": {"tool_calls": [
                        {"index": i, **call} for i, call in enumerate(calls)]}, "logprobs": None,
                        "finish_reason": None}]})
            self._event({**chunk, "choices": [shape.delta(None, finish)]})
            if include_usage:
                self._event({**chunk, "choices": [], "usage": self.server.backend.usage(item)})
        self._write_chunk(b"data: [DONE]\n\n")
        self._write_chunk(b"")

    def _start_events(self, content_type: str = "text/event-stream; charset=utf-8") -> None:
        # Chunked keeps the connection reusable after [DONE]; HTTP/1.0 has no chunks, so the end of the
        # stream is the end of the connection there.
        self._chunked = self.request_version != "HTTP/1.0"
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Cache-Control", "no-cache")
        self._cors_headers()
        if self._chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self._responded = True

    def _event(self, obj: dict) -> None:
        self._write_chunk(b"data: " + json.dumps(obj, ensure_ascii=False).encode() + b"\n\n")

    # ---- Ollama's API (engine.ollama_api)

    def _ollama_version(self):
        self._send_json(200, {"version": ollama_api.API_VERSION})

    def _ollama_card(self) -> dict:
        b = self.server.backend
        config = b.lm.config
        weight = b.lm.decoder.embed_tokens.weight
        dtype = {"float32": "f32", "float16": "f16", "bfloat16": "bf16"}.get(str(weight.dtype).removeprefix("torch."),
                                                                          "unknown")
        name = ollama_api.tagged(b.name)
        return {"name": name, "model": name, "size": config.parameter_count * weight.element_size(), "digest": "",
                "details": ollama_api.model_details(config, dtype),
                "modified_at": datetime.datetime.fromtimestamp(b.created, datetime.timezone.utc).isoformat()}

    def _ollama_tags(self):
        self._send_json(200, {"models": [self._ollama_card()]})

    def _ollama_ps(self):
        card = self._ollama_card()
        on_gpu = getattr(self.server.backend.lm, "device", None) is not None and \
            getattr(self.server.backend.lm.device, "type", "cpu") == "cuda"
        self._send_json(200, {"models": [{**card, "expires_at": "2999-01-01T00:00:00Z",
                                          "size_vram": card["size"] if on_gpu else 0}]})

    def _ollama_model(self, body: dict) -> None:
        asked = body.get("model", body.get("name"))
        if asked in (None, ""):
            raise bad("model is required", "model")
        if not isinstance(asked, str):
            raise bad(f"'model' must be a string, got {asked!r}", "model")
        if not ollama_api.names_model(asked, self.server.backend.name):
            raise ApiError(404, f"model {asked!r} not found: this server serves "
                                f"{ollama_api.tagged(self.server.backend.name)!r}", code="model_not_found")

    def _ollama_show(self):
        body = self._json_body()
        self._ollama_model(body)
        b = self.server.backend
        template = b.chat_template(True) or ""
        used = template_variables(template, True) if template else frozenset()
        tools = bool(template) and (used is None or "tools" in used)
        card = self._ollama_card()
        self._send_json(200, {"modelfile": "", "parameters": "", "template": template, "details": card["details"],
                              "model_info": ollama_api.model_info(b.lm.config, b.context),
                              "capabilities": ollama_api.capabilities(tools, "enable_thinking" in template),
                              "modified_at": card["modified_at"]})

    def _ollama_loaded(self, body: dict, chat: bool):
        """The answer to a request with nothing to answer: Ollama's way to load (or unload) a model."""
        out = {"model": ollama_api.tagged(self.server.backend.name), "created_at": ollama_api.now()}
        out.update({"message": {"role": "assistant", "content": ""}} if chat else {"response": ""})
        self._send_json(200, {**out, "done_reason": ollama_api.done_reason_of_load(body), "done": True})

    def _ollama_chat(self):
        body = self._json_body()
        self._ollama_model(body)
        backend = self.server.backend
        try:
            ollama_api.check_unsupported(body, chat=True)
            messages = body.get("messages")
            raw = ollama_api.chat_messages([] if messages is None else messages)
            options = ollama_api.openai_body(body)
            tools = parse_tools({"tools": body["tools"]}) if body.get("tools") is not None else None
        except (ollama_api.OllamaError, ToolError) as exc:
            raise bad(str(exc), exc.param) from None
        if not raw:
            return self._ollama_loaded(body, chat=True)
        json_mode = _json_mode(options)[0]  # (format "json" or a schema, as openai_body translated it)
        if json_mode and tools:
            raise bad("format \"json\" and tools cannot be combined: a tool call is not a bare JSON object", "format")
        ids = backend.encode_chat(parse_messages(raw), ollama_api.template_kwargs(body), tools,
                                  close_thought=json_mode)
        self._ollama_answer(body, options, ids, chat=True,
                            tools=ToolParsing.of(tools, backend.chat_template(True)) if tools else None)

    def _ollama_generate(self):
        body = self._json_body()
        self._ollama_model(body)
        backend = self.server.backend
        try:
            ollama_api.check_unsupported(body, chat=False)
            options = ollama_api.openai_body(body)
            messages = ollama_api.generate_messages(body)
        except ollama_api.OllamaError as exc:
            raise bad(str(exc), exc.param) from None
        prompt = messages[-1]["content"]
        if not prompt:
            return self._ollama_loaded(body, chat=False)
        raw = _bool(body, "raw") or not getattr(backend.lm.tokenizer, "chat_template", None)
        ids = (backend.encode_text(prompt) if raw
               else backend.encode_chat(messages, ollama_api.template_kwargs(body),
                                        close_thought=_json_mode(options)[0]))
        self._ollama_answer(body, options, ids, chat=False)

    def _ollama_answer(self, body: dict, options: dict, prompt_ids: list, chat: bool,
                       tools: ToolParsing | None = None) -> None:
        stream = body.get("stream", True)
        stream = True if stream is None else stream  # (null: Ollama's default)
        if not isinstance(stream, bool):
            raise bad(f"'stream' must be true or false, got {stream!r}", "stream")
        thinking = bool(ollama_api.wants_thinking(body))  # the thought in its own field, as Ollama does
        try:
            logprobs = logprob_api.ollama_request(body)
        except logprob_api.LogprobError as exc:
            raise bad(str(exc), exc.param) from None
        job = Job(self._request(options, prompt_ids, logprobs))
        self.server.worker.submit(job)
        name = ollama_api.tagged(self.server.backend.name)
        token_piece = self.server.backend.token_piece

        def piece(text: str, calls: list | None = None, thought: str = "", entries=()) -> dict:
            out = {"model": name, "created_at": ollama_api.now()}
            if entries:
                out["logprobs"] = logprob_api.ollama(entries, token_piece)
            if not chat:
                out["response"] = text
                if thought:
                    out["thinking"] = thought
                return {**out, "done": False}
            message = {"role": "assistant", "content": text}
            if thought:
                message["thinking"] = thought
            if calls:
                message["tool_calls"] = ollama_api.tool_calls(calls)
            return {**out, "message": message, "done": False}

        try:
            if stream:
                self._start_events("application/x-ndjson")
            split = ollama_api.ThinkingSplit() if thinking else None
            held = tools.stream() if tools and stream else None  # a call goes out whole, once parsed
            while isinstance(item := self._next(job), StepEvent):
                thought, text = split.feed(item.text) if split is not None else ("", item.text)
                out = held.feed(text) if held is not None else text
                if stream and (out or thought or item.logprobs):  # (a step's tokens go with its piece)
                    self._ndjson(piece(out, thought=thought, entries=item.logprobs))
            if isinstance(item, ApiError):
                if not stream:
                    raise item
                self._ndjson({"error": item.message})
            else:
                if not stream:
                    thought, text = ollama_api.split_thinking(item.text) if thinking else ("", item.text)
                    content, calls = tools.split(text) if tools else (text, [])
                    last = piece(content or "" if calls else text, calls, thought, item.logprobs)
                else:
                    thought, text = split.finish() if split is not None else ("", "")
                    if held is not None:
                        out = held.feed(text)
                        rest, calls = held.finish()
                        rest = out + rest
                    else:
                        rest, calls = text, []
                    last = piece(rest, calls, thought)
                    if rest and calls:  # the text before the calls, then the calls on their own
                        self._ndjson(piece(rest, thought=thought))
                        last = piece("", calls)
                final = {**last, **ollama_api.final_fields(item, _finish(item))}
                if stream:
                    self._ndjson(final)
                else:
                    self._send_json(200, final)
            if stream:
                self._write_chunk(b"")
        finally:
            job.cancel.set()  # a no-op after the end; stops the worker when the client went away

    def _ndjson(self, obj: dict) -> None:
        self._write_chunk(json.dumps(obj, ensure_ascii=False).encode() + b"\n")

    def _write_chunk(self, data: bytes) -> None:
        if self._chunked:
            self.wfile.write(b"%X\r\n%s\r\n" % (len(data), data))
        elif data:
            self.wfile.write(data)


class SubspecServer(ThreadingHTTPServer):
    """The HTTP server and its model worker. `start()` serves on a background thread (tests, the app);
    `serve_forever()` on the caller's. `close()` stops both."""

    daemon_threads = True
    ROUTES = ("", "/health", "/v1/models", "/v1/chat/completions", "/v1/completions", "/api/version", "/api/tags",
              "/api/ps", "/api/chat", "/api/generate", "/api/show")
    # SO_REUSEADDR lets a restarted server bind a port with connections still in TIME_WAIT, on POSIX. On
    # Windows it lets a second server bind a port another is listening on (both then answer at random), so
    # there the port is taken exclusively instead, and a busy port is the error it should be.
    allow_reuse_address = os.name != "nt"
    # How a refused web page's origin is allowed, said in the 403 (the app's server has a settings dialog).
    allow_origin_hint = "start the server with --cors-origin {origin}"

    def __init__(self, backend: Backend, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
                 api_key: str | None = None, queue_size: int = DEFAULT_QUEUE, quiet: bool = True,
                 cors_origins: tuple[str, ...] = ()):
        """`cors_origins`: web page origins allowed besides this machine's own ("*": any)."""
        self.backend = backend
        self.api_key = api_key or None
        self.cors_origins = tuple(cors_origins)
        self.loopback = is_loopback(host)
        self.quiet = quiet
        if ":" in host:
            self.address_family = socket.AF_INET6
        self.worker = Worker(backend, queue_size)
        self._thread: threading.Thread | None = None
        try:
            super().__init__((host, port), Handler)
        except BaseException:
            self.worker.close()
            raise

    def server_bind(self):
        if os.name == "nt" and hasattr(socket, "SO_EXCLUSIVEADDRUSE"):
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_EXCLUSIVEADDRUSE, 1)
        # HTTPServer.server_bind resolves the host's FQDN, a DNS lookup that can stall start-up.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def handle_error(self, request, client_address):
        """A client that hangs up (a reset idle keep-alive connection: HTTP clients' pools do that) is not
        a server error: no traceback for it. Anything else is printed, as socketserver does."""
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{f'[{host}]' if ':' in host else host}:{port}"

    def start(self) -> "SubspecServer":
        self._thread = threading.Thread(target=self.serve_forever, name="subspec-http", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        if self._thread is not None:
            self.shutdown()
            self._thread.join()
            self._thread = None
        self.worker.close()
        self.server_close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _loopback_host(header: str) -> bool:
    """A Host header naming this machine ("localhost:8642", "127.0.0.1", "[::1]:8642"); HTTP/1.0 clients may
    send none, which no browser does."""
    if not header:
        return True
    host = header.strip()
    if host.startswith("["):
        host = host[1:host.find("]")] if "]" in host else host
    elif host.count(":") == 1:
        host = host.split(":")[0]
    return is_loopback(host.lower().rstrip("."))


