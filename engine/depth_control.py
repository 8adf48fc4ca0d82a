"""Auto depth: the draft tree's depth chosen before every target pass from what this machine and this
conversation have measured so far.

The planner predicts a depth from a hardware model before anything runs; that prediction is only as good as
its kernel timings (the fused low-bit draft, the verify pass over the link) and its guess of the acceptance,
which changes with the conversation (code and lists accept long runs, small talk short ones). Here the
paper's cost model is fed measurements instead:

    tokens per pass   E(D) = 1 + S(1) + ... + S(D)        S(d) = P(at least d draft tokens accepted)
    time per pass     T(D) = D * t_step + t_verify(n(D)) + t_overhead

and each pass uses the D in [0, max_depth] with the highest E(D) / T(D). D = 0 is plain decoding.

- S(d) is a Kaplan-Meier estimate over recent passes: a pass of depth D that accepted a tokens says that level
  d was reached for d <= min(a + 1, D) and passed for d <= a; a pass that accepted all D says nothing about
  deeper levels (censored), so a shallow pass never makes deep levels look bad. Levels with little data lean
  on the pooled continuation rate, which extrapolates a geometric tail past the deepest level seen.
- t_step is the draft time per step; t_verify(n) = alpha + beta * n is a least-squares line through the
  verify times of recent passes of different sizes: flat when the pass is bound by streaming weights over
  the link (a GPU with offloading: deep trees are nearly free to verify), steep when it is bound by compute
  (a CPU: every node costs).
- Everything decays (by `decay` a pass), so the choice follows the conversation.
- Exploration: the first pass grows a quarter-depth tree and the second is plain decoding (two tree sizes
  identify the verify line, cheaply on a CPU too); later, a probe away from the current choice every `explore_every` passes, the interval doubling
  while probes do not change the choice.

The tokens are the target's whatever depth is chosen: this only decides how much drafting each pass risks.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DepthChoice:
    depth: int
    predicted_tokens: float  # E(D)
    predicted_ms: float  # T(D)
    probe: bool = False  # chosen to explore, not because it looks best

    @property
    def tokens_per_s(self) -> float:
        return self.predicted_tokens / self.predicted_ms * 1e3 if self.predicted_ms > 0 else 0.0


class DepthControl:
    PRIOR_CONTINUATION = 0.8  # before any pass: a substitute draft usually agrees with its target
    PRIOR_WEIGHT = 1.0  # pseudo-passes of the pooled rate added to every level's estimate

    def __init__(self, max_depth: int, topk: int, budget: int | None = None, decay: float = 0.95,
                 explore_every: int = 16, max_explore_every: int = 256):
        if max_depth < 0 or topk < 1:
            raise ValueError(f"max depth must be >= 0 and width >= 1, got {max_depth}, {topk}")
        self.max_depth, self.topk, self.budget = max_depth, topk, budget
        self.decay = decay
        self.explore_every, self.base_explore_every = explore_every, explore_every
        self.max_explore_every = max_explore_every
        self.reached = [0.0] * (max_depth + 1)  # [d]: weighted passes that offered level d and reached d - 1
        self.passed = [0.0] * (max_depth + 1)  # [d]: ... and accepted a token at level d
        self.t_step: float | None = None  # ms per draft step
        self.t_overhead = 0.0  # ms per pass outside draft and verify
        self._fit = [0.0] * 5  # weighted sums for the verify line: w, w*n, w*t, w*n*n, w*n*t
        self.passes = 0
        self._since_probe = 0
        self._best: int | None = None  # the last non-probe choice
        self._probed = False  # a probe ran since the last choice
        self._probe_up = False

    # --- the estimates ------------------------------------------------------------------------------------

    def nodes(self, depth: int) -> int:
        grown = 1 + depth * self.topk
        return min(grown, self.budget) if self.budget else grown

    def survival(self) -> list[float]:
        """S(0..max_depth): the estimated probability that a pass accepts at least d draft tokens."""
        total_reached, total_passed = sum(self.reached[1:]), sum(self.passed[1:])
        pooled = ((total_passed + self.PRIOR_CONTINUATION * self.PRIOR_WEIGHT)
                  / (total_reached + self.PRIOR_WEIGHT))
        s, out = 1.0, [1.0]
        for d in range(1, self.max_depth + 1):
            s *= (self.passed[d] + pooled * self.PRIOR_WEIGHT) / (self.reached[d] + self.PRIOR_WEIGHT)
            out.append(s)
        return out

    def verify_ms(self, nodes: int) -> float | None:
        w, sn, st, snn, snt = self._fit
        if w <= 0:
            return None
        mean_n, mean_t = sn / w, st / w
        var = snn / w - mean_n * mean_n
        # One tree size seen so far: no slope known yet, so a flat line (the probes fix that early on).
        beta = max(0.0, (snt / w - mean_n * mean_t) / var) if var > 1e-6 * max(1.0, mean_n * mean_n) else 0.0
        return max(0.0, mean_t + beta * (nodes - mean_n))

    def predict(self, depth: int, expected: list[float] | None = None) -> DepthChoice | None:
        """E(D) and T(D) for one depth; `expected`: E for every depth, when the caller has it already."""
        verify = self.verify_ms(self.nodes(depth))
        if verify is None or (depth > 0 and self.t_step is None):
            return None
        tokens = (expected or self.expected_tokens())[depth]
        ms = depth * (self.t_step or 0.0) + verify + self.t_overhead
        return DepthChoice(depth, tokens, ms)

    def expected_tokens(self) -> list[float]:
        """E(0..max_depth): tokens a pass of each depth emits, bonus included (running sums of S)."""
        out, total = [], 0.0
        for s in self.survival():
            total += s
            out.append(total)  # S(0) = 1 is the bonus token
        return out

    # --- the loop -----------------------------------------------------------------------------------------

    def choose(self) -> DepthChoice:
        """The depth for the next pass."""
        if self.passes == 0:  # a quarter-depth tree: its acceptance, a draft step's time, one verify size
            return DepthChoice(max(1, self.max_depth // 4) if self.max_depth else 0, 0.0, 0.0, probe=True)
        if self.passes == 1:  # a one-node pass (plain decoding, cheap everywhere): the verify line's 2nd point
            return DepthChoice(0, 0.0, 0.0, probe=True)
        expected = self.expected_tokens()
        best = max((c for d in range(self.max_depth + 1) if (c := self.predict(d, expected)) is not None),
                   key=lambda c: (c.tokens_per_s, -c.depth))
        if self._probed:  # the probe's result is in: did it change the choice?
            self._probed = False
            self.explore_every = (self.base_explore_every if best.depth != self._best
                                  else min(self.max_explore_every, 2 * self.explore_every))
        self._best = best.depth
        if self._since_probe >= self.explore_every:
            # Alternately a deeper and a shallower tree than the best; from plain decoding, a small tree.
            self._since_probe = 0
            self._probe_up = not self._probe_up
            probe = min(self.max_depth, max(2 * best.depth, 4)) if self._probe_up or not best.depth \
                else best.depth // 2
            if probe != best.depth:
                self._probed = True
                return DepthChoice(probe, 0.0, 0.0, probe=True)
        return best

    def observe(self, depth: int, accepted: int, nodes: int, draft_ms: float, verify_ms: float,
                step_ms: float) -> None:
        """What one pass did: its depth, the draft tokens the target accepted, its size and times (ms)."""
        self.passes += 1
        self._since_probe += 1
        k = self.decay
        for d in range(1, self.max_depth + 1):
            self.reached[d] *= k
            self.passed[d] *= k
        for d in range(1, min(accepted + 1, depth, self.max_depth) + 1):
            self.reached[d] += 1.0
        for d in range(1, min(accepted, self.max_depth) + 1):
            self.passed[d] += 1.0
        if depth > 0:
            per_step = draft_ms / depth
            self.t_step = per_step if self.t_step is None else k * self.t_step + (1 - k) * per_step
        overhead = max(0.0, step_ms - draft_ms - verify_ms)
        self.t_overhead = overhead if self.passes == 1 else k * self.t_overhead + (1 - k) * overhead
        self._fit = [x * k for x in self._fit]
        for i, x in enumerate((1.0, nodes, verify_ms, nodes * nodes, nodes * verify_ms)):
            self._fit[i] += x

    def fits(self, max_depth: int, topk: int, budget: int | None) -> bool:
        """Whether this controller's measurements are for trees of this shape (a chat keeps one across
        answers, so each answer does not pay for exploring again)."""
        return (self.max_depth, self.topk, self.budget) == (max_depth, topk, budget)

    def limit(self, max_depth: int) -> None:
        """Lower the deepest tree allowed (after running out of memory)."""
        self.max_depth = min(self.max_depth, max_depth)
        del self.reached[self.max_depth + 1:], self.passed[self.max_depth + 1:]


def control_for(shape, control: DepthControl | None = None) -> DepthControl | None:
    """The controller a generation with tree `shape` (a speculative.TreeShape) uses: `control` while it was
    made for this shape (so a conversation keeps what earlier answers measured), a new one otherwise; None
    for a fixed-depth tree."""
    if not shape.auto:
        return None
    if control is not None and control.fits(shape.depth, shape.topk, shape.budget):
        return control
    return DepthControl(shape.depth, shape.topk, shape.budget)
