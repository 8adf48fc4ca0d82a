"""Planner: from a model's config.json and a hardware profile to a memory layout and a tree shape, before
a single weight is downloaded. Pure arithmetic: no torch, no GPU.

What it decides (for the runtime of engine/offload.py):
- which decoder layers stay resident in full precision (the last `resident_layers`: engine.config.
  streamed_layers says why), the others being
  offloaded: their linear weights sit in pinned host RAM and stream into `slots` GPU buffers every target
  pass, while an HQQ substitute of each (group 64) stays on the GPU for the draft;
- the substitute bits of each offloaded layer (4, raised to 8 where memory allows);
- the KV cache length;
- the draft tree (depth D, width K), or plain decoding (D = 0, method "vanilla").

Order of choices: the smallest SubSpec layout must fit (else PlanError); then the context the user asked
for (shortened only when it does not fit); then spare memory goes to 8-bit substitutes (best alignment per
byte: on SmolLM2 a prototype measured tau 35.6 with 8-bit against 6.8 with 4-bit at D48 K6), then to
resident full-precision layers; finally D and K maximise the paper's cost model
    tokens/s = tau(D, K, bits) / (D * t_draft + t_verify(1 + D * K))
which is speedup = tau / (D * t_draft / t_target + gamma) with gamma = t_verify / t_target (about 1 under
offloading: the tree rides on the same weight transfer). Plain decoding is kept whenever it predicts more.

VRAM is predicted part by part (_memory): embeddings, head, norms, resident layers, substitutes, slots,
the KV cache, the attention masks of a target pass (which grow with the context, as the KV cache does)
and a workspace. Every plan's sum stays within the budget.

Units: memory in bytes; "GB" in messages and `vram_gb` mean GiB (2**30, what a "8 GB" card holds and what
torch reports). Bandwidths are in 1e9 bytes/s (GB/s as PCIe and GPU data sheets count them).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace

from .config import ModelConfig
from .errors import SubspecError

GIB = 1 << 30
GROUP_SIZE = 64
MIN_SLOTS = 2
MIN_KV_LENGTH = 512
KV_ROUND = 256  # a shortened context is rounded down to a multiple of this
WORKSPACE_FIXED = 256 << 20  # activations, attention scores, prefill chunks, allocator slack (not masks)
MAX_NODES = 400  # tree node budget: 1 + D * K <= MAX_NODES; memory is reserved for this many
DEPTHS = (0, 1, 2, 4, 8, 16, 24, 32, 48, 64)
TOPKS = (1, 2, 4, 6, 8)
SUBSTITUTE_BITS = (2, 3, 4, 8)
# Attention masks (mask_bytes). A forward's mask has a row per new token and a column per cache slot, so it
# grows with the context: unlike the rest of the workspace it is no fixed amount.
PREFILL_CHUNK = 256  # engine.generate.prefill's chunk: a prompt runs in forwards of this many rows
# Under offloading a prompt goes in passes (engine.model.Decoder.prefill_pass): each streams the offloaded
# layers once and runs every layer over the pass's tokens PREFILL_CHUNK at a time, so it holds one chunk's
# activations and masks, as a chunked forward does, plus the pass's residual stream and rotary tables
# (prefill_pass_bytes). A plan gives the pass what memory its layout leaves, up to a stream of this size:
# 9,216 tokens a pass for Qwen2.5-7B in bfloat16, 4,096 for a 70B, where prefilling a chunk per forward
# streamed the weights once per 256 tokens. Without a plan (a CPU, a forced split) a pass is this size.
PREFILL_PASS_BYTES = 64 << 20
# Before the rest of a layout's spare memory goes to 8-bit substitutes and resident layers, a pass of this
# many tokens (14 MB for Qwen2.5-7B): a 2,048-token prompt then streams the weights once instead of 8 times.
PREFILL_PASS_FIRST = 2048
MASK_ALIGN = 8  # elements: engine.model.MASK_ALIGN, the row stride of a fold on CUDA (see mask_bytes)
# engine.draft_graph keeps up to four captured draft steps: a tree's root step (1 row) and its
# topk-row step, at the current span and the one before.
DRAFT_STEP_ROWS = 2 * (1 + max(TOPKS))

# Sampling (engine.sampling.select_tokens) warps at most SAMPLE_CHUNK_ELEMENTS logits at a time (a block of
# rows); the block's float32 cast (4 bytes a value) and top-p's softmax, sort (values and int64 indices),
# cumulative sums and scatter hold 33 bytes per value at their peak on the CPU (the draw's Gumbel noise, after
# them, 20 without the cast; tests/engine/test_sampling.py measures both). CUDA's segmented sort adds double buffers for keys and indices (12 more): 48 rounds that up.
SAMPLE_CHUNK_ELEMENTS = 1 << 21  # engine.sampling's (a test checks they agree)
SAMPLING_BYTES_PER_VALUE = 48

# Hardware defaults when the profile has no measurement.
PCIE_X16_GBPS = {1: 3.0, 2: 6.0, 3: 12.0, 4: 25.0, 5: 50.0, 6: 100.0}  # effective host-to-device, x16
DEFAULT_LINK_GBPS = 25.0  # PCIe 4.0 x16
DEFAULT_GPU_MEMORY_GBPS = 1000.0  # a consumer GPU (RTX 4090: 1008)
DEFAULT_GPU_TFLOPS = 50.0  # dense 16-bit matmul actually reached, conservative for a 4090-class card
DEFAULT_CPU_MEMORY_GBPS = 40.0  # dual-channel DDR5
DEFAULT_CPU_TFLOPS = 0.5
# Eager PyTorch reaches about this fraction of peak memory bandwidth on decode-sized matmuls (and hqq's
# low-bit kernels about the same), and pays a fixed launch cost per decoder layer per forward. Both were
# chosen so that Qwen2.5-7B at an 8 GB cap reproduces the paper's cycle: tau 28.35 at 24.29 tok/s is
# 1.17 s per target pass, 0.52 s of it the transfer, so about 12 ms per draft step.
MEMORY_EFFICIENCY = 0.6
LAYER_OVERHEAD_S = 0.15e-3

# Tau model. A draft step "misses" (the target's token is not among the kept children on the path) with
# probability m; acceptance is geometric: tau = (1 - a**(D+1)) / (1 - a), a = 1 - m, where
#   m(K, bits) = (MISS_FLOOR + MISS_4BIT * e) * (6 / K) ** WIDTH_EXPONENT
# and e is the mean over all decoder layers of the relative error of its substitute (4-bit = 1, resident
# = 0), weighted by depth: layer i (from 0) counts i + 1 (layer_weight). Where the precision sits matters:
# SmolLM2 at D48 K6 (greedy, the first 10 MT-Bench prompts, 64 tokens) drafted tau 9.4 all 4-bit, 10.2 with
# its first 15 of 30 layers 8-bit and 17.5 with its last 15, 30.0 all 8-bit; 9.7 with the first 6 layers
# exact, 12.6 with the last 6; 13.1 with the last 7 at 8-bit (benchmarks/substitute_placement.py). Calibrated
# on its all-4 and all-8-bit tau, linear weights predict those five mixed drafts as 11.7, 20.3, 9.7, 12.9,
# 13.5; an unweighted mean as 15.0, 15.0, 11.1, 11.1, 11.4. Hence 8-bit goes to the last streamed layers
# and the resident (exact) layers are the last of all (engine.config.streamed_layers).
# The floor is what even a near-exact draft misses (near-ties of the target, beam false positives,
# answers ending inside the tree): it is set so that an all-8-bit draft reproduces the best measured
# 8-bit tau (SmolLM2, D48 K6: 35.6 -> m 0.014), and MISS_FLOOR + MISS_4BIT so that all-4-bit gives tau 28
# at D48 K6 (the paper: 28.35 for Qwen2.5-7B at 8 GB). The relative errors of 8-, 3- and 4-bit are the
# ratios of SmolLM2's measured misses above the floor (tau 35.6 / 6.8 / 2.1 at D48 K6); 2-bit is a guess.
# Width: K = 1 misses about 3x more often than K = 6 (top-1 agreement of a 4-bit 7B about 92%).
SUBSTITUTE_ERROR = {2: 10.0, 3: 3.4, 4: 1.0, 8: 0.02}
MISS_FLOOR = 0.012
MISS_4BIT = 0.0135
WIDTH_EXPONENT = 0.6
REFERENCE_WIDTH = 6


class PlanError(SubspecError):
    """The model cannot run within the budget. `missing_bytes`: how much more memory (`resource`: "VRAM"
    or "RAM") the smallest workable layout needs."""

    def __init__(self, message: str, missing_bytes: int, resource: str = "VRAM"):
        super().__init__(message)
        self.missing_bytes = int(missing_bytes)
        self.resource = resource


@dataclass(frozen=True)
class Plan:
    method: str  # "subspec" | "vanilla"
    device: str  # "cuda" | "cpu"
    resident_layers: int  # the last `resident_layers` decoder layers, full precision on the device
    offloaded_layers: int
    substitute_bits: list  # per decoder layer: None (resident) or the bits of its substitute
    kv_length: int  # committed context tokens; the cache also holds `nodes` scratch rows
    slots: int  # streaming buffers, each one decoder layer's linear weights
    depth: int  # 0: plain decoding
    topk: int
    nodes: int  # 1 + depth * topk, verified in one target pass
    budget_bytes: int  # VRAM budget (RAM on a CPU-only plan)
    predicted_vram_bytes: int
    predicted_host_bytes: int  # pinned offloaded weights (the whole model on a CPU-only plan)
    predicted_tokens_per_s: float
    predicted_tau: float
    baseline_tokens_per_s: float  # plain decoding on the same hardware, for the speedup
    offloaded_bytes_per_pass: int
    # prompt tokens per pass of the streamed layers (engine.model.Decoder.prefill_pass; PREFILL_CHUNK: a
    # chunked forward, as without streamed layers)
    prefill_pass_tokens: int
    memory: dict = field(default_factory=dict)  # the predicted_vram_bytes (or RAM) broken down by part
    reasons: list = field(default_factory=list)  # one human sentence per choice

    @property
    def draft_bits(self) -> dict[int, int] | None:
        """{layer: bits} of the substitutes the draft is built with (engine.loading's `substitute_bits`);
        None when the plan has no draft."""
        return {i: b for i, b in enumerate(self.substitute_bits) if b is not None} or None

    @property
    def speedup(self) -> float:
        return self.predicted_tokens_per_s / self.baseline_tokens_per_s if self.baseline_tokens_per_s else 1.0

    def as_json(self) -> dict:
        out = asdict(self)
        out["substitute_bits"] = list(self.substitute_bits)
        out["reasons"] = list(self.reasons)
        out["speedup"] = round(self.speedup, 3)
        return out


# ---------------------------------------------------------------------------------------------------
# Memory model: bytes of each part.


def layer_linear_params(config: ModelConfig) -> int:
    """Parameters of one decoder layer's linears: h*q + 2*h*kv + q*h + 3*h*i (+ q + 2*kv biases), with
    q = heads * head_dim and kv = kv_heads * head_dim."""
    return _layer_weight_params(config) + _layer_bias_params(config)


def _layer_weight_params(config: ModelConfig) -> int:
    h, i = config.hidden_size, config.intermediate_size
    q, kv = config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim
    return h * q + 2 * h * kv + q * h + 3 * h * i


def _layer_bias_params(config: ModelConfig) -> int:
    q, kv = config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim
    return q + 2 * kv if config.qkv_bias else 0


def layer_linear_bytes(config: ModelConfig, dtype_bytes: int = 2) -> int:
    """One decoder layer's linear weights in full precision: what a slot holds and what one offloaded
    layer moves over the link per target pass."""
    return layer_linear_params(config) * dtype_bytes


def substitute_layer_bytes(config: ModelConfig, bits: int, dtype_bytes: int = 2) -> int:
    """One layer's HQQ substitute: weights * (b/8 + 2*2/64), a 16-bit scale and zero per group of 64.
    hqq packs 3-bit values ten to an int32 (3.2 bits each). Biases stay full precision (shared with the
    target)."""
    if bits not in SUBSTITUTE_BITS:
        raise SubspecError(f"substitute bits must be one of {SUBSTITUTE_BITS}, got {bits}")
    stored_bits = 3.2 if bits == 3 else bits
    per_param = stored_bits / 8 + 2 * 2 / GROUP_SIZE
    return math.ceil(_layer_weight_params(config) * per_param) + _layer_bias_params(config) * dtype_bytes


def kv_cache_bytes(config: ModelConfig, rows: int, dtype_bytes: int = 2) -> int:
    """2 (K and V) * layers * kv_heads * head_dim * rows * dtype_bytes."""
    return 2 * config.num_layers * config.num_kv_heads * config.head_dim * rows * dtype_bytes


def embedding_bytes(config: ModelConfig, dtype_bytes: int = 2) -> int:
    return config.vocab_size * config.hidden_size * dtype_bytes


def lm_head_bytes(config: ModelConfig, dtype_bytes: int = 2) -> int:
    """Extra bytes of the output head: none when tied to the embeddings."""
    return 0 if config.tie_word_embeddings else config.vocab_size * config.hidden_size * dtype_bytes


def norm_bytes(config: ModelConfig, dtype_bytes: int = 2) -> int:
    """Two RMSNorms per layer (plus q/k norms where the architecture has them) and the final norm."""
    per_layer = 2 * config.hidden_size + (2 * config.head_dim if config.qk_norm else 0)
    return (config.num_layers * per_layer + config.hidden_size) * dtype_bytes


def workspace_bytes(config: ModelConfig, nodes: int, dtype_bytes: int = 2) -> int:
    """The verification logits of the tree in the model's dtype (engine.speculative.verify keeps them so),
    plus sampling's temporaries for one block of rows (engine.sampling.select_tokens, which casts a block
    at a time to float32), plus a fixed 256 MiB for activations and allocator slack."""
    vocab = config.vocab_size
    sampling = min(nodes, max(1, SAMPLE_CHUNK_ELEMENTS // vocab)) * vocab * SAMPLING_BYTES_PER_VALUE
    return nodes * vocab * dtype_bytes + sampling + WORKSPACE_FIXED


def prefill_pass_tokens(config: ModelConfig, dtype_bytes: int = 2, chunk: int = PREFILL_CHUNK) -> int:
    """The most prompt tokens a streamed prefill pass takes: as many whole chunks as PREFILL_PASS_BYTES of
    residual stream hold, at least one."""
    rows = PREFILL_PASS_BYTES // (config.hidden_size * dtype_bytes)
    return max(chunk, rows // chunk * chunk)


def _pass_bytes_per_token(config: ModelConfig, dtype_bytes: int) -> int:
    # residual stream [tokens, hidden] and rotary cos and sin [tokens, head_dim] in the model's dtype; the
    # tokens and their positions in int64
    return (config.hidden_size + 2 * config.head_dim) * dtype_bytes + 16


def prefill_pass_bytes(config: ModelConfig, tokens: int, dtype_bytes: int = 2) -> int:
    """What a streamed prefill pass over `tokens` tokens holds beyond a chunked forward's (which holds the
    same for its PREFILL_CHUNK tokens): its residual stream, rotary tables, tokens and positions."""
    return max(0, tokens - PREFILL_CHUNK) * _pass_bytes_per_token(config, dtype_bytes)


def _pass_tokens_held(config: ModelConfig, spare: int, dtype_bytes: int, most: int) -> int:
    """The prompt tokens a prefill pass can take with `spare` bytes beyond a chunked forward's: whole
    chunks, at least one (which costs nothing extra: a pass of one chunk is a chunked forward), at most
    `most` (itself a multiple of PREFILL_CHUNK)."""
    extra = max(0, spare) // _pass_bytes_per_token(config, dtype_bytes)
    return min(most, (PREFILL_CHUNK + extra) // PREFILL_CHUNK * PREFILL_CHUNK)


def _prefill_pass(config: ModelConfig, layout: _Layout, budget: int, dtype_bytes: int) -> int:
    """Tokens per prefill pass for a layout with streamed layers: as many as the memory the layout leaves
    holds, up to prefill_pass_tokens (one chunk when none is left: a pass is then a chunked forward)."""
    spare = budget - _vram(config, replace(layout, prefill=PREFILL_CHUNK), dtype_bytes)
    return _pass_tokens_held(config, spare, dtype_bytes, prefill_pass_tokens(config, dtype_bytes))


def slots_bytes(config: ModelConfig, slots: int, dtype_bytes: int = 2) -> int:
    return slots * layer_linear_bytes(config, dtype_bytes)


def mask_bytes(config: ModelConfig, rows: int, columns: int, dtype_bytes: int = 2,
               built_bytes: int | None = None, sdpa_copy: bool = True, align: int = MASK_ALIGN) -> int:
    """Peak bytes of the additive attention masks of one target forward over `rows` new tokens attending
    to `columns` cache slots. All three parts are live together while the layers run:
    - the mask as its caller built it, [rows, columns] of `built_bytes` each (default: the model's dtype,
      as engine.tree.tree_mask builds it for verification and drafting and engine.generate.prefill its
      causal masks; a captured draft step's input is float32, 4), held by the caller for the whole forward;
    - its fold (engine.model.fold_mask, made once per forward for every layer): the rows repeated for
      each of the G = heads / kv_heads query heads that read one KV head, [G * rows, columns] in the
      model's dtype, each row at a stride of `columns` rounded up to `align` (MASK_ALIGN on CUDA, 1 on
      the CPU); none when G = 1 and the mask already is in that dtype and aligned (it is the mask itself);
    - an allowance, conservative: on CUDA, SDPA's memory-efficient kernel needs a mask's rows at a stride
      that is a multiple of MASK_ALIGN elements; otherwise it pads the mask into a copy in every layer's
      call (aten's preprocess_mask / pad_bias: [G * rows, columns + up to 8], freed after the call). The
      fold is made aligned on CUDA so that this should not happen, but that is unverified without a GPU
      (benchmarks/gpu_check.py's verify_memory will say), so one copy is still counted (`sdpa_copy=False`
      leaves it out, for comparing with what a CPU does).
    A builder's own temporary (a boolean [rows, columns], for a sliding window) is freed before the fold is
    made and is no larger than the fold (or, where there is none, the padded copy): it never sets the peak."""
    groups = config.num_heads // config.num_kv_heads
    built_bytes = dtype_bytes if built_bytes is None else built_bytes
    built = rows * columns * built_bytes
    stride = -(-columns // align) * align
    aligned_already = built_bytes == dtype_bytes and stride == columns
    folded = 0 if groups == 1 and aligned_already else groups * rows * stride * dtype_bytes
    padded = groups * rows * (columns + MASK_ALIGN) * dtype_bytes if sdpa_copy else 0
    return built + folded + padded


def masks_bytes(config: ModelConfig, kv_length: int, nodes: int, dtype_bytes: int = 2) -> int:
    """The attention masks at their peak over every slot of the cache (kv_length + nodes, the longest
    context): the larger of a prompt chunk's (PREFILL_CHUNK rows) and the tree's verification (`nodes`
    rows); with a tree, plus the masks the captured draft steps keep from pass to pass (engine.draft_graph:
    each a float32 [rows, span] input and, in its CUDA graph's memory, its fold and padded copy)."""
    columns = kv_length + nodes
    prefill = mask_bytes(config, min(PREFILL_CHUNK, columns), columns, dtype_bytes)
    if nodes == 1:  # plain decoding: one token, no mask (a sliding window's is one row)
        return prefill
    verify = mask_bytes(config, nodes, columns, dtype_bytes)
    draft = mask_bytes(config, DRAFT_STEP_ROWS, columns, dtype_bytes, built_bytes=4)
    return max(prefill, verify) + draft


# ---------------------------------------------------------------------------------------------------
# A layout and its memory.


@dataclass(frozen=True)
class _Layout:
    resident: int  # the last `resident` layers, full precision on the device
    offloaded: int  # the other layers, streamed through the slots
    bits: tuple  # substitute bits per offloaded layer (in layer order); () = no draft substitutes
    kv_length: int
    slots: int
    nodes: int  # KV scratch rows and verification logits reserved for the tree
    prefill: int = PREFILL_CHUNK  # prompt tokens per pass of the weights (more only with streamed layers)


def _memory(config: ModelConfig, layout: _Layout, dtype_bytes: int) -> dict:
    return {
        "embeddings": embedding_bytes(config, dtype_bytes),
        "lm_head": lm_head_bytes(config, dtype_bytes),
        "norms": norm_bytes(config, dtype_bytes),
        "resident_layers": layout.resident * layer_linear_bytes(config, dtype_bytes),
        "substitutes": sum(substitute_layer_bytes(config, b, dtype_bytes) for b in layout.bits),
        "slots": slots_bytes(config, layout.slots, dtype_bytes),
        "kv_cache": kv_cache_bytes(config, layout.kv_length + layout.nodes, dtype_bytes),
        "masks": masks_bytes(config, layout.kv_length, layout.nodes, dtype_bytes),
        "workspace": workspace_bytes(config, layout.nodes, dtype_bytes),
        # a prompt's pass over the streamed layers holds its residual stream (engine.model.Decoder.prefill_pass)
        "prefill_pass": prefill_pass_bytes(config, layout.prefill, dtype_bytes),
    }


def _vram(config: ModelConfig, layout: _Layout, dtype_bytes: int) -> int:
    return sum(_memory(config, layout, dtype_bytes).values())


def _longest_kv(config: ModelConfig, layout: _Layout, budget: int, dtype_bytes: int) -> int | None:
    """The layout's kv_length if it fits, else the longest multiple of KV_ROUND (>= MIN_KV_LENGTH) that
    fits, else None.

    A token of context costs a KV row and a column of every mask (whose rows are padded to a multiple of
    MASK_ALIGN, so the cost per token is not constant); memory only grows with the length, so a binary
    search over the multiples of KV_ROUND finds the longest that fits."""
    def fits(length: int) -> bool:
        return _vram(config, replace(layout, kv_length=length), dtype_bytes) <= budget

    if fits(layout.kv_length):
        return layout.kv_length
    lo, hi = -(-MIN_KV_LENGTH // KV_ROUND), layout.kv_length // KV_ROUND  # in units of KV_ROUND
    if lo > hi or not fits(lo * KV_ROUND):
        return None
    while lo < hi:  # fits(lo), and nothing above hi is a candidate
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid * KV_ROUND) else (lo, mid - 1)
    return lo * KV_ROUND


def _with_substitutes(config: ModelConfig, resident: int, kv_length: int) -> _Layout:
    """The smallest SubSpec layout with `resident` layers: 4-bit substitutes, two slots, a full tree."""
    offloaded = config.num_layers - resident
    if offloaded == 0:
        return _Layout(resident, 0, (), kv_length, 0, 1)
    return _Layout(resident, offloaded, (4,) * offloaded, kv_length, MIN_SLOTS, MAX_NODES)


def _first_pass(config: ModelConfig, layout: _Layout, budget: int, dtype_bytes: int) -> tuple[_Layout, int]:
    """The first use of the memory a layout with streamed layers leaves under `budget`: prefill passes of
    up to PREFILL_PASS_FIRST tokens (what that memory holds of them). Returns the layout and the bytes
    left to spend."""
    spare = budget - _vram(config, layout, dtype_bytes)
    tokens = _pass_tokens_held(config, spare, dtype_bytes,
                               min(PREFILL_PASS_FIRST, prefill_pass_tokens(config, dtype_bytes)))
    return replace(layout, prefill=tokens), spare - prefill_pass_bytes(config, tokens, dtype_bytes)


def _grow(config: ModelConfig, layout: _Layout, budget: int, dtype_bytes: int, forced: bool) -> _Layout:
    """Spend what is left: first a prefill pass of PREFILL_PASS_FIRST tokens (a few MB), then 8-bit
    substitutes, for the last streamed layers (nearest the output, where precision aligns the draft most:
    see the tau model), then (unless the user fixed it) resident layers."""
    layout, spare = _first_pass(config, layout, budget, dtype_bytes)
    upgrade = substitute_layer_bytes(config, 8, dtype_bytes) - substitute_layer_bytes(config, 4, dtype_bytes)
    eights = max(0, min(layout.offloaded, spare // upgrade))
    spare -= eights * upgrade
    layout = replace(layout, bits=(4,) * (layout.offloaded - eights) + (8,) * eights)
    if forced or eights < layout.offloaded:
        return layout
    promote = layer_linear_bytes(config, dtype_bytes) - substitute_layer_bytes(config, 8, dtype_bytes)
    extra = min(layout.offloaded - 1, spare // promote)  # all resident is the plan without slots
    offloaded = layout.offloaded - extra
    return replace(layout, resident=layout.resident + extra, offloaded=offloaded, bits=(8,) * offloaded)


def _plain_offloaded(config: ModelConfig, kv_length: int, budget: int, dtype_bytes: int,
                     forced: int | None) -> _Layout | None:
    """Plain offloaded decoding: no substitutes, as many resident layers as fit (or the forced number)."""
    resident = forced or 0
    layout = _Layout(resident, config.num_layers - resident, (), kv_length, MIN_SLOTS, 1)
    length = _longest_kv(config, layout, budget, dtype_bytes)
    if length is None:
        return None
    layout, spare = _first_pass(config, replace(layout, kv_length=length), budget, dtype_bytes)
    if forced is None:
        extra = min(layout.offloaded - 1, spare // layer_linear_bytes(config, dtype_bytes))
        layout = replace(layout, resident=resident + extra, offloaded=layout.offloaded - extra)
    return layout


# ---------------------------------------------------------------------------------------------------
# Speed model.


@dataclass(frozen=True)
class _Speeds:
    link_gbps: float  # host-to-device copies (offloaded weights)
    memory_gbps: float  # the device's memory bandwidth
    tflops: float  # dense 16-bit matmul


def _matmul_time(bytes_read: float, flops: float, speeds: _Speeds) -> float:
    """Memory-bound or compute-bound, whichever is slower."""
    return max(bytes_read / (speeds.memory_gbps * 1e9 * MEMORY_EFFICIENCY), flops / (speeds.tflops * 1e12))


def _layer_time(config: ModelConfig, tokens: int, kv_length: int, weight_bytes: int, speeds: _Speeds,
                dtype_bytes: int) -> float:
    """One decoder layer over `tokens` tokens against a half-full cache (the middle of a conversation)."""
    context = kv_length // 2
    attention = 4.0 * tokens * context * config.num_heads * config.head_dim
    flops = 2.0 * layer_linear_params(config) * tokens + attention
    kv_read = kv_cache_bytes(config, context, dtype_bytes) // config.num_layers
    return _matmul_time(weight_bytes + kv_read, flops, speeds) + LAYER_OVERHEAD_S


def _head_time(config: ModelConfig, tokens: int, dtype_bytes: int, speeds: _Speeds) -> float:
    head = config.vocab_size * config.hidden_size
    return _matmul_time(head * dtype_bytes, 2.0 * head * tokens, speeds)


def t_verify(config: ModelConfig, layout: _Layout, nodes: int, speeds: _Speeds, dtype_bytes: int) -> float:
    """One target forward over `nodes` tokens (t_target when nodes = 1). Resident layers run from VRAM;
    an offloaded layer costs the larger of its transfer (bytes / link bandwidth) and its compute: with two
    slots the next layer's copy overlaps this layer's compute. Under offloading the transfer dominates
    whatever the tree size, which is why gamma ~ 1."""
    full = layer_linear_bytes(config, dtype_bytes)
    layer = _layer_time(config, nodes, layout.kv_length, full, speeds, dtype_bytes)
    transfer = full / (speeds.link_gbps * 1e9)
    return (layout.resident * layer + layout.offloaded * max(transfer, layer)
            + _head_time(config, nodes, dtype_bytes, speeds))


def t_prefill(config: ModelConfig, layout: _Layout, tokens: int, speeds: _Speeds, dtype_bytes: int,
              pass_tokens: int) -> float:
    """A `tokens`-token prompt prefilled `pass_tokens` at a time (engine.model.Decoder.prefill_pass: each
    pass streams the offloaded layers once and runs every layer over its tokens PREFILL_CHUNK at a time, so
    each chunk reads the layer's weights from VRAM and pays a layer's launches; PREFILL_CHUNK a pass is the
    chunked prefill). An offloaded layer costs the larger of its transfer and its chunks' compute, once per
    pass; every chunk computes against a half-full cache (_layer_time); the head projects the last token."""
    full = layer_linear_bytes(config, dtype_bytes)
    transfer = full / (speeds.link_gbps * 1e9)
    time = 0.0
    for begin in range(0, tokens, pass_tokens):
        rows = min(pass_tokens, tokens - begin)
        layer = sum(_layer_time(config, min(PREFILL_CHUNK, rows - b), layout.kv_length, full, speeds, dtype_bytes)
                    for b in range(0, rows, PREFILL_CHUNK))
        time += layout.resident * layer + layout.offloaded * max(transfer, layer)
    return time + _head_time(config, 1, dtype_bytes, speeds)


def t_draft(config: ModelConfig, layout: _Layout, topk: int, speeds: _Speeds, dtype_bytes: int) -> float:
    """One draft step over `topk` nodes: reads the resident layers, every substitute and the head, all in
    VRAM (plus a launch overhead per layer). With no offloaded layer the draft is the target itself."""
    full = layer_linear_bytes(config, dtype_bytes)
    time = layout.resident * _layer_time(config, topk, layout.kv_length, full, speeds, dtype_bytes)
    for bits in layout.bits:
        weights = substitute_layer_bytes(config, bits, dtype_bytes)
        time += _layer_time(config, topk, layout.kv_length, weights, speeds, dtype_bytes)
    return time + _head_time(config, topk, dtype_bytes, speeds)


def layer_weight(config: ModelConfig, index: int) -> float:
    """Layer `index`'s share of the draft's error (the shares sum to 1): it grows with depth, as measured
    (see the tau model's constants): precision near the output keeps the draft aligned."""
    n = config.num_layers
    return (index + 1) / (n * (n + 1) / 2)


def draft_error(config: ModelConfig, bits) -> float:
    """Depth-weighted mean relative error of the draft's decoder layers: 4-bit = 1, resident (exact) = 0.
    `bits`: the substitutes of the offloaded layers, which are the first ones (the resident layers follow)."""
    return sum(layer_weight(config, j) * SUBSTITUTE_ERROR[b] for j, b in enumerate(bits))


def predicted_tau(depth: int, topk: int, error: float) -> float:
    """Geometric acceptance: tau = (1 - a**(D+1)) / (1 - a), a = 1 - m(K, error) (see the constants)."""
    if depth == 0:
        return 1.0
    if error <= 0:
        return float(depth + 1)  # the draft is the target itself
    miss = min(1.0, (MISS_FLOOR + MISS_4BIT * error) * (REFERENCE_WIDTH / topk) ** WIDTH_EXPONENT)
    a = 1.0 - miss
    return (1.0 - a ** (depth + 1)) / (1.0 - a)


@dataclass(frozen=True)
class _Shape:
    depth: int
    topk: int
    tau: float
    tokens_per_s: float
    draft_s: float  # one draft step
    verify_s: float  # one target pass over the tree

    @property
    def nodes(self) -> int:
        return 1 + self.depth * self.topk


def best_shape(config: ModelConfig, layout: _Layout, speeds: _Speeds, dtype_bytes: int,
               max_depth: int = DEPTHS[-1]) -> _Shape:
    """The (D, K) of DEPTHS x TOPKS (1 + D*K <= MAX_NODES) with the most predicted tokens/s:
    tau / (D * t_draft + t_verify(nodes)). Ties keep the smaller tree. Without substitutes while layers
    are offloaded there is no draft: D = 0."""
    has_draft = bool(layout.bits) or layout.offloaded == 0
    error = draft_error(config, layout.bits)
    best = None
    for depth in DEPTHS:
        if depth > max_depth or (depth and not has_draft):
            continue
        for topk in (TOPKS if depth else (1,)):
            nodes = 1 + depth * topk
            if nodes > MAX_NODES:
                continue
            draft_s = t_draft(config, layout, topk, speeds, dtype_bytes) if depth else 0.0
            verify_s = t_verify(config, layout, nodes, speeds, dtype_bytes)
            tau = predicted_tau(depth, topk, error)
            shape = _Shape(depth, topk, tau, tau / (depth * draft_s + verify_s), draft_s, verify_s)
            if best is None or shape.tokens_per_s > best.tokens_per_s * (1 + 1e-9):
                best = shape
    return best


# ---------------------------------------------------------------------------------------------------
# Hardware.


def _gb(n: float) -> str:
    return f"{n / GIB:.2f} GB"


def _model_name(config: ModelConfig) -> str:
    return f"this {config.parameter_count / 1e9:.1f}B-parameter model"


def _link_gbps(hardware: dict, reasons: list) -> float:
    measured = (hardware.get("cuda") or {}).get("h2d_bandwidth_gbps")
    if measured:
        reasons.append(f"Link: {measured:.1f} GB/s host-to-device (measured).")
        return float(measured)
    gpus = hardware.get("gpus") or []
    pcie = (gpus[0].get("pcie") or {}) if gpus else {}
    # An idle GPU drops its link to a lower generation (and sometimes width) to save power; the link
    # trains back up under load, so the best of current and maximum (NVML's max is what this device and
    # this system can do) is what a transfer sees.
    gen = max((g for g in (pcie.get("gen_current"), pcie.get("gen_max")) if g), default=None)
    width = max((w for w in (pcie.get("width_current"), pcie.get("width_max")) if w), default=16)
    if gen in PCIE_X16_GBPS:
        gbps = PCIE_X16_GBPS[gen] * min(width, 16) / 16
        reasons.append(f"Link: PCIe {gen}.0 x{width}, about {gbps:.0f} GB/s effective (not measured).")
        return gbps
    reasons.append(f"Link: unknown, assuming PCIe 4.0 x16 ({DEFAULT_LINK_GBPS:.0f} GB/s).")
    return DEFAULT_LINK_GBPS


def _gpu_speeds(hardware: dict, reasons: list) -> _Speeds:
    link = _link_gbps(hardware, reasons)
    gpus = hardware.get("gpus") or []
    memory = (gpus[0].get("memory_bandwidth_gbps") if gpus else None) or DEFAULT_GPU_MEMORY_GBPS
    tflops = (hardware.get("cuda") or {}).get("matmul_tflops") or DEFAULT_GPU_TFLOPS
    return _Speeds(link, float(memory), float(tflops))


def _vram_budget(hardware: dict, vram_gb: float | None, reserve_gb: float, reasons: list) -> int:
    gpus = hardware.get("gpus") or []
    free = gpus[0].get("free_bytes") if gpus else None
    reserve = int(reserve_gb * GIB)
    if vram_gb is not None:
        cap = int(vram_gb * GIB)
        if free is not None and cap > free:
            reasons.append(f"Budget: the {vram_gb:g} GB cap is more than the {_gb(free)} free on the GPU; "
                           f"planning for the free memory minus {reserve_gb:g} GB reserve = {_gb(free - reserve)}.")
            cap = int(free)
        else:
            reasons.append(f"Budget: {vram_gb:g} GB VRAM cap minus {reserve_gb:g} GB reserve = {_gb(cap - reserve)}.")
    elif free is not None:
        cap = int(free)
        name = gpus[0].get("name") or "GPU"
        reasons.append(f"Budget: {_gb(cap)} free on the {name} minus {reserve_gb:g} GB reserve = {_gb(cap - reserve)}.")
    else:
        raise SubspecError("the hardware profile gives no GPU memory size: pass vram_gb")
    if cap - reserve <= 0:
        raise PlanError(f"the reserve ({reserve_gb:g} GB) leaves no VRAM to plan with", reserve - cap + 1)
    return cap - reserve


def _ram_budget(hardware: dict, reserve_gb: float) -> int | None:
    ram = hardware.get("ram") or {}
    avail = ram.get("available_bytes") or ram.get("total_bytes")
    return None if not avail else int(avail - reserve_gb * GIB)


def _check_pinned_ram(hardware: dict, host_bytes: int, reasons: list) -> None:
    ram = hardware.get("ram") or {}
    total, available = ram.get("total_bytes"), ram.get("available_bytes")
    if total and host_bytes > total:
        missing = host_bytes - total
        raise PlanError(f"the offloaded layers take {_gb(host_bytes)} of pinned RAM but this machine has "
                        f"{_gb(total)}: needs {_gb(missing)} more RAM.", missing, "RAM")
    if available and host_bytes > available:
        reasons.append(f"RAM: the offloaded layers pin {_gb(host_bytes)}, more than the {_gb(available)} "
                       f"available now; close other programs before loading.")


# ---------------------------------------------------------------------------------------------------
# Refusals.


def _refuse(config: ModelConfig, budget: int, dtype_bytes: int) -> None:
    smallest = _with_substitutes(config, 0, MIN_KV_LENGTH)
    memory = _memory(config, smallest, dtype_bytes)
    need = sum(memory.values())
    missing = need - budget
    raise PlanError(
        f"{_model_name(config)} does not fit: SubSpec needs at least {_gb(need)} of VRAM "
        f"(4-bit substitutes {_gb(memory['substitutes'])}, embeddings and head "
        f"{_gb(memory['embeddings'] + memory['lm_head'])}, {MIN_SLOTS} streaming slots {_gb(memory['slots'])}, "
        f"KV cache for {MIN_KV_LENGTH} tokens, attention masks and workspace "
        f"{_gb(memory['kv_cache'] + memory['masks'] + memory['workspace'])}) "
        f"and the budget is {_gb(budget)}: needs {_gb(missing)} more.", missing)


def _refuse_forced(config: ModelConfig, budget: int, dtype_bytes: int, resident: int) -> None:
    need = _vram(config, _with_substitutes(config, resident, MIN_KV_LENGTH), dtype_bytes)
    fitting = [r for r in range(resident)
               if _vram(config, _with_substitutes(config, r, MIN_KV_LENGTH), dtype_bytes) <= budget]
    if not fitting:
        _refuse(config, budget, dtype_bytes)
    missing = need - budget
    raise PlanError(
        f"resident_layers={resident} does not fit: it needs {_gb(need)} of VRAM even with a {MIN_KV_LENGTH}-token "
        f"context{' and 4-bit substitutes' if resident < config.num_layers else ''} and the budget is "
        f"{_gb(budget)}: needs {_gb(missing)} more; "
        f"at most {max(fitting)} resident layers fit.", missing)


# ---------------------------------------------------------------------------------------------------
# The plan.


def make_plan(config: ModelConfig, hardware: dict, vram_gb: float | None = None, reserve_gb: float = 0.5,
              context: int = 4096, dtype_bytes: int = 2, resident_layers: int | None = None) -> Plan:
    """Plan how to run `config` on `hardware` (a profile dict: gpus, cuda, ram). Raises PlanError when the
    smallest workable layout does not fit, SubspecError on bad arguments."""
    layers = config.num_layers
    if context < 1:
        raise SubspecError(f"context must be at least 1 token, got {context}")
    if dtype_bytes not in (1, 2, 4):
        raise SubspecError(f"dtype_bytes must be 1, 2 or 4, got {dtype_bytes}")
    if not (0 <= reserve_gb < math.inf) or (vram_gb is not None and not 0 < vram_gb < math.inf):
        raise SubspecError("vram_gb must be positive and reserve_gb not negative")
    if resident_layers is not None and not 0 <= resident_layers <= layers:
        raise SubspecError(f"resident_layers must be between 0 and {layers}, got {resident_layers}")

    reasons: list[str] = []
    kv_length = min(context, config.max_position_embeddings)
    if kv_length < context:
        reasons.append(f"Context: {context} tokens asked; the model supports {config.max_position_embeddings}.")
    if not (hardware.get("cuda") or {}).get("available"):
        if vram_gb is not None:
            reasons.append(f"VRAM cap: {vram_gb:g} GB asked, ignored: CUDA is not available.")
        return _cpu_plan(config, hardware, kv_length, reserve_gb, dtype_bytes, resident_layers, reasons)

    budget = _vram_budget(hardware, vram_gb, reserve_gb, reasons)
    speeds = _gpu_speeds(hardware, reasons)
    forced = resident_layers is not None

    candidates: dict[str, _Layout] = {}
    # Everything resident: no link, no substitutes; the draft would be the target itself.
    if resident_layers in (None, layers):
        layout = _Layout(layers, 0, (), kv_length, 0, 1)
        length = _longest_kv(config, layout, budget, dtype_bytes) if forced else (
            kv_length if _vram(config, layout, dtype_bytes) <= budget else None)
        if length is not None:
            candidates["resident"] = replace(layout, kv_length=length)
        elif forced:
            _refuse_forced(config, budget, dtype_bytes, layers)
    # SubSpec: 4-bit substitutes for every offloaded layer; spare memory to 8-bit, then resident layers.
    if resident_layers is None or resident_layers < layers:
        smallest = _with_substitutes(config, resident_layers or 0, kv_length)
        length = _longest_kv(config, smallest, budget, dtype_bytes)
        if length is not None:
            candidates["subspec"] = _grow(config, replace(smallest, kv_length=length), budget, dtype_bytes, forced)
            plain = _plain_offloaded(config, kv_length, budget, dtype_bytes, resident_layers)
            if plain is not None:
                candidates["offloaded"] = plain
        elif not candidates:
            if resident_layers:
                _refuse_forced(config, budget, dtype_bytes, resident_layers)
            _refuse(config, budget, dtype_bytes)

    shapes = {kind: best_shape(config, layout, speeds, dtype_bytes) for kind, layout in candidates.items()}
    baseline = max(best_shape(config, layout, speeds, dtype_bytes, max_depth=0).tokens_per_s
                   for layout in candidates.values())
    drafting = {k: s for k, s in shapes.items() if s.depth > 0}
    kind = max(shapes, key=lambda k: shapes[k].tokens_per_s)
    if kind == "subspec" and shapes[kind].depth == 0 and "offloaded" in candidates:
        kind = "offloaded"  # not drafting: the substitutes' memory is better spent as resident layers
    layout, shape = candidates[kind], shapes[kind]
    if shape.depth == 0:
        layout = replace(layout, bits=())

    if forced and kind != "resident":
        chosen = _grow(config, _with_substitutes(config, 0, layout.kv_length), budget, dtype_bytes, forced=False)
        reasons.append(f"Resident layers: {resident_layers}, as asked; it fits the budget "
                       f"(the planner would choose {chosen.resident}).")
    elif forced:
        reasons.append(f"Resident layers: all {layers}, as asked; it fits the budget.")
    # with the tree chosen: the masks it names are the plan's (fewer nodes than reserved, smaller masks)
    _explain_layout(config, replace(layout, nodes=shape.nodes), kind, budget, dtype_bytes, kv_length, forced,
                    reasons)
    host = layout.offloaded * layer_linear_bytes(config, dtype_bytes)
    if host:
        _check_pinned_ram(hardware, host, reasons)
    _explain_shape(layout, kind, shape, baseline, drafting, speeds, host, reasons)

    final = replace(layout, nodes=shape.nodes)  # the tree actually chosen (<= the memory reserved for it)
    if final.offloaded:  # what memory is left goes to the prompt's passes
        final = replace(final, prefill=_prefill_pass(config, final, budget, dtype_bytes))
        _explain_prefill(config, final, speeds, dtype_bytes, reasons)
    memory = _memory(config, final, dtype_bytes)
    return Plan(
        method="subspec" if shape.depth else "vanilla",
        device="cuda",
        resident_layers=layout.resident,
        offloaded_layers=layout.offloaded,
        substitute_bits=(list(layout.bits) or [None] * layout.offloaded) + [None] * layout.resident,
        kv_length=layout.kv_length,
        slots=layout.slots,
        depth=shape.depth,
        topk=shape.topk,
        nodes=shape.nodes,
        budget_bytes=budget,
        predicted_vram_bytes=sum(memory.values()),
        predicted_host_bytes=host,
        predicted_tokens_per_s=shape.tokens_per_s,
        predicted_tau=shape.tau,
        baseline_tokens_per_s=baseline,
        offloaded_bytes_per_pass=host,
        prefill_pass_tokens=final.prefill,
        memory=memory,
        reasons=reasons,
    )


def _explain_layout(config: ModelConfig, layout: _Layout, kind: str, budget: int, dtype_bytes: int,
                    kv_length: int, forced: bool, reasons: list) -> None:
    full = layer_linear_bytes(config, dtype_bytes)
    layers = config.num_layers
    if kind == "resident":
        reasons.append(f"Layers: all {layers} fit in VRAM in full precision ({_gb(layers * full)}); "
                       f"nothing is streamed.")
    else:
        if layout.bits:
            eights = layout.bits.count(8)
            sub4, sub8 = substitute_layer_bytes(config, 4, dtype_bytes), substitute_layer_bytes(config, 8, dtype_bytes)
            reasons.append(f"Substitutes: HQQ group {GROUP_SIZE}, 4-bit by default ({_gb(sub4)} per layer), "
                           f"for the {layout.offloaded} offloaded layers: the draft is the target with these.")
            if eights:
                which = "all" if eights == layout.offloaded else f"the last {eights}"
                reasons.append(f"8-bit: {which} of {layout.offloaded} substitutes raised to 8-bit "
                               f"(+{_gb(sub8 - sub4)} each), the first use of spare memory after a "
                               f"{PREFILL_PASS_FIRST}-token prefill pass: 8-bit drafts align "
                               f"far better, most of all near the output (SmolLM2 at D48 K6: tau 9.4 all "
                               f"4-bit, 17.5 with the last half 8-bit, 10.2 with the first half, 30.0 all 8-bit).")
            else:
                reasons.append(f"8-bit: no room to raise a substitute to 8-bit (+{_gb(sub8 - sub4)} each).")
        if not forced:
            if layout.resident:
                reasons.append(f"Resident layers: the last {layout.resident} stay in VRAM in full precision "
                               f"({_gb(full)} each), shared by draft and target; that many fewer to stream, and "
                               f"exact layers near the output align the draft most.")
            else:
                reasons.append("Resident layers: none; no memory left after the substitutes.")
        reasons.append(f"Streaming: {layout.offloaded} layers ({_gb(layout.offloaded * full)}) from pinned RAM "
                       f"through {layout.slots} slots of {_gb(full)} every target pass.")
    if layout.kv_length < kv_length:
        reasons.append(f"Context: shortened to {layout.kv_length} tokens (asked {kv_length}): a longer KV cache "
                       f"and the attention masks that grow with it do not fit the {_gb(budget)} budget.")
    else:
        masks = masks_bytes(config, layout.kv_length, layout.nodes, dtype_bytes)
        reasons.append(f"Context: {layout.kv_length} tokens of KV cache "
                       f"({_gb(kv_cache_bytes(config, layout.kv_length, dtype_bytes))}); attention masks over "
                       f"it take {_gb(masks)} at their peak.")


def _explain_shape(layout: _Layout, kind: str, shape: _Shape, baseline: float, drafting: dict,
                   speeds: _Speeds, host: int, reasons: list) -> None:
    seconds = host / (speeds.link_gbps * 1e9)
    transfer = f"; {_gb(host)} cross the link per target pass (~{seconds:.2f} s)" if host else ""
    if shape.depth:
        reasons.append(
            f"Tree: depth {shape.depth}, width {shape.topk} ({shape.nodes} nodes): predicted tau {shape.tau:.1f}, "
            f"draft step {shape.draft_s * 1e3:.1f} ms, target pass {shape.verify_s:.2f} s{transfer} -> "
            f"{shape.tokens_per_s:.1f} tok/s, {shape.tokens_per_s / baseline:.1f}x plain decoding "
            f"({baseline:.1f} tok/s).")
        return
    best_tree = max(drafting.values(), key=lambda s: s.tokens_per_s, default=None)
    alternative = (f" (the best tree predicts {best_tree.tokens_per_s:.1f} tok/s)" if best_tree else "")
    if kind == "resident":
        why = ("the whole model fits in VRAM, so there is nothing to stream and a draft would cost about as "
               "much as the target it imitates: drafting does not pay off")
    else:
        why = "a draft tree does not pay off on this link"
    reasons.append(f"Plain decoding: {why}{alternative}; predicted {shape.tokens_per_s:.1f} tok/s{transfer}.")


# The prompt the prefill reason is worked out for: a pasted page or a long chat.
PREFILL_EXAMPLE_TOKENS = 2048


def _explain_prefill(config: ModelConfig, layout: _Layout, speeds: _Speeds, dtype_bytes: int,
                     reasons: list) -> None:
    tokens = min(PREFILL_EXAMPLE_TOKENS, layout.kv_length)
    passes, chunks = -(-tokens // layout.prefill), -(-tokens // PREFILL_CHUNK)
    now = t_prefill(config, layout, tokens, speeds, dtype_bytes, layout.prefill)
    chunked = t_prefill(config, layout, tokens, speeds, dtype_bytes, PREFILL_CHUNK)
    if layout.prefill == PREFILL_CHUNK:
        reasons.append(f"Prefill: {PREFILL_CHUNK} prompt tokens per pass of the streamed layers (no memory left "
                       f"for more): a {tokens}-token prompt streams them {chunks}x, predicted {chunked:.2f} s to "
                       f"its first token.")
        return
    reasons.append(f"Prefill: up to {layout.prefill} prompt tokens per pass of the streamed layers, each layer "
                   f"running them {PREFILL_CHUNK} at a time "
                   f"(+{_gb(prefill_pass_bytes(config, layout.prefill, dtype_bytes))}): a {tokens}-token prompt "
                   f"streams them {passes}x, predicted {now:.2f} s to its first token ({chunks}x and "
                   f"{chunked:.2f} s at {PREFILL_CHUNK} tokens per pass).")


def _cpu_plan(config: ModelConfig, hardware: dict, kv_length: int, reserve_gb: float, dtype_bytes: int,
              resident_layers: int | None, reasons: list) -> Plan:
    """No CUDA: the whole model runs from RAM and nothing is streamed. Without a fast low-bit kernel a
    substitute runs dequantized, so a draft step costs as much as a target step and a tree cannot pay
    off (tau <= D + 1 while the cost is at least D + 1 target steps): plain decoding."""
    layers = config.num_layers
    reasons.append("Device: no CUDA; the model runs from RAM on the CPU and nothing is streamed.")
    if resident_layers not in (None, layers):
        reasons.append(f"Resident layers: {resident_layers} asked; without a GPU the plan keeps every layer in RAM "
                       f"(a forced split still streams the others there, slower: a test of the streaming path).")
    layout = _Layout(layers, 0, (), kv_length, 0, 1)
    budget = _ram_budget(hardware, reserve_gb)
    if budget is None:
        reasons.append("RAM: size unknown, not checked.")
    else:
        length = _longest_kv(config, layout, budget, dtype_bytes)
        if length is None:
            need = _vram(config, replace(layout, kv_length=MIN_KV_LENGTH), dtype_bytes)
            raise PlanError(f"{_model_name(config)} needs {_gb(need)} of RAM to run on the CPU and "
                            f"{_gb(budget)} is available: needs {_gb(need - budget)} more RAM.", need - budget, "RAM")
        layout = replace(layout, kv_length=length)
        reasons.append(f"RAM: the model, its KV cache, attention masks and workspace take "
                       f"{_gb(_vram(config, layout, dtype_bytes))} "
                       f"of the {_gb(budget)} available (after a {reserve_gb:g} GB reserve).")
    if layout.kv_length < kv_length:
        reasons.append(f"Context: shortened to {layout.kv_length} tokens (asked {kv_length}): RAM is short.")
    else:
        reasons.append(f"Context: {layout.kv_length} tokens of KV cache "
                       f"({_gb(kv_cache_bytes(config, layout.kv_length, dtype_bytes))}).")
    cpu = hardware.get("cpu") or {}
    speeds = _Speeds(float("inf"), float(cpu.get("memory_bandwidth_gbps") or DEFAULT_CPU_MEMORY_GBPS),
                     float(cpu.get("matmul_tflops") or DEFAULT_CPU_TFLOPS))
    shape = best_shape(config, layout, speeds, dtype_bytes, max_depth=0)
    reasons.append(f"Plain decoding: without a fast low-bit kernel the draft costs as much as the target, so "
                   f"no tree pays off; predicted {shape.tokens_per_s:.1f} tok/s.")
    memory = _memory(config, layout, dtype_bytes)
    host = sum(memory.values())
    return Plan(
        method="vanilla", device="cpu", resident_layers=layers, offloaded_layers=0,
        substitute_bits=[None] * layers, kv_length=layout.kv_length, slots=0, depth=0, topk=1, nodes=1,
        budget_bytes=budget if budget is not None else 0, predicted_vram_bytes=0, predicted_host_bytes=host,
        predicted_tokens_per_s=shape.tokens_per_s, predicted_tau=1.0, baseline_tokens_per_s=shape.tokens_per_s,
        offloaded_bytes_per_pass=0, prefill_pass_tokens=PREFILL_CHUNK, memory=memory, reasons=reasons,
    )
