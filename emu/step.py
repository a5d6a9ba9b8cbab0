"""One step: compute and communication composed under a plan, as a pipeline of parts.

Training, per micro-batch on the slowest (last) pipeline stage, with L = n_layers / pp
layers of which a share f are MoE layers:

    t_mb = compute_mb + (1 - ov_tp) tp_mb + (1 - ov_cp) cp_mb + (1 - ov_pp) pp_mb + a2a_mb*
    compute_mb = L * (fwd + bwd (= 2 fwd) + recompute) + head
    step = n_mb * t_mb + bubble + exposed_dp + optimizer
    bubble = (pp - 1) / vpp * t_mb                         (1F1B, interleaved when vpp > 1;
             + max(pp - n_mb, 0) (1 - 1/vpp) t_mb           fewer micro-batches than stages)
    exposed_dp = max(0, dp_time - ov_dp * window)          window: one micro-batch of compute
                                                           (all of them with ZeRO-2/3, which
                                                           reduce every micro-batch)
    a2a_mb* = a2a_mb - ov_tbo min(a2a_mb, compute_mb) with two-micro-batch overlap,
              else (1 - ov_ep) a2a_mb

so max(compute, comm) <= step <= compute + comm + bubble. Overlap fractions are shared,
calibrated parameters of the system (`system.overlap`); the raw communication by axis comes
from `emu.comm`.

Host-bound micro-batches: the framework's host thread issues every kernel of a micro-batch
(`host_kernel_s` each) while the GPU runs the previous ones, so a micro-batch takes
max(t_mb, host_mb). Dense layers issue few, large kernels and never fall behind (they are
not counted); an MoE layer issues a dozen small routing kernels, then a GEMM (and an FP8
cast or split) per local expert and matrix in forward, dgrad and wgrad (grouped-GEMM front
ends loop over the experts on the host), so with many small experts per chip and few tokens
per micro-batch the host, not the GPU, sets the pace:
    host_mb = L * (1 + bwd + recompute) * f * (K_moe + local_experts * K_expert) * host_kernel_s
The shortfall nmb * (max(t_mb, host_mb) - t_mb) is reported as `host_wait_s`.

Inference (plan.phase "prefill" or "decode") is one forward pass of the whole model per
batch on each chip (pipeline stages in sequence): prefill over `seq_len` prompt tokens per
sequence, decode over 1 + (MTP draft) tokens per sequence that read a KV cache of `context`
tokens. MoE layers add dispatch and combine all-to-alls over the EP group; their grouped
expert GEMMs read only the experts that receive a token (a share 1 - exp(-m) of the local
experts at m routed copies each) and run at the chip's `grouped_matmul_efficiency` times a
dense GEMM's rate (every phase). A decode layer also launches DECODE_KERNELS_PER_LAYER small
kernels (quantisation, KV write, routing) at the chip's `kernel_overhead_s` each. TP
all-reduces are exposed in full (SERVING_TP_OVERLAP; `overlap.tp` is training's). A decode
plan with `expert_ranks` > 0 puts the experts on ranks of their own (attention/expert
disaggregation, `_disaggregated_decode`): a layer takes max(attention chain, g x expert
turn), the attention ranks' wait reported as `bubble_s`. Both phases return the same
`StepBreakdown`.

>>> from emu.topology import example_system
>>> from emu.workload import example_model
>>> from emu.parallelism import make_plan
>>> plan = make_plan(tp=8, dp=1, global_batch=16, seq_len=8192)
>>> b = train_step(example_system(), example_model(), plan)
>>> bool(b.compute_s <= b.total_s)
True
"""

from __future__ import annotations

import numpy as np

from emu import compute
from emu._backend import is_numpy, jax, jnp
from emu.comm import Comm, ep_layer_time, full_recompute, inference_comm, train_comm
from emu.hardware import Overlap
from emu.numerics import safe_div
from emu.parallelism import (
    OPTIMIZER_TRAFFIC_BYTES,
    Plan,
    activation_output_width,
    attention_matmuls,
    attention_shape,
    dense_ffn_matmuls,
    elementwise_bytes_per_layer,
    expert_dp_size,
    kv_width_local,
    local_experts,
    moe_fraction,
    moe_matmuls,
    n_microbatches,
    params_split_per_chip,
    speculation,
    stage_layers,
    tokens_per_microbatch,
)
from emu.struct import dataclass, replace
from emu.topology import System, rank_system
from emu.workload import (
    Model,
    attended_context,
    ffn_mats,
    kv_cache_bytes_per_token,
    windowed_share,
)

