"""Communication of a plan, one part per parallel axis, before any overlap.

Each part prices the collectives one chip takes part in, from `emu.collectives` on the
system's tiers (ranks in Megatron order: TP stride 1, then CP, DP, PP):

    TP   all-reduce of the activations, t d bytes (all-gather + reduce-scatter with SP):
         4 per layer per training micro-batch (2 forward, 2 backward; +2 with full
         recompute), 2 per layer per serving pass
    CP   all-gather of the local K and V, microbatch * seq_len * 2 kv_local bytes, forward;
         their gradients reduce-scattered backward (+1 with full recompute)
    PP   send/recv of the activations (t d / tp with SP) at each of the 2 vpp chunk
         boundaries per training micro-batch; pp - 1 hops per serving pass
    EP   MoE dispatch (8-bit tokens under FP8/INT8/FP4, else bf16) and combine (bf16) over
         the EP group, times `moe_imbalance`, plus the ETP token exchange; none in a
         serving pass whose EP x ETP group lies inside its TP group (`tokens_replicated`)
    DP   ZeRO 0: all-reduce of the gradients; ZeRO 1/2: reduce-scatter of the gradients
         (every micro-batch with ZeRO 2) and all-gather of the updated bf16 weights;
         ZeRO 3: per-micro-batch gathers and reductions as one-channel rings (once per step
         under a pipeline); dense weights over dp x cp ranks, experts over expert-DP ranks
         (a group that holds no bytes, such as the expert group of a dense model, costs
         nothing)

Seconds, per training micro-batch (DP: per step) or per serving pass, in a `Comm`.

>>> from emu.topology import example_system
>>> from emu.workload import example_model
>>> from emu.plan import make_plan
>>> c = train_comm(example_system(), example_model(), make_plan(tp=8, global_batch=4))
>>> bool(c.tp_s > 0), float(c.pp_s), float(c.cp_s)   # tp = 8 on one NVLink node
(True, 0.0, 0.0)
"""

from __future__ import annotations

from emu import collectives
from emu._backend import jnp
from emu.numerics import safe_div
from emu.parallelism import (
    Plan,
    expert_dp_size,
    kv_width_local,
    moe_fraction,
    moe_tokens_per_chip,
    n_microbatches,
    params_split_per_chip,
    stage_layers,
    tokens_per_microbatch,
)
from emu.struct import dataclass
from emu.topology import System
from emu.units import BYTES_PER_ELEMENT
from emu.workload import Model

__all__ = [
    "Comm",
    "train_comm",
    "inference_comm",
    "tp_time",
    "cp_time",
    "pp_time",
    "ep_layer_time",
    "tokens_replicated",
    "dp_time",
    "full_recompute",
]

Array = jnp.ndarray
_BF16 = BYTES_PER_ELEMENT["bf16"]
#: bytes per element of a dispatched token by plan precision, scales included; combine stays
#: bf16. FP8: one byte plus a 4-byte scale per 128-element block (DeepEP: 7,168 + 224 bytes
#: per DeepSeek token); INT8: a 4-byte scale per token (Ascend: 7,168 + 4), added in
#: `_dispatch_bytes`; FP4: half a byte plus an FP8 scale per 16 elements (NVFP4: 4,032 bytes
#: per 7,168-element token). Source: the rows' notes, fidelity DESIGN §2.
_DISPATCH_BYTES = {"fp8": 1.0 + 4.0 / 128.0, "int8": 1.0, "fp4": 0.5 + 1.0 / 16.0}
_INT8_SCALE_BYTES = 4.0
#: TP collectives (all-reduce equivalents) per layer per training micro-batch: two in the
#: forward pass (attention and FFN outputs), two in the backward; full recompute adds the
#: forward's two again (Korthikanti et al. 2022, §4)
_TP_PER_LAYER_TRAIN, _TP_PER_LAYER_RECOMPUTE = 4.0, 2.0
#: TP all-reduces per layer per serving pass (attention and FFN outputs)
_TP_PER_LAYER_SERVE = 2.0
#: CP collectives per layer per micro-batch: K/V all-gather forward, gradient
#: reduce-scatter backward (+1 forward again under full recompute)
_CP_PER_LAYER = 2.0


@dataclass
class Comm:
    """Raw communication seconds on one chip by parallel axis, before any overlap: per
    training micro-batch (`dp_s` per step) or per serving pass (`cp_s` = `dp_s` = 0)."""

    tp_s: Array
    cp_s: Array
    pp_s: Array
    dp_s: Array
    dispatch_s: Array
    combine_s: Array


def full_recompute(plan: Plan):
    """The share of layers whose forward pass is repeated in backward: `recompute_fraction`
    (1: every layer) under full activation recomputation, else 0."""
    return jnp.where(plan.recompute > 1.5, plan.recompute_fraction, 0.0)


