"""One step: compute and communication composed under a plan.

Training, per micro-batch on the slowest (last) pipeline stage, with L = n_layers / pp
layers of which a share f are MoE layers:

    t_mb = compute_mb + (1 - ov_tp) tp_mb + (1 - ov_cp) cp_mb + (1 - ov_pp) pp_mb + a2a_mb*
    compute_mb = L * (fwd + bwd (= 2 fwd) + recompute) + head
    step = n_mb * t_mb + bubble + exposed_dp + optimizer
    bubble = (pp - 1) / vpp * t_mb                         (1F1B, interleaved when vpp > 1)
    exposed_dp = max(0, dp_time - ov_dp * window)          window: one micro-batch of compute
                                                           (all of them with ZeRO-2/3, which
                                                           reduce every micro-batch)
    a2a_mb* = a2a_mb - ov_tbo min(a2a_mb, compute_mb) with two-micro-batch overlap,
              else (1 - ov_ep) a2a_mb

so max(compute, comm) <= step <= compute + comm + bubble. Overlap fractions are shared,
calibrated parameters of the system (`system.overlap`).

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
tokens. MoE layers add dispatch and combine all-to-alls over the EP group.

>>> from emu.topology import example_system
>>> from emu.workload import example_model
>>> from emu.parallelism import make_plan
>>> plan = make_plan(tp=8, dp=1, global_batch=16, seq_len=8192)
>>> b = train_step(example_system(), example_model(), plan)
>>> bool(b.compute_s <= b.total_s)
True
"""

from __future__ import annotations

import jax.numpy as jnp

from emu import collectives, compute
from emu.numerics import safe_div
from emu.parallelism import (
    OPTIMIZER_TRAFFIC_BYTES,
    Plan,
    attention_matmuls,
    attention_shape,
    dense_ffn_matmuls,
    elementwise_bytes_per_layer,
    expert_dp_size,
    kv_width_local,
    moe_fraction,
    moe_matmuls,
    moe_tokens_per_chip,
    n_microbatches,
    params_split_per_chip,
    tokens_per_microbatch,
)
from emu.struct import dataclass
from emu.topology import System
from emu.units import BYTES_PER_ELEMENT
from emu.workload import Model, kv_cache_bytes_per_token

__all__ = ["StepBreakdown", "train_step", "InferenceBreakdown", "inference_step"]

Array = jnp.ndarray
ELEMENTWISE_KERNELS_FWD = 8.0  # fused norm/residual/activation kernels per layer forward
ATTN_BWD = 2.5  # flash-attention backward / forward time (recomputes QK^T; Dao et al. 2022)
#: small kernels an MoE layer forward issues besides the experts' GEMMs (router GEMM, softmax,
#: top-k, auxiliary loss, token counts, permute, all-to-all, unpermute, probability scaling);
#: the rest of a layer is a few large fused kernels the host issues far ahead of the GPU
HOST_KERNELS_MOE_LAYER_FWD = 10.0
#: kernels per local routed expert per layer forward: the two GEMMs (fused gate/up, down) and
#: the cast/split of each input (Transformer Engine GroupedLinear issues them per expert)
HOST_KERNELS_EXPERT_FWD = 4.0


@dataclass
class StepBreakdown:
    """Seconds per training step. `compute_s` = `matmul_s` (attention projections, dense
    FFN) + `expert_s` (routed and shared experts, router) + `attention_s` (attention core)
    + `memory_s` + `head_s`, over all micro-batches on the critical path; the `*_comm_s`,
    `dispatch_s` and `combine_s` fields are raw communication times, `exposed_comm_s` the
    part not hidden behind compute; `bubble_s` the pipeline bubble; `optimizer_s` the
    optimizer update; `host_wait_s` the time the GPU waits on the host issuing kernels
    (host-bound micro-batches, see the module doc); `total_s` the step time."""

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


#: routed-expert GEMMs run as one grouped GEMM per matrix and layer (one launch)
GROUPED = ("expert_in", "expert_out")


def _matmuls_time(chip, shapes: dict, precision: str):
    return sum(
        compute.matmul_time(
            chip,
            m,
            n,
            k,
            precision,
            count=c,
            kernels=jnp.minimum(c, 1.0) if name in GROUPED else None,
        )
        for name, (m, n, k, c) in shapes.items()
    )


