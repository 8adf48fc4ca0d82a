"""`attend`: grouped-query attention with the query heads folded into the query length must be SDPA's own
enable_gqa attention (query head h reads KV head h // groups), for every mask shape the engine passes."""

import pytest
import torch
import torch.nn.functional as F

from engine.model import attend, fold_mask


def _case(heads, kv_heads, t, s, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, heads, t, 16, generator=g).to(dtype)
    k = torch.randn(1, kv_heads, s, 16, generator=g).to(dtype)
    v = torch.randn(1, kv_heads, s, 16, generator=g).to(dtype)
    hidden = torch.rand(t, s, generator=g) < 0.4
    hidden[:, 0] = False  # every row sees something
    mask = torch.zeros(t, s).masked_fill(hidden, torch.finfo(torch.float32).min).to(dtype)[None, None]
    return q, k, v, mask


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("heads,kv_heads,t,s", [(8, 2, 6, 40), (9, 3, 1, 17), (4, 1, 5, 5), (4, 4, 3, 10)])
def test_folded_grouped_heads_equal_sdpa_enable_gqa(dtype, heads, kv_heads, t, s):
    q, k, v, mask = _case(heads, kv_heads, t, s, dtype)
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=heads != kv_heads)
    got = attend(q, k, v, mask)
    assert got.shape == want.shape and got.dtype == dtype
    tol = 1e-6 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got, want, atol=tol, rtol=tol)


def test_heads_read_their_own_kv_head():
    """Each KV head's values are one constant, so every query head's output says which KV head it read."""
    q, k, _, mask = _case(6, 3, 4, 9, torch.float32)
    v = torch.arange(3, dtype=torch.float32).view(1, 3, 1, 1).expand(1, 3, 9, 16)
    out = attend(q, k, v, mask)
    want = torch.tensor([[h // 2] * 4 for h in range(6)], dtype=torch.float32)
    torch.testing.assert_close(out[0, :, :, 0], want, atol=1e-5, rtol=0)


def test_no_mask_is_grouped_attention_over_everything():
    q, k, v, _ = _case(8, 2, 1, 12, torch.float32)
    torch.testing.assert_close(attend(q, k, v, None),
                               F.scaled_dot_product_attention(q, k, v, enable_gqa=True), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("groups", [1, 3])
def test_fold_converts_while_it_repeats_bit_for_bit(dtype, groups):
    _, _, _, mask = _case(6, 2, 5, 30, torch.float32)
    folded = fold_mask(mask[0, 0], groups, dtype)
    assert folded.dtype == dtype and torch.equal(folded, mask[0, 0].to(dtype).repeat(groups, 1))
    assert torch.equal(fold_mask(mask, groups, dtype), mask.to(dtype).repeat(1, 1, groups, 1))


@pytest.mark.parametrize("groups", [1, 3])
@pytest.mark.parametrize("slots", [30, 32])
def test_an_aligned_fold_has_rows_at_a_multiple_of_8_and_attends_the_same(groups, slots):
    """On CUDA the fold's rows sit at a stride that is a multiple of MASK_ALIGN, so SDPA's memory-efficient
    kernel need not pad it into a copy in every layer; the values and the attention are the same."""
    from engine.model import MASK_ALIGN

    q, k, v, mask = _case(6, 2, 5, slots, torch.float32)
    plain, aligned = fold_mask(mask, groups, torch.float32), fold_mask(mask, groups, torch.float32, MASK_ALIGN)
    assert torch.equal(aligned, plain) and aligned.shape == plain.shape
    assert all(st % MASK_ALIGN == 0 for st in aligned.stride()[:-1]) and aligned.stride(-1) == 1
    if groups == 1 and slots % MASK_ALIGN == 0:
        assert aligned is mask  # already aligned: no copy
    heads = 2 * groups
    q = torch.randn(1, heads, 5, 16)
    assert torch.equal(attend(q, k, v, aligned), attend(q, k, v, plain))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("window", [None, 3])
def test_a_tree_mask_built_in_the_models_dtype_attends_exactly_as_a_converted_float32_one(dtype, window):
    """Verification builds its mask in the model's dtype: hidden is that dtype's minimum instead of
    float32's minimum rounded to it (-inf). Every row sees itself, so both hide exactly the same keys,
    and attention gives the same numbers bit for bit (SDPA's CPU kernels; Decoder.forward's backends)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from engine.model import ATTENTION_BACKENDS
    from engine.tree import Tree, tree_mask

    g = torch.Generator().manual_seed(1)
    tree = Tree.with_root(5, 40, "cpu")
    while tree.size < 40:
        k = min(3, 40 - tree.size)
        tree.add(torch.randint(0, tree.size, (k,), generator=g), torch.randint(0, 9, (k,), generator=g))
    for committed in (0, 7, 300):
        new = tree_mask(tree.ancestors, slice(0, 40), committed, 40, dtype, tree.depths, window)
        old = tree_mask(tree.ancestors, slice(0, 40), committed, 40, torch.float32, tree.depths, window).to(dtype)
        assert torch.isinf(old).any() and not torch.isinf(new).any()
        q = torch.randn(1, 8, 40, 16, generator=g).to(dtype)
        k, v = (torch.randn(1, 2, committed + 40, 16, generator=g).mul(3).to(dtype) for _ in range(2))
        for backends in (ATTENTION_BACKENDS, [SDPBackend.MATH]):
            with sdpa_kernel(backends):
                assert torch.equal(attend(q, k, v, new[None, None]), attend(q, k, v, old[None, None]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_folded_masked_attention_runs_without_the_math_backend():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q, k, v, mask = (x.cuda() for x in _case(28, 4, 6, 4096, torch.bfloat16))
    with sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION]):
        got = attend(q, k, v, mask)
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    torch.testing.assert_close(got, want, atol=2e-2, rtol=2e-2)
