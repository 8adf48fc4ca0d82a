"""Ollama's API beside the OpenAI one (engine.server serves both): many local tools speak only Ollama's
(VS Code Copilot's Ollama provider, Page Assist, Obsidian and Raycast plugins, Open WebUI's Ollama
connection), and point at a base URL. What differs from OpenAI's, and is translated here:

- `/api/chat` and `/api/generate` stream by default, as newline-delimited JSON objects (not server-sent
  events), each with `done`; the last carries `done_reason` and durations in nanoseconds.
- Sampling lives in `options` (`num_predict`, `repeat_penalty`, ...), with Ollama's defaults where a request
  leaves one out (temperature 0.8, top-k 40, top-p 0.9, repeat penalty 1.1 over the last 64 tokens).
- Tool calls' arguments are JSON objects, not strings; a tool's result may name its tool (`tool_name`).
- Model names carry a tag ("name:latest"); errors are {"error": "message"}.

`format` "json" is JSON mode and a schema object structured output (engine.constrained, as the OpenAI side's
response_format json_object and json_schema). Options that would change the answer and that this engine
cannot honour (mirostat, typical-p, schema keywords it cannot enforce, images, a custom `template`,
`suffix`) are refused with a 400, as the OpenAI side refuses its own; options
about how Ollama itself loads and runs a model (`num_ctx`, `num_gpu`, `num_thread`, `keep_alive`, ...) do
not apply to a model already loaded here and are ignored. Standard library only.
"""

from __future__ import annotations

import datetime
import json

from .tool_calls import THINK_CLOSE, THINK_OPEN

# The Ollama API version these endpoints follow. Clients ask for it (some refuse servers older than what
# they need), so it names the API, not this app.
API_VERSION = "0.9.0"

# Ollama's defaults for a model whose Modelfile sets none (its api docs, "Valid Parameters and Values").
DEFAULTS = {"temperature": 0.8, "top_k": 40, "top_p": 0.9, "min_p": 0.0, "repeat_penalty": 1.1,
            "repeat_last_n": 64}
# Options that only say how Ollama loads or runs a model: nothing to do for one loaded here.
RUNTIME_OPTIONS = {"num_ctx", "num_batch", "num_gpu", "main_gpu", "low_vram", "num_thread", "numa", "use_mmap",
                   "use_mlock", "vocab_only", "num_keep", "penalize_newline", "f16_kv", "logits_all"}
SAMPLING_OPTIONS = {"temperature", "top_k", "top_p", "min_p", "seed", "stop", "repeat_penalty", "repeat_last_n",
                    "presence_penalty", "frequency_penalty", "num_predict"}


class OllamaError(ValueError):
    """A request this server cannot answer as asked (a 400), with the field it is about."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


def tagged(name: str) -> str:
    """The served model's name as Ollama lists it: with a tag."""
    return name if ":" in name else name + ":latest"


def names_model(asked, served: str) -> bool:
    return isinstance(asked, str) and asked in (served, tagged(served))


