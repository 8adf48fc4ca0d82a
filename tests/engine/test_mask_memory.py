"""The attention masks a target pass really holds, measured on the CPU, against what the planner counts
(engine.planner.mask_bytes): masks grow with the context, so a plan that left them out would under-predict
VRAM at long contexts.

MaskLedger watches every tensor op of a forward and keeps the live bytes of each mask-shaped tensor made
fresh (not a view or an in-place result) until the last tensor on its storage is freed: builders'
temporaries, the fold, conversions, all of it."""

import weakref

import pytest
import torch
from tiny_models import BASE, make_tiny_checkpoint, make_tiny_model_folder
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from engine.generate import prefill
from engine.loading import load_decoder, load_model
from engine.planner import mask_bytes, masks_bytes
from engine.sampling import SamplingParams
from engine.speculative import TreeShape, generate_subspec, verify
from engine.substitute import build_draft
from engine.tree import Tree

# A mask's last dimension counts cache slots; every other tensor of a tiny model is narrower than this
# (hidden 64, MLP 96, vocab 97), so the tests attend over more slots than this.
MIN_COLUMNS = 100
ARCHS = ["qwen2", "llama-mha", "mistral-window"]  # 2 query heads per KV head; 1; 2 with a sliding window
DTYPES = {torch.float32: 4, torch.bfloat16: 2}


class MaskLedger(TorchDispatchMode):
    """Live and peak bytes of the mask-shaped tensors (at least 2 dims, the last >= MIN_COLUMNS) that ops
    make under it. Attention's own outputs (its result and softmax statistics) are not masks."""

    def __init__(self, min_columns: int = MIN_COLUMNS):
        super().__init__()
        self.min_columns = min_columns
        self.storages = {}  # data_ptr -> [tensors alive on it, bytes]
        self.live = self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0]
                  if isinstance(t, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            key = t.untyped_storage().data_ptr()
            if key not in self.storages:
                fresh = key not in inputs and key != 0 and "scaled_dot_product" not in func.__name__
                if not (fresh and t.dim() >= 2 and t.shape[-1] >= self.min_columns):
                    continue
                nbytes = t.untyped_storage().nbytes()
                self.storages[key] = [0, nbytes]
                self.live += nbytes
                self.peak = max(self.peak, self.live)
            self.storages[key][0] += 1
            weakref.finalize(t, self._release, key)
        return out

    def _release(self, key):
        entry = self.storages[key]
        entry[0] -= 1
        if entry[0] == 0:
            self.live -= entry[1]
            del self.storages[key]


def _widths_below_min_columns(config):
    widths = (config.hidden_size, config.intermediate_size, config.vocab_size,
              config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim)
    assert max(widths) < MIN_COLUMNS  # else the ledger would take activations for masks


@pytest.fixture(scope="module", params=[(a, d) for a in ARCHS for d in DTYPES], ids=lambda p: f"{p[0]}-{p[1]}")
def target(request, tmp_path_factory):
    arch, dtype = request.param
    decoder = load_decoder(make_tiny_checkpoint(tmp_path_factory.mktemp(arch), arch), dtype, "cpu")
    _widths_below_min_columns(decoder.config)
    return decoder, DTYPES[dtype]


def _random_tree(nodes: int, seed: int = 0) -> Tree:
    g = torch.Generator().manual_seed(seed)
    tree = Tree.with_root(5, nodes, "cpu")
    while tree.size < nodes:
        k = min(3, nodes - tree.size)
        parents = torch.randint(0, tree.size, (k,), generator=g)
        tree.add(parents, torch.randint(3, BASE["vocab_size"], (k,), generator=g))
    return tree


def test_the_ledger_sees_a_mask_and_its_release():
    with MaskLedger() as ledger:
        a = torch.zeros(3, 200)
        b = a[None]  # a view: no new bytes
        a.add_(1)  # in place: none either
        c = torch.zeros(3, 50)  # too narrow to be a mask
    assert ledger.peak == ledger.live == 3 * 200 * 4
    del a
    assert ledger.live == 3 * 200 * 4  # the view keeps the storage
    del b, c
    assert ledger.live == 0


def test_verification_holds_the_masks_the_planner_counts(target):
    decoder, dtype_bytes = target
    committed, nodes = 130, 30
    cache = decoder.new_cache(committed + nodes)
    cache.commit(committed)  # the context's KV values do not matter to the masks' sizes
    tree = _random_tree(nodes)
    with MaskLedger() as ledger:
        verify(decoder, cache, tree, SamplingParams(), None)
    columns = committed + nodes
    # What the CPU holds is exactly the mask and its fold; on CUDA SDPA may add a padded copy.
    assert ledger.peak == mask_bytes(decoder.config, nodes, columns, dtype_bytes, sdpa_copy=False, align=1)
    assert ledger.peak < mask_bytes(decoder.config, nodes, columns, dtype_bytes)
    assert ledger.live == 0


def test_prefill_holds_the_masks_the_planner_counts(target):
    decoder, dtype_bytes = target
    chunk, prompt = 40, 160  # the last chunk: 40 rows over 160 slots
    cache = decoder.new_cache(prompt)
    with MaskLedger() as ledger:
        prefill(decoder, cache, [3 + i % 90 for i in range(prompt)], chunk)
    # The last chunk's causal mask in the model's dtype and its fold; the earlier chunks' are freed first.
    assert ledger.peak == mask_bytes(decoder.config, chunk, prompt, dtype_bytes, sdpa_copy=False, align=1)
    assert ledger.live == 0


@pytest.mark.parametrize("arch", ARCHS)
def test_a_whole_subspec_answer_stays_within_the_planned_masks(arch, tmp_path):
    """Prefill, every draft step and every verification of an answer, against the planner's masks term for
    a cache of that many slots and a tree of that many nodes."""
    lm = load_model(make_tiny_model_folder(tmp_path, arch), "float32", "cpu")
    _widths_below_min_columns(lm.config)
    draft = build_draft(lm.decoder, 4, 64)
    ids = [3 + (i * 7) % 90 for i in range(120)]
    shape = TreeShape(6, 3)
    lm.eos_token_ids = lambda: set()  # run every token
    with MaskLedger() as ledger:
        events = list(generate_subspec(lm, draft, ids, 30, shape=shape))
    assert sum(len(ev.token_ids) for ev in events) == 30
    kv_length = len(ids) + 30  # the cache's slots: prompt, answer and the tree's scratch rows
    planned = masks_bytes(lm.config, kv_length, shape.nodes, 4)
    assert 0 < ledger.peak <= planned


def test_the_planners_mirrored_constants_agree_with_the_engine():
    """The planner is torch-free, so it keeps its own copies of the engine's numbers it counts with."""
    import inspect

    from engine import generate, model, planner, speculative

    assert planner.MASK_ALIGN == model.MASK_ALIGN
    assert planner.PREFILL_CHUNK == inspect.signature(generate.prefill).parameters["chunk"].default
    assert planner.PREFILL_CHUNK == inspect.signature(speculative.generate_subspec).parameters["prefill_chunk"].default