def _dispatch_bytes(plan: Plan) -> float:
    """Bytes per element of the dispatch payload: FP8/INT8 plans send 8-bit tokens."""
    return 1.0 if plan.precision in ("fp8", "int8", "fp4") else 2.0


def _layer_forward(system: System, model: Model, plan: Plan, t, attn_shape):
    """Forward seconds of one average layer on one chip for `t` tokens:
    (projections + dense FFN, experts, attention core, memory-bound, dispatch, combine)."""
    chip = system.chip
    f = moe_fraction(model)
    proj = _matmuls_time(chip, attention_matmuls(model, plan, t), plan.precision)
    dense_ffn = _matmuls_time(chip, dense_ffn_matmuls(model, plan, t), plan.precision)
    experts = _matmuls_time(chip, moe_matmuls(model, plan, t), plan.precision)
    attn_prec = "fp16" if plan.precision == "fp16" else "bf16"
    attn = compute.attention_time(chip, *attn_shape, attn_prec)
    mem = compute.memory_time(
        chip, elementwise_bytes_per_layer(model, plan, t), kernels=ELEMENTWISE_KERNELS_FWD
    )
    tm = moe_tokens_per_chip(plan, t)
    payload = tm * model.d_model  # one copy of each token; the routing sets the copies

    def a2a(el):
        return plan.moe_imbalance * collectives.moe_all_to_all_time(
            system,
            payload * el,
            model.top_k,
            plan.ep,
            dedup=plan.moe_dedup,
            max_domains=model.route_max_nodes,
        )

    # expert TP: the etp ranks all-gather each other's routed tokens before the experts and
    # reduce-scatter the partial outputs after (Megatron's ETP token exchange)
    routed = tm * model.top_k * model.d_model
    etp_ag = collectives.all_gather_time(
        system, routed * plan.etp * _dispatch_bytes(plan), plan.etp, stride=plan.ep
    )
    etp_rs = collectives.reduce_scatter_time(
        system, routed * plan.etp * BYTES_PER_ELEMENT["bf16"], plan.etp, stride=plan.ep
    )
    dispatch = f * (a2a(_dispatch_bytes(plan)) + plan.moe_imbalance * etp_ag)
    combine = f * (a2a(BYTES_PER_ELEMENT["bf16"]) + plan.moe_imbalance * etp_rs)
    return proj + (1.0 - f) * dense_ffn, f * experts, attn, mem, dispatch, combine


