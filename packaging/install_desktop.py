"""Install SubSpec Studio into the Linux desktop's menus for the current user (`make install-desktop`):
packaging/subspec-studio.desktop with Exec pointing at this checkout's launcher (or --exec PATH, e.g. the
bundle from `make package`), and the icon at every size under the hicolor theme.

Nothing needs root: it writes under $XDG_DATA_HOME (~/.local/share). The written entry is checked with
desktop-file-validate (desktop-file-utils) when that is installed, and the install fails if it does not
validate. Standard library only, so any python3 runs it.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NAME = "subspec-studio"
ENTRY = ROOT / "packaging" / f"{NAME}.desktop"
ICONS = ROOT / "resources" / "icons"
DEFAULT_EXEC = ROOT / ".venv" / "bin" / NAME


def exec_quote(path: str) -> str:
    """A program path as the Desktop Entry spec wants it in Exec: quoted when it holds a space or a
    reserved character, with ", `, $ and \\ escaped inside the quotes (and every backslash then doubled
    again, since Exec is a string value); a literal % is written %%."""
    path = path.replace("%", "%%")  # % starts a field code (%f, %u ...)
    if not re.search(r"[\s\"'\\><~|&;$*?#()`]", path):
        return path
    inner = re.sub(r'(["`$\\])', r"\\\1", path)
    return f'"{inner}"'.replace("\\", "\\\\")


def desktop_entry(program: Path) -> str:
    """The entry with Exec and TryExec set to `program` (absolute: menus do not search a venv's bin)."""
    program = program.resolve()
    lines = []
    for line in ENTRY.read_text().splitlines():
        key = line.split("=", 1)[0]
        if key == "Exec":
            line = f"Exec={exec_quote(str(program))}"
        elif key == "TryExec":
            line = f"TryExec={str(program).replace(chr(92), chr(92) * 2)}"  # a plain string: no quoting
        lines.append(line)
    return "\n".join(lines) + "\n"


def icon_files() -> dict[str, Path]:
    """hicolor folder -> icon file: NxN for each PNG, scalable for the SVG."""
    icons = {}
    for png in ICONS.glob(f"{NAME}-*.png"):
        size = png.stem.rsplit("-", 1)[1]
        icons[f"{size}x{size}"] = png
    icons["scalable"] = ICONS / f"{NAME}.svg"
    return icons


def validate(path: Path) -> str | None:
    """desktop-file-validate's complaint, None when the file is valid; raises FileNotFoundError when the
    validator is not installed."""
    result = subprocess.run(["desktop-file-validate", str(path)], capture_output=True, text=True)
    return None if result.returncode == 0 else (result.stdout + result.stderr).strip()


def install(program: Path, data_home: Path, check: bool = True) -> Path:
    """Write the entry and the icons under `data_home`; returns the entry's path."""
    applications = data_home / "applications"
    applications.mkdir(parents=True, exist_ok=True)
    entry = applications / f"{NAME}.desktop"
    entry.write_text(desktop_entry(program))
    if check:
        try:
            problem = validate(entry)
        except FileNotFoundError:
            print("note: desktop-file-validate not found (apt install desktop-file-utils); entry not validated",
                  file=sys.stderr)
        else:
            if problem:
                entry.unlink()
                raise SystemExit(f"error: {entry} does not validate:\n{problem}")
    hicolor = data_home / "icons" / "hicolor"
    for folder, source in icon_files().items():
        target = hicolor / folder / "apps" / f"{NAME}{source.suffix}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    # No gtk-update-icon-cache: a user-level icon cache is not kept up to date by other installers, and a
    # stale one hides their icons. Desktops watch these folders and pick the entry up by themselves.
    return entry


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--exec", dest="program", type=Path, default=DEFAULT_EXEC,
                   help=f"the program the menu entry starts (default: {DEFAULT_EXEC})")
    default_home = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    p.add_argument("--data-home", type=Path, default=default_home,
                   help=f"where applications/ and icons/ go (default: {default_home})")
    args = p.parse_args(argv)
    if not args.program.is_file():
        print(f"error: {args.program} does not exist (make installs the launcher; make package builds the bundle)",
              file=sys.stderr)
        return 2
    entry = install(args.program, args.data_home)
    print(f"installed {entry} (Exec {args.program.resolve()}) and the icon under {args.data_home / 'icons'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
