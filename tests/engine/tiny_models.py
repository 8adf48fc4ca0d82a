"""Tiny random checkpoints of every supported architecture, written by transformers itself.

transformers is the oracle: a model it saves must load into our decoder and give its logits.
"""

import json
from pathlib import Path

import torch

BASE = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-6, bos_token_id=1,
            eos_token_id=2, pad_token_id=0)

# name -> (transformers config class name, overrides)
ARCHS = {
    "llama": ("LlamaConfig", {}),
    "llama-tied": ("LlamaConfig", {"tie_word_embeddings": True}),
    "llama3-rope": ("LlamaConfig", {"rope_parameters": {
        "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 32}}),
    "llama-linear-rope": ("LlamaConfig", {"rope_parameters": {"rope_type": "linear", "rope_theta": 10000.0,
                                                             "factor": 2.0}}),
    "llama-mha": ("LlamaConfig", {"num_key_value_heads": 4}),
    # a head size that is not a power of two (open_llama_3b has 100, h2o-danube 80)
    "llama-head24": ("LlamaConfig", {"head_dim": 24}),
    "qwen2": ("Qwen2Config", {"tie_word_embeddings": False}),
    "qwen2-tied": ("Qwen2Config", {"tie_word_embeddings": True}),
    "qwen3": ("Qwen3Config", {"head_dim": 24, "tie_word_embeddings": False}),
    "mistral": ("MistralConfig", {"sliding_window": None}),
    "mistral-window": ("MistralConfig", {"sliding_window": 6}),
}


def make_tiny_checkpoint(folder: Path, arch: str, seed: int = 0, scale: float = 1.0) -> Path:
    """Write a random transformers model of `arch` (see ARCHS) to `folder` as safetensors."""
    import transformers

    cls_name, overrides = ARCHS[arch]
    config = getattr(transformers, cls_name)(**{**BASE, **overrides})
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    if scale != 1.0:
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() > 1:
                    p.mul_(scale)
    model.save_pretrained(str(folder))
    return folder


def raw_config(folder: Path) -> dict:
    return json.loads((Path(folder) / "config.json").read_text())


def save_char_tokenizer(folder: Path) -> Path:
    """A real (fast) tokenizer with one token per printable character, matching BASE's vocabulary:
    0 <pad>, 1 <s>, 2 </s>, then chr(32)..chr(125). Lets tiny models run the whole text pipeline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2}
    vocab.update({chr(c): 3 + i for i, c in enumerate(range(32, 126))})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    fast.chat_template = ("{% for m in messages %}<s>{{ m['role'][0] }}:{{ m['content'] }}</s>{% endfor %}"
                          "{% if add_generation_prompt %}<s>a:{% endif %}")
    fast.save_pretrained(str(folder))
    return folder


def make_tiny_model_folder(folder: Path, arch: str = "llama", seed: int = 0) -> Path:
    make_tiny_checkpoint(folder, arch, seed)
    return save_char_tokenizer(folder)


def scripted_generate(answers: list, record):
    """A Backend `generate` that answers with the next of `answers` (the model's answer, scripted), in
    five-character steps, after `record(prompt_ids, max_tokens, sampling, stops)`."""
    from engine.events import StepEvent

    def generate(prompt_ids, max_tokens, sampling, stops):
        record(prompt_ids, max_tokens, sampling, stops)
        text = answers.pop(0)
        pieces = [text[i:i + 5] for i in range(0, len(text), 5)]
        for i, piece in enumerate(pieces):
            yield StepEvent(i, (1,), piece, finish_reason="eos" if i == len(pieces) - 1 else None)
    return generate
