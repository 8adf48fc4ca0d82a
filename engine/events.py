"""The plain, frozen events every generation loop yields, and their summary.

The CLI, the app, the benchmark and the server all consume these; they carry no tensors, so they can
cross a thread or a process boundary as they are.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class TokenLogprob:
    """An emitted token's log-probability under the target (the log-softmax of its raw logits: before
    penalties, temperature or any cut, as OpenAI and vLLM report them), with the `top` likeliest tokens
    there as (token id, log-probability), likeliest first."""
    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()

    def as_json(self) -> dict:
        return {"token_id": self.token_id, "logprob": self.logprob, "top": [list(t) for t in self.top]}


@dataclass(frozen=True)
class StepEvent:
    iteration: int  # target passes after the prefill (the prefill's event, with the first token, is 0)
    token_ids: tuple[int, ...]  # tokens emitted by this step
    text: str  # text those tokens add (held back while it may be the start of a stop string)
    accepted: int = 0  # draft tokens accepted this step (the bonus token is not counted)
    tree_nodes: int = 0  # draft nodes verified this step
    depth: int = 0  # depth of the draft tree this step (0: plain decoding)
    prefill_ms: float = 0.0
    draft_ms: float = 0.0
    verify_ms: float = 0.0  # the target forward (for plain decoding, the whole decode pass)
    step_ms: float = 0.0  # wall time of the whole step
    bytes_moved: int = 0  # weights streamed to the device this step
    finish_reason: str | None = None  # "eos", "stop", "length" on the last event
    note: str = ""  # what the engine had to change to go on (e.g. a shallower tree after running out of memory)
    logprobs: tuple[TokenLogprob, ...] = ()  # one per emitted token, when the sampling asked (SamplingParams.logprobs)
    cached_tokens: int = 0  # the prefill's: prompt tokens whose KV a kept cache held (engine.kv_cache.PromptCache)


@dataclass(frozen=True)
class GenerationResult:
    text: str
    token_ids: tuple[int, ...]
    prompt_tokens: int
    new_tokens: int
    iterations: int  # decode/verify passes after the prefill
    tau: float  # mean acceptance length per decode/verify pass, bonus included (plain decoding: 1)
    tokens_per_s: float
    ttft_s: float
    total_s: float
    finish_reason: str | None
    method: str
    extra: dict = field(default_factory=dict)
    logprobs: tuple[TokenLogprob, ...] = ()  # one per token, when the sampling asked for them
    cached_tokens: int = 0  # prompt tokens not prefilled: a kept cache held them

    def as_json(self) -> dict:
        out = {
            "text": self.text, "token_ids": list(self.token_ids), "prompt_tokens": self.prompt_tokens,
            "new_tokens": self.new_tokens, "iterations": self.iterations, "tau": round(self.tau, 4),
            "tokens_per_s": round(self.tokens_per_s, 3), "ttft_s": round(self.ttft_s, 4),
            "total_s": round(self.total_s, 4), "finish_reason": self.finish_reason, "method": self.method,
        }
        if self.cached_tokens:
            out["cached_tokens"] = self.cached_tokens
        if self.logprobs:
            out["logprobs"] = [lp.as_json() for lp in self.logprobs]
        out.update(self.extra)
        return out


def summarize(events, prompt_tokens: int, method: str, clock=None, extra: dict | None = None
              ) -> GenerationResult:
    """Consume a generation's events and time them."""
    import time

    clock = clock or time.perf_counter
    start = clock()
    ttft = None
    texts, ids, logprobs = [], [], []
    cached = 0
    iterations = 0
    accepted_total = 0
    finish = None
    for ev in events:
        if ttft is None and ev.token_ids:
            ttft = clock() - start
        texts.append(ev.text)
        ids.extend(ev.token_ids)
        logprobs.extend(ev.logprobs)
        cached += ev.cached_tokens
        iterations = ev.iteration
        if ev.iteration > 0:
            accepted_total += ev.accepted + 1
        finish = ev.finish_reason or finish
    total = clock() - start
    n = len(ids)
    decode_time = total - (ttft or 0.0)
    # Decoding speed excludes the prefill, as every LLM tool reports it; the first token comes from prefill.
    tps = (n - 1) / decode_time if n > 1 and decode_time > 0 else 0.0
    return GenerationResult(
        text="".join(texts), token_ids=tuple(ids), prompt_tokens=prompt_tokens, new_tokens=n,
        iterations=iterations, tau=accepted_total / iterations if iterations else 1.0, tokens_per_s=tps,
        ttft_s=ttft or 0.0, total_s=total, finish_reason=finish, method=method, extra=dict(extra or {}),
        logprobs=tuple(logprobs), cached_tokens=cached,
    )


# How far a long prompt is read (engine.generate.prefill's progress) is told from this many tokens: a shorter
# prompt is read before anyone could look.
READING_SHOWN_FROM = 512


def reading_text(done: int, total: int, ellipsis: str = "…") -> str:
    """The app's stats line, and the terminal's line, while a prompt is read (`ellipsis` "..." for consoles
    that lack the character)."""
    return f"reading the prompt: {100 * done // total}% ({done:,} of {total:,} tokens) {ellipsis}"