def train_step(system: System, model: Model, plan: Plan) -> StepBreakdown:
    """Step-time breakdown of training `model` on `system` under `plan` (see module doc)."""
    chip = system.chip
    ov = system.overlap
    layers = safe_div(model.n_layers, plan.pp)
    nmb = n_microbatches(plan)
    t = tokens_per_microbatch(plan)
    el = BYTES_PER_ELEMENT["bf16"]

    dense_f, expert_f, attn_f, mem_f, disp_f, comb_f = _layer_forward(
        system, model, plan, t, attention_shape(model, plan)
    )
    # backward = 2 x forward (dgrad + wgrad; LoRA: dgrad only); flash attention's backward
    # recomputes the scores (2.5 x forward) whatever the recompute setting; full
    # recomputation adds one forward of everything, selective nothing beyond flash.
    re_dense = jnp.where(plan.recompute > 1.5, 1.0, 0.0)
    bwd = 2.0 - plan.lora
    matmul_mb = layers * dense_f * (1.0 + bwd + re_dense)
    expert_mb = layers * expert_f * (1.0 + bwd + re_dense)
    attn_mb = layers * attn_f * (1.0 + ATTN_BWD + re_dense)
    memory_mb = layers * mem_f * (3.0 + re_dense)
    head_f = compute.matmul_time(
        chip, t, safe_div(model.vocab, plan.tp), model.d_model, plan.precision
    ) + compute.memory_time(chip, t * safe_div(model.vocab, plan.tp) * 4.0 * 3.0, kernels=2.0)
    # multi-token prediction: each MTP module is one more transformer block and output head
    # (DeepSeek-V3 §2.2); pipeline splits rebalance stages around it, so its cost is spread
    # over the pp stages
    mtp = model.mtp_layers
    head_mb = (1.0 + bwd) * head_f * (1.0 + safe_div(mtp, plan.pp))
    per_layer = safe_div(1.0, model.n_layers)
    matmul_mb = matmul_mb * (1.0 + mtp * per_layer)
    expert_mb = expert_mb * (1.0 + mtp * per_layer)
    attn_mb = attn_mb * (1.0 + mtp * per_layer)
    memory_mb = memory_mb * (1.0 + mtp * per_layer)
    compute_mb = matmul_mb + expert_mb + attn_mb + memory_mb + head_mb

    # MoE all-to-all: dispatch and combine forward, their gradients backward (bf16), again
    # forward under full recomputation.
    n_a2a = 1.0 + re_dense
    dispatch_mb = layers * (n_a2a * disp_f + comb_f)
    combine_mb = layers * (n_a2a * comb_f + comb_f)
    a2a_mb = dispatch_mb + combine_mb
    a2a_exposed = jnp.where(
        plan.a2a_overlap > 0.5,
        a2a_mb - ov.ep_tbo * jnp.minimum(a2a_mb, compute_mb),
        (1.0 - ov.ep) * a2a_mb,
    )

    # TP: 2 collectives per layer forward, 2 backward (+2 with full recompute); all-reduce
    # without SP, all-gather + reduce-scatter with SP (same bytes, the model charges alike).
    act = t * model.d_model * el
    n_tp = 4.0 + 2.0 * re_dense
    tp_one = jnp.where(
        plan.sp > 0.5,
        collectives.all_gather_time(system, act, plan.tp, algorithm=plan.algorithm)
        + collectives.reduce_scatter_time(system, act, plan.tp, algorithm=plan.algorithm),
        collectives.all_reduce_time(system, act, plan.tp, algorithm=plan.algorithm),
    )
    tp_mb = layers * n_tp * tp_one

    # CP: all-gather K and V of the local heads forward, reduce-scatter their grads backward.
    kv = plan.microbatch * plan.seq_len * 2.0 * kv_width_local(model, plan) * el
    cp_one = collectives.all_gather_time(
        system, kv, plan.cp, stride=plan.tp, algorithm=plan.algorithm
    )
    cp_mb = layers * (2.0 + re_dense) * cp_one

    # PP: activations forward and their gradients backward at every chunk boundary.
    pp_bytes = act * jnp.where(plan.sp > 0.5, safe_div(1.0, plan.tp), 1.0)
    pp_stride = plan.tp * plan.cp * plan.dp
    pp_one = collectives.send_recv_time(system, pp_bytes, stride=pp_stride)
    pp_mb = jnp.where(plan.pp > 1.5, 2.0 * plan.vpp * pp_one, 0.0)

    t_gpu = (
        compute_mb
        + (1.0 - ov.tp) * tp_mb
        + (1.0 - ov.cp) * cp_mb
        + (1.0 - ov.pp) * pp_mb
        + a2a_exposed
    )
    # host-bound micro-batches: the host issues every kernel of the micro-batch (forward,
    # backward with dgrad and wgrad, recompute) while the GPU runs; the slower of the two
    # sets the pace. Routed experts: one set of launches per expert slot on the chip.
    local = jnp.ceil(safe_div(model.n_experts, plan.ep) - 1e-4)
    kernels_fwd = moe_fraction(model) * (
        HOST_KERNELS_MOE_LAYER_FWD + local * HOST_KERNELS_EXPERT_FWD
    )
    host_mb = (
        layers * (1.0 + mtp * per_layer) * (1.0 + bwd + re_dense) * kernels_fwd * ov.host_kernel_s
    )
    t_mb = jnp.maximum(t_gpu, host_mb)
    bubble = safe_div(plan.pp - 1.0, plan.vpp) * t_mb

    # DP: dense weights over dp x cp ranks (stride tp), experts over their expert-data-
    # parallel ranks (stride ep). ZeRO 0 all-reduces gradients; ZeRO 1/2 reduce-scatter
    # gradients and all-gather updated bf16 weights; ZeRO 3 gathers weights for every
    # forward and backward micro-batch, as flat rings (layer-by-layer gathers see no
    # node-level pre-aggregation, as DeepSpeed/FSDP issue them).
    dense_p, expert_p = params_split_per_chip(model, plan)
    trainable = 1.0 - plan.lora

    def dp_comm(p, size, stride):
        grad_b = p * trainable * plan.grad_bytes
        w_b = p * el
        kw = dict(stride=stride, algorithm=plan.algorithm)
        rs = collectives.reduce_scatter_time(system, grad_b, size, **kw)
        ag = collectives.all_gather_time(system, w_b, size, **kw)
        ar = collectives.all_reduce_time(system, grad_b, size, **kw)
        rs3 = collectives.reduce_scatter_time(system, grad_b, size, stride=stride, algorithm="ring")
        ag3 = collectives.all_gather_time(system, w_b, size, stride=stride, algorithm="ring")
        # ZeRO 2 keeps only a gradient shard, so it reduce-scatters every micro-batch
        rs_count = jnp.where(plan.zero > 1.5, nmb, 1.0)
        # ZeRO 3 alone gathers the weights for forward and again for backward and reduces
        # the gradients every micro-batch; under a pipeline a stage holds 1/pp of the model,
        # so FSDP keeps it unsharded over the step's micro-batches (no reshard after forward
        # or backward, gradients reduced after the last backward: Llama 3 §3.3.2, PyTorch
        # pipelining): one gather and one reduce-scatter per step.
        z3 = jnp.where(plan.pp > 1.5, rs3 + ag3, nmb * (rs3 + 2.0 * ag3))
        return jnp.where(
            plan.zero > 2.5,
            z3,
            jnp.where(plan.zero > 0.5, rs_count * rs + ag * trainable, ar),
        )

    dp_time = dp_comm(dense_p, plan.dp * plan.cp, plan.tp) + dp_comm(
        expert_p, expert_dp_size(plan), plan.ep * plan.etp
    )
    window = jnp.where(plan.zero > 1.5, nmb * compute_mb, compute_mb)
    exposed_dp = jnp.maximum(dp_time - ov.dp * window, 0.0)

    opt_params = jnp.where(
        plan.zero > 0.5,
        safe_div(dense_p, plan.dp * plan.cp) + safe_div(expert_p, expert_dp_size(plan)),
        dense_p + expert_p,
    )
    optimizer = compute.memory_time(
        chip, opt_params * trainable * OPTIMIZER_TRAFFIC_BYTES, kernels=4.0
    )

    total = nmb * t_mb + bubble + exposed_dp + optimizer
    exposed = nmb * (t_gpu - compute_mb) + exposed_dp
    return StepBreakdown(
        matmul_s=nmb * matmul_mb,
        expert_s=nmb * expert_mb,
        attention_s=nmb * attn_mb,
        memory_s=nmb * memory_mb,
        head_s=nmb * head_mb,
        compute_s=nmb * compute_mb,
        tp_comm_s=nmb * tp_mb,
        cp_comm_s=nmb * cp_mb,
        pp_comm_s=nmb * pp_mb,
        dp_comm_s=dp_time,
        dispatch_s=nmb * dispatch_mb,
        combine_s=nmb * combine_mb,
        exposed_comm_s=exposed,
        bubble_s=bubble,
        exposed_dp_s=exposed_dp,
        optimizer_s=optimizer,
        host_wait_s=nmb * (t_mb - t_gpu),
        total_s=total,
    )


