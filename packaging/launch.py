"""The bundled app's entry point (PyInstaller runs a script, not a console_scripts entry).

One executable is both commands: started as `subspec` (a link the spec puts beside it) or with `--cli`
first, it is the headless command line (`subspec models download ...`); otherwise the window.
"""

import os
import sys
from pathlib import Path


def console_streams() -> None:
    """The command line in a windowed Windows executable (built with console=False) has no stdout or
    stderr: None, and the first print would raise. Started from a console, it writes to that console;
    otherwise (a shortcut) to nowhere rather than crash. The window sends those streams to its log."""
    if sys.stdout is not None and sys.stderr is not None:
        return
    console = None
    if os.name == "nt":
        import ctypes

        if ctypes.windll.kernel32.AttachConsole(-1):  # ATTACH_PARENT_PROCESS: the cmd or PowerShell it ran in
            console = "CONOUT$"
    for name in ("stdout", "stderr"):
        if getattr(sys, name) is None:
            setattr(sys, name, open(console or os.devnull, "w", encoding="utf-8", errors="replace"))


def main() -> int:
    argv = sys.argv[1:]
    if Path(sys.argv[0]).stem == "subspec" or argv[:1] == ["--cli"]:
        console_streams()
        from engine.cli import main as cli_main

        return cli_main(argv[1:] if argv[:1] == ["--cli"] else argv)
    from app.main import main as app_main

    return app_main()


if __name__ == "__main__":
    sys.exit(main())