def now() -> str:
    """Ollama's `created_at`: RFC 3339 in UTC."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat().replace("+00:00", "Z")


def openai_body(body: dict) -> dict:
    """The request's options as the OpenAI side's fields (engine.server reads sampling, stops and the
    answer's length from those), Ollama's defaults filling what it leaves out."""
    options = body.get("options")
    if options is None:
        options = {}
    if not isinstance(options, dict):
        raise OllamaError("'options' must be an object", "options")
    if options.get("mirostat") not in (None, 0):
        raise OllamaError("mirostat sampling is not supported (set mirostat to 0)", "options.mirostat")
    if options.get("typical_p") not in (None, 1, 1.0):
        raise OllamaError("typical_p sampling is not supported (leave it at 1)", "options.typical_p")
    if options.get("tfs_z") not in (None, 1, 1.0):
        raise OllamaError("tail-free sampling (tfs_z) is not supported (leave it at 1)", "options.tfs_z")
    out = {name: options.get(name, DEFAULTS.get(name)) for name in SAMPLING_OPTIONS - {"num_predict"}}
    out = {k: v for k, v in out.items() if v is not None}
    if isinstance(out.get("seed"), int) and out["seed"] < 0:
        out.pop("seed")  # -1, Ollama's default: a new seed for each answer
    if out.get("repeat_last_n") == -1:
        out.pop("repeat_last_n")  # the whole context: the OpenAI side's default
    predict = options.get("num_predict")
    if predict is not None:
        if not isinstance(predict, int) or isinstance(predict, bool) or predict < -2:
            raise OllamaError(f"options.num_predict must be an integer >= -2, got {predict!r}", "options.num_predict")
        if predict > 0:
            out["max_tokens"] = predict
        elif predict == 0:
            raise OllamaError("options.num_predict 0 asks for no answer", "options.num_predict")
    if predict is None or predict < 0:
        out["max_tokens"] = 1 << 30  # -1 (Ollama's default): until the model stops or the context is full
    if body.get("format") == "json":
        out["response_format"] = {"type": "json_object"}  # JSON mode (engine.constrained)
    elif isinstance(body.get("format"), dict):  # structured outputs: the answer follows the schema
        out["response_format"] = {"type": "json_schema", "json_schema": {"schema": body["format"]}}
    return out


def check_unsupported(body: dict, chat: bool) -> None:
    fmt = body.get("format")
    if fmt not in (None, "", "json") and not isinstance(fmt, dict):
        raise OllamaError("'format' must be \"json\" or a JSON schema object", "format")
    for name in ("suffix", "template", "images", "context") if not chat else ():
        if body.get(name) not in (None, "", []):
            raise OllamaError(f"'{name}' is not supported", name)


def chat_messages(value) -> list[dict]:
    """Ollama's messages in the OpenAI form engine.server.parse_messages checks: a tool call's arguments
    stay objects (the chat template reads them so), a tool result's `tool_name` becomes its `name`."""
    if not isinstance(value, list):
        raise OllamaError("'messages' must be an array", "messages")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict):
            raise OllamaError(f"messages[{i}] must be an object", f"messages[{i}]")
        if m.get("images"):
            raise OllamaError("images are not supported: this model reads text", f"messages[{i}].images")
        m = dict(m)
        if m.get("role") == "tool" and isinstance(m.get("tool_name"), str) and "name" not in m:
            m["name"] = m.pop("tool_name")
        if m.get("content") is None:
            m["content"] = ""
        m.pop("thinking", None)  # a reasoning model's earlier thoughts are not sent back to it
        out.append(m)
    return out


def generate_messages(body: dict) -> list[dict]:
    """/api/generate's prompt (and system prompt) as a chat for the model's template. No prompt: ""
    (Ollama's request to load a model)."""
    prompt, system = body.get("prompt", ""), body.get("system")
    prompt = "" if prompt is None else prompt
    if not isinstance(prompt, str):
        raise OllamaError("'prompt' must be a string", "prompt")
    if system is not None and not isinstance(system, str):
        raise OllamaError("'system' must be a string", "system")
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]


def wants_thinking(body: dict) -> bool | None:
    """`think`: True, False, or None when the request leaves it to the model ("high"/"medium"/"low", as
    gpt-oss takes them, count as True)."""
    think = body.get("think")
    if think is None:
        return None
    return bool(think) and think not in ("false", "none")


def template_kwargs(body: dict) -> dict | None:
    """`think` (Ollama's switch for reasoning models) as the chat template's enable_thinking (Qwen3's)."""
    think = wants_thinking(body)
    return None if think is None else {"enable_thinking": think}


