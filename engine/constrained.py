"""JSON mode: answers constrained to one JSON object (OpenAI's response_format {"type": "json_object"},
Ollama's format "json"), losslessly under SubSpec.

The constraint is applied where a token becomes the answer's, never to the draft: at each position the
chosen token is the one the unconstrained selection (engine.sampling.select_tokens: greedy argmax, or the
Gumbel-max draw) picks among the tokens that keep the text a prefix of a JSON object. So the target decides
every token as it would unconstrained whenever its own choice is allowed, and the next best allowed one
otherwise; plain decoding and the verification walk of a tree (engine.speculative) call the same function
at the same positions with the same scores, so SubSpec's answer is plain decoding's, token for token, as
without a constraint. The draft is left free: it proposes what the model would write, and a proposal the
constraint rejects only ends that pass's accepted path. (Sampling: a Gumbel-max draw restricted to the
allowed tokens is an exact draw from the warped distribution renormalized over them; top-k, top-p and min-p
are cut before the constraint, and a position where they cut every allowed token takes the likeliest.)

Checking is lazy: the unconstrained choice is checked first (usually allowed), then the next candidates in
score order, so a position costs a few byte-level steps of the recognizer below rather than a pass over the
vocabulary. The recognizer reads bytes: JSON's structure is ASCII, and any byte of 0x80 and above is taken as
part of a string (multi-byte characters often span tokens).

Once the object closes, the token that closed it may end in whitespace, and then only an end-of-answer token
is allowed: a model may not pad a finished object with blank lines until the length limit.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field, replace

import torch

WHITESPACE = b" \t\n\r"
DIGITS = b"0123456789"
ESCAPES = b'"\\/bfnrtu'
HEX = b"0123456789abcdefABCDEF"
CANDIDATES_PER_ROUND = 64  # candidates ranked at a time, in score order, before the next round
# Whitespace bytes in a row between tokens at most (llama.cpp's JSON grammar allows a new line and 20 more): room
# for pretty-printing, none for a small model stuck writing blank lines until the context is full.
MAX_WHITESPACE = 32
KINDS = frozenset({"object", "array", "string", "number", "integer", "boolean", "null"})
# Schema keywords that only describe (nothing to enforce), and those that shape what is generated.
ANNOTATIONS = {"title", "description", "default", "examples", "$schema", "$id", "$comment", "format", "readOnly",
               "writeOnly", "deprecated", "$defs", "definitions"}
SHAPING = {"type", "properties", "required", "additionalProperties", "items", "minItems", "maxItems", "enum",
           "const", "$ref", "anyOf", "oneOf"}


class SchemaError(ValueError):
    """A JSON schema this engine cannot enforce (the API answers 400)."""


@dataclass(frozen=True)
class Node:
    """One compiled schema: the value kinds it allows; an object's properties (by their key's JSON text,
    quotes left out), required keys and the schema of any other key (None: no other key); an array's item
    schema and length bounds; or an enum's allowed values as JSON text."""

    kinds: frozenset = KINDS
    props: tuple = ()  # ((key bytes, node id), ...)
    required: frozenset = frozenset()
    extra: int | None = 0  # node id of other keys' values (0: ANY); None: only the properties
    items: int = 0
    min_items: int = 0
    max_items: int | None = None
    enum: frozenset | None = None  # the allowed values' canonical JSON bytes

    def prop(self, key: bytes) -> int | None:
        return next((n for k, n in self.props if k == key), None)


