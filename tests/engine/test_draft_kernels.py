"""engine.draft_kernels: the draft's fused elementwise kernels (Triton's interpreter here) against the eager ops
they replace, compiled for real GPUs without spilling, and a draft on them: the target untouched, the same
tree captured-shape or not, and speculative output still exactly the target's."""

import os
import warnings

import pytest
import torch
from tiny_models import make_tiny_checkpoint

pytest.importorskip("triton")

from engine import draft_kernels  # noqa: E402
from engine.errors import SubspecError  # noqa: E402
from engine.loading import load_decoder  # noqa: E402
from engine.model import apply_rotary  # noqa: E402
from engine.substitute import build_draft  # noqa: E402

TOL = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.bfloat16: dict(atol=2e-2, rtol=2e-2),
       torch.float16: dict(atol=2e-3, rtol=2e-3)}
DTYPES = list(TOL)


def _rand(gen, *shape, dtype=torch.float32):
    return torch.randn(*shape, generator=gen).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_add_rms_norm_is_the_residual_add_then_rms_norm(dtype):
    gen = torch.Generator().manual_seed(1)
    h, d, w = _rand(gen, 1, 5, 200, dtype=dtype), _rand(gen, 1, 5, 200, dtype=dtype), _rand(gen, 200, dtype=dtype)
    s, out = draft_kernels.add_rms_norm(h, d, w, 1e-5)
    ref_s, ref_out = draft_kernels.add_rms_norm_reference(h, d, w, 1e-5)
    assert s.shape == out.shape == h.shape and s.dtype == out.dtype == dtype
    assert torch.equal(s, ref_s)  # one rounding of an exact sum: the same residual stream
    torch.testing.assert_close(out, ref_out, **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_silu_mul_reads_gate_and_up_from_one_stacked_output(dtype):
    gen = torch.Generator().manual_seed(2)
    gu = _rand(gen, 1, 6, 2 * 300, dtype=dtype) * 3
    gate, up = gu.split(300, dim=-1)  # strided views, as the stacked gate|up substitute gives them
    out = draft_kernels.silu_mul(gate, up)
    assert out.shape == (1, 6, 300) and out.is_contiguous()
    torch.testing.assert_close(out, draft_kernels.silu_mul_reference(gate, up), **TOL[dtype])


@pytest.mark.parametrize("dtype,d", [(torch.float32, 32), (torch.bfloat16, 32), (torch.float16, 32),
                                     (torch.float32, 24), (torch.bfloat16, 80)])
def test_rotary_store_rotates_q_and_k_and_stores_k_and_v_only_at_the_slots(dtype, d):
    """7 query heads and head sizes that are not powers of two (24, 80): the padded rows and columns of
    the kernel's block are masked."""
    gen = torch.Generator().manual_seed(3)
    t, heads, kv_heads, capacity = 4, 7, 1, 12
    qkv = _rand(gen, 1, t, (heads + 2 * kv_heads) * d, dtype=dtype)
    q, k, v = qkv.split((heads * d, kv_heads * d, kv_heads * d), dim=-1)
    pos = torch.tensor([9, 3, 4, 17])
    freqs = pos.float()[:, None] * (1.0 / 10000 ** (torch.arange(0, d, 2).float() / d))[None]
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos(), emb.sin()
    sin[:, : d // 2].neg_()  # signed, as engine.model.Rotary gives it
    cos, sin = cos.to(dtype), sin.to(dtype)
    kc = torch.full((1, kv_heads, capacity, d), 7.0, dtype=dtype)
    vc = kc.clone()
    slots = torch.tensor([10, 2, 3, 0])
    qo = draft_kernels.rotary_store(q, k, v, cos, sin, kc, vc, slots, heads, kv_heads, d)

    def bhtd(x, n):
        return x.view(1, t, n, d).transpose(1, 2)

    assert qo.shape == (1, heads, t, d)
    torch.testing.assert_close(qo, apply_rotary(bhtd(q, heads), cos, sin), **TOL[dtype])
    torch.testing.assert_close(kc[:, :, slots], apply_rotary(bhtd(k, kv_heads), cos, sin), **TOL[dtype])
    assert torch.equal(vc[:, :, slots], bhtd(v, kv_heads))
    others = [i for i in range(capacity) if i not in slots.tolist()]
    assert (kc[:, :, others] == 7).all() and (vc[:, :, others] == 7).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_rotary_table_is_the_targets_rotary(dtype):
    from engine.config import ModelConfig
    from engine.model import Rotary

    for head_dim in (16, 24):
        rotary = Rotary(ModelConfig.from_dict(dict(model_type="llama", vocab_size=10, hidden_size=4 * head_dim,
                                                   intermediate_size=8, num_hidden_layers=1,
                                                   num_attention_heads=4, num_key_value_heads=2)))
        positions = torch.tensor([0, 1, 17, 300, 4095, 131071, 1_000_000])  # past 1e5 radians too
        cos, sin = draft_kernels.rotary_table(positions, rotary.inv_freq, dtype)
        ref_cos, ref_sin = rotary(positions, dtype)
        assert cos.shape == sin.shape == (7, head_dim) and cos.dtype == dtype
        torch.testing.assert_close(cos, ref_cos, **TOL[dtype])
        torch.testing.assert_close(sin, ref_sin, **TOL[dtype])


def test_rotary_store_refuses_an_odd_head_size():
    x = torch.zeros(1, 2, 5)
    with pytest.raises(ValueError, match="even head size"):
        draft_kernels.rotary_store(x, x, x, torch.zeros(2, 5), torch.zeros(2, 5), torch.zeros(1, 1, 4, 5),
                                   torch.zeros(1, 1, 4, 5), torch.tensor([0, 1]), 1, 1, 5)


def test_usable_checks_once_per_layout_and_falls_back_with_a_warning():
    assert draft_kernels.usable("cpu", torch.float32)
    assert draft_kernels.usable("cpu", torch.float32, (120, 5, 1, 24))  # a model's own layout
    assert (torch.device("cpu"), torch.float32, (120, 5, 1, 24)) in draft_kernels._USABLE
    key = (torch.device("cpu"), torch.float64, draft_kernels.SMALL)  # a dtype the kernels refuse: it fails cleanly
    draft_kernels._USABLE.pop(key, None)
    try:
        with pytest.warns(RuntimeWarning, match="failed .*draft uses eager ops"):
            assert not draft_kernels.usable("cpu", torch.float64)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert not draft_kernels.usable("cpu", torch.float64)  # remembered: no second check or warning
    finally:
        draft_kernels._USABLE.pop(key, None)


def test_a_kernel_that_computes_wrongly_is_caught_by_the_check(monkeypatch):
    shape = (64, 4, 2, 16)
    key = (torch.device("cpu"), torch.float32, shape)
    monkeypatch.setattr(draft_kernels, "silu_mul", lambda g, u: draft_kernels.silu_mul_reference(g, u) * 1.001)
    monkeypatch.delitem(draft_kernels._USABLE, key, raising=False)
    with pytest.warns(RuntimeWarning, match="differ from the eager ops"):
        assert not draft_kernels.usable("cpu", torch.float32, shape)
    draft_kernels._USABLE.pop(key)


def test_the_kernels_compile_for_real_gpus_without_spilling():
    """Triton's own ptxas, no GPU: Ampere, Ada and Hopper, in each dtype."""
    import importlib.util

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    spec = importlib.util.spec_from_file_location("lowbit_sass", os.path.join(root, "benchmarks", "lowbit_sass.py"))
    sass = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sass)

    def compiled(fn, sig, consts, arch, warps=4):
        """As a launch on a GPU specializes it: pointers and the strides (all multiples of 16 at real
        sizes) carry Triton's divisibility hint, which gives the vectorized loads."""
        signature = dict(sig, **{k: "constexpr" for k in consts})
        divisible = [n for n, kind in sig.items() if kind.startswith("*") or n.startswith("stride")]
        attrs = {(fn.arg_names.index(n),): [["tt.divisibility", 16]] for n in divisible}
        return triton.compile(ASTSource(fn=fn, signature=signature, constexprs=consts, attrs=attrs),
                              target=GPUTarget("cuda", arch, 32), options={"num_warps": warps})

    for arch in (80, 89, 90):
        for dt, rnd in (("bf16", 1), ("fp16", 2), ("fp32", 0)):
            flags = dict(ROUND=rnd, EMULATE=False)
            ints = lambda *names: {n: "i32" for n in names}  # noqa: E731
            kernels = [
                compiled(draft_kernels._add_rms_norm_kernel,
                         dict({n: f"*{dt}" for n in ("h_ptr", "d_ptr", "w_ptr", "sum_ptr", "out_ptr")}, eps="fp32",
                              **ints("N", "stride_h", "stride_d", "stride_s", "stride_o")),
                         dict(flags, BLOCK=4096), arch, 8),
                compiled(draft_kernels._silu_mul_kernel,
                         dict({n: f"*{dt}" for n in ("g_ptr", "u_ptr", "out_ptr")},
                              **ints("M", "N", "stride_g", "stride_u", "stride_o")), dict(flags, BLOCK=1024), arch),
                compiled(draft_kernels._rotary_store_kernel,
                         dict({n: f"*{dt}" for n in ("q_ptr", "k_ptr", "v_ptr", "cos_ptr", "sin_ptr", "qo_ptr",
                                                     "kc_ptr", "vc_ptr")}, slots_ptr="*i64",
                              **ints("T", "stride_qt", "stride_kt", "stride_vt", "stride_ct", "stride_st",
                                     "stride_ch", "stride_cs")),
                         dict(flags, H=28, HKV=4, D=128, HP=32, DP=128), arch),
                compiled(draft_kernels._rotary_store_kernel,  # a head size that is not a power of two
                         dict({n: f"*{dt}" for n in ("q_ptr", "k_ptr", "v_ptr", "cos_ptr", "sin_ptr", "qo_ptr",
                                                     "kc_ptr", "vc_ptr")}, slots_ptr="*i64",
                              **ints("T", "stride_qt", "stride_kt", "stride_vt", "stride_ct", "stride_st",
                                     "stride_ch", "stride_cs")),
                         dict(flags, H=32, HKV=8, D=80, HP=32, DP=128), arch),
                compiled(draft_kernels._rotary_table_kernel,
                         {"pos_ptr": "*i64", "inv_ptr": "*fp32", "cos_ptr": f"*{dt}", "sin_ptr": f"*{dt}"},
                         dict(flags, HALF=64, HP=64), arch, 1)]
            for n, k in enumerate(kernels):
                res = sass.resources(k)
                assert res["local_bytes"] == 0, (arch, dt, n, res)
                # The rotary table's sin and cos are libdevice's: their reduction of huge arguments (past
                # ~1e5 radians: positions past 100k) keeps a small array on the stack. No other kernel may.
                assert res["stack_bytes"] <= (64 if n == len(kernels) - 1 else 0), (arch, dt, n, res)


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    return load_decoder(make_tiny_checkpoint(tmp_path_factory.mktemp("t"), "qwen2"), torch.float32)


def test_a_fused_ops_draft_leaves_the_target_as_it_was(target):
    draft = build_draft(target, 4, 64, layers=[0, 2], merge=True, fused_ops=True)
    assert draft.fused_ops
    from engine.model import DraftRotary, Rotary

    assert isinstance(draft.rotary, DraftRotary) and type(target.rotary) is Rotary
    assert draft.rotary.inv_freq is target.rotary.inv_freq
    for i, layer in enumerate(draft.layers):
        t = target.layers[i]
        assert layer.fused_ops and layer.self_attn.fused_ops and layer.mlp.fused_ops
        assert layer is not t and layer.self_attn is not t.self_attn and layer.mlp is not t.mlp
        assert not (t.fused_ops or t.self_attn.fused_ops or t.mlp.fused_ops)
    kept = draft.layers[1]  # full precision: the target's own linears, in the draft's shells
    assert kept.self_attn.q_proj is target.layers[1].self_attn.q_proj and kept.mlp.up_proj is target.layers[1].mlp.up_proj
    assert not build_draft(target, 4, 64, layers=[0], merge=True).fused_ops  # CPU default: eager ops
    with pytest.raises(SubspecError, match="merged drafts only"):
        build_draft(target, 4, 64, layers=[0], merge=False, fused_ops=True)


def _logits(draft, target, n=5):
    cache = target.new_cache(32)
    tokens = torch.arange(3, 3 + n)
    mask = torch.triu(torch.full((n, n), torch.finfo(torch.float32).min), 1)
    return draft(tokens, torch.arange(n), cache, 0, mask)


# [0, 1]: the offloading layout, the last layer resident (a full-precision shell ends the draft, and the
# final norm finishes its pending add).
@pytest.mark.parametrize("layers", [[0, 2], [0, 1]])
def test_a_fused_ops_draft_computes_what_the_eager_merged_one_does(target, layers):
    eager = build_draft(target, 4, 64, layers=layers, merge=True, fused_ops=False)
    fused = build_draft(target, 4, 64, layers=layers, merge=True, fused_ops=True)
    a, b = _logits(fused, target), _logits(eager, target)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    assert torch.equal(a.argmax(-1), b.argmax(-1))


def test_captured_shape_and_ordinary_steps_grow_the_same_tree_on_fused_ops(target):
    from engine.speculative import TreeShape, grow_tree

    draft = build_draft(target, 4, 64, layers=[0, 2], merge=True, fused_ops=True)
    trees = []
    for fixed in (False, True):
        cache = target.new_cache(1024)  # the captured-shape steps attend over a 256-slot span of it
        prompt = torch.arange(5, 13)
        target(prompt, torch.arange(8), cache, 0, torch.triu(torch.full((8, 8), torch.finfo(torch.float32).min), 1))
        cache.commit(8)
        trees.append(grow_tree(draft, cache, torch.tensor(4), TreeShape(5, 3), 5, [0.0], fixed_shapes=fixed))
    assert {k[1] for k in draft.__dict__["_draft_steps"]} == {256}
    a, b = trees
    assert a.size == b.size and torch.equal(a.tokens[: a.size], b.tokens[: b.size])
    assert torch.equal(a.parents[: a.size], b.parents[: b.size])


def test_a_head_size_that_is_not_a_power_of_two_drafts_on_the_kernels(tmp_path):
    """Llama with 24-wide heads: the fused draft equals the eager merged one and grows the same tree."""
    from engine.speculative import TreeShape, grow_tree

    target = load_decoder(make_tiny_checkpoint(tmp_path, "llama-head24"), torch.float32)
    assert target.config.head_dim == 24
    fused = build_draft(target, 4, 24, layers=[1, 2], merge=True, fused_ops=True)
    eager = build_draft(target, 4, 24, layers=[1, 2], merge=True, fused_ops=False)
    torch.testing.assert_close(_logits(fused, target), _logits(eager, target), rtol=1e-4, atol=1e-4)
    trees = []
    for draft in (fused, eager):
        cache = target.new_cache(512)
        trees.append(grow_tree(draft, cache, torch.tensor(4), TreeShape(4, 3), 4, [0.0], fixed_shapes=True))
    assert torch.equal(trees[0].tokens, trees[1].tokens) and torch.equal(trees[0].parents, trees[1].parents)


def test_greedy_subspec_on_a_fused_ops_draft_equals_plain_decoding(tmp_path):
    """The whole CUDA draft path -- fused low-bit substitutes, merged launches, fused elementwise kernels --
    run here in Triton's interpreter: the output is exactly the target's."""
    from tiny_models import make_tiny_model_folder

    from engine.events import summarize
    from engine.generate import generate_plain
    from engine.loading import load_model
    from engine.speculative import TreeShape, generate_subspec

    lm = load_model(make_tiny_model_folder(tmp_path, "qwen2"), "float32", "cpu")
    draft = build_draft(lm.decoder, 4, 32, layers=[1, 2], fused=True, merge=True, fused_ops=True)
    ids = lm.encode("the cat sat on")
    plain = summarize(generate_plain(lm, ids, 24), len(ids), "vanilla")
    spec = summarize(generate_subspec(lm, draft, ids, 24, shape=TreeShape(6, 3)), len(ids), "subspec")
    assert spec.token_ids == plain.token_ids
    assert spec.tau > 1.5
