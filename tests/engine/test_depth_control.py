"""Auto depth: the controller picks the depth the measured cost model says is fastest, learns the verify
line and the acceptance from passes, and a generation under it stays exactly the target's."""

import random

import pytest
from tiny_models import make_tiny_model_folder

from engine.bench import run_bench
from engine.depth_control import DepthControl
from engine.generate import generate_plain
from engine.loading import load_model
from engine.speculative import TreeShape, generate_subspec
from engine.substitute import build_draft


def simulate(control: DepthControl, accept, step_ms: float, verify_ms, passes: int = 200, seed: int = 0):
    """Run the controller against a synthetic machine: `accept(depth, rng)` draft tokens accepted,
    `step_ms` per draft step, `verify_ms(nodes)`. Returns the depths it chose."""
    rng = random.Random(seed)
    depths = []
    for _ in range(passes):
        depth = control.choose().depth
        a = accept(depth, rng)
        n = control.nodes(depth)
        control.observe(depth, a, n, depth * step_ms, verify_ms(n), depth * step_ms + verify_ms(n) + 0.5)
        depths.append(depth)
    return depths


def geometric(p):
    """Acceptance where each level is accepted with probability p given the one above."""
    def accept(depth, rng):
        a = 0
        while a < depth and rng.random() < p:
            a += 1
        return a
    return accept


def settled(depths, tail=60):
    """The depth chosen most often over the last passes (probes aside)."""
    last = depths[-tail:]
    return max(set(last), key=last.count)


def test_offloading_machine_goes_deep():
    # Verify bound by streaming weights (flat in nodes), cheap draft steps, a draft that agrees: deep trees.
    control = DepthControl(48, 6)
    depths = simulate(control, geometric(0.97), step_ms=2.0, verify_ms=lambda n: 230 + 0.01 * n)
    assert settled(depths) >= 40


def test_compute_bound_machine_with_a_slow_draft_decodes_plainly():
    # A CPU: every verified node costs and a draft step costs as much as a target step: plain decoding.
    control = DepthControl(48, 6)
    depths = simulate(control, geometric(0.8), step_ms=30.0, verify_ms=lambda n: 30 + 2.0 * n)
    assert settled(depths) == 0
    assert depths.count(0) > 0.8 * len(depths)


def test_acceptance_that_stops_early_stops_the_tree_early():
    # Offloading, but the draft never gets past 6 tokens: drafting further only costs.
    def accept(depth, rng):
        return min(depth, rng.randint(3, 6))
    control = DepthControl(48, 6)
    depths = simulate(control, accept, step_ms=4.0, verify_ms=lambda n: 230.0)
    assert 6 <= settled(depths) <= 8


def test_choice_follows_a_change_in_the_conversation():
    # Long accepted runs (say, code being repeated), then short ones: the depth comes down.
    control = DepthControl(48, 6)
    deep = simulate(control, geometric(0.98), step_ms=4.0, verify_ms=lambda n: 230.0, passes=150)
    assert settled(deep) >= 40
    shallow = simulate(control, lambda d, rng: min(d, 2), step_ms=4.0, verify_ms=lambda n: 230.0, passes=150, seed=1)
    assert settled(shallow) <= 4


def test_survival_is_a_censored_estimate():
    # Passes of depth 4 that accept all 4 say nothing against deeper levels: they must not look rejected.
    control = DepthControl(16, 2)
    for _ in range(30):
        control.observe(4, 4, control.nodes(4), 4.0, 10.0, 15.0)
    s = control.survival()
    assert s[4] > 0.9
    assert s[8] > 0.5  # extrapolated at the pooled rate, not zero
    # Passes of depth 8 that always stop after 2: levels 3.. fall, levels 1-2 stay high.
    for _ in range(60):
        control.observe(8, 2, control.nodes(8), 8.0, 10.0, 19.0)
    s = control.survival()
    assert s[2] > 0.9 and s[3] < 0.2


def test_verify_line_is_learned_from_two_sizes():
    control = DepthControl(8, 4)
    control.observe(2, 1, 9, 2.0, 10 + 2 * 9, 30)
    assert control.verify_ms(100) == pytest.approx(28)  # one size: flat
    control.observe(0, 0, 1, 0.0, 10 + 2 * 1, 13)
    assert control.verify_ms(100) == pytest.approx(210)
    assert control.verify_ms(1) == pytest.approx(12)