class Schema:
    """A schema compiled to Nodes (node 0 is any JSON value). OBJECT is JSON mode's: any object."""

    def __init__(self, schema: dict | None = None):
        self.nodes: list[Node] = [Node()]
        self._refs: dict[str, int] = {}
        self._links: list[tuple[int, tuple, str]] = []  # ($ref or anyOf node, what it is made of, where)
        if schema is None:  # JSON mode: one object, any keys and values
            self.root = self._add(Node(kinds=frozenset({"object"})))
            return
        if not isinstance(schema, dict):
            raise SchemaError("a JSON schema must be an object")
        self._doc = schema
        try:
            self.root = self._compile(schema, "")
            self._resolve()
        except (TypeError, KeyError, AttributeError, UnicodeError) as exc:  # a malformed schema's shapes
            raise SchemaError(f"malformed schema ({type(exc).__name__}: {exc})") from None
        if not self.nodes[self.root].kinds <= {"object", "array"} or self.nodes[self.root].enum is not None:
            raise SchemaError("the schema's root must be an object or an array (\"type\": \"object\")")
        self._check_finite()

    def _add(self, node: Node) -> int:
        self.nodes.append(node)
        return len(self.nodes) - 1

    def _resolve(self) -> None:
        """$refs and anyOfs become the nodes they stand for. They are linked while compiling (a recursive
        schema refers to nodes not finished yet) and settled here, by repeating until nothing changes."""
        for _ in range(len(self._links) + 2):
            changed = False
            for node_id, parts, where in self._links:
                if parts[0] == "ref":
                    node = self.nodes[parts[1]]
                else:
                    node = self._merge([self.nodes[b] for b in parts[1]], where, final=False)
                if node != self.nodes[node_id]:
                    self.nodes[node_id], changed = node, True
            if not changed:
                break
        refs = {node_id: parts[1] for node_id, parts, _w in self._links if parts[0] == "ref"}
        for node_id, parts, where in self._links:
            seen, at = {node_id}, parts[1] if parts[0] == "ref" else None
            while at in refs:  # a chain of $refs that never reaches a schema of its own
                if at in seen:
                    raise SchemaError(f"{where}: this $ref only leads to $refs, back to itself")
                seen.add(at)
                at = refs[at]
            if parts[0] == "any":
                self._merge([self.nodes[b] for b in parts[1]], where, final=True)

    def _check_finite(self) -> None:
        """Every schema the answer may enter must have a value that ends: one whose required property or
        minimum item is itself (directly or not) could only be written forever, and generation would never
        finish it."""
        finite: set[int] = set()
        grew = True
        while grew:
            grew = False
            for i, n in enumerate(self.nodes):
                if i in finite:
                    continue
                ok = (n.enum is not None or bool(n.kinds - {"object", "array"})
                      or ("object" in n.kinds and all(n.prop(k) in finite for k in n.required))
                      or ("array" in n.kinds and (n.min_items == 0 or n.items in finite)))
                if ok:
                    finite.add(i)
                    grew = True
        seen, todo = set(), [self.root]
        while todo:
            i = todo.pop()
            if i in seen:
                continue
            seen.add(i)
            if i not in finite:
                raise SchemaError("a value this schema describes can never be finished (a required property or "
                                  "a minimum of items leads back to itself): make it optional")
            n = self.nodes[i]
            todo += [child for _k, child in n.props] + [n.items] + ([n.extra] if n.extra is not None else [])

    def _compile(self, schema, where: str) -> int:
        if schema is True or schema == {}:
            return 0
        if not isinstance(schema, dict):
            raise SchemaError(f"{where or 'the schema'} must be a schema object")
        unknown = set(schema) - ANNOTATIONS - SHAPING
        if unknown:
            raise SchemaError(f"{where or 'the schema'} uses {', '.join(sorted(unknown))}, which this engine does not "
                              f"enforce (supported: type, properties, required, additionalProperties, items, "
                              f"minItems, maxItems, enum, const, $ref, anyOf)")
        shaping = set(schema) & SHAPING
        for alone in ("$ref", "anyOf", "oneOf"):  # beside them, other keywords would go unenforced
            if alone in schema and len(shaping) > 1:
                raise SchemaError(f"{where or 'the schema'}: {alone} with {', '.join(sorted(shaping - {alone}))} "
                                  f"beside it is not supported")
        if "$ref" in schema:
            return self._ref(schema["$ref"], where)
        if "anyOf" in schema or "oneOf" in schema:
            return self._any_of(schema.get("anyOf", schema.get("oneOf")), where)
        if "enum" in schema or "const" in schema:
            return self._enum(schema, shaping, where)
        kind = schema.get("type")
        kinds = KINDS if kind is None else frozenset([kind] if isinstance(kind, str) else kind)
        if not kinds or not all(isinstance(k, str) for k in kinds) or not kinds <= KINDS:
            raise SchemaError(f"{where or 'the schema'}: unknown type {kind!r}")
        node_id = self._add(Node())  # (reserved first: a $ref below may come back to it)
        props, required, extra = (), frozenset(), 0
        if "object" in kinds:
            properties = schema.get("properties", {})
            if not isinstance(properties, dict):
                raise SchemaError(f"{where or 'the schema'}: properties must be an object")
            props = tuple((json.dumps(k, ensure_ascii=False)[1:-1].encode(), self._compile(v, f"{where}.{k}"))
                          for k, v in properties.items())
            req = schema.get("required", [])
            if not isinstance(req, list) or any(not isinstance(k, str) or k not in properties for k in req):
                raise SchemaError(f"{where or 'the schema'}: required must list properties it declares")
            required = frozenset(json.dumps(k, ensure_ascii=False)[1:-1].encode() for k in req)
            more = schema.get("additionalProperties", not properties)
            # Absent: a schema that lists properties gets those (what a client asking for them means, and
            # what OpenAI's strict mode requires); one that lists none, any keys.
            extra = None if more is False else 0 if more is True else self._compile(more, f"{where}.*")
        items, lo, hi = 0, 0, None
        if "array" in kinds:
            items = self._compile(schema.get("items", {}), f"{where}[]")
            lo, hi = schema.get("minItems", 0), schema.get("maxItems")
            lo, hi = (int(v) if isinstance(v, float) and v == int(v) else v for v in (lo, hi))
            if (not isinstance(lo, int) or isinstance(lo, bool) or lo < 0
                    or (hi is not None and (not isinstance(hi, int) or isinstance(hi, bool) or hi < max(lo, 1)))):
                raise SchemaError(f"{where or 'the schema'}: minItems/maxItems must be whole numbers, max >= min")
        self.nodes[node_id] = Node(kinds, props, required, extra, items, lo, hi)
        return node_id

    def _enum(self, schema: dict, shaping: set, where: str) -> int:
        import math

        if shaping - {"enum", "const", "type"} or {"enum", "const"} <= shaping:
            raise SchemaError(f"{where or 'the schema'}: enum/const beside {', '.join(sorted(shaping))} is not "
                              f"supported")
        values = schema["enum"] if "enum" in schema else [schema["const"]]
        if (not isinstance(values, list) or not values or any(isinstance(v, (dict, list)) for v in values)
                or any(isinstance(v, float) and not math.isfinite(v) for v in values)):
            raise SchemaError(f"{where or 'the schema'}: enum and const take strings, numbers, booleans or null")
        if "type" in schema:  # every value must be of the type(s) given
            kind = schema["type"]
            kinds = {kind} if isinstance(kind, str) else set(kind) if isinstance(kind, list) else set()
            of = {str: "string", bool: "boolean", type(None): "null", int: "integer", float: "number"}
            if any(of[type(v)] not in kinds and not (of[type(v)] == "integer" and "number" in kinds)
                   for v in values):
                raise SchemaError(f"{where or 'the schema'}: an enum value is not of the type given")
        return self._add(Node(kinds=frozenset({"string", "number", "integer", "boolean", "null"}),
                              enum=frozenset(json.dumps(v, ensure_ascii=False).encode() for v in values)))

    def _ref(self, ref, where: str) -> int:
        if not isinstance(ref, str) or not ref.startswith("#/"):
            raise SchemaError(f"{where or 'the schema'}: only local $refs (#/$defs/...) are supported")
        if ref in self._refs:
            return self._refs[ref]
        target = self._doc
        for part in ref[2:].split("/"):
            if not isinstance(target, dict) or part not in target:
                raise SchemaError(f"{where or 'the schema'}: $ref {ref} points nowhere")
            target = target[part]
        node_id = self._add(Node())
        self._refs[ref] = node_id
        self._links.append((node_id, ("ref", self._compile(target, ref)), ref))
        return node_id

    def _any_of(self, branches, where: str) -> int:
        """anyOf (and oneOf, read the same: its branches may not overlap in kind anyway) of branches that
        differ in kind: Optional[int] is [{"type": "integer"}, {"type": "null"}]. Two branches of one kind
        (two object shapes) are refused."""
        if not isinstance(branches, list) or not branches:
            raise SchemaError(f"{where or 'the schema'}: anyOf must be a non-empty list")
        ids = tuple(self._compile(b, where) for b in branches)
        node_id = self._add(Node())
        self._links.append((node_id, ("any", ids), where or "the schema"))
        return node_id

    def _merge(self, nodes: list, where: str, final: bool) -> Node:
        """The node of an anyOf of `nodes`; with `final`, a clash is refused (before, a branch may still be a
        $ref not settled, read as any value)."""
        enums = [n for n in nodes if n.enum is not None]
        if enums:  # Optional[Literal[...]] / Optional[SomeEnum]: the values, or null
            others = [n for n in nodes if n.enum is None]
            if final and (len(enums) > 1 or any(n.kinds != {"null"} for n in others)):
                raise SchemaError(f"{where}: anyOf mixing an enum with other types is not supported (an enum or "
                                  f"null is)")
            return Node(kinds=enums[0].kinds, enum=enums[0].enum | ({b"null"} if others else set()))
        kinds, obj, arr = frozenset(), None, None
        for n in nodes:
            clash = n.kinds & kinds & {"object", "array", "string", "boolean", "null"}
            if final and (clash or ({"number", "integer"} & n.kinds and {"number", "integer"} & kinds)):
                raise SchemaError(f"{where}: anyOf branches of the same type are not supported")
            kinds |= n.kinds
            obj = n if "object" in n.kinds and obj is None else obj
            arr = n if "array" in n.kinds and arr is None else arr
        obj, arr = obj or Node(), arr or Node()
        return Node(kinds, obj.props, obj.required, obj.extra, arr.items, arr.min_items, arr.max_items)


