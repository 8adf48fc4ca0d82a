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
from dataclasses import dataclass

import torch

WHITESPACE = b" \t\n\r"
DIGITS = b"0123456789"
ESCAPES = b'"\\/bfnrtu'
HEX = b"0123456789abcdefABCDEF"
CANDIDATES_PER_ROUND = 64  # candidates ranked at a time, in score order, before the next round
# Whitespace bytes in a row between tokens at most (llama.cpp's JSON grammar allows a new line and 20 more): room
# for pretty-printing, none for a small model stuck writing blank lines until the context is full.
MAX_WHITESPACE = 32


@dataclass(frozen=True)
class JsonState:
    """Where a JSON object's text has got to: the open containers ("o" object, "a" array) and what may come
    next (`mode`), with `left` the rest of a literal (true, false, null) or the hex digits of a \\u escape."""

    stack: tuple = ()
    mode: str = "start"  # start, value, value0, key, key0, colon, after, string, key_string, escape,
    # key_escape, hex, key_hex, literal, minus, zero, int, dot, frac, exp, exp_sign, exp_int, done
    left: bytes | int = b""
    spaces: int = 0  # whitespace bytes in a row just before here (MAX_WHITESPACE)

    @property
    def done(self) -> bool:
        return self.mode == "done"


START = JsonState()


def step(s: JsonState, c: int) -> JsonState | None:
    """The state after byte `c`, or None when `c` cannot come next."""
    mode = s.mode
    if mode in ("string", "key_string"):
        if c == 0x22:  # "
            return JsonState(s.stack, "after" if mode == "string" else "colon")
        if c == 0x5C:  # backslash
            return JsonState(s.stack, "escape" if mode == "string" else "key_escape")
        return s if c >= 0x20 else None
    if mode in ("escape", "key_escape"):
        if c not in ESCAPES:
            return None
        inner = "string" if mode == "escape" else "key_string"
        if c == ord("u"):
            return JsonState(s.stack, "hex" if inner == "string" else "key_hex", 4)
        return JsonState(s.stack, inner)
    if mode in ("hex", "key_hex"):
        if c not in HEX:
            return None
        inner = "string" if mode == "hex" else "key_string"
        return JsonState(s.stack, inner) if s.left == 1 else JsonState(s.stack, mode, s.left - 1)
    if mode == "literal":
        if c != s.left[0]:
            return None
        return JsonState(s.stack, "literal", s.left[1:]) if len(s.left) > 1 else _after_value(s.stack)
    if mode in ("minus", "zero", "int", "dot", "frac", "exp", "exp_sign", "exp_int"):
        number = _number(mode, c)
        if number is not None:
            return JsonState(s.stack, number)
        if mode in ("zero", "int", "frac", "exp_int"):  # a complete number: the byte goes on after it
            return step(_after_value(s.stack), c)
        return None
    if c in WHITESPACE:
        if mode == "done" or s.spaces >= MAX_WHITESPACE:  # (done: see feed)
            return None
        return JsonState(s.stack, mode, s.left, s.spaces + 1)
    if mode == "start":
        return JsonState(("o",), "key0") if c == ord("{") else None
    if mode in ("value", "value0"):
        if c == ord("]") and mode == "value0":
            return _close(s.stack)
        return _begin_value(s.stack, c)
    if mode in ("key", "key0"):
        if c == 0x22:
            return JsonState(s.stack, "key_string")
        return _close(s.stack) if c == ord("}") and mode == "key0" else None
    if mode == "colon":
        return JsonState(s.stack, "value") if c == ord(":") else None
    if mode == "after":
        top = s.stack[-1]
        if c == ord(","):
            return JsonState(s.stack, "key" if top == "o" else "value")
        if (c == ord("}") and top == "o") or (c == ord("]") and top == "a"):
            return _close(s.stack)
        return None
    return None


def _begin_value(stack: tuple, c: int) -> JsonState | None:
    if c == ord("{"):
        return JsonState(stack + ("o",), "key0")
    if c == ord("["):
        return JsonState(stack + ("a",), "value0")
    if c == 0x22:
        return JsonState(stack, "string")
    if c == ord("-"):
        return JsonState(stack, "minus")
    if c == ord("0"):
        return JsonState(stack, "zero")
    if c in DIGITS:
        return JsonState(stack, "int")
    for word in (b"true", b"false", b"null"):
        if c == word[0]:
            return JsonState(stack, "literal", word[1:])
    return None


def _number(mode: str, c: int) -> str | None:
    """The number's next state after byte `c`, or None when `c` does not continue it."""
    digit = c in DIGITS
    if mode == "minus":
        return ("zero" if c == ord("0") else "int") if digit else None
    if mode in ("zero", "int"):
        if digit and mode == "int":
            return "int"
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


def _after_value(stack: tuple) -> JsonState:
    return JsonState(stack, "after")


def _close(stack: tuple) -> JsonState:
    rest = stack[:-1]
    return JsonState(rest, "after") if rest else JsonState((), "done")


def feed(s: JsonState, data: bytes) -> JsonState | None:
    """The state after `data`, or None if the text stops being a JSON object's beginning. Once the object is
    done, only whitespace may follow within the same data."""
    for i, c in enumerate(data):
        if s.mode == "done":
            return s if all(b in WHITESPACE for b in data[i:]) else None
        s = step(s, c)
        if s is None:
            return None
    return s


class JsonConstraint:
    """One answer's JSON constraint: the recognizer's state over the answer so far, and each token's bytes."""

    def __init__(self, tokenizer, eos_ids, vocab_size: int):
        self.pieces = token_bytes(tokenizer, vocab_size)
        self.eos = frozenset(eos_ids)
        self.state = START

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
        for start in range(0, order.numel(), CANDIDATES_PER_ROUND):
            for t in order[start:start + CANDIDATES_PER_ROUND].tolist():
                if self.allows(state, t):
                    return t
        raise ValueError("no token can continue the JSON here")  # (an end-of-answer token always can once done)

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
    """The answer's constraint, if its sampling asks for one (SamplingParams.json)."""
    return JsonConstraint(tokenizer, eos_ids, vocab_size) if getattr(sampling, "json", False) else None
