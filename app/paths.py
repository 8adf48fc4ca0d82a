"""Where the app keeps its own files beside the model store: the log and the first-run marker, and where
its resources (the icon) are found, in a checkout or inside a PyInstaller bundle.

SUBSPEC_HOME, which moves the model store (engine.store.store_root), moves these too: one variable
relocates everything the app writes, and every test, which sets it, writes nothing to the real home.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

APP_NAME = "subspec-studio"


def _home_override() -> Path | None:
    env = os.environ.get("SUBSPEC_HOME")
    return Path(env).expanduser() if env else None


def log_dir() -> Path:
    """~/.local/state/subspec-studio/log on Linux, ~/Library/Logs/subspec-studio on macOS,
    %LOCALAPPDATA%\\subspec-studio\\Logs on Windows; SUBSPEC_HOME/logs when that is set."""
    home = _home_override()
    if home is not None:
        return home / "logs"
    from platformdirs import user_log_path

    return user_log_path(APP_NAME, appauthor=False)


def config_dir() -> Path:
    """~/.config/subspec-studio on Linux (the platform's user config folder); SUBSPEC_HOME when set."""
    home = _home_override()
    if home is not None:
        return home
    from platformdirs import user_config_path

    return user_config_path(APP_NAME, appauthor=False)


def resources_dir() -> Path:
    bundle = getattr(sys, "_MEIPASS", None)  # set by PyInstaller's bootloader: the bundle's own folder
    if bundle:
        return Path(bundle) / "resources"
    return Path(__file__).resolve().parent.parent / "resources"


def icon_files() -> list[Path]:
    """The icon's PNG sizes (PNG rather than the SVG: every Qt build reads PNG, not every one has the SVG
    icon plugin); empty when the resources are missing, which costs only the icon."""
    return sorted((resources_dir() / "icons").glob(f"{APP_NAME}-*.png"))