@dataclass(frozen=True)
class JsonState:
    """Where the text has got to: the open containers (objects ("o", node, keys seen) and arrays ("a", node,
    values begun)), what may come next (`mode`) and the schema node of the value being read (`node`), with
    `left` the rest of a literal (true, false, null) or the hex digits of a \\u escape, and `buf` the bytes
    so far of a key or of an enum's value."""

    schema: Schema = field(compare=False, repr=False)
    stack: tuple = ()
    mode: str = "start"  # start, value, value0, key, key0, colon, after, string, key_string, escape,
    # key_escape, hex, key_hex, literal, enum, minus, zero, int, dot, frac, exp, exp_sign, exp_int, done
    left: bytes | int = b""
    spaces: int = 0  # whitespace bytes in a row just before here (MAX_WHITESPACE)
    node: int = 0
    buf: bytes | None = None

    @property
    def done(self) -> bool:
        return self.mode == "done"

    def to(self, mode: str, **changes) -> "JsonState":
        return replace(self, mode=mode, spaces=0, **changes)


def start(schema: Schema) -> JsonState:
    return JsonState(schema, node=schema.root)


START = start(Schema())


def step(s: JsonState, c: int) -> JsonState | None:
    """The state after byte `c`, or None when `c` cannot come next."""
    mode, nodes = s.mode, s.schema.nodes
    if mode in ("string", "key_string"):
        buf = None if s.buf is None else s.buf + bytes([c])
        if c == 0x22:  # "
            return _end_key(s) if mode == "key_string" else _after_value(s)
        if c < 0x20 or (mode == "key_string" and not _key_may_be(s, buf)):
            return None
        return s.to("escape" if mode == "string" else "key_escape", buf=buf) if c == 0x5C else s.to(mode, buf=buf)
    if mode in ("escape", "key_escape"):
        if c not in ESCAPES:
            return None
        inner = "string" if mode == "escape" else "key_string"
        buf = None if s.buf is None else s.buf + bytes([c])
        if inner == "key_string" and not _key_may_be(s, buf):
            return None
        if c == ord("u"):
            return s.to("hex" if inner == "string" else "key_hex", left=4, buf=buf)
        return s.to(inner, buf=buf)
    if mode in ("hex", "key_hex"):
        buf = None if s.buf is None else s.buf + bytes([c])
        if c not in HEX or (mode == "key_hex" and not _key_may_be(s, buf)):
            return None
        inner = "string" if mode == "hex" else "key_string"
        return s.to(inner, buf=buf) if s.left == 1 else s.to(mode, left=s.left - 1, buf=buf)
    if mode == "literal":
        if c != s.left[0]:
            return None
        return s.to("literal", left=s.left[1:]) if len(s.left) > 1 else _after_value(s)
    if mode == "enum":
        buf = s.buf + bytes([c])
        if any(v.startswith(buf) for v in nodes[s.node].enum):
            return s.to("enum", buf=buf)
        return step(_after_value(s), c) if s.buf in nodes[s.node].enum else None
    if mode in ("minus", "zero", "int", "dot", "frac", "exp", "exp_sign", "exp_int"):
        number = _number(mode, c, "number" in nodes[s.node].kinds)
        if number is not None:
            return s.to(number)
        if mode in ("zero", "int", "frac", "exp_int"):  # a complete number: the byte goes on after it
            return step(_after_value(s), c)
        return None
    if c in WHITESPACE:
        if mode == "done" or s.spaces >= MAX_WHITESPACE:  # (done: see feed)
            return None
        return replace(s, spaces=s.spaces + 1)
    if mode in ("start", "value", "value0"):
        if c == ord("]") and mode == "value0":
            frame = s.stack[-1]
            return _close(s) if nodes[frame[1]].min_items == 0 else None
        if mode == "value0":  # the array's first value begins
            s = replace(s, stack=s.stack[:-1] + (("a", s.stack[-1][1], 1),))
        return _begin_value(s, c)
    if mode in ("key", "key0"):
        frame = s.stack[-1]
        node = nodes[frame[1]]
        if c == 0x22:
            if node.extra is None and len(frame[2]) == len(node.props):
                return None  # every property is there
            return s.to("key_string", buf=b"")  # its bytes: which schema its value has, and no key twice
        return _close(s) if c == ord("}") and mode == "key0" and not node.required else None
    if mode == "colon":
        if c != ord(":"):
            return None
        frame = s.stack[-1]
        node = nodes[frame[1]]
        key = frame[3]
        value = node.prop(key)
        return s.to("value", node=node.extra if value is None else value)
    if mode == "after":
        frame = s.stack[-1]
        node = nodes[frame[1]]
        if frame[0] == "o":
            if c == ord(","):
                more = node.extra is not None or len(frame[2]) < len(node.props)
                return s.to("key") if more else None
            return _close(s) if c == ord("}") and node.required <= frame[2] else None
        if c == ord(","):
            if node.max_items is not None and frame[2] >= node.max_items:
                return None
            return s.to("value", node=node.items, stack=s.stack[:-1] + (("a", frame[1], frame[2] + 1),))
        return _close(s) if c == ord("]") and frame[2] >= node.min_items else None
    return None


