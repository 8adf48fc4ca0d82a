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


def chat_request(body: dict) -> int | None:
    """OpenAI chat's (and Ollama's) `logprobs: true` with `top_logprobs: N`: N (0 without it), or None when
    the answer's log-probabilities are not asked for."""
    asked, top = body.get("logprobs"), body.get("top_logprobs")
    if asked not in (None, True, False):
        raise LogprobError(f"'logprobs' must be true or false, got {asked!r}", "logprobs")
    if top is not None:
        top = _count(top, "top_logprobs")
        if not asked:
            raise LogprobError("'top_logprobs' needs 'logprobs': true", "top_logprobs")
    return (top or 0) if asked else None


def completion_request(body: dict) -> int | None:
    """Legacy completions' `logprobs: N` (the alternatives per token; 0: the chosen token's only)."""
    value = body.get("logprobs")
    return None if value is None else _count(value, "logprobs")


def _number(x: float) -> float:
    return x if math.isfinite(x) else FLOOR


def _entry(token_id: int, logprob: float, piece: Piece) -> dict:
    p = piece(token_id)
    return {"token": p.text, "logprob": _number(logprob), "bytes": p.bytes}


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
    from the end of the prompt's text (OpenAI's offsets are into the prompt and completion together)."""

    def __init__(self, prompt_chars: int):
        self.offset = prompt_chars

    def logprobs(self, entries, piece: Piece) -> dict:
        tokens, offsets = [], []
        for lp in entries:
            p = piece(lp.token_id)
            tokens.append(p.text)
            offsets.append(self.offset)
            self.offset += 0 if p.special else len(p.text)  # (a special token is not in the text)
        # "up to logprobs + 1 elements": the alternatives and the chosen token, whatever its rank
        top = [{**{piece(t).text: _number(v) for t, v in lp.top}, text: _number(lp.logprob)}
               for lp, text in zip(entries, tokens)]
        return {"tokens": tokens, "token_logprobs": [_number(lp.logprob) for lp in entries], "top_logprobs": top,
                "text_offset": offsets}