class ThinkingSplit:
    """With `think` on, Ollama answers a reasoning model's thought in `thinking` and the answer proper in
    `content`: this splits the streamed text so. A thought is what comes between a leading <think> and its
    </think>; text that does not begin with <think> is all answer. A partial tag at a piece's end is held
    back until the next piece says what it is."""

    def __init__(self):
        self.buf, self.mode = "", "start"  # start, thinking, between (whitespace after </think>), answer

    def feed(self, piece: str) -> tuple[str, str]:
        """(thought, answer) that can be sent now."""
        self.buf += piece
        thought = answer = ""
        while True:
            if self.mode == "start":
                lead = self.buf.lstrip()
                if lead.startswith(THINK_OPEN):
                    self.buf, self.mode = lead[len(THINK_OPEN):], "thinking"
                elif not lead or THINK_OPEN.startswith(lead):
                    return thought, answer  # it may still become <think>
                else:
                    self.mode = "answer"
            elif self.mode == "thinking":
                end = self.buf.find(THINK_CLOSE)
                if end >= 0:
                    thought += self.buf[:end]
                    self.buf, self.mode = self.buf[end + len(THINK_CLOSE):], "between"
                    continue
                keep = next((k for k in range(min(len(THINK_CLOSE) - 1, len(self.buf)), 0, -1)
                             if THINK_CLOSE.startswith(self.buf[-k:])), 0)
                thought += self.buf[:len(self.buf) - keep]
                self.buf = self.buf[len(self.buf) - keep:]
                return thought, answer
            elif self.mode == "between":
                self.buf = self.buf.lstrip()
                if not self.buf:
                    return thought, answer
                self.mode = "answer"
            else:
                answer, self.buf = answer + self.buf, ""
                return thought, answer

    def finish(self) -> tuple[str, str]:
        rest, self.buf = self.buf, ""
        return (rest, "") if self.mode == "thinking" else ("", "" if self.mode == "between" else rest)


def split_thinking(text: str) -> tuple[str, str]:
    """(thought, answer) of a whole answer (ThinkingSplit's split)."""
    split = ThinkingSplit()
    thought, answer = split.feed(text)
    more_thought, more_answer = split.finish()
    return thought + more_thought, answer + more_answer


def tool_calls(calls: list[dict]) -> list[dict]:
    """OpenAI-form calls (engine.tool_calls: their arguments a JSON object's text) in Ollama's: arguments
    as the object."""
    return [{"function": {"name": c["function"]["name"], "arguments": json.loads(c["function"]["arguments"])}}
            for c in calls]


def done_reason_of_load(body: dict) -> str:
    """A request with nothing to answer loads the model, or with keep_alive 0 unloads it (Ollama's words;
    the model here stays loaded either way)."""
    return "unload" if body.get("keep_alive") in (0, "0", "0s", "0m") else "load"


def final_fields(result, done_reason: str) -> dict:
    """The last object's statistics, in nanoseconds as Ollama gives them (and SubSpec's own)."""
    ns = 1_000_000_000
    return {"done": True, "done_reason": done_reason, "total_duration": int(result.total_s * ns),
            # (as Ollama counts it: the prompt's tokens evaluated, not those its cache held)
            "load_duration": 0, "prompt_eval_count": result.prompt_tokens - result.cached_tokens,
            "prompt_eval_duration": int(result.ttft_s * ns), "eval_count": result.new_tokens,
            "eval_duration": int(max(result.total_s - result.ttft_s, 0.0) * ns),
            "subspec": {"method": result.method, "tau": round(result.tau, 3),
                        "tokens_per_s": round(result.tokens_per_s, 2)}}


def model_details(config, dtype: str) -> dict:
    count = config.parameter_count
    size = f"{count / 1e9:.1f}B" if count >= 1e9 else f"{count / 1e6:.0f}M"
    return {"parent_model": "", "format": "safetensors", "family": config.architecture,
            "families": [config.architecture], "parameter_size": size, "quantization_level": dtype.upper()}


def model_info(config, context: int) -> dict:
    arch = config.architecture
    return {"general.architecture": arch, "general.parameter_count": config.parameter_count,
            f"{arch}.context_length": context, f"{arch}.embedding_length": config.hidden_size,
            f"{arch}.block_count": config.num_layers, f"{arch}.attention.head_count": config.num_heads,
            f"{arch}.attention.head_count_kv": config.num_kv_heads}


def capabilities(tools: bool, thinking: bool) -> list[str]:
    """What Ollama's /api/show lists: "tools" where the chat template takes them, "thinking" where it has
    Qwen3's switch."""
    return ["completion"] + (["tools"] if tools else []) + (["thinking"] if thinking else [])