def _key_may_be(s: JsonState, buf: bytes | None) -> bool:
    """Whether a key's bytes so far can still become a key its object takes: with no other keys allowed,
    the beginning of a property not yet given."""
    frame = s.stack[-1]
    node = s.schema.nodes[frame[1]]
    if node.extra is not None:
        return True
    return any(k.startswith(buf) for k, _n in node.props if k not in frame[2])


def _end_key(s: JsonState) -> JsonState | None:
    frame = s.stack[-1]
    node = s.schema.nodes[frame[1]]
    key = s.buf  # (the closing quote is not in it)
    try:  # written as json.dumps writes it, so that no other spelling gets past its schema or the twice check
        canonical = json.dumps(json.loads(b'"' + key + b'"'), ensure_ascii=False)[1:-1].encode()
    except (ValueError, UnicodeError):
        return None
    if canonical != key or key in frame[2] or (node.extra is None and node.prop(key) is None):
        return None  # another spelling, a key twice, or one the object does not take
    return s.to("colon", stack=s.stack[:-1] + (("o", frame[1], frame[2] | {key}, key),), buf=None)


def _begin_value(s: JsonState, c: int) -> JsonState | None:
    node = s.schema.nodes[s.node]
    if node.enum is not None:
        buf = bytes([c])
        return s.to("enum", buf=buf) if any(v.startswith(buf) for v in node.enum) else None
    kinds = node.kinds
    if c == ord("{") and "object" in kinds:
        return s.to("key0", stack=s.stack + (("o", s.node, frozenset(), None),))
    if c == ord("[") and "array" in kinds:
        return s.to("value0", stack=s.stack + (("a", s.node, 0),), node=node.items)
    if c == 0x22 and "string" in kinds:
        return s.to("string", buf=None)
    if kinds & {"number", "integer"}:
        if c == ord("-"):
            return s.to("minus")
        if c == ord("0"):
            return s.to("zero")
        if c in DIGITS:
            return s.to("int")
    for word, kind in ((b"true", "boolean"), (b"false", "boolean"), (b"null", "null")):
        if c == word[0] and kind in kinds:
            return s.to("literal", left=word[1:])
    return None


