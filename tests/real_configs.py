"""The fields of real Hugging Face config.json files that the engine reads, shared by the tests that plan
for real models (planner, CLI, app) so that each model's numbers are written once: the catalogue's
(engine/catalogue.py, checked against the model cards' parameter counts), and Llama 3 70B, which the
catalogue does not offer."""

from engine.catalogue import entry

LLAMA_31_8B = dict(entry("meta-llama/Llama-3.1-8B-Instruct").config)
QWEN25_7B = dict(entry("Qwen/Qwen2.5-7B-Instruct").config)
QWEN25_14B = dict(entry("Qwen/Qwen2.5-14B-Instruct").config)
QWEN25_32B = dict(entry("Qwen/Qwen2.5-32B-Instruct").config)
LLAMA_3_70B = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
    "hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80,
    "num_attention_heads": 64, "num_key_value_heads": 8, "vocab_size": 128256,
    "max_position_embeddings": 8192, "rms_norm_eps": 1e-05, "rope_theta": 500000.0,
    "attention_bias": False, "mlp_bias": False, "tie_word_embeddings": False,
    "bos_token_id": 128000, "eos_token_id": 128009, "torch_dtype": "bfloat16",
}
