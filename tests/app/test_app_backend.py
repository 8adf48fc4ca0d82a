"""TorchBackend's checks before it hands a request to the engine (no model needed for these)."""

from types import SimpleNamespace

import pytest

from app.backend import TorchBackend
from engine.errors import SubspecError

MESSAGES = [{"role": "user", "content": "hi"}]


def backend_with(tokenizer):
    backend = TorchBackend.__new__(TorchBackend)  # skips loading: these checks come before the model runs
    backend.name, backend.lm = "tiny", SimpleNamespace(tokenizer=tokenizer)
    return backend


def test_a_model_without_a_chat_template_is_refused():
    with pytest.raises(SubspecError, match="no chat template"):
        backend_with(SimpleNamespace(chat_template=None)).stream(MESSAGES, {})


def test_an_unknown_method_is_refused():
    with pytest.raises(SubspecError, match="not available"):
        backend_with(SimpleNamespace(chat_template="x")).stream(MESSAGES, {"method": "medusa"})


def test_bad_sampling_settings_are_refused():
    with pytest.raises(SubspecError, match="top-p"):
        backend_with(SimpleNamespace(chat_template="x")).stream(MESSAGES, {"top_p": 0})


def test_a_missing_model_is_a_user_error(tmp_path):
    with pytest.raises(SubspecError, match="not a model folder"):
        TorchBackend(str(tmp_path), lambda _msg: None)


def test_continue_leaves_the_last_answer_open_for_the_model():
    seen = []

    class Tokenizer:
        chat_template = "x"

        def apply_chat_template(self, messages, **kwargs):
            seen.append(kwargs)
            return "rendered"

        def encode(self, text, add_special_tokens):
            return [1, 2, 3]

    backend = backend_with(Tokenizer())
    history = MESSAGES + [{"role": "assistant", "content": "Hello"}]
    assert backend.encode(history, continue_final=True) == [1, 2, 3]
    assert seen == [{"continue_final_message": True, "tokenize": False}]
    with pytest.raises(SubspecError, match="no answer to continue"):
        backend.encode(MESSAGES, continue_final=True)