__all__ = [
    "StepBreakdown",
    "InferenceBreakdown",
    "Compute",
    "train_step",
    "inference_step",
    "layer_forward",
    "train_compute",
    "inference_compute",
    "microbatch_time",
    "host_time",
    "pipeline_bubble",
    "exposed_dp",
    "optimizer_time",
    "decode_attention",
    "attention_core",
    "ELEMENTWISE_KERNELS_FWD",
    "DECODE_KERNELS_PER_LAYER",
    "ATTN_BWD",
    "HOST_KERNELS_MOE_LAYER_FWD",
    "HOST_KERNELS_EXPERT_FWD",
]

Array = jnp.ndarray
#: fused norm/residual/activation kernels per layer forward (an estimate of Megatron's
#: fused kernels: two norms, two residual adds, activation, rotary, dropouts)
ELEMENTWISE_KERNELS_FWD = 8.0
#: flash-attention backward / forward time (the backward recomputes QK^T; Dao et al. 2022)
ATTN_BWD = 2.5
#: small kernels an MoE layer forward issues besides the experts' GEMMs (router GEMM, softmax,
#: top-k, auxiliary loss, token counts, permute, all-to-all, unpermute, probability scaling);
#: the rest of a layer is a few large fused kernels the host issues far ahead of the GPU
HOST_KERNELS_MOE_LAYER_FWD = 10.0
#: kernels per local routed expert per layer forward: the two GEMMs (fused gate/up, down) and
#: the cast/split of each input (Transformer Engine GroupedLinear issues them per expert)
HOST_KERNELS_EXPERT_FWD = 4.0
#: memory-bound passes of a layer's elementwise kernels per training micro-batch: forward
#: once, backward twice (each kernel's gradient reads and writes its input and output)
_MEMORY_PASSES_TRAIN = 3.0
#: the loss head keeps fp32 logits (4 bytes) and makes three passes over them (write,
#: softmax/cross-entropy read, gradient write) in two kernels
_LOGIT_BYTES, _LOGIT_PASSES, _HEAD_KERNELS = 4.0, 3.0, 2.0
#: fused Adam (multi-tensor apply) launches per step
_OPTIMIZER_KERNELS = 4.0
#: routed-expert GEMMs run as one grouped GEMM per matrix and layer (one launch), at the
#: chip's `grouped_matmul_efficiency` times a dense GEMM's rate of the same shape
_GROUPED = ("expert_in", "expert_out")
#: small kernels a decode layer launches besides those `layer_forward` and `decode_attention`
#: count (its GEMMs, ELEMENTWISE_KERNELS_FWD, the attention core): per-token activation
#: quantisation and dequantisation around each projection (~8 with W8A8/FP8), the KV-cache
#: write, the MLA/RoPE query and key split-and-concat steps, and MoE routing (gate
#: activation, top-k, renormalisation, token counts, permute, unpermute: ~8). An estimate
#: (fidelity DESIGN §5 item 8: "~20-25 on Ascend graph mode"), priced at the chip family's
#: fitted `kernel_overhead_s`; decode steps are small, so these fixed costs matter there
#: (row pangu_pro_moe_800ia2_decode_bs1: TPOT 18.44 ms over 48 layers, 384 us per layer).
#: Training and prefill do not count them (few tokens per launch only in decode). Leave-one-
#: source-out median error of the calibration: none 9.6%, 12 kernels 9.4%, 24 kernels 9.1%;
#: 12, because 24 (at Ascend's fitted ~14 us a launch) prices DeepSeek-R1 batch-1 decode on
#: CloudMatrix 384 at 58 ms a token, slower than CloudMatrix-Infer's measured 15 ms-SLO
#: point (facts §5: batch 8 at 14.9 ms TPOT); the fused kernels of Huawei's own stack
#: launch fewer, so the count stays at the lower estimate.
DECODE_KERNELS_PER_LAYER = 12.0