@dataclass
class InferenceBreakdown:
    """Seconds of one forward pass (a prefill batch or one decode step) on one chip, with the
    tokens it produces. `total_s` is the latency of the pass; `tokens_in` prompt tokens
    processed (prefill), `tokens_out` output tokens accepted (decode, with MTP)."""

    matmul_s: Array
    expert_s: Array
    attention_s: Array
    memory_s: Array
    head_s: Array
    compute_s: Array
    tp_comm_s: Array
    pp_comm_s: Array
    dispatch_s: Array
    combine_s: Array
    exposed_comm_s: Array
    total_s: Array
    tokens_in: Array
    tokens_out: Array


def _decode_attention(system: System, model: Model, plan: Plan, q_tokens):
    """One decode step's attention core on one chip: `q_tokens` queries per sequence read a
    KV cache of `context` tokens (MLA: the compressed latent, absorbed projections)."""
    chip = system.chip
    b = plan.microbatch
    heads = safe_div(model.n_heads, plan.tp)
    ctx = plan.context
    if model.attention == "mla":
        d_qk = model.kv_lora_rank + model.rope_head_dim
        d_v = model.kv_lora_rank
    else:
        d_qk = d_v = model.d_head
    flops = 2.0 * q_tokens * ctx * (d_qk + d_v) * heads * b
    if model.attention == "mla":  # the latent is shared by all heads, replicated over TP
        kv_read = b * ctx * kv_cache_bytes_per_token(model)
    else:
        kv_read = b * ctx * 2.0 * kv_width_local(model, plan) * BYTES_PER_ELEMENT["bf16"]
    rate = compute.peak_flops(chip, "bf16") * compute.matmul_efficiency(
        chip, q_tokens * heads, ctx, d_qk
    )
    t_c = safe_div(flops, rate)
    t_m = safe_div(kv_read, chip.hbm_bytes_per_s * chip.hbm_efficiency)
    return jnp.maximum(t_c, t_m) + chip.kernel_overhead_s


