"""How long the transcript takes to show a long saved conversation (GUI thread, offscreen), three ways side
by side in one run: every edit straight into the view (how it was), built apart and inserted once
(Transcript.batch), and only the latest 200 messages (what opening a conversation does now).

    .venv/bin/python benchmarks/transcript_replay.py [--messages 3000] [--json-out FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WORDS = "the model answer python code france paris tokens memory speed layer tree draft cache".split()


def conversation(n: int):
    from app.conversations import Message

    rng = random.Random(1)

    def para(k):
        return " ".join(rng.choice(WORDS) for _ in range(k))

    def answer():
        return f"{para(60)}\n\n- {para(8)}\n- {para(8)}\n\n```python\nprint('{para(3)}')\nx = 1\n```\n\n{para(40)}"

    stats = {"model": "M", "new_tokens": 300, "tokens_per_s": 20.0, "ttft_s": 0.3, "finish_reason": "eos",
             "method": "vanilla"}
    return [Message(i, "user", para(30), 0.0, None, True) if i % 2 == 0 else
            Message(i, "assistant", answer(), 0.0, stats, True) for i in range(n)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=3000)
    p.add_argument("--json-out")
    args = p.parse_args()
    from PySide6.QtWidgets import QApplication

    app = QApplication([])
    from app.main_window import MainWindow
    from app.turns import replay
    from app.widgets import Transcript

    messages = conversation(args.messages)
    results = {}
    for label, keep, direct in (("edit by edit (before)", None, True), ("built apart, all", None, False),
                                (f"latest {MainWindow.SHOWN_MESSAGES}", MainWindow.SHOWN_MESSAGES, False)):
        view = Transcript()
        view.resize(700, 500)
        view.show()
        if direct:
            view.batch = lambda: contextlib.nullcontext()
        app.processEvents()
        start = time.perf_counter()
        replay(view, messages, keep)
        app.processEvents()
        results[label] = round(time.perf_counter() - start, 3)
        print(f"{args.messages} messages, {label:24s} {results[label]:6.2f} s", flush=True)
        view.close()
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"messages": args.messages, "seconds": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
