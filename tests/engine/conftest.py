"""Engine-test fixtures shared across files."""

import pytest


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A model store of the test's own (SUBSPEC_HOME), empty."""
    monkeypatch.setenv("SUBSPEC_HOME", str(tmp_path / "home"))
    return tmp_path / "home"
