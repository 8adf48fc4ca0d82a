"""`subspec` as a user runs it: JSON outputs, and exit code 2 with one clear line for bad input."""

import json
import os
import subprocess
import sys

import pytest


def run(*args, env=None):
    return subprocess.run([sys.executable, "-m", "engine", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300)


def test_models_list_and_info_json(default_model_folder):
    r = run("models", "list", "--json")
    assert r.returncode == 0, r.stderr
    names = [m["name"] for m in json.loads(r.stdout)]
    assert "SmolLM2-135M-Instruct" in names
    r = run("models", "info", "SmolLM2-135M-Instruct", "--json")
    info = json.loads(r.stdout)
    assert {"name", "path", "architecture", "parameters", "dtype", "size_bytes"} <= set(info)
    assert info["architecture"] == "llama"


def test_generate_json(default_model_folder):
    r = run("generate", "SmolLM2-135M-Instruct", "--prompt", "What is 2+2?", "--max-new-tokens", "12", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    for key in ("text", "token_ids", "prompt_tokens", "new_tokens", "iterations", "tau", "tokens_per_s",
                "ttft_s", "method"):
        assert key in out
    assert out["method"] == "vanilla" and 0 < out["new_tokens"] <= 12 and out["tau"] == 1.0
    assert len(out["token_ids"]) == out["new_tokens"]


@pytest.mark.parametrize("args,message", [
    (("models", "info", "no-such-model"), "no model named 'no-such-model'"),
    (("models", "import", "/nonexistent/path"), "does not exist"),
    (("models", "remove", "no-such-model"), "no model named"),
    (("generate", "/tmp", "--prompt", "hi"), "not a model folder"),
    (("generate", "SmolLM2-135M-Instruct", "--prompt", "hi", "--top-p", "2"), "top-p must be in"),
    (("generate", "SmolLM2-135M-Instruct", "--prompt", "hi", "--max-new-tokens", "100000"), "exceeds"),
])
def test_bad_input_is_one_clear_line_and_exit_2(default_model_folder, args, message):
    r = run(*args)
    assert r.returncode == 2
    assert message in r.stderr
    assert "Traceback" not in r.stderr