def tp_time(system: System, plan: Plan, nbytes, *, sp=None):
    """Seconds of one TP all-reduce of `nbytes` activations over tp chips (stride 1), or
    with sequence parallelism (`sp`, default the plan's) an all-gather plus a
    reduce-scatter of the same bytes."""
    sp = plan.sp if sp is None else sp
    kw = dict(algorithm=plan.algorithm)
    return jnp.where(
        sp > 0.5,
        collectives.all_gather_time(system, nbytes, plan.tp, **kw)
        + collectives.reduce_scatter_time(system, nbytes, plan.tp, **kw),
        collectives.all_reduce_time(system, nbytes, plan.tp, **kw),
    )


def cp_time(system: System, model: Model, plan: Plan):
    """Seconds of one CP all-gather of the local K and V of a micro-batch over cp chips
    (stride tp): microbatch * seq_len * 2 kv_width_local bf16 bytes."""
    kv = plan.microbatch * plan.seq_len * 2.0 * kv_width_local(model, plan) * _BF16
    return collectives.all_gather_time(
        system, kv, plan.cp, stride=plan.tp, algorithm=plan.algorithm
    )


def pp_time(system: System, plan: Plan, nbytes):
    """Seconds to send `nbytes` to the next pipeline stage (stride tp * cp * dp)."""
    return collectives.send_recv_time(system, nbytes, stride=plan.tp * plan.cp * plan.dp)


def _dispatch_bytes(model: Model, plan: Plan):
    """Bytes per d_model element of one dispatched token copy (scales included)."""
    if plan.precision == "int8":
        return 1.0 + safe_div(_INT8_SCALE_BYTES, model.d_model)
    return _DISPATCH_BYTES.get(plan.precision, _BF16)


def ep_layer_time(system: System, model: Model, plan: Plan, t):
    """(dispatch, combine) seconds of one average layer's forward for `t` tokens of the
    attention block on one rank: the MoE share f of layers routes t/tp tokens of d_model
    elements to top_k experts over the EP group (`collectives.moe_all_to_all_time`, the
    dispatch and the combine kernels), and with expert TP the etp ranks all-gather each
    other's routed tokens before the experts and reduce-scatter the partial outputs after
    (Megatron's ETP token exchange). The busiest rank moves `moe_imbalance` times the mean
    bytes."""
    f = moe_fraction(model)
    tm = moe_tokens_per_chip(plan, t) * plan.moe_imbalance
    payload = tm * model.d_model  # one copy of each token; the routing sets the copies

    def a2a(el, combine):
        return collectives.moe_all_to_all_time(
            system,
            payload * el,
            model.top_k,
            plan.ep,
            dedup=plan.moe_dedup,
            max_domains=model.route_max_nodes,
            combine=combine,
            tokens=tm,
        )

    routed = tm * model.top_k * model.d_model
    el = _dispatch_bytes(model, plan)
    etp_ag = collectives.all_gather_time(system, routed * plan.etp * el, plan.etp, stride=plan.ep)
    etp_rs = collectives.reduce_scatter_time(
        system, routed * plan.etp * _BF16, plan.etp, stride=plan.ep
    )
    dispatch = f * (a2a(el, False) + etp_ag)
    combine = f * (a2a(_BF16, True) + etp_rs)
    return dispatch, combine


def _dp_group_time(system: System, plan: Plan, params, size, stride):
    trainable = 1.0 - plan.lora
    grad_b = params * trainable * plan.grad_bytes
    w_b = params * _BF16
    nmb = n_microbatches(plan)
    kw = dict(stride=stride, algorithm=plan.algorithm)
    rs = collectives.reduce_scatter_time(system, grad_b, size, **kw)
    ag = collectives.all_gather_time(system, w_b, size, **kw)
    ar = collectives.all_reduce_time(system, grad_b, size, **kw)
    # ZeRO 3 as DeepSpeed/FSDP issue it: layer-by-layer rings of one channel across node
    # boundaries, no node-level pre-aggregation
    flat = dict(stride=stride, algorithm="ring_flat")
    rs3 = collectives.reduce_scatter_time(system, grad_b, size, **flat)
    ag3 = collectives.all_gather_time(system, w_b, size, **flat)
    # ZeRO 2 keeps only a gradient shard, so it reduce-scatters every micro-batch
    rs_count = jnp.where(plan.zero > 1.5, nmb, 1.0)
    # ZeRO 3 alone gathers the weights for forward and again for backward and reduces the
    # gradients every micro-batch; under a pipeline a stage holds 1/pp of the model, so FSDP
    # keeps it unsharded over the step's micro-batches (no reshard after forward or
    # backward, gradients reduced after the last backward: Llama 3 §3.3.2, PyTorch
    # pipelining): one gather and one reduce-scatter per step.
    z3 = jnp.where(plan.pp > 1.5, rs3 + ag3, nmb * (rs3 + 2.0 * ag3))
    return jnp.where(
        plan.zero > 2.5,
        z3,
        jnp.where(plan.zero > 0.5, rs_count * rs + ag * trainable, ar),
    )


