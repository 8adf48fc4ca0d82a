"""Tool calling for the OpenAI-compatible API. The model's chat template lists the tools, and the model
answers a call in the format its template teaches, which the server returns as OpenAI `tool_calls`
(finish_reason "tool_calls") instead of text. Three formats, told apart by the template (call_format):

- Hermes (Qwen2.5, Qwen3, Hermes): calls in tags, anywhere after the text,
      <tool_call>
      {"name": "get_weather", "arguments": {"city": "Paris"}}
      </tool_call>
- Llama 3.1/3.2/3.3's JSON: the whole answer is the call, {"name": ..., "parameters": {...}} (after a
  <|python_tag|> special token, which decoding drops); several are separated by ";".
- Mistral's: the whole answer is [TOOL_CALLS] (a special token, dropped) and a JSON list of
  {"name": ..., "arguments": {...}}.

In the two whole-answer formats an answer is a call only if all of it parses so and every name is one of
the request's tools: an answer that merely is JSON stays text. The decoding itself is unchanged (SubSpec
included: a call is text the target chose). Standard library only.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass

OPEN, CLOSE = "<tool_call>", "</tool_call>"
# To its closing tag, the next opening one (a call left unclosed must not swallow the next), or the end.
CALL = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|(?=<tool_call>)|$)", re.DOTALL)
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


class ToolError(ValueError):
    """A request's tools or tool messages are malformed: `param` names the field."""

    def __init__(self, message: str, param: str):
        super().__init__(message)
        self.param = param


def parse_tools(body: dict) -> list[dict] | None:
    """The request's tools as the chat template takes them, or None (none given, or tool_choice "none").
    tool_choice "required" or a named function is checked here and forced by forced_call."""
    tools, choice = body.get("tools"), body.get("tool_choice")
    if tools is None:
        if choice not in (None, "none", "auto"):
            raise ToolError("tool_choice needs tools", "tool_choice")
        return None
    if not isinstance(tools, list):
        raise ToolError("'tools' must be an array", "tools")
    for i, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not (isinstance(tool, dict) and tool.get("type") == "function" and isinstance(function, dict)
                and isinstance(function.get("name"), str) and function["name"]):
            raise ToolError(f"tools[{i}] must be {{\"type\": \"function\", \"function\": {{\"name\": ...}}}}",
                            f"tools[{i}]")
        if not isinstance(function.get("parameters", {}), dict):
            raise ToolError(f"tools[{i}].function.parameters must be a JSON schema object", f"tools[{i}]")
    if choice in (None, "auto", "required") or _named(choice) is not None:
        if not tools and choice not in (None, "auto"):
            raise ToolError("tool_choice needs tools", "tool_choice")
        return tools or None
    if choice == "none":
        return None
    raise ToolError("tool_choice must be \"auto\", \"none\", \"required\" or "
                    "{\"type\": \"function\", \"function\": {\"name\": ...}}", "tool_choice")


def _named(choice) -> str | None:
    """The function a tool_choice names ({"type": "function", "function": {"name": ...}}), or None."""
    if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("function"), dict):
        name = choice["function"].get("name")
        return name if isinstance(name, str) and name else None
    return None


def named_choice(body: dict) -> str | None:
    """The function a request's tool_choice names, or None ("auto", "none", "required")."""
    return _named(body.get("tool_choice"))