@dataclass
class StepBreakdown:
    """Seconds of one step on one chip, the same fields in every phase (a training step, a
    prefill batch or a decode step). `compute_s` = `matmul_s` (attention projections,
    dense FFN) + `expert_s` (routed and shared experts, router) + `attention_s` (attention
    core) + `memory_s` + `head_s` (+ MTP drafting in decode), over all micro-batches on the
    critical path; communication by axis, raw (before overlap): `tp_comm_s`, `cp_comm_s`,
    `pp_comm_s`, `dp_comm_s`, and EP `dispatch_s`, `combine_s`; `exposed_comm_s` the part
    not hidden behind compute; `bubble_s` the pipeline bubble; `exposed_dp_s` the exposed DP
    share; `optimizer_s` the optimizer update; `host_wait_s` the time the GPU waits on the
    host issuing kernels; `total_s` the step time. `tokens_in` input tokens the step
    processes per DP rank (train: global_batch / dp * seq_len; prefill: prompt tokens),
    `tokens_out` output tokens accepted per DP rank (decode, with MTP). Terms that do not
    arise in a phase are 0 (serving has no CP, DP, bubble, optimizer or host wait)."""

    matmul_s: Array
    expert_s: Array
    attention_s: Array
    memory_s: Array
    head_s: Array
    compute_s: Array
    tp_comm_s: Array
    cp_comm_s: Array
    pp_comm_s: Array
    dp_comm_s: Array
    dispatch_s: Array
    combine_s: Array
    exposed_comm_s: Array
    bubble_s: Array
    exposed_dp_s: Array
    optimizer_s: Array
    host_wait_s: Array
    total_s: Array
    tokens_in: Array
    tokens_out: Array


#: the serving breakdown is the same type (kept importable under its former name)
InferenceBreakdown = StepBreakdown


@dataclass
class Compute:
    """Compute seconds on one chip by kind, per training micro-batch or per serving pass;
    `total_s` their sum (serving: plus MTP drafting)."""

    matmul_s: Array
    expert_s: Array
    attention_s: Array
    memory_s: Array
    head_s: Array
    total_s: Array


def _matmuls_time(chip, shapes: dict, precision: str):
    return sum(
        compute.matmul_time(
            chip,
            m,
            n,
            k,
            precision,
            count=c,
            kernels=jnp.minimum(c, 1.0) if name in _GROUPED else None,
            scale=chip.grouped_matmul_efficiency if name in _GROUPED else 1.0,
        )
        for name, (m, n, k, c) in shapes.items()
    )


def _attention_precision(plan: Plan) -> str:
    # flash attention runs in 16-bit whatever the matmul precision
    return "fp16" if plan.precision == "fp16" else "bf16"


def _active_experts(shapes: dict) -> dict:
    """The routed-expert GEMM shapes with only the experts that receive a token: with m
    routed copies per local expert on average (uniform routing), a share
    a = 1 - exp(-m) of the experts gets at least one and the grouped GEMM skips the rest
    (their weights are not read), so count -> count a and m -> m / a (same FLOPs). a -> 1
    once m >> 1 (training, prefill, large decode batches); it matters for small decode
    batches (one token reads ~top_k experts, not all local ones)."""
    out = dict(shapes)
    for name in _GROUPED:
        m, n, k, c = shapes[name]
        a = 1.0 - jnp.exp(-m)
        out[name] = (safe_div(m, a), n, k, c * a)
    return out


def layer_forward(system: System, model: Model, plan: Plan, t):
    """Forward seconds of one average layer on one rank for `t` tokens, besides the
    attention core: (projections + (1 - f) dense FFN, f * experts, memory-bound kernels),
    with f the MoE share of layers (`emu.compute` rooflines of the `emu.parallelism`
    shapes)."""
    chip = rank_system(system).chip
    f = moe_fraction(model)
    proj = _matmuls_time(chip, attention_matmuls(model, plan, t), plan.precision)
    dense_ffn = _matmuls_time(chip, dense_ffn_matmuls(model, plan, t), plan.precision)
    experts = _matmuls_time(chip, _active_experts(moe_matmuls(model, plan, t)), plan.precision)
    mem = compute.memory_time(
        chip, elementwise_bytes_per_layer(model, plan, t), kernels=ELEMENTWISE_KERNELS_FWD
    )
    return proj + (1.0 - f) * dense_ffn, f * experts, mem


