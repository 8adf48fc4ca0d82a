"""The engine never imports Qt: it must run headless (CLI, server, benchmarks)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = ("PySide6", "PyQt5", "PyQt6", "shiboken6", "pyqtgraph", "app")


def _imports(path: Path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module.split(".")[0]


def test_engine_never_imports_qt_or_the_app():
    files = sorted((ROOT / "engine").rglob("*.py"))
    assert files, "engine package not found"
    offenders = [f"{f.relative_to(ROOT)} imports {m}" for f in files for m in _imports(f) if m in FORBIDDEN]
    assert not offenders, offenders


def test_layout_is_the_products():
    for name in ("app", "engine", "resources", "tests", "packaging", "pyproject.toml", "Makefile", ".ci/run"):
        assert (ROOT / name).exists(), name
