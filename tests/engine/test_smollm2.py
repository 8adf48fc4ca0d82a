"""The real SmolLM2-135M-Instruct: our greedy decoding equals transformers' generate token for token."""

import pytest
import torch

from engine.events import summarize
from engine.generate import generate_plain
from engine.sampling import SamplingParams

PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about autumn leaves.",
    "Explain what a binary search does.",
    "List three uses of copper.",
    "How do I reverse a list in Python?",
    "Why is the sky blue?",
]


@pytest.fixture(scope="module")
def reference(default_model_folder):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(default_model_folder, dtype=torch.float32).eval()


@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_48_tokens_equal_transformers_generate(smollm2, reference, prompt):
    ids = smollm2.encode(prompt)
    # min_new_tokens keeps transformers going past EOS only if we would too: compare the same 48 tokens.
    ours = summarize(generate_plain(smollm2, ids, 48), len(ids), "vanilla")
    with torch.no_grad():
        out = reference.generate(torch.tensor([ids]), max_new_tokens=48, do_sample=False)
    theirs = out[0, len(ids):].tolist()
    eos = smollm2.eos_token_ids()
    if theirs and theirs[-1] in eos:
        theirs = theirs[:-1]  # we do not emit the EOS token itself
        assert ours.finish_reason == "eos"
    assert list(ours.token_ids) == theirs
    assert ours.text == smollm2.tokenizer.decode(theirs, skip_special_tokens=True)


def test_chunked_prefill_gives_the_same_answer(smollm2):
    ids = smollm2.encode("Summarize the plot of Hamlet in two sentences. " * 6)
    whole = summarize(generate_plain(smollm2, ids, 16, prefill_chunk=256), len(ids), "vanilla")
    chunked = summarize(generate_plain(smollm2, ids, 16, prefill_chunk=7), len(ids), "vanilla")
    assert whole.token_ids == chunked.token_ids


def test_seeded_sampling_reproduces_and_differs_across_seeds(smollm2):
    ids = smollm2.encode("Tell me a story about a dragon.")

    def run(seed):
        params = SamplingParams(temperature=1.0, top_p=0.95, seed=seed)
        return summarize(generate_plain(smollm2, ids, 24, params), len(ids), "vanilla").token_ids

    assert run(1) == run(1)
    assert run(1) != run(2)


def test_stop_string_ends_the_answer(smollm2):
    ids = smollm2.encode("Write a limerick about a cat.")
    full = summarize(generate_plain(smollm2, ids, 40), len(ids), "vanilla")
    stop = full.text[12:15]  # a string the answer is known to contain, likely across token boundaries
    stopped = summarize(generate_plain(smollm2, ids, 40, stop_strings=(stop,)), len(ids), "vanilla")
    assert stopped.finish_reason == "stop"
    assert stopped.text == full.text[: full.text.index(stop)]
    assert stopped.token_ids == full.token_ids[: len(stopped.token_ids)]


@pytest.fixture(scope="module")
def smollm2_draft(smollm2):
    from engine.substitute import build_draft

    return build_draft(smollm2.decoder, nbits=4, group_size=64)  # g64: g32 would match the GGUF's own grid


@pytest.mark.parametrize("prompt", PROMPTS[:5])
def test_subspec_greedy_64_tokens_equal_plain(smollm2, smollm2_draft, prompt):
    from engine.speculative import TreeShape, generate_subspec

    ids = smollm2.encode(prompt)
    plain = summarize(generate_plain(smollm2, ids, 64), len(ids), "vanilla")
    spec = summarize(generate_subspec(smollm2, smollm2_draft, ids, 64, shape=TreeShape(8, 4)), len(ids), "subspec")
    assert spec.token_ids == plain.token_ids
    assert spec.text == plain.text
    assert spec.tau > 1.5  # the substitute is a real, well-aligned draft


@pytest.mark.parametrize("prompt", PROMPTS[:2])
def test_a_repetition_penalty_is_transformers_generate_with_it(smollm2, reference, prompt):
    ids = smollm2.encode(prompt)
    params = SamplingParams(repetition_penalty=1.3)
    ours = summarize(generate_plain(smollm2, ids, 32, params), len(ids), "vanilla")
    with torch.no_grad():
        out = reference.generate(torch.tensor([ids]), max_new_tokens=32, do_sample=False, repetition_penalty=1.3)
    theirs = out[0, len(ids):].tolist()
    if theirs and theirs[-1] in smollm2.eos_token_ids():
        theirs = theirs[:-1]
    assert list(ours.token_ids) == theirs
    assert ours.token_ids != summarize(generate_plain(smollm2, ids, 32), len(ids), "vanilla").token_ids


def test_a_penalized_subspec_answer_equals_plain_and_the_draft_is_penalized_too(smollm2, smollm2_draft,
                                                                              monkeypatch):
    """Penalties change what the target chooses; the draft, penalized along each node's path as the target
    is, keeps guessing it (without it, acceptance falls wherever a penalty turns the target's choice)."""
    from engine import speculative
    from engine.speculative import TreeShape, generate_subspec

    ids = smollm2.encode(PROMPTS[2])
    params = SamplingParams(repetition_penalty=1.3, presence_penalty=0.3, frequency_penalty=0.3)
    plain = summarize(generate_plain(smollm2, ids, 64, params), len(ids), "vanilla")
    spec = summarize(generate_subspec(smollm2, smollm2_draft, ids, 64, params, shape=TreeShape(8, 4)),
                     len(ids), "subspec")
    assert spec.token_ids == plain.token_ids and spec.text == plain.text
    grow = speculative.grow_tree
    monkeypatch.setattr(speculative, "grow_tree", lambda *a, history=None, **k: grow(*a, **k))  # unpenalized
    blind = summarize(generate_subspec(smollm2, smollm2_draft, ids, 64, params, shape=TreeShape(8, 4)),
                      len(ids), "subspec")
    assert blind.token_ids == plain.token_ids  # still lossless: the draft only guesses
    assert spec.tau > blind.tau, (spec.tau, blind.tau)
