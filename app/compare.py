"""'Compare with plain decoding': the last prompt again, greedy, with and without SubSpec, timed in this
session on this machine, so the two speeds are comparable (a number saved from another day, another
model or another sampling setting would not be)."""

from __future__ import annotations

from dataclasses import dataclass, field

GREEDY = {"temperature": 0.0, "top_p": 1.0, "top_k": 0, "min_p": 0.0, "repetition_penalty": 1.0, "seed": None,
          "continue_final": False}
MIN_TOKENS = 2  # below this a run has no decode phase, so no speed to compare


@dataclass
class CompareJob:
    message_id: int  # the answer whose prompt is rerun; the result is saved with it
    messages: list[dict]  # the prompt: the conversation up to that answer
    subspec: dict  # {"method": "subspec", "depth": .., "width": .., "auto": ..}
    runs: list[str]  # methods still to run, in order
    speeds: dict[str, float] = field(default_factory=dict)  # method -> decode tok/s
    # Stop was pressed: a run that ended before the worker saw it must not be followed by the next
    stopped: bool = False

    def next_params(self, base: dict) -> dict:
        method = self.runs[0]
        return {**base, **GREEDY, **(self.subspec if method == "subspec" else {"method": "vanilla"})}

    def record(self, summary: dict) -> str | None:
        """Takes a run's summary; returns why the comparison cannot go on, or None."""
        method = self.runs.pop(0)
        if self.stopped or summary.get("finish_reason") == "stopped":
            return "comparison stopped"
        if summary.get("new_tokens", 0) < MIN_TOKENS or summary.get("tokens_per_s", 0) <= 0:
            return "the answer is too short to time"
        self.speeds[method] = summary["tokens_per_s"]
        return None

    @property
    def done(self) -> bool:
        return not self.runs

    def result(self) -> dict:
        fast, plain = self.speeds["subspec"], self.speeds["vanilla"]
        return {"subspec_tps": fast, "plain_tps": plain, "speedup": fast / plain,
                "depth": self.subspec.get("depth"), "width": self.subspec.get("width"),
                "auto": bool(self.subspec.get("auto"))}


def reusable(measured: dict | None, model: str, subspec: dict) -> float | None:
    """The tok/s of an answer timed in this session that a comparison may reuse instead of running
    SubSpec again: greedy, SubSpec with the same tree, on the same model. A tree without "auto" (saved
    before auto depth existed) had a fixed depth."""
    if not measured or measured.get("model") != model or measured.get("method") != "subspec":
        return None
    if measured.get("temperature") != 0.0 or measured.get("new_tokens", 0) < MIN_TOKENS:
        return None
    if measured.get("repetition_penalty", 1.0) != 1.0:  # penalized: not the comparison's plain greedy run
        return None
    if _tree(measured) != _tree(subspec):
        return None
    return measured.get("tokens_per_s") or None


def _tree(d: dict) -> tuple:
    return d.get("depth"), d.get("width"), bool(d.get("auto", False))


def format_comparison(result: dict) -> str:
    return (f"SubSpec {result['subspec_tps']:.1f} tok/s vs plain {result['plain_tps']:.1f} tok/s "
            f"= {result['speedup']:.1f}x")