def train_compute(system: System, model: Model, plan: Plan) -> Compute:
    """Compute of one training micro-batch on the last stage (module doc): each of the
    L = n_layers / pp layers runs forward, backward (2 x forward; LoRA: dgrad only) and,
    under full recompute, forward again; flash attention's backward is ATTN_BWD x forward;
    the head (output matmul and fp32 loss) runs forward and backward. Each MTP module adds
    one more block (spread over the stages) and one more head. The stage is the heaviest
    (`parallelism.stage_layers`: uneven stages; the head only on the last)."""
    system = rank_system(system)
    chip = system.chip
    layers, head_on = stage_layers(model, plan)
    t = tokens_per_microbatch(plan)
    dense_f, expert_f, mem_f = layer_forward(system, model, plan, t)
    attn_f = attention_core(chip, model, *attention_shape(model, plan), _attention_precision(plan))
    re = full_recompute(plan)
    bwd = 2.0 - plan.lora
    matmul_mb = layers * dense_f * (1.0 + bwd + re)
    expert_mb = layers * expert_f * (1.0 + bwd + re)
    attn_mb = layers * attn_f * (1.0 + ATTN_BWD + re)
    memory_mb = layers * mem_f * (_MEMORY_PASSES_TRAIN + re)
    # recomputing the FFN activation in backward (layers not recomputed in full): reading
    # its inputs (gate and up; GELU one) and writing its output again, bf16: 2 mats bytes
    act_recompute = compute.memory_time(
        chip, t * 2.0 * ffn_mats(model) * activation_output_width(model, plan)
    )
    memory_mb = memory_mb + layers * plan.recompute_activation * (1.0 - re) * act_recompute
    vocab_local = safe_div(model.vocab, plan.tp)
    head_f = compute.matmul_time(
        chip, t, vocab_local, model.d_model, plan.precision
    ) + compute.memory_time(
        chip, t * vocab_local * _LOGIT_BYTES * _LOGIT_PASSES, kernels=_HEAD_KERNELS
    )
    # multi-token prediction: each MTP module is one more transformer block and output head
    # (DeepSeek-V3 §2.2); pipeline splits rebalance stages around it, so its cost is spread
    # over the pp stages
    mtp = model.mtp_layers
    head_mb = (1.0 + bwd) * head_f * (head_on + safe_div(mtp, plan.pp))
    more = 1.0 + mtp * safe_div(1.0, model.n_layers)
    matmul_mb, expert_mb, attn_mb, memory_mb = (
        x * more for x in (matmul_mb, expert_mb, attn_mb, memory_mb)
    )
    return Compute(
        matmul_s=matmul_mb,
        expert_s=expert_mb,
        attention_s=attn_mb,
        memory_s=memory_mb,
        head_s=head_mb,
        total_s=matmul_mb + expert_mb + attn_mb + memory_mb + head_mb,
    )


def _a2a_exposed(overlap: Overlap, plan: Plan, a2a, compute_s):
    # two-micro-batch overlap hides a share of min(all-to-all, compute); otherwise a fixed
    # share of the all-to-all hides
    return jnp.where(
        plan.a2a_overlap > 0.5,
        a2a - overlap.ep_tbo * jnp.minimum(a2a, compute_s),
        (1.0 - overlap.ep) * a2a,
    )


def microbatch_time(overlap: Overlap, plan: Plan, work: Compute, comm: Comm):
    """GPU seconds of one training micro-batch: compute plus the exposed shares of its TP,
    CP, PP and EP communication (module doc)."""
    a2a = comm.dispatch_s + comm.combine_s
    return (
        work.total_s
        + (1.0 - overlap.tp) * comm.tp_s
        + (1.0 - overlap.cp) * comm.cp_s
        + (1.0 - overlap.pp) * comm.pp_s
        + _a2a_exposed(overlap, plan, a2a, work.total_s)
    )


