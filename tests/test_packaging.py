"""Packaging: the desktop entry (its keys always; desktop-file-validate where desktop-file-utils is
installed), `make install-desktop`'s installer, the icon files and the PyInstaller spec. The bundle itself
is built by `make package`, never here: it takes minutes."""

import configparser
import importlib.util
import shutil
import struct
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGING = ROOT / "packaging"
ICONS = ROOT / "resources" / "icons"
VALIDATOR = shutil.which("desktop-file-validate")
needs_validator = pytest.mark.skipif(VALIDATOR is None, reason="desktop-file-utils not installed")


def _load(name):
    # packaging/ is a folder of scripts, not a package (the name would shadow PyPI's `packaging`).
    spec = importlib.util.spec_from_file_location(name, PACKAGING / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


installer = _load("install_desktop")


def read_entry(path):
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # keys are case-sensitive
    parser.read_string(path.read_text())
    return parser["Desktop Entry"]


def png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    return struct.unpack(">II", data[16:24])


def test_the_desktop_entry_starts_the_gui_script_with_the_icon():
    entry = read_entry(PACKAGING / "subspec-studio.desktop")
    gui_scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["gui-scripts"]
    assert entry["Type"] == "Application" and entry["Name"] == "SubSpec Studio"
    assert entry["Exec"] == entry["TryExec"] == "subspec-studio" and "subspec-studio" in gui_scripts
    assert entry["Icon"] == "subspec-studio" and (ICONS / "subspec-studio.svg").is_file()
    assert entry["Terminal"] == "false"
    assert entry["Categories"].endswith(";") and entry["Keywords"].endswith(";")


@needs_validator
def test_the_desktop_entry_validates():
    result = subprocess.run([VALIDATOR, str(PACKAGING / "subspec-studio.desktop")], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout == "", result.stdout + result.stderr


@pytest.mark.parametrize("path, written", [
    ("/opt/subspec/bin/subspec-studio", "/opt/subspec/bin/subspec-studio"),
    ("/home/a b/subspec-studio", '"/home/a b/subspec-studio"'),
    ("/home/$x/100%/s", '"/home/\\\\$x/100%%/s"'),
    ('/tmp/say "hi"/s', '"/tmp/say \\\\"hi\\\\"/s"'),
])
def test_exec_paths_are_quoted_as_the_spec_says(path, written):
    assert installer.exec_quote(path) == written


def test_install_writes_the_entry_and_every_icon_size(tmp_path):
    program = tmp_path / "my apps" / "subspec-studio"
    program.parent.mkdir()
    program.write_text("#!/bin/sh\n")
    entry_path = installer.install(program, tmp_path / "share", check=False)
    assert entry_path == tmp_path / "share" / "applications" / "subspec-studio.desktop"
    entry = read_entry(entry_path)
    assert entry["Exec"] == f'"{program}"' and entry["TryExec"] == str(program)
    assert entry["Name"] == "SubSpec Studio" and entry["Icon"] == "subspec-studio"
    hicolor = tmp_path / "share" / "icons" / "hicolor"
    sizes = sorted(int(d.name.split("x")[0]) for d in hicolor.iterdir() if d.name != "scalable")
    assert sizes == [16, 24, 32, 48, 64, 128, 256, 512]
    for size in sizes:
        assert png_size(hicolor / f"{size}x{size}" / "apps" / "subspec-studio.png") == (size, size)
    assert (hicolor / "scalable" / "apps" / "subspec-studio.svg").read_bytes().startswith(b"<?xml")


@needs_validator
def test_the_installed_entry_validates_even_with_an_awkward_path(tmp_path):
    program = tmp_path / "dir with space$" / "subspec-studio"
    program.parent.mkdir()
    program.write_text("#!/bin/sh\n")
    entry = installer.install(program, tmp_path / "share")  # validates, and raises SystemExit if invalid
    result = subprocess.run([VALIDATOR, str(entry)], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout == "", result.stdout


@needs_validator
def test_an_entry_that_does_not_validate_is_not_installed(tmp_path, monkeypatch):
    broken = tmp_path / "broken.desktop"
    broken.write_text("[Desktop Entry]\nType=Application\nName=X\nExec=x\nVersion=1.5\n")
    monkeypatch.setattr(installer, "ENTRY", broken)
    program = tmp_path / "x"
    program.write_text("")
    with pytest.raises(SystemExit, match="does not validate"):
        installer.install(program, tmp_path / "share")
    assert not (tmp_path / "share" / "applications" / "subspec-studio.desktop").exists()


def test_the_installer_refuses_a_missing_program(tmp_path):
    result = subprocess.run([sys.executable, str(PACKAGING / "install_desktop.py"), "--exec", str(tmp_path / "nope"),
                             "--data-home", str(tmp_path / "share")], capture_output=True, text=True)
    assert result.returncode == 2 and "does not exist" in result.stderr
    assert not (tmp_path / "share").exists()


def test_the_icon_comes_in_every_size_and_as_ico_and_icns():
    for size in (16, 24, 32, 48, 64, 128, 256, 512):
        assert png_size(ICONS / f"subspec-studio-{size}.png") == (size, size)
    ico = (ICONS / "subspec-studio.ico").read_bytes()
    reserved, kind, count = struct.unpack("<HHH", ico[:6])
    assert (reserved, kind, count) == (0, 1, 7)
    for i in range(count):
        width, _h, _c, _r, _planes, _bpp, length, offset = struct.unpack("<BBBBHHII", ico[6 + 16 * i:22 + 16 * i])
        assert ico[offset:offset + 8] == b"\x89PNG\r\n\x1a\n" and offset + length <= len(ico)
        assert struct.unpack(">I", ico[offset + 16:offset + 20])[0] == (width or 256)
    icns = (ICONS / "subspec-studio.icns").read_bytes()
    assert icns[:4] == b"icns" and struct.unpack(">I", icns[4:8])[0] == len(icns)
    pos, kinds = 8, []
    while pos < len(icns):
        kinds.append(icns[pos:pos + 4])
        pos += struct.unpack(">I", icns[pos + 4:pos + 8])[0]
    assert pos == len(icns) and kinds == [b"icp4", b"icp5", b"icp6", b"ic07", b"ic08", b"ic09"]


def test_the_spec_compiles_and_names_files_that_exist():
    source = (PACKAGING / "subspec-studio.spec").read_text()
    compile(source, "subspec-studio.spec", "exec")
    assert (PACKAGING / "launch.py").is_file()
    for name in ("subspec-studio.ico", "subspec-studio.icns"):
        assert name in source and (ICONS / name).is_file()


@pytest.mark.parametrize("argv0, args, expect", [
    ("/opt/x/subspec", ["models", "list"], ("cli", ["models", "list"])),
    ("/opt/x/subspec-studio", ["--cli", "models", "du"], ("cli", ["models", "du"])),
    ("/opt/x/subspec-studio", ["--panel", "models"], ("app", None)),
])
def test_the_bundle_launcher_is_both_commands(monkeypatch, argv0, args, expect):
    import app.main
    import engine.cli

    calls = []
    monkeypatch.setattr(engine.cli, "main", lambda argv: calls.append(("cli", argv)) or 0)
    monkeypatch.setattr(app.main, "main", lambda: calls.append(("app", None)) or 0)
    monkeypatch.setattr("sys.argv", [argv0, *args])
    spec = importlib.util.spec_from_file_location("launch", PACKAGING / "launch.py")
    launch = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(launch)
    assert launch.main() == 0 and calls == [expect]


def test_the_bundles_command_line_has_streams_even_when_windowed(monkeypatch):
    """PyInstaller's console=False build has sys.stdout and sys.stderr None; the command line prints
    progress (and its errors) and must not crash on the first print."""
    import engine.cli

    printed = []

    def cli(argv):
        print("downloading", file=sys.stderr)
        printed.append(sys.stderr.isatty())
        return 0

    monkeypatch.setattr(engine.cli, "main", cli)
    monkeypatch.setattr("sys.argv", ["/opt/x/subspec-studio", "--cli", "models", "list"])
    monkeypatch.setattr(sys, "stdout", None)
    monkeypatch.setattr(sys, "stderr", None)
    spec = importlib.util.spec_from_file_location("launch", PACKAGING / "launch.py")
    launch = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(launch)
    assert launch.main() == 0 and printed == [False] and sys.stdout is not None