def forced_call(body: dict, tools: list[dict] | None, template: str | None) -> str:
    """What the answer must begin with for tool_choice "required" or a named function: the opening of a
    call in the template's format (call_format), written into the prompt after the assistant's turn begins,
    so the model goes on with a call (the name, or the arguments of the named one) instead of choosing
    whether to make one. Constrained decoding would also force the arguments' shape; this forces only that
    a call is made, which is what a client branching on tool_calls needs. "" for "auto" and "none".

    It ends where these templates write a call's name or arguments (`{"name": "...", "arguments": ` then
    `tool_call.arguments | tojson`) before the space, so that the model's next token is one it would have
    written there itself. A template that teaches none of the formats cannot be forced."""
    choice = body.get("tool_choice")
    if not tools or choice in (None, "auto", "none"):
        return ""
    fmt = call_format(template)
    if fmt == UNKNOWN or (fmt == HERMES and OPEN not in (template or "")):
        raise ToolError("this model's chat template teaches no tool-call format this server knows (Hermes "
                        "<tool_call>, Llama 3's JSON, Mistral's [TOOL_CALLS]), so a call cannot be forced: use "
                        "tool_choice \"auto\"", "tool_choice")
    opening = {HERMES: OPEN + "\n{", LLAMA3_JSON: "{",
               MISTRAL: "[TOOL_CALLS] [{" if "[TOOL_CALLS] [" in (template or "") else "[TOOL_CALLS][{"}[fmt]
    name = _named(choice)
    if name is None:
        return opening + '"name":'
    if name not in {t["function"]["name"] for t in tools}:
        raise ToolError(f"tool_choice names {name!r}, which is not among the tools", "tool_choice")
    arguments = "parameters" if fmt == LLAMA3_JSON else "arguments"
    return opening + '"name": ' + json.dumps(name, ensure_ascii=False) + f', "{arguments}":'


def template_message(m: dict, i: int) -> dict:
    """An assistant message's tool_calls and a tool message's id in the form chat templates read: arguments
    as an object (OpenAI sends a JSON string; templates write `arguments | tojson`)."""
    out = {}
    calls = m.get("tool_calls")
    if calls is not None and calls != []:  # (clients send [] for "no calls": templates read any list as calls)
        if not isinstance(calls, list):
            raise ToolError(f"messages[{i}].tool_calls must be an array", f"messages[{i}].tool_calls")
        converted = []
        for call in calls:
            function = call.get("function") if isinstance(call, dict) else None
            if not isinstance(function, dict) or not isinstance(function.get("name"), str):
                raise ToolError(f"messages[{i}].tool_calls: each needs a function with a name",
                                f"messages[{i}].tool_calls")
            arguments = function.get("arguments", {})
            if isinstance(arguments, str):
                try:
                    arguments = json.loads(arguments) if arguments.strip() else {}
                except (ValueError, RecursionError):
                    pass  # kept as the model wrote it
            converted.append({"id": call.get("id"), "type": "function",
                              "function": {"name": function["name"], "arguments": arguments}})
        out["tool_calls"] = converted
    for key in ("tool_call_id", "name"):
        if isinstance(m.get(key), str):
            out[key] = m[key]
    return out


def split_tool_calls(text: str) -> tuple[str | None, list[dict]]:
    """(the text outside the calls, or None when there is none; the calls in OpenAI's form). A block whose
    JSON does not parse, or that names no function, stays text: the client sees what the model wrote."""
    calls, kept, last = [], [], _after_thinking(text)
    if last is None:
        return text, []  # still thinking: a call written in a thought is not made
    kept.append(text[:last])
    for match in CALL.finditer(text, last):
        call = _call(match.group(1))
        if call is None:
            continue
        kept.append(text[last:match.start()])
        last = match.end()
        calls.append(call)
    if not calls:
        return text, []
    content = ("".join(kept) + text[last:]).strip()
    return content or None, calls


def _after_thinking(text: str) -> int | None:
    """Where a reasoning model's answer proper starts (calls written while it thinks are not calls): after
    its </think>; 0 without thinking; None while the thought is still open."""
    close = text.rfind(THINK_CLOSE)
    if close >= 0:
        return close + len(THINK_CLOSE)
    return None if text.lstrip().startswith(THINK_OPEN) else 0


def _call(raw: str) -> dict | None:
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):  # (a model's [[[[... nests past Python's recursion limit)
        return None
    return _call_from(value)