def host_time(system: System, model: Model, plan: Plan):
    """Host seconds to issue the kernels of one training micro-batch (module doc, host-bound
    micro-batches): L (1 + mtp / n_layers)(1 + bwd + recompute) f (K_moe + local_experts
    K_expert) host_kernel_s, with the K constants HOST_KERNELS_* (L of the heaviest stage)."""
    layers = stage_layers(model, plan)[0]
    more = 1.0 + model.mtp_layers * safe_div(1.0, model.n_layers)
    passes = 1.0 + (2.0 - plan.lora) + full_recompute(plan)
    kernels_fwd = moe_fraction(model) * (
        HOST_KERNELS_MOE_LAYER_FWD + local_experts(model, plan) * HOST_KERNELS_EXPERT_FWD
    )
    return layers * more * passes * kernels_fwd * system.overlap.host_kernel_s


def pipeline_bubble(plan: Plan, t_mb):
    """Seconds of pipeline bubble per step: (pp - 1) / vpp micro-batch times (1F1B;
    interleaved with vpp chunks per stage; Narayanan et al. SC21 §2.2), plus, where the
    pipeline holds fewer micro-batches m than stages, (pp - m)(1 - 1/vpp): each round of
    chunks waits for the first micro-batch to come round the pp stages (pp t_mb / vpp),
    not m t_mb / vpp, so interleaving cannot hide that share; with one micro-batch the step
    is pp t_mb at any vpp, the sequence through every chunk (Narayanan et al.'s interleaved
    form assumes m >= pp; Megatron runs it only there). vpp = 1: (pp - 1) t_mb."""
    few = jnp.maximum(plan.pp - n_microbatches(plan), 0.0) * (1.0 - safe_div(1.0, plan.vpp))
    return (safe_div(plan.pp - 1.0, plan.vpp) + few) * t_mb


def exposed_dp(overlap: Overlap, plan: Plan, work: Compute, comm: Comm):
    """Seconds of DP communication not hidden: max(0, dp_s - ov_dp * window), the window one
    micro-batch of compute (all of them with ZeRO-2/3, which reduce every micro-batch)."""
    window = jnp.where(plan.zero > 1.5, n_microbatches(plan) * work.total_s, work.total_s)
    return jnp.maximum(comm.dp_s - overlap.dp * window, 0.0)


def optimizer_time(system: System, model: Model, plan: Plan):
    """Seconds of the optimizer update: the rank's parameter share (ZeRO >= 1 shards it over
    the DP ranks) times OPTIMIZER_TRAFFIC_BYTES of HBM traffic (0 for frozen LoRA weights)."""
    system = rank_system(system)
    dense_p, expert_p = params_split_per_chip(model, plan)
    opt_params = jnp.where(
        plan.zero > 0.5,
        safe_div(dense_p, plan.dp * plan.cp) + safe_div(expert_p, expert_dp_size(plan)),
        dense_p + expert_p,
    )
    return compute.memory_time(
        system.chip,
        opt_params * (1.0 - plan.lora) * OPTIMIZER_TRAFFIC_BYTES,
        kernels=_OPTIMIZER_KERNELS,
    )


def train_step(system: System, model: Model, plan: Plan) -> StepBreakdown:
    """Step-time breakdown of training `model` on `system` under `plan` (module doc), on
    the system's ranks (`topology.rank_system`)."""
    system = rank_system(system)
    work = train_compute(system, model, plan)  # compute per micro-batch, by kind
    comm = train_comm(system, model, plan)  # raw communication, by axis
    t_gpu = microbatch_time(system.overlap, plan, work, comm)  # overlap and exposure
    t_mb = jnp.maximum(t_gpu, host_time(system, model, plan))  # host-bound micro-batches
    bubble = pipeline_bubble(plan, t_mb)  # schedule
    dp_exposed = exposed_dp(system.overlap, plan, work, comm)
    optimizer = optimizer_time(system, model, plan)
    nmb = n_microbatches(plan)
    zero = jnp.zeros_like(t_mb)
    return StepBreakdown(
        matmul_s=nmb * work.matmul_s,
        expert_s=nmb * work.expert_s,
        attention_s=nmb * work.attention_s,
        memory_s=nmb * work.memory_s,
        head_s=nmb * work.head_s,
        compute_s=nmb * work.total_s,
        tp_comm_s=nmb * comm.tp_s,
        cp_comm_s=nmb * comm.cp_s,
        pp_comm_s=nmb * comm.pp_s,
        dp_comm_s=comm.dp_s,
        dispatch_s=nmb * comm.dispatch_s,
        combine_s=nmb * comm.combine_s,
        exposed_comm_s=nmb * (t_gpu - work.total_s) + dp_exposed,
        bubble_s=bubble,
        exposed_dp_s=dp_exposed,
        optimizer_s=optimizer,
        host_wait_s=nmb * (t_mb - t_gpu),
        total_s=nmb * t_mb + bubble + dp_exposed + optimizer,
        tokens_in=safe_div(plan.global_batch, plan.dp) * plan.seq_len,
        tokens_out=zero,
    )


