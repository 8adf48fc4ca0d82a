"""The GUI thread's cost while an answer streams: a real MainWindow, the real engine thread and timers, on
the tests' FakeBackend playing a synthetic answer (prose, one long code block, or nested lists) at a given
token rate, one token per event (plain decoding) or --per-step tokens per event (a SubSpec step).

Prints the GUI thread's CPU time per token, its busy share, the longest event-loop stall (a 5 ms heartbeat's
worst lateness) and the most tokens the GUI fell behind the engine. --root runs another checkout's app (a
`git worktree add /tmp/old COMMIT`), so two versions can be measured side by side on one machine:

    .venv/bin/python benchmarks/gui_streaming.py --kind prose --tokens 2000 [--per-step 30] [--hide-stats]
        [--root /tmp/old] [--json-out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
import tempfile
import time
from pathlib import Path

WORDS = ("the model a token is of and to in that step draft tree verify accepted it for with as on cache "
         "layer memory GPU speed length context answer which when this from by more each time").split()
TOKEN = re.compile(r"\n|[ \t]*[^\s]{1,6}|[ \t]+")  # about BPE-sized pieces


def _prose(rng):
    while True:
        words = [rng.choice(WORDS) for _ in range(rng.randint(40, 90))]
        for i in range(0, len(words), 17):
            words[i] = f"**{words[i]}**"
        for i in range(9, len(words), 23):
            words[i] = f"`{words[i]}()`"
        yield " ".join(words).capitalize() + ".\n\n"


def _code(rng):
    yield "Here is the implementation:\n\n```python\n"
    i = 0
    while True:
        i += 1
        yield (f"def step_{i}(model, tokens, cache=None):\n    out = model.forward(tokens[{i}:], cache=cache)\n"
               f"    return [t for t in out if t.accepted > {i % 7}]\n\n")


def _lists(rng):
    i = 0
    while True:
        i += 1
        yield f"## Part {i}\n\n"
        for j in range(rng.randint(4, 7)):
            yield f"- **Item {j}**: " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 14))) + "\n"
            if j % 2 == 0:
                for k in range(2):
                    yield f"  - sub {k}: " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 9))) + "\n"
        yield "\n"


KINDS = {"prose": _prose, "code": _code, "lists": _lists}


def tokens(kind: str, n: int) -> list[str]:
    rng, out = random.Random(0), []
    for chunk in KINDS[kind](rng):
        out.extend(TOKEN.findall(chunk))
        if len(out) >= n:
            break
    return out[:n] + (["\n```"] if kind == "code" else [])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kind", choices=sorted(KINDS), default="prose")
    p.add_argument("--tokens", type=int, default=2000)
    p.add_argument("--rate", type=float, default=100.0, help="tokens per second the fake engine delivers")
    p.add_argument("--per-step", type=int, default=1, help="tokens per event (1: plain decoding)")
    p.add_argument("--hide-stats", action="store_true", help="with the decoding stats dock closed")
    p.add_argument("--root", default=str(Path(__file__).resolve().parents[1]), help="the checkout to run")
    p.add_argument("--json-out")
    args = p.parse_args()
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ["SUBSPEC_HOME"] = tempfile.mkdtemp(prefix="gui-streaming-")  # never the user's data
    sys.path[:0] = [args.root, str(Path(args.root) / "tests" / "app")]

    from PySide6.QtCore import QEventLoop, QTimer
    from PySide6.QtWidgets import QApplication

    QApplication.instance() or QApplication(sys.argv[:1])
    from app_fakes import FAKE_MODELS, FakeBackend, factory_for

    from app import dialogs
    from app.main_window import MainWindow
    from app.worker import EngineHost
    from engine.events import StepEvent

    pieces = tokens(args.kind, args.tokens)
    steps = ["".join(pieces[i:i + args.per_step]) for i in range(0, len(pieces), args.per_step)]
    emitted = [0]

    def events():
        for i, text in enumerate(steps):
            emitted[0] += len(text)
            yield StepEvent(i, tuple(range(args.per_step)), text, accepted=args.per_step - 1,
                            step_ms=1e3 * args.per_step / args.rate, tree_nodes=289 if args.per_step > 1 else 0,
                            depth=48 if args.per_step > 1 else 0,
                            finish_reason="eos" if i == len(steps) - 1 else None)

    dialogs.show_error = lambda *a, **k: print("error:", a[1:], file=sys.stderr)
    host = EngineHost(factory_for(FakeBackend(events=events, delay_s=args.per_step / args.rate)),
                      model_lister=lambda: list(FAKE_MODELS))
    window = MainWindow(host)
    window.show()
    loop = QEventLoop()
    host.loaded.connect(loop.quit)
    window.load_model("fake-model")
    loop.exec()
    if args.hide_stats:
        window.stats_dock.hide()
    received, behind = [0], []
    host.token.connect(lambda t: (received.__setitem__(0, received[0] + len(t)), behind.append(emitted[0] - received[0])))
    beat, last, lag = QTimer(), [time.perf_counter()], []

    def on_beat():
        now = time.perf_counter()
        lag.append(now - last[0])
        last[0] = now
    beat.setInterval(5)
    beat.timeout.connect(on_beat)
    beat.start()
    loop = QEventLoop()
    host.finished.connect(lambda _s: loop.quit())
    window.prompt.setPlainText("Write something long.")
    cpu0, t0 = time.thread_time(), time.perf_counter()
    window.send()
    loop.exec()
    wall, cpu = time.perf_counter() - t0, time.thread_time() - cpu0
    lag.sort()
    chars_per_token = len("".join(pieces)) / len(pieces)
    result = dict(root=args.root, kind=args.kind, tokens=len(pieces), rate=args.rate, per_step=args.per_step,
                  stats_dock="hidden" if args.hide_stats else "shown", wall_s=round(wall, 1),
                  gui_ms_per_token=round(1e3 * cpu / len(pieces), 2), gui_busy_share=round(cpu / wall, 2),
                  worst_stall_ms=round(1e3 * lag[-1], 1), p99_stall_ms=round(1e3 * lag[int(0.99 * len(lag))], 1),
                  most_tokens_behind=round(max(behind) / chars_per_token))
    print(json.dumps(result))
    if args.json_out:
        with open(args.json_out, "a", encoding="utf-8") as f:
            f.write(json.dumps(result) + "\n")
    window.close()


if __name__ == "__main__":
    main()