def test_first_passes_probe_then_the_model_decides_and_probes_back_off():
    control = DepthControl(48, 6)
    assert control.choose().depth == 12 and control.choose().probe
    control.observe(12, 12, control.nodes(12), 12 * 30.0, 200.0, 600.0)
    assert control.choose().depth == 0
    depths = simulate(control, geometric(0.8), step_ms=30.0, verify_ms=lambda n: 30 + 2.0 * n, passes=400)
    probes = [i for i, d in enumerate(depths) if d]
    # Probes away from plain decoding grow further apart while they change nothing.
    gaps = [b - a for a, b in zip(probes, probes[1:])]
    assert gaps and gaps[-1] > gaps[0] and max(gaps) <= 256


def test_limit_after_out_of_memory_caps_the_depth():
    control = DepthControl(48, 6)
    simulate(control, geometric(0.97), step_ms=2.0, verify_ms=lambda n: 230.0, passes=40)
    control.limit(10)
    depths = simulate(control, geometric(0.97), step_ms=2.0, verify_ms=lambda n: 230.0, passes=40)
    assert max(depths) <= 10


def test_a_conversation_keeps_its_controller_and_stays_exact(tmp_path):
    lm = load_model(make_tiny_model_folder(tmp_path, "llama"), "float32", "cpu")
    draft = build_draft(lm.decoder, 4, 64)
    shape = TreeShape(8, 3, auto=True)
    control = DepthControl(8, 3)
    for prompt in ["hello world", "the cat sat on"]:
        ids = lm.encode(prompt)
        plain = [t for e in generate_plain(lm, ids, 30) for t in e.token_ids]
        events = list(generate_subspec(lm, draft, ids, 30, shape=shape, control=control))
        assert [t for e in events for t in e.token_ids] == plain
        assert all(0 <= e.depth <= 8 for e in events)
    assert control.passes >= 2 * 5  # used by both answers (each takes several passes)
    # A controller made for another shape is not used.
    other = DepthControl(4, 3)
    list(generate_subspec(lm, draft, lm.encode("hi"), 10, shape=shape, control=other))
    assert other.passes == 0


def test_bench_compares_fixed_and_auto_depth_side_by_side(tmp_path):
    lm = load_model(make_tiny_model_folder(tmp_path, "qwen2"), "float32", "cpu")
    shapes = [TreeShape(6, 2), TreeShape(6, 2, auto=True)]
    rows = run_bench(lm, [["hello world"], ["the cat sat on"], ["one two three"]], ["vanilla", "subspec"], shapes,
                     20, lambda: build_draft(lm.decoder, 4, 64))
    by = {r["method"]: r for r in rows}
    fixed, auto = by["subspec D6 K2"], by["subspec D6 K2 auto"]
    assert auto["identical"] == auto["answers"] == 3 and fixed["identical"] == 3
    assert fixed["mean_depth"] <= 6 and 0 <= auto["mean_depth"] <= 6


def _trace_module():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "auto_depth_trace.py"
    spec = importlib.util.spec_from_file_location("auto_depth_trace", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_trace_replay_counts_passes_exactly():
    replay = _trace_module().replay
    # Depth 2 over A = [3, 0, 5, 1]: accept 2 at p=0 (3 tokens), then depth 1 (one position left) accepts 1.
    out = replay([[3, 0, 5, 1]], lambda: 2, step_ms=1.0, verify_ms=10.0)
    assert (out["tokens"], out["passes"]) == (5, 2)
    assert out["tokens_per_s"] == pytest.approx(5 / 23 * 1e3, rel=1e-3)


@pytest.mark.parametrize("step_ms,verify_ms", [(2.5, 231.0), (19.0, 231.0), (30.0, 40.0)])
def test_auto_depth_on_replayed_answers_is_near_the_best_fixed_depth(step_ms, verify_ms):
    # Acceptance from every position of long answers, geometric with a sometimes-easy stretch.
    rng = random.Random(3)
    traces = []
    for _ in range(4):
        trace = []
        for i in range(600):
            p = 0.95 if (i // 150) % 2 else 0.8
            trace.append(geometric(p)(48, rng))
        traces.append(trace)
    replay = _trace_module().replay
    fixed = {d: replay(traces, lambda d=d: d, step_ms, verify_ms)["tokens_per_s"] for d in (0, 2, 4, 8, 16, 32, 48)}
    control = DepthControl(48, 6)
    auto = replay(traces, lambda: control.choose().depth, step_ms, verify_ms,
                  observe=lambda d, a, td, tv: control.observe(d, a, control.nodes(d), td, tv, td + tv))
    assert auto["tokens_per_s"] >= 0.93 * max(fixed.values())