def attention_core(chip, model: Model, s_q, s_kv, d_qk, d_v, heads, precision: str):
    """Seconds of one layer's causal flash attention, the mean over the model's layers: the
    full kernel on the layers without a sliding window, the windowed one
    (`compute.attention_time` with `window`) on the `window_layers` with one."""
    share = windowed_share(model)
    full = compute.attention_time(chip, s_q, s_kv, d_qk, d_v, heads, precision)
    windowed = compute.attention_time(
        chip, s_q, s_kv, d_qk, d_v, heads, precision, window=model.attention_window
    )
    return (1.0 - share) * full + share * windowed


def decode_attention(system: System, model: Model, plan: Plan, q_tokens):
    """Seconds of one decode step's attention core on one chip: `q_tokens` queries per
    sequence of `microbatch` sequences read a KV cache of `context` tokens (a layer with a
    sliding window: at most `attention_window` of them; `workload.attended_context`). FLOPs
    2 q ctx (d_qk + d_v) heads/tp per sequence at the matmul efficiency of a
    (q heads, ctx, d_qk) GEMM; bytes the local KV cache at `kv_precision` bytes per
    element (MLA: the compressed latent with absorbed projections, shared by all heads and
    replicated over TP); roofline max of the two plus one kernel launch. (The packed MLA
    kernels' benchmark efficiency, 65-67% of peak in CloudMatrix Table 8, as a fitted
    per-family prior made leave-one-source-out worse, 9.42% -> 9.53%: the rows sit at an
    effective 40-50%, near this matmul curve.)"""
    chip = rank_system(system).chip
    b = plan.microbatch
    heads = safe_div(model.n_heads, plan.tp)
    # the cached tokens a query reads, the mean over the layers (a sliding window caps them)
    ctx = attended_context(model, plan.context)
    if model.attention == "mla":
        d_qk = model.kv_lora_rank + model.rope_head_dim
        d_v = model.kv_lora_rank
    else:
        d_qk = d_v = model.d_head
    flops = 2.0 * q_tokens * ctx * (d_qk + d_v) * heads * b
    if model.attention == "mla":
        kv_read = b * ctx * kv_cache_bytes_per_token(model, plan.kv_precision)
    else:
        kv_read = b * ctx * 2.0 * kv_width_local(model, plan) * plan.kv_precision
    rate = compute.peak_flops(chip, "bf16") * compute.matmul_efficiency(
        chip, q_tokens * heads, ctx, d_qk
    )
    t_c = safe_div(flops, rate)
    t_m = safe_div(kv_read, chip.hbm_bytes_per_s * chip.hbm_efficiency)
    return jnp.maximum(t_c, t_m) + chip.kernel_overhead_s


def _pass_tokens(model: Model, plan: Plan):
    """(tokens per rank in the pass, new queries per sequence, draft passes per step)."""
    if plan.phase == "decode":
        k = speculation(model, plan)[0]
        q = 1.0 + k
        return plan.microbatch * q, q, k
    t = plan.microbatch * plan.seq_len * (1.0 - plan.cache_hit)
    return t, plan.seq_len * (1.0 - plan.cache_hit), jnp.zeros_like(t)