def _call_from(value) -> dict | None:
    """A parsed call ({"name", "arguments" or "parameters"}) in OpenAI's form, or None."""
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        return None
    arguments = value.get("arguments", value.get("parameters"))
    if arguments is None:
        arguments = {}  # (a client calls f(**json.loads(arguments)))
    if isinstance(arguments, str):  # some models write the arguments as a JSON string
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except (ValueError, RecursionError):
            return None
    if not isinstance(arguments, dict):  # clients call f(**arguments): anything else stays text
        return None
    try:  # NaN and Infinity are not JSON: a JavaScript client could not read them
        text = json.dumps(arguments, ensure_ascii=False, allow_nan=False)
    except (ValueError, RecursionError):
        return None
    return {"id": "call_" + uuid.uuid4().hex[:24], "type": "function",
            "function": {"name": value["name"], "arguments": text}}


class ToolCallStream:
    """Streams an answer's text while holding back what may be a tool call: from the first <tool_call> on
    (or an end that could be its beginning), until the answer ends and it can be parsed."""

    def __init__(self):
        self.text = ""
        self.sent = 0

    def feed(self, piece: str) -> str:
        """The text that can go to the client now."""
        self.text += piece
        start = self.text.find(OPEN, self.sent)
        if start < 0:
            start = len(self.text)
            for k in range(min(len(OPEN) - 1, len(self.text) - self.sent), 0, -1):  # "<tool_" at the end
                if OPEN.startswith(self.text[-k:]):
                    start = len(self.text) - k
                    break
        out, self.sent = self.text[self.sent:start], max(self.sent, start)
        return out

    def finish(self) -> tuple[str, list[dict]]:
        """(held text to send as content, the calls), once the answer is complete."""
        rest = self.text[self.sent:]
        content, calls = split_tool_calls(rest)
        if not calls:
            return rest, []
        return content or "", calls


HERMES, LLAMA3_JSON, MISTRAL, UNKNOWN = "hermes", "llama3_json", "mistral", "unknown"


def call_format(template: str | None) -> str:
    """The call format a chat template teaches (Hermes unless it is one of the whole-answer formats, or one
    this server cannot read)."""
    template = template or ""
    if OPEN in template:
        return HERMES
    if "[ARGS]" in template:
        # Newer Mistral templates write [TOOL_CALLS]name[ARGS]{...}: both markers are special tokens, which
        # decoding drops, so the call cannot be told from text. Left as text, never forced.
        return UNKNOWN
    if "[TOOL_CALLS]" in template:
        return MISTRAL
    if "<|python_tag|>" in template or '"parameters": dictionary of argument name' in template:
        return LLAMA3_JSON
    return HERMES


# What a whole-answer call begins with, spaces aside (the markers before it are special tokens, dropped).
CALL_OPENING = {LLAMA3_JSON: '{"name"', MISTRAL: '[{"name"'}


def _whole_answer_calls(text: str, fmt: str, names: frozenset, leading: bool = False) -> tuple[list[dict], str]:
    """(the calls an answer in Llama 3's or Mistral's format makes, the text after them): the whole answer
    must be calls to the request's tools, or with `leading` (a forced call) its beginning. ([], text) when
    it is not."""
    body = text.strip().removeprefix("<|python_tag|>").removeprefix("[TOOL_CALLS]").strip()
    decoder, values, i = json.JSONDecoder(), [], 0
    while i < len(body):
        try:
            value, end = decoder.raw_decode(body, i)
        except (ValueError, RecursionError):
            if leading and values:
                break  # what follows the forced call is text
            return [], text
        values.extend(value if isinstance(value, list) and fmt == MISTRAL else [value])
        i = end
        while i < len(body) and body[i] in " \t\r\n;":
            i += 1
    calls = [_call_from(v) for v in values]
    if not calls or any(c is None or c["function"]["name"] not in names for c in calls):
        return [], text
    if fmt == MISTRAL:
        for c in calls:  # Mistral's templates take only 9-character alphanumeric ids back
            c["id"] = uuid.uuid4().hex[:9]
    if fmt == LLAMA3_JSON:
        calls = calls[:1]  # Llama 3's templates take one call per message back ("only supports single")
    return calls, body[i:].strip()