def dp_time(system: System, model: Model, plan: Plan):
    """Seconds of data-parallel communication per step (module doc, DP): dense weights over
    dp * cp ranks (stride tp), routed experts over their expert-data-parallel ranks
    (stride ep * etp)."""
    dense_p, expert_p = params_split_per_chip(model, plan)
    return _dp_group_time(system, plan, dense_p, plan.dp * plan.cp, plan.tp) + _dp_group_time(
        system, plan, expert_p, expert_dp_size(plan), plan.ep * plan.etp
    )


def train_comm(system: System, model: Model, plan: Plan) -> Comm:
    """Raw communication of one training micro-batch on the heaviest pipeline stage
    (`parallelism.stage_layers`), by axis (module doc); `dp_s` per step. The MoE
    all-to-alls run forward (again under full recompute) and their gradients backward in
    bf16: dispatch counts the forward dispatches plus one combine-sized backward transfer,
    combine likewise."""
    layers = stage_layers(model, plan)[0]
    t = tokens_per_microbatch(plan)
    re = full_recompute(plan)
    disp_f, comb_f = ep_layer_time(system, model, plan, t)
    n_a2a = 1.0 + re
    act = t * model.d_model * _BF16
    tp_mb = (
        layers * (_TP_PER_LAYER_TRAIN + _TP_PER_LAYER_RECOMPUTE * re) * tp_time(system, plan, act)
    )
    cp_mb = layers * (_CP_PER_LAYER + re) * cp_time(system, model, plan)
    pp_bytes = act * jnp.where(plan.sp > 0.5, safe_div(1.0, plan.tp), 1.0)
    pp_mb = jnp.where(plan.pp > 1.5, 2.0 * plan.vpp * pp_time(system, plan, pp_bytes), 0.0)
    return Comm(
        tp_s=tp_mb,
        cp_s=cp_mb,
        pp_s=pp_mb,
        dp_s=dp_time(system, model, plan),
        dispatch_s=layers * (n_a2a * disp_f + comb_f),
        combine_s=layers * (n_a2a * comb_f + comb_f),
    )


def tokens_replicated(plan: Plan):
    """1 where a serving pass's MoE layers see every token of the TP group on each of its
    ranks, else 0: attention is tensor-parallel without sequence sharding, so after its
    all-reduce the tp ranks hold the same t tokens, and an EP x ETP group of at most tp
    ranks (inside the TP group: TP stride 1) has them all. Each rank then runs its local
    experts (its share of each expert's width) on the tokens routed to them and the
    layer's output all-reduce, which `inference_comm` counts among the TP all-reduces,
    sums the partial outputs: no dispatch or combine (TensorRT-LLM's attention-TP MoE with
    --tp 8 --ep 2; vLLM's and SGLang's expert parallelism without DP attention reduce the
    experts' output with the TP all-reduce). The group must tile the TP group (ep x etp
    divides tp): with tp 8 and ep 6 the groups of ranks 6-11 and 18-23 straddle two TP
    groups' different tokens. With DP attention the EP group spans several TP groups'
    disjoint tokens and all-to-alls them (`ep_layer_time`). A step in the degrees, like
    the other degree tests (pp > 1): no gradient across it."""
    group = plan.ep * plan.etp
    inside = (group <= plan.tp + 0.5) & (
        jnp.abs(jnp.round(plan.tp / group) * group - plan.tp) < 0.5
    )
    return jnp.where(inside, 1.0, 0.0)


def inference_comm(system: System, model: Model, plan: Plan, t) -> Comm:
    """Raw communication of one serving pass over all layers for `t` tokens per rank: TP
    all-reduces (no SP), pp - 1 pipeline hops, MoE dispatch and combine per layer (none
    where the tokens are replicated over the EP group: `tokens_replicated`)."""
    layers = model.n_layers
    act = t * model.d_model * _BF16
    disp_f, comb_f = ep_layer_time(system, model, plan, t)
    a2a = 1.0 - tokens_replicated(plan)
    disp_f, comb_f = a2a * disp_f, a2a * comb_f
    tp_all = (
        layers
        * _TP_PER_LAYER_SERVE
        * collectives.all_reduce_time(system, act, plan.tp, algorithm=plan.algorithm)
    )
    pp_all = jnp.where(plan.pp > 1.5, (plan.pp - 1.0) * pp_time(system, plan, act), 0.0)
    zero = jnp.zeros_like(tp_all)
    return Comm(
        tp_s=tp_all,
        cp_s=zero,
        pp_s=pp_all,
        dp_s=zero,
        dispatch_s=layers * disp_f,
        combine_s=layers * comb_f,
    )
