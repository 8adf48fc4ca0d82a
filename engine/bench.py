"""`subspec bench`: plain decoding and SubSpec side by side on a prompt set, in one run.

Every configuration answers every prompt on the same loaded model, so ratios are measured under the same
conditions. Prompt files are JSON lines with `turns` (MT-Bench) or `prompt`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .errors import SubspecError
from .events import StepEvent
from .generate import generate_plain
from .sampling import SamplingParams
from .depth_control import control_for
from .speculative import TreeShape, generate_subspec


def read_prompts(path: str | Path, limit: int | None = None, turns: int = 1) -> list[list[str]]:
    """Each entry: the user turns of one conversation (at most `turns`)."""
    path = Path(path)
    if turns not in (1, 2):
        raise SubspecError("--turns must be 1 or 2")
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()  # Notepad writes a BOM
    except (OSError, UnicodeDecodeError) as exc:  # a missing file, or one that is not UTF-8 text
        raise SubspecError(f"cannot read prompts file {path}: {exc}") from exc
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            user_turns = row["turns"] if "turns" in row else [row["prompt"]]
            if not isinstance(user_turns, list) or not user_turns or not all(isinstance(t, str) for t in user_turns):
                raise ValueError("'turns' must be a list of strings")
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise SubspecError(f"{path.name} line {n}: expected JSON with 'turns' or 'prompt' ({exc})") from exc
        out.append(user_turns[:turns])
        if limit and len(out) >= limit:
            break
    if not out:
        raise SubspecError(f"no prompts in {path}")
    return out


@dataclass
class MethodStats:
    label: str
    new_tokens: int = 0
    seconds: float = 0.0
    passes: int = 0
    emitted_by_passes: int = 0  # accepted + bonus, over decode/verify passes
    draft_ms: float = 0.0
    verify_ms: float = 0.0
    step_ms: float = 0.0  # decode/verify iterations only (prefill excluded)
    nodes: int = 0
    depth_sum: int = 0  # tree depth over passes (auto depth varies it)
    answers: list = field(default_factory=list)  # token ids per (prompt, turn)

    def add(self, events: list[StepEvent], seconds: float) -> str:
        ids = [t for ev in events for t in ev.token_ids]
        self.answers.append(ids)
        self.new_tokens += len(ids)
        self.seconds += seconds
        for ev in events:
            if ev.iteration > 0:
                self.passes += 1
                self.emitted_by_passes += ev.accepted + 1
                self.draft_ms += ev.draft_ms
                self.verify_ms += ev.verify_ms
                self.step_ms += ev.step_ms
                self.nodes = max(self.nodes, ev.tree_nodes)
                self.depth_sum += ev.depth
        return "".join(ev.text for ev in events)

    def summary(self, baseline: "MethodStats | None") -> dict:
        tps = self.new_tokens / self.seconds if self.seconds else 0.0
        out = {
            "method": self.label, "new_tokens": self.new_tokens, "seconds": round(self.seconds, 3),
            "tokens_per_s": round(tps, 3),
            "tau": round(self.emitted_by_passes / self.passes, 3) if self.passes else 0.0,
            "tree_nodes": self.nodes,
            "mean_depth": round(self.depth_sum / self.passes, 2) if self.passes else 0.0,
            "draft_share": round(self.draft_ms / self.step_ms, 4) if self.step_ms else 0.0,
            "verify_share": round(self.verify_ms / self.step_ms, 4) if self.step_ms else 0.0,
            "overhead_share": round(1 - (self.draft_ms + self.verify_ms) / self.step_ms, 4) if self.step_ms else 0.0,
        }
        if baseline is not None and baseline is not self:
            base_tps = baseline.new_tokens / baseline.seconds if baseline.seconds else 0.0
            out["speedup"] = round(tps / base_tps, 3) if base_tps else None
            out["identical"] = sum(a == b for a, b in zip(self.answers, baseline.answers))
            out["answers"] = len(self.answers)
        return out


def run_bench(lm, conversations: list[list[str]], methods: list[str], shapes: list[TreeShape],
              max_new_tokens: int, make_draft: Callable[[], object] | None,
              sampling: SamplingParams = SamplingParams(),
              progress: Callable[[int, list[dict]], None] = lambda _n, _rows: None) -> list[dict]:
    """Answer every conversation with every configuration; `progress(done, rows)` after each one, with
    the summaries so far (so a long run can be saved as it goes)."""
    import time

    configs: list[tuple[str, TreeShape | None]] = []
    if "vanilla" in methods:
        configs.append(("vanilla", None))
    if "subspec" in methods:
        configs += [(f"subspec {s.label}", s) for s in shapes]
    unknown = set(methods) - {"vanilla", "subspec"}
    if unknown:
        raise SubspecError(f"unknown method(s) {', '.join(sorted(unknown))}; choose vanilla, subspec")
    draft = make_draft() if any(s for _, s in configs) else None
    stats = {label: MethodStats(label) for label, _ in configs}
    # Auto depth keeps one controller per configuration across the run, as a chat session does.
    controls = {label: control_for(s) for label, s in configs if s}
    for n, turns in enumerate(conversations, 1):
        for label, shape in configs:
            messages: list[dict] = []
            for user in turns:
                messages.append({"role": "user", "content": user})
                ids = lm.encode_messages(messages)
                t0 = time.perf_counter()
                if shape is None:
                    events = list(generate_plain(lm, ids, max_new_tokens, sampling))
                else:
                    events = list(generate_subspec(lm, draft, ids, max_new_tokens, sampling, shape=shape,
                                                   control=controls.get(label)))
                text = stats[label].add(events, time.perf_counter() - t0)
                # The second turn sees the model's own first answer, as in MT-Bench.
                messages.append({"role": "assistant", "content": text})
        baseline = stats.get("vanilla")
        progress(n, [st.summary(baseline) for st in stats.values()])
    baseline = stats.get("vanilla")
    return [st.summary(baseline) for st in stats.values()]


def format_table(rows: list[dict]) -> str:
    head = (f"{'method':24} {'tau':>7} {'tok/s':>8} {'speedup':>8} {'identical':>10} {'nodes':>6} {'depth':>6} "
            f"{'overhead':>9}")
    lines = [head]
    for r in rows:
        ident = f"{r['identical']}/{r['answers']}" if "identical" in r else "-"
        speed = f"{r['speedup']:.2f}x" if r.get("speedup") else "-"
        lines.append(f"{r['method']:24} {r['tau']:7.2f} {r['tokens_per_s']:8.2f} {speed:>8} {ident:>10} "
                     f"{r['tree_nodes']:6d} {r.get('mean_depth', 0):6.1f} {100 * r['overhead_share']:8.1f}%")
    return "\n".join(lines)