@dataclass(frozen=True)
class ToolParsing:
    """How a request's answer is read for calls: the template's format, the request's tool names, and
    whether the prompt forced a call (then a whole-answer call may be followed by text)."""

    fmt: str
    names: frozenset
    forced: bool = False

    @classmethod
    def of(cls, tools: list[dict], template: str | None, forced: bool = False) -> "ToolParsing":
        return cls(call_format(template), frozenset(t["function"]["name"] for t in tools), forced)

    def split(self, text: str) -> tuple[str | None, list[dict]]:
        """split_tool_calls in this format: (the text outside the calls or None, the calls)."""
        if self.fmt == HERMES:
            return split_tool_calls(text)
        start = _after_thinking(text)
        if start is None or self.fmt == UNKNOWN:
            return text, []
        calls, after = _whole_answer_calls(text[start:], self.fmt, self.names, self.forced)
        if not calls:
            return text, []
        return "\n\n".join(p for p in (text[:start].strip(), after) if p) or None, calls

    def stream(self) -> "ToolCallStream | WholeAnswerStream":
        return ToolCallStream() if self.fmt == HERMES else WholeAnswerStream(self)


class WholeAnswerStream:
    """ToolCallStream for the whole-answer formats: an answer that begins (after any thought) as a call
    does ({"name" or [{"name", spaces aside) is held back until it ends and can be parsed; any other streams
    as it comes, once its first characters rule a call out."""

    def __init__(self, parsing: ToolParsing):
        self.parsing, self.text, self.sent, self.holding = parsing, "", 0, None

    def feed(self, piece: str) -> str:
        self.text += piece
        if self.holding is None:
            start = _after_thinking(self.text)
            if start is None:
                return self._send_to(len(self.text))  # a thought streams as text
            opening = CALL_OPENING.get(self.parsing.fmt)
            body = self.text[start:].lstrip().removeprefix("<|python_tag|>").removeprefix("[TOOL_CALLS]")
            lead = "".join(body.split())[:len(opening or "")]
            if opening is None or not opening.startswith(lead):
                self.holding = False  # not a call: everything goes
            elif len(lead) == len(opening):
                self.holding = True
            else:
                return self._send_to(start)  # undecided: hold what may open a call
        return "" if self.holding else self._send_to(len(self.text))

    def _send_to(self, end: int) -> str:
        out = self.text[self.sent:end] if end > self.sent else ""
        self.sent = max(self.sent, end)
        return out

    def finish(self) -> tuple[str, list[dict]]:
        rest = self.text[self.sent:]
        if self.parsing.fmt == UNKNOWN:
            return rest, []
        calls, after = _whole_answer_calls(rest, self.parsing.fmt, self.parsing.names, self.parsing.forced)
        return (after, calls) if calls else (rest, [])


def mistral_ids(messages: list[dict]) -> list[dict]:
    """Messages whose tool-call ids Mistral's templates take: 9 alphanumeric characters (they raise
    otherwise). An id is mapped the same way wherever it appears (a call's id and its result's
    tool_call_id); a missing one (Ollama's clients send none) is made up, and a result without one answers
    the oldest call not yet answered."""
    import hashlib

    def norm(value) -> str | None:
        if not isinstance(value, str) or not value:
            return None
        kept = "".join(ch for ch in value if ch.isascii() and ch.isalnum())
        return kept[-9:] if len(kept) >= 9 else hashlib.sha1(value.encode()).hexdigest()[:9]

    out, waiting, made = [], [], 0
    for m in messages:
        m = dict(m)
        if m.get("tool_calls"):
            calls = []
            for call in m["tool_calls"]:
                cid = norm(call.get("id"))
                if cid is None:
                    made += 1
                    cid = f"call{made:05d}"
                waiting.append(cid)
                calls.append({**call, "id": cid})
            m["tool_calls"] = calls
        elif m.get("role") == "tool":
            tid = norm(m.get("tool_call_id"))
            if tid is None and waiting:
                tid = waiting[0]
            if tid in waiting:
                waiting.remove(tid)
            m["tool_call_id"] = tid or "call00000"
        out.append(m)
    return out
