"""The suite cleans up after itself: CI runs it on the same machine again and again."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_session_store_is_removed_at_exit():
    # A fresh interpreter imports the suite's set-up, writes into its store as the default model's import
    # would, and exits: the store must be gone afterwards.
    code = (
        "import sys; sys.path.insert(0, 'tests'); import conftest, pathlib;"
        "p = pathlib.Path(conftest.SESSION_HOME); (p / 'models').mkdir(); (p / 'models' / 'w.bin').write_bytes(b'x');"
        "print(p)"
    )
    env = {k: v for k, v in os.environ.items() if k != "SUBSPEC_HOME"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                         check=True, timeout=120)
    home = Path(out.stdout.strip())
    assert home.name.startswith("subspec-test-home-")
    assert not home.exists()
