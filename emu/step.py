"""One training step: compute and communication composed under a plan.

Per micro-batch on the slowest (last) pipeline stage, with L = n_layers / pp layers:

    t_mb = compute_mb + (1 - ov_tp) tp_mb + (1 - ov_cp) cp_mb + (1 - ov_pp) pp_mb
    compute_mb = L * (fwd + bwd (= 2 fwd) + recompute) + head
    step = n_mb * t_mb + bubble + exposed_dp + optimizer
    bubble = (pp - 1) / vpp * t_mb                         (1F1B, interleaved when vpp > 1)
    exposed_dp = max(0, dp_time - ov_dp * window)          window: one micro-batch of compute
                                                           (all of them with ZeRO-3)

so max(compute, comm) <= step <= compute + comm + bubble. Overlap fractions are shared,
calibrated parameters of the system (`system.overlap`).

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
    attention_shape,
    elementwise_bytes_per_layer,
    kv_width_local,
    layer_matmuls,
    n_microbatches,
    params_per_chip,
    tokens_per_microbatch,
)
from emu.struct import dataclass
from emu.topology import System
from emu.units import BYTES_PER_ELEMENT
from emu.workload import Model

__all__ = ["StepBreakdown", "train_step"]

Array = jnp.ndarray
ELEMENTWISE_KERNELS_FWD = 8.0  # fused norm/residual/activation kernels per layer forward
ATTN_BWD = 2.5  # flash-attention backward / forward time (recomputes QK^T; Dao et al. 2022)


@dataclass
class StepBreakdown:
    """Seconds per training step. `compute_s` = `matmul_s` + `attention_s` + `memory_s` +
    `head_s` (all micro-batches, critical path); the `*_comm_s` fields are raw communication
    times, `exposed_comm_s` the part not hidden behind compute; `bubble_s` the pipeline
    bubble; `optimizer_s` the optimizer update; `total_s` the step time."""

    matmul_s: Array
    attention_s: Array
    memory_s: Array
    head_s: Array
    compute_s: Array
    tp_comm_s: Array
    cp_comm_s: Array
    pp_comm_s: Array
    dp_comm_s: Array
    exposed_comm_s: Array
    bubble_s: Array
    exposed_dp_s: Array
    optimizer_s: Array
    total_s: Array


def _layer_compute(system: System, model: Model, plan: Plan):
    """Forward seconds of one layer per micro-batch: (dense matmuls, attention core, memory)."""
    chip = system.chip
    mm = layer_matmuls(model, plan)
    dense = sum(
        compute.matmul_time(chip, m, n, k, plan.precision, count=c) for m, n, k, c in mm.values()
    )
    # Flash attention runs in 16-bit even in FP8/INT8/FP4 recipes.
    attn_prec = "fp16" if plan.precision == "fp16" else "bf16"
    attn = compute.attention_time(chip, *attention_shape(model, plan), attn_prec)
    mem = compute.memory_time(
        chip, elementwise_bytes_per_layer(model, plan), kernels=ELEMENTWISE_KERNELS_FWD
    )
    return dense, attn, mem


def train_step(system: System, model: Model, plan: Plan) -> StepBreakdown:
    """Step-time breakdown of training `model` on `system` under `plan` (see module doc)."""
    chip = system.chip
    ov = system.overlap
    layers = safe_div(model.n_layers, plan.pp)
    nmb = n_microbatches(plan)
    t = tokens_per_microbatch(plan)
    el = BYTES_PER_ELEMENT["bf16"]

    dense_f, attn_f, mem_f = _layer_compute(system, model, plan)
    # backward = 2 x forward (dgrad + wgrad; LoRA: dgrad only); flash attention's backward
    # recomputes the scores (2.5 x forward) whatever the recompute setting; full
    # recomputation adds one forward of everything, selective nothing beyond flash.
    re_dense = jnp.where(plan.recompute > 1.5, 1.0, 0.0)
    bwd = 2.0 - plan.lora
    matmul_mb = layers * dense_f * (1.0 + bwd + re_dense)
    attn_mb = layers * attn_f * (1.0 + ATTN_BWD + re_dense)
    memory_mb = layers * mem_f * (3.0 + re_dense)
    head_f = compute.matmul_time(
        chip, t, safe_div(model.vocab, plan.tp), model.d_model, plan.precision
    ) + compute.memory_time(chip, t * safe_div(model.vocab, plan.tp) * 4.0 * 3.0, kernels=2.0)
    head_mb = (1.0 + bwd) * head_f
    compute_mb = matmul_mb + attn_mb + memory_mb + head_mb

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

    t_mb = compute_mb + (1.0 - ov.tp) * tp_mb + (1.0 - ov.cp) * cp_mb + (1.0 - ov.pp) * pp_mb
    bubble = safe_div(plan.pp - 1.0, plan.vpp) * t_mb

    # DP (over dp x cp ranks that hold the same weights): ZeRO 0 all-reduces gradients;
    # ZeRO 1/2 reduce-scatter gradients and all-gather updated bf16 weights; ZeRO 3 gathers
    # weights for every forward and backward micro-batch and reduce-scatters gradients.
    p = params_per_chip(model, plan)
    g = plan.dp * plan.cp
    grad_b = p * (1.0 - plan.lora) * plan.grad_bytes
    w_b = p * el
    kw = dict(stride=plan.tp, algorithm=plan.algorithm)
    rs = collectives.reduce_scatter_time(system, grad_b, g, **kw)
    ag = collectives.all_gather_time(system, w_b, g, **kw)
    ar = collectives.all_reduce_time(system, grad_b, g, **kw)
    # ZeRO-3 gathers parameters layer by layer as they are needed: flat rings limited by the
    # slowest spanned tier (no node-level pre-aggregation), as DeepSpeed/FSDP issue them.
    rs3 = collectives.reduce_scatter_time(system, grad_b, g, stride=plan.tp, algorithm="ring")
    ag3 = collectives.all_gather_time(system, w_b, g, stride=plan.tp, algorithm="ring")
    dp_time = jnp.where(
        plan.zero > 2.5,
        nmb * (rs3 + 2.0 * ag3),
        jnp.where(plan.zero > 0.5, rs + ag * (1.0 - plan.lora), ar),
    )
    window = jnp.where(plan.zero > 2.5, nmb * compute_mb, compute_mb)
    exposed_dp = jnp.maximum(dp_time - ov.dp * window, 0.0)

    shard = jnp.where(plan.zero > 0.5, g, 1.0)
    optimizer = compute.memory_time(
        chip, safe_div(p * (1.0 - plan.lora) * OPTIMIZER_TRAFFIC_BYTES, shard), kernels=4.0
    )

    total = nmb * t_mb + bubble + exposed_dp + optimizer
    exposed = nmb * (t_mb - compute_mb) + exposed_dp
    return StepBreakdown(
        matmul_s=nmb * matmul_mb,
        attention_s=nmb * attn_mb,
        memory_s=nmb * memory_mb,
        head_s=nmb * head_mb,
        compute_s=nmb * compute_mb,
        tp_comm_s=nmb * tp_mb,
        cp_comm_s=nmb * cp_mb,
        pp_comm_s=nmb * pp_mb,
        dp_comm_s=dp_time,
        exposed_comm_s=exposed,
        bubble_s=bubble,
        exposed_dp_s=exposed_dp,
        optimizer_s=optimizer,
        total_s=total,
    )