def inference_compute(system: System, model: Model, plan: Plan) -> Compute:
    """Compute of one serving pass on one rank over all layers: prefill over the prompt
    tokens not served from the prefix cache (they still attend to the whole prompt), decode
    over 1 + k tokens per sequence, k the draft tokens it verifies (`speculation`;
    `decode_attention`); the head over the last token of each prompt (prefill) or every
    verified token. Drafting adds k passes of one block and head (an MTP module or an EAGLE
    layer). Fields are per layer times n_layers; `total_s` adds the drafting."""
    system = rank_system(system)
    chip = system.chip
    decode = plan.phase == "decode"
    t, q, mtp = _pass_tokens(model, plan)
    if decode:
        attn_f = decode_attention(system, model, plan, q)
    else:
        s_q, s_kv, d_qk, d_v, heads = attention_shape(model, plan)
        attn_f = attention_core(
            chip, model, s_q * (1.0 - plan.cache_hit), s_kv, d_qk, d_v, heads,
            _attention_precision(plan),
        )  # fmt: skip
    dense_f, expert_f, mem_f = layer_forward(system, model, plan, t)
    if decode:  # the small kernels of a decode layer (DECODE_KERNELS_PER_LAYER)
        mem_f = mem_f + DECODE_KERNELS_PER_LAYER * chip.kernel_overhead_s
    layers = model.n_layers
    head = compute.matmul_time(
        chip,
        t if decode else plan.microbatch,
        safe_div(model.vocab, plan.tp),
        model.d_model,
        plan.precision,
    )
    mtp_cost = mtp * (dense_f + expert_f + attn_f + mem_f + head)
    return Compute(
        matmul_s=layers * dense_f,
        expert_s=layers * expert_f,
        attention_s=layers * attn_f,
        memory_s=layers * mem_f,
        head_s=head,
        total_s=layers * (dense_f + expert_f + attn_f + mem_f) + head + mtp_cost,
    )


def _disaggregated_decode(system: System, model: Model, plan: Plan, work: Compute, t):
    """(compute, comm, exposed, wait) of one decode step with attention/expert
    disaggregation (`plan.expert_ranks` E > 0; xDeepServe on CloudMatrix 384, arXiv:2508.02520
    §7.1). The tp*dp attention ranks form g = `attention_groups` domains that take turns on
    the E expert ranks. Per layer, a domain runs its attention block (projections, attention
    core, memory-bound kernels) for its t tokens per rank, sends each token's top_k copies to
    the expert ranks (A2E, the dispatch of an EP group of E) and gets them back (E2A, the
    combine); an expert rank runs the routed and shared experts on the t_e = (dp/g) t / E
    tokens one domain sends it (shared experts spread over the expert ranks like routed
    slots). A layer of the domain chain takes t_att + t_a2e + t_exp + t_e2a; the expert
    ranks serve g domains per layer, so a layer takes
        max(t_att + t_a2e + t_exp + t_e2a, g t_exp)
    and `wait` (reported as `bubble_s`) is the time the attention ranks wait on the experts.
    The MTP draft pass costs one more such layer and head."""
    dp_group = safe_div(plan.dp, plan.attention_groups)
    t_e = safe_div(dp_group * t, plan.expert_ranks)
    # the MoE helpers take the tokens of an attention block and split them over its TP
    # ranks (`moe_tokens_per_chip`); an expert rank is not TP-split: scale by tp
    _, expert_f, _ = layer_forward(system, model, plan, t_e * plan.tp)
    # the busier side of the exchange: an attention rank sends its t/tp tokens' top_k
    # copies, an expert rank receives t_e tokens' top_k copies
    disp_f, comb_f = ep_layer_time(system, model, plan, jnp.maximum(t, t_e * plan.tp))
    layers = model.n_layers
    att = safe_div(work.matmul_s + work.attention_s + work.memory_s, layers)
    chain = att + disp_f + expert_f + comb_f
    layer = jnp.maximum(chain, plan.attention_groups * expert_f)
    _, _, mtp = _pass_tokens(model, plan)
    passes = layers + mtp
    head = work.head_s * (1.0 + mtp)
    compute_total = passes * (att + expert_f) + head
    exposed = passes * (disp_f + comb_f)
    wait = passes * (layer - chain)
    out = Compute(
        matmul_s=work.matmul_s,
        expert_s=layers * expert_f,
        attention_s=work.attention_s,
        memory_s=work.memory_s,
        head_s=work.head_s,
        total_s=compute_total,
    )
    return out, layers * disp_f, layers * comb_f, exposed, wait


