"""Log-probabilities in the APIs' shapes: OpenAI's chat (`logprobs.content`), its legacy completions
(`tokens` / `token_logprobs` / `top_logprobs` / `text_offset`) and Ollama's (`logprobs` beside the answer).

The engine reports token ids and numbers (engine.events.TokenLogprob); a token's text is its bytes as the
vocabulary holds them (engine.constrained.token_bytes), decoded with replacement where a token is part of a
character, as OpenAI does, and its `bytes` are exact. A special token (no bytes) is its name, "<|im_end|>".
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

from .sampling import MAX_TOP_LOGPROBS

# A log-probability JSON cannot carry (-inf where a model's logit is -inf) is sent as OpenAI's floor.
FLOOR = -9999.0


class TokenPiece(NamedTuple):
    text: str
    bytes: list[int]
    special: bool  # a special token: named here, absent from the answer's text


# token id -> its TokenPiece
Piece = Callable[[int], TokenPiece]


def token_piece(tokenizer, vocab_size: int, token_id: int) -> TokenPiece:
    """A token's text and exact bytes (a special token: its name)."""
    from .constrained import token_bytes

    raw = token_bytes(tokenizer, vocab_size)[token_id]
    special = raw is None
    if special:
        raw = str(tokenizer.convert_ids_to_tokens(token_id) or "").encode()
    return TokenPiece(raw.decode("utf-8", errors="replace"), list(raw), special)


class LogprobError(ValueError):
    def __init__(self, message: str, param: str):
        super().__init__(message)
        self.param = param


def _count(value, param: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_TOP_LOGPROBS:
        raise LogprobError(f"'{param}' must be a whole number from 0 to {MAX_TOP_LOGPROBS}, got {value!r}", param)
    return value


def _asked(body: dict) -> bool:
    asked = body.get("logprobs")
    if asked is not None and not isinstance(asked, bool):  # (1 == True in Python: not a boolean here)
        raise LogprobError(f"'logprobs' must be true or false, got {asked!r}", "logprobs")
    return bool(asked)


def chat_request(body: dict) -> int | None:
    """OpenAI chat's `logprobs: true` with `top_logprobs: N`: N (0 without it), or None when the answer's
    log-probabilities are not asked for. `top_logprobs` alone is a 400, as OpenAI answers it."""
    asked, top = _asked(body), body.get("top_logprobs")
    if top is not None:
        top = _count(top, "top_logprobs")
        if not asked:
            raise LogprobError("'top_logprobs' needs 'logprobs': true", "top_logprobs")
    return (top or 0) if asked else None


def ollama_request(body: dict) -> int | None:
    """Ollama's `logprobs` / `top_logprobs`, by Ollama's rules: the count is range-checked, and without
    `logprobs: true` nothing is reported."""
    asked, top = _asked(body), body.get("top_logprobs")
    top = 0 if top is None else _count(top, "top_logprobs")
    return top if asked else None


def completion_request(body: dict) -> int | None:
    """Legacy completions' `logprobs: N` (the alternatives per token; 0: the chosen token's only; null or
    false: none). `top_logprobs` is chat's: refused here rather than ignored."""
    if body.get("top_logprobs") is not None:
        raise LogprobError("'top_logprobs' is for /v1/chat/completions; completions take 'logprobs': N",
                           "top_logprobs")
    value = body.get("logprobs")
    return None if value is None or value is False else _count(value, "logprobs")


def finite(x: float) -> float:
    """A log-probability JSON can carry: -inf (a logit of -inf) or NaN as OpenAI's floor."""
    return x if math.isfinite(x) else FLOOR


def _entry(token_id: int, logprob: float, piece: Piece) -> dict:
    p = piece(token_id)
    return {"token": p.text, "logprob": finite(logprob), "bytes": p.bytes}


def _with_top(lp, piece: Piece) -> dict:
    return {**_entry(lp.token_id, lp.logprob, piece), "top_logprobs": [_entry(t, v, piece) for t, v in lp.top]}


def chat(entries, piece: Piece) -> dict:
    """A chat choice's (or a streamed delta's) `logprobs`."""
    return {"content": [_with_top(lp, piece) for lp in entries], "refusal": None}


def ollama(entries, piece: Piece) -> list[dict]:
    """Ollama's `logprobs` field: as OpenAI chat's `content` entries."""
    return [_with_top(lp, piece) for lp in entries]


class CompletionOffsets:
    """Legacy completions' `logprobs`, their `text_offset` counted on across a streamed answer's chunks
    from the end of the prompt's text (OpenAI's offsets are into the prompt and completion together).

    An offset counts the characters of the answer's bytes so far, decoded whole: a character split across
    tokens counts once, where it is complete (the tokens' own texts, decoded one by one, would count each
    part). A special token is not in the text and moves nothing."""

    def __init__(self, prompt_chars: int):
        self.prompt_chars = prompt_chars
        self.answer = bytearray()

    def logprobs(self, entries, piece: Piece) -> dict:
        tokens, offsets = [], []
        for lp in entries:
            p = piece(lp.token_id)
            tokens.append(p.text)
            offsets.append(self.prompt_chars + len(self.answer.decode("utf-8", errors="ignore")))
            if not p.special:
                self.answer += bytes(p.bytes)
        # "up to logprobs + 1 elements": the alternatives and the chosen token, whatever its rank
        top = [{**{piece(t).text: finite(v) for t, v in lp.top}, text: finite(lp.logprob)}
               for lp, text in zip(entries, tokens)]
        return {"tokens": tokens, "token_logprobs": [finite(lp.logprob) for lp in entries], "top_logprobs": top,
                "text_offset": offsets}