def inference_step(system: System, model: Model, plan: Plan) -> InferenceBreakdown:
    """One prefill batch or one decode step of `model` on `system` under `plan`.

    Prefill: each DP-attention rank runs `microbatch` prompts of `seq_len` tokens (the
    `cache_hit` share of them is served from a prefix cache and skipped). Decode: each rank
    advances `microbatch` sequences by one token (plus one MTP draft token verified with
    acceptance `mtp_accept`), reading `context` cached tokens. Pipeline stages run in
    sequence, so the pass covers all layers.
    """
    chip = system.chip
    ov = system.overlap
    el = BYTES_PER_ELEMENT["bf16"]
    decode = plan.phase == "decode"
    # MTP drafts need the model's MTP modules (validate_plan refuses them otherwise)
    mtp = jnp.where((plan.mtp_accept > 0) & (model.mtp_layers > 0), 1.0, 0.0)
    if decode:
        q = 1.0 + mtp
        t = plan.microbatch * q
        attn_shape = (q, plan.context, 1.0, 1.0, 0.0)  # placeholder: replaced below
    else:
        t = plan.microbatch * plan.seq_len * (1.0 - plan.cache_hit)
        s_q, s_kv, d_qk, d_v, heads = attention_shape(model, plan)
        # prefix-cache hits skip their queries; the new ones still attend to the whole prompt
        attn_shape = (s_q * (1.0 - plan.cache_hit), s_kv, d_qk, d_v, heads)
    dense_f, expert_f, attn_f, mem_f, disp_f, comb_f = _layer_forward(
        system, model, plan, t, attn_shape
    )
    if decode:
        attn_f = _decode_attention(system, model, plan, q)
    layers = model.n_layers
    head = compute.matmul_time(
        chip,
        jnp.where(decode, t, plan.microbatch),
        safe_div(model.vocab, plan.tp),
        model.d_model,
        plan.precision,
    )
    # MTP drafting: each MTP module is one more block and head pass per decode step
    mtp_cost = mtp * model.mtp_layers * (dense_f + expert_f + attn_f + mem_f + head)
    comp = layers * (dense_f + expert_f + attn_f + mem_f) + head + mtp_cost
    act = t * model.d_model * el
    tp_all = (
        layers * 2.0 * collectives.all_reduce_time(system, act, plan.tp, algorithm=plan.algorithm)
    )
    pp_all = jnp.where(
        plan.pp > 1.5,
        (plan.pp - 1.0)
        * collectives.send_recv_time(system, act, stride=plan.tp * plan.cp * plan.dp),
        0.0,
    )
    dispatch = layers * disp_f
    combine = layers * comb_f
    a2a = dispatch + combine
    a2a_exposed = jnp.where(
        plan.a2a_overlap > 0.5, a2a - ov.ep_tbo * jnp.minimum(a2a, comp), (1.0 - ov.ep) * a2a
    )
    exposed = (1.0 - ov.tp) * tp_all + pp_all + a2a_exposed
    total = comp + exposed
    tokens_out = jnp.where(decode, plan.microbatch * (1.0 + mtp * plan.mtp_accept), 0.0)
    tokens_in = jnp.where(decode, 0.0, plan.microbatch * plan.seq_len)
    return InferenceBreakdown(
        matmul_s=layers * dense_f,
        expert_s=layers * expert_f,
        attention_s=layers * attn_f,
        memory_s=layers * mem_f,
        head_s=head,
        compute_s=comp,
        tp_comm_s=tp_all,
        pp_comm_s=pp_all,
        dispatch_s=dispatch,
        combine_s=combine,
        exposed_comm_s=exposed,
        total_s=total,
        tokens_in=tokens_in,
        tokens_out=tokens_out,
    )