#: share of a serving pass's TP all-reduces hidden behind compute: none. The fitted
#: `overlap.tp` is Megatron's training-time TP communication overlap (userbuffers splitting
#: all-gather/reduce-scatter into GEMM chunks); serving engines (TensorRT-LLM, vLLM, SGLang)
#: run each TP all-reduce between the layer's GEMMs, on the critical path (TensorRT-LLM fuses
#: it with the following RMSNorm, which saves a kernel, not the transfer)
SERVING_TP_OVERLAP = 0.0


def inference_step(system: System, model: Model, plan: Plan) -> StepBreakdown:
    """One prefill batch or one decode step of `model` on `system` under `plan`.

    Prefill: each DP-attention rank runs `microbatch` prompts of `seq_len` tokens (the
    `cache_hit` share of them is served from a prefix cache and skipped). Decode: each rank
    advances `microbatch` sequences by one token (plus one MTP draft token verified with
    acceptance `mtp_accept`), reading `context` cached tokens. Pipeline stages run in
    sequence, so the pass covers all layers; pipeline hops and TP all-reduces are exposed
    (SERVING_TP_OVERLAP), the MoE all-to-alls as in training. A decode step emits A tokens
    per sequence (`speculation`: 1, 1 + mtp_accept, or accept_len).
    """
    system = rank_system(system)
    ov = system.overlap
    work = inference_compute(system, model, plan)  # compute per pass, by kind
    t, _, _ = _pass_tokens(model, plan)
    comm = inference_comm(system, model, plan, t)  # raw communication, by axis
    a2a = comm.dispatch_s + comm.combine_s
    tp_exposed = (1.0 - SERVING_TP_OVERLAP) * comm.tp_s
    exposed = tp_exposed + comm.pp_s + _a2a_exposed(ov, plan, a2a, work.total_s)
    zero = jnp.zeros_like(work.total_s)
    wait = zero
    # attention/expert disaggregation when expert_ranks > 0 (both branches are traced; the
    # NumPy backend, which holds concrete values, skips it for colocated plans)
    colocated = is_numpy() and not np.any(plan.expert_ranks)
    if plan.phase == "decode" and not colocated:
        d_work, disp, comb, a2a_exposed, d_wait = _disaggregated_decode(
            system, model, plan, work, t
        )
        on = plan.expert_ranks > 0.5
        pick = lambda a, b: jnp.where(on, a, b)  # noqa: E731
        work = jax.tree_util.tree_map(pick, d_work, work)
        comm = replace(
            comm, dispatch_s=pick(disp, comm.dispatch_s), combine_s=pick(comb, comm.combine_s)
        )
        # the attention ranks keep their TP all-reduces (tp > 1) and pipeline hops
        exposed = pick(a2a_exposed + tp_exposed + comm.pp_s, exposed)
        wait = pick(d_wait, zero)
    if plan.phase == "decode":
        tokens_in, tokens_out = zero, plan.microbatch * speculation(model, plan)[1]
    else:
        tokens_in, tokens_out = plan.microbatch * plan.seq_len, zero
    return StepBreakdown(
        matmul_s=work.matmul_s,
        expert_s=work.expert_s,
        attention_s=work.attention_s,
        memory_s=work.memory_s,
        head_s=work.head_s,
        compute_s=work.total_s,
        tp_comm_s=comm.tp_s,
        cp_comm_s=comm.cp_s,
        pp_comm_s=comm.pp_s,
        dp_comm_s=comm.dp_s,
        dispatch_s=comm.dispatch_s,
        combine_s=comm.combine_s,
        exposed_comm_s=exposed,
        bubble_s=wait,
        exposed_dp_s=zero,
        optimizer_s=zero,
        host_wait_s=zero,
        total_s=work.total_s + exposed + wait,
        tokens_in=tokens_in,
        tokens_out=tokens_out,
    )