def _number(mode: str, c: int, fractions: bool) -> str | None:
    """The number's next state after byte `c`, or None when `c` does not continue it (`fractions`: a
    "number", not only an "integer": a fraction and an exponent may follow)."""
    digit = c in DIGITS
    if mode == "minus":
        return ("zero" if c == ord("0") else "int") if digit else None
    if mode in ("zero", "int"):
        if digit and mode == "int":
            return "int"
        if not fractions:
            return None
        return "dot" if c == ord(".") else "exp" if c in b"eE" else None
    if mode in ("dot", "frac"):
        if digit:
            return "frac"
        return "exp" if c in b"eE" and mode == "frac" else None
    if mode == "exp":
        return "exp_int" if digit else "exp_sign" if c in b"+-" else None
    if mode in ("exp_sign", "exp_int"):
        return "exp_int" if digit else None
    return None


def _after_value(s: JsonState) -> JsonState:
    return s.to("after", buf=None, left=b"")


def _close(s: JsonState) -> JsonState:
    rest = s.stack[:-1]
    return s.to("after", stack=rest) if rest else s.to("done", stack=())


def feed(s: JsonState, data: bytes) -> JsonState | None:
    """The state after `data`, or None if the text stops being the beginning of a value the schema takes.
    Once the value is done, only whitespace may follow within the same data."""
    for i, c in enumerate(data):
        if s.mode == "done":
            return s if all(b in WHITESPACE for b in data[i:]) else None
        s = step(s, c)
        if s is None:
            return None
    return s


