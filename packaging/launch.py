"""The bundled app's entry point (PyInstaller runs a script, not a console_scripts entry).

One executable is both commands: started as `subspec` (a link the spec puts beside it) or with `--cli`
first, it is the headless command line (`subspec models download ...`); otherwise the window.
"""

import sys
from pathlib import Path


def main() -> int:
    argv = sys.argv[1:]
    if Path(sys.argv[0]).stem == "subspec" or argv[:1] == ["--cli"]:
        from engine.cli import main as cli_main

        return cli_main(argv[1:] if argv[:1] == ["--cli"] else argv)
    from app.main import main as app_main

    return app_main()


if __name__ == "__main__":
    sys.exit(main())