def schema_text(schema: dict | str) -> str:
    """A schema (an object, or JSON text as a user typed it) as the JSON text SamplingParams carries, once it
    has compiled: text that is not JSON, a schema nested past Python's recursion limit and one it cannot
    enforce are each a SchemaError that says why (the API's 400, the CLI's and the app's error)."""
    try:
        value = json.loads(schema) if isinstance(schema, str) else schema
        text = json.dumps(value, ensure_ascii=False)
        compiled(text)
    except RecursionError:
        raise SchemaError("the schema nests too deeply") from None
    except SchemaError:
        raise
    except ValueError as exc:  # (json's)
        raise SchemaError(f"not JSON: {exc}") from None
    return text


@functools.lru_cache(maxsize=16)
def compiled(schema_text: str | None) -> Schema:
    """A schema (its JSON text: what SamplingParams carries) compiled once; None: JSON mode's any object."""
    return Schema(None if schema_text is None else json.loads(schema_text))


class JsonConstraint:
    """One answer's JSON constraint: the recognizer's state over the answer so far, and each token's bytes."""

    def __init__(self, tokenizer, eos_ids, vocab_size: int, schema: Schema | None = None):
        self.pieces = token_bytes(tokenizer, vocab_size)
        self.eos = frozenset(eos_ids)
        self.state = START if schema is None else start(schema)

    def allows(self, state: JsonState, token: int) -> bool:
        if token in self.eos:
            return state.done
        if state.done:
            return False
        piece = self.pieces[token] if 0 <= token < len(self.pieces) else None
        after = feed(state, piece) if piece else None
        # Whitespace before the object only within the token that opens it: never a run of blank tokens.
        return after is not None and after.mode != "start"

    def after(self, state: JsonState, token: int) -> JsonState:
        return state if token in self.eos else feed(state, self.pieces[token])

    def choose(self, state: JsonState, token: int, scores) -> int:
        """`token` if allowed here, else the allowed token with the highest of `scores()` (a [V] float tensor:
        the selection's own scores at this position; tokens it scored -inf by their raw order after)."""
        if self.allows(state, token):
            return token
        ranked = scores().float()
        if state.done:  # only an end-of-answer token: the best of them, without ranking the vocabulary
            eos = sorted(self.eos)
            return eos[int(ranked[torch.tensor(eos, device=ranked.device)].argmax())]
        # Ties in the order argmax breaks them (the lower id first); ranked on the CPU, one copy.
        order = torch.argsort(ranked, descending=True, stable=True).cpu()
        for first in range(0, order.numel(), CANDIDATES_PER_ROUND):
            for t in order[first:first + CANDIDATES_PER_ROUND].tolist():
                if self.allows(state, t):
                    return t
        # No token of this vocabulary writes what must come next (the recognizer leaves no dead ends, but a
        # vocabulary may lack a byte): the answer ends here rather than fail.
        eos = sorted(self.eos)
        return eos[int(ranked[torch.tensor(eos, device=ranked.device)].argmax())] if eos else int(order[0])

    def advance(self, tokens) -> None:
        for t in tokens:
            self.state = self.after(self.state, t)


def token_bytes(tokenizer, vocab_size: int) -> tuple:
    """Each token id's bytes (None: a special or unused id), for byte-level BPE (GPT-2, Llama 3, Qwen,
    SmolLM2) and SentencePiece (Llama 2, Mistral: "▁" a space, <0xNN> a byte) vocabularies. Kept on the
    tokenizer: made once per model (a 150k vocabulary takes a fraction of a second)."""
    cached = getattr(tokenizer, "_subspec_token_bytes", None)
    if cached is not None and len(cached) == vocab_size:
        return cached
    tokens = tokenizer.convert_ids_to_tokens(list(range(min(vocab_size, len(tokenizer)))))
    tokens = list(tokens) + [None] * (vocab_size - len(tokens))
    special = set(getattr(tokenizer, "all_special_ids", ()))
    added = getattr(tokenizer, "added_tokens_decoder", {})
    special |= {i for i, t in added.items() if getattr(t, "special", False)}
    byte_level = any(t and "\u0120" in t for t in tokens[:5000])  # "Ġ": a space in byte-level BPE
    decoder = {v: k for k, v in _bytes_to_unicode().items()}
    out = []
    for i, tok in enumerate(tokens):
        if tok is None or i in special:
            out.append(None)
        elif i in added:  # an added token is its text as written, in any vocabulary
            out.append(tok.encode("utf-8"))
        elif byte_level:
            try:
                out.append(bytes(decoder[ch] for ch in tok))
            except KeyError:  # (not byte-level after all)
                out.append(tok.encode("utf-8"))
        elif len(tok) == 6 and tok.startswith("<0x") and tok.endswith(">"):  # SentencePiece's byte fallback
            out.append(bytes([int(tok[3:5], 16)]))
        else:
            out.append(tok.replace("\u2581", " ").encode("utf-8"))
    out = tuple(out)
    try:
        tokenizer._subspec_token_bytes = out
    except AttributeError:
        pass
    return out


@functools.lru_cache(maxsize=1)
def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map, which byte-level BPE vocabularies are written in."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def constrained_walk(tokens: list[int], parents: list[int], chosen: list[int], constraint: JsonConstraint,
                     rescore) -> tuple[list[int], int]:
    """engine.tree.walk under the constraint: at each node of the path the target's token is its choice
    among the allowed tokens (JsonConstraint.choose, with `rescore(node)` that node's selection scores), and
    the walk goes on while that token is a child. Returns (accepted node indices after the root, bonus)."""
    children = {(parents[i], tokens[i]): i for i in range(1, len(tokens))}
    path, node, state = [], 0, constraint.state
    while True:
        token = constraint.choose(state, chosen[node], lambda: rescore(node))
        child = children.get((node, token))
        if child is None:
            return path, token
        path.append(child)
        if token in constraint.eos:  # the answer ends here: nothing after it is the target's to choose
            return path, token
        state = constraint.after(state, token)
        node = child


def constraint_for(sampling, tokenizer, eos_ids, vocab_size: int) -> JsonConstraint | None:
    """The answer's constraint, if its sampling asks for one (SamplingParams.json, and json_schema: the
    schema's JSON text)."""
    if not getattr(sampling, "json", False):
        return None
    return JsonConstraint(tokenizer, eos_ids, vocab_size, compiled(getattr(sampling, "json_schema", None)))
