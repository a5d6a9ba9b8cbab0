"""A parallel plan and what it puts on each chip: matmul shapes, bytes, collectives, memory.

Megatron conventions (Narayanan et al. SC21; Korthikanti et al. 2022): ranks are ordered
TP (innermost, stride 1), CP, DP, PP; n_chips = tp * cp * dp * pp. A step processes
`global_batch` sequences of `seq_len` tokens as n_mb = global_batch / (dp * microbatch)
micro-batches per pipeline. Every degree is a float32 leaf so one compiled function serves a
sweep; integrality and divisibility are checked on the host (`Plan.validate`) and reported as
data by traced code.

Activation memory per layer and token, with flash attention (no s^2 term) and bf16
activations, generalises Korthikanti's 34*h to GQA and SwiGLU:
    10 d (/tp with SP) + (2 (d_q + 2 d_kv) + 2 d_q)/tp + 2 * mats * d_ff / tp   bytes.

>>> from emu.workload import example_model
>>> p = make_plan(tp=8, pp=1, dp=4, global_batch=64, seq_len=8192)
>>> round(float(n_microbatches(p)))
16
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp

from emu.numerics import safe_div
from emu.struct import dataclass, static_field
from emu.units import BYTES_PER_ELEMENT, PRECISIONS
from emu.workload import (
    Model,
    attention_flops_dims,
    attn_dims,
    ffn_mats,
    n_moe_layers,
    params_attention,
    params_expert,
    params_ffn,
)

__all__ = [
    "Plan",
    "make_plan",
    "validate_plan",
    "n_microbatches",
    "n_chips",
    "attention_matmuls",
    "dense_ffn_matmuls",
    "moe_matmuls",
    "attention_shape",
    "kv_width_local",
    "Memory",
    "memory",
    "params_per_chip",
    "RECOMPUTE",
]

Array = jnp.ndarray
RECOMPUTE = {"none": 0.0, "selective": 1.0, "full": 2.0}
PHASES = ("train", "prefill", "decode")
#: optimizer state bytes per parameter: fp32 master weights + Adam m and v
OPTIMIZER_BYTES = 12.0
#: HBM traffic of one Adam update per parameter (read/write master, m, v, grad, bf16 weight)
OPTIMIZER_TRAFFIC_BYTES = 30.0


@dataclass
class Plan:
    """How a training step is split over chips.

    Degrees `tp`, `pp`, `dp`, `cp`, `ep`; `microbatch` sequences per micro-batch per DP rank;
    `global_batch` sequences per step; `seq_len` tokens per sequence; `vpp` virtual pipeline
    chunks per stage (1 = plain 1F1B, >1 = interleaved); `zero` stage 0-3; `recompute`
    0 none / 1 selective / 2 full; `sp` 1 = sequence parallelism with TP; `grad_bytes` bytes
    per gradient element in the DP reduction; `lora` 1 = LoRA fine-tuning (frozen base
    weights: no weight gradients, optimizer states or DP reduction for them; adapters are
    neglected). MoE: `etp` expert tensor parallelism (each expert's width split over etp
    chips that share their tokens; the EP x ETP grid spans ep * etp ranks);
    `moe_imbalance` >= 1 multiplies the busiest rank's expert work and all-to-all;
    `a2a_overlap` 1 = two-micro-batch (DualPipe-style) overlap of dispatch and combine with
    compute; `moe_dedup` 1 = a token crosses each tier once per destination domain and is
    forwarded inside it (DeepEP), 0 = one copy per routed expert.
    Inference (`phase` "prefill" or "decode"): `microbatch` is the batch of sequences per
    DP-attention rank, `seq_len` the prompt length (prefill), `context` the KV-cache length
    (decode), `mtp_accept` the acceptance rate of one multi-token-prediction draft token
    (0 = no MTP), `cache_hit` the share of prompt tokens served from a prefix cache.
    `precision` of the matmuls (static).
    """

    precision: str = static_field(default="bf16")
    algorithm: str = static_field(default="hierarchical")
    phase: str = static_field(default="train")
    tp: Array
    pp: Array
    dp: Array
    cp: Array
    ep: Array
    microbatch: Array
    global_batch: Array
    seq_len: Array
    vpp: Array
    zero: Array
    recompute: Array
    sp: Array
    grad_bytes: Array
    lora: Array
    etp: Array
    moe_imbalance: Array
    a2a_overlap: Array
    moe_dedup: Array
    context: Array
    mtp_accept: Array
    cache_hit: Array


def make_plan(
    *,
    tp=1,
    pp=1,
    dp=1,
    cp=1,
    ep=1,
    etp=1,
    microbatch=1,
    global_batch=None,
    seq_len=2048,
    vpp=1,
    zero=1,
    recompute="selective",
    sp=True,
    grad_bytes=None,
    lora=False,
    moe_imbalance=1.0,
    a2a_overlap=False,
    moe_dedup=True,
    context=None,
    mtp_accept=0.0,
    cache_hit=0.0,
    phase="train",
    precision="bf16",
    algorithm="hierarchical",
) -> Plan:
    """Build a Plan from Python values (host side) and validate it."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision '{precision}'; known: {', '.join(PRECISIONS)}.")
    if isinstance(recompute, str):
        if recompute not in RECOMPUTE:
            raise ValueError(f"unknown recompute '{recompute}'; known: {', '.join(RECOMPUTE)}.")
        recompute = RECOMPUTE[recompute]
    if phase not in PHASES:
        raise ValueError(f"unknown phase '{phase}'; known: {', '.join(PHASES)}.")
    if global_batch is None:
        global_batch = dp * microbatch
    if context is None:
        context = seq_len
    if grad_bytes is None:
        # Megatron keeps fp32 main grads and reduces them in fp32 for bf16/fp8 training;
        # fp16 training (SC21) reduces fp16 gradients.
        grad_bytes = 2.0 if precision == "fp16" else 4.0
    f = jnp.float32
    plan = Plan(
        precision=precision,
        algorithm=algorithm,
        tp=f(tp),
        pp=f(pp),
        dp=f(dp),
        cp=f(cp),
        ep=f(ep),
        microbatch=f(microbatch),
        global_batch=f(global_batch),
        seq_len=f(seq_len),
        vpp=f(vpp),
        zero=f(zero),
        recompute=f(recompute),
        sp=f(1.0 if sp else 0.0),
        grad_bytes=f(grad_bytes),
        lora=f(1.0 if lora else 0.0),
        etp=f(etp),
        moe_imbalance=f(moe_imbalance),
        a2a_overlap=f(1.0 if a2a_overlap else 0.0),
        moe_dedup=f(1.0 if moe_dedup else 0.0),
        context=f(context),
        mtp_accept=f(mtp_accept),
        cache_hit=f(cache_hit),
        phase=phase,
    )
    return plan


def _num(x) -> float:
    return float(x)


def validate_plan(
    plan: Plan,
    model: Model | None = None,
    *,
    max_chips: float | None = None,
    even_layers: bool = True,
    even_experts: bool = True,
):
    """Host-side checks with messages that say how to fix the plan. Returns the plan.

    `even_layers=False` admits pipelines whose stages hold unequal layer counts (Megatron's
    uneven first/last stages); the emulator then charges n_layers / pp per stage.
    `even_experts=False` admits an EP degree that does not divide the experts (deployments
    with redundant expert replicas, e.g. 288 = 256 + 32 slots on 72 GPUs)."""
    for name in (
        "tp",
        "pp",
        "dp",
        "cp",
        "ep",
        "etp",
        "microbatch",
        "global_batch",
        "seq_len",
        "vpp",
    ):
        v = _num(getattr(plan, name))
        if not math.isfinite(v) or v < 1 or v != round(v):
            raise ValueError(f"Plan: {name} must be a positive integer (got {name}={v:g}).")
    if _num(plan.zero) not in (0, 1, 2, 3):
        raise ValueError(f"Plan: zero must be 0, 1, 2 or 3 (got zero={_num(plan.zero):g}).")
    if _num(plan.recompute) not in (0, 1, 2):
        raise ValueError(
            f"Plan: recompute must be none, selective or full (got {_num(plan.recompute):g})."
        )
    for name in ("moe_imbalance",):
        if not 1 <= _num(getattr(plan, name)) < 1e3:
            raise ValueError(f"Plan: {name} must be >= 1 (got {_num(getattr(plan, name)):g}).")
    for name in ("mtp_accept", "cache_hit"):
        v = _num(getattr(plan, name))
        if not 0 <= v < 1:
            raise ValueError(f"Plan: {name} must be in [0, 1) (got {v:g}).")
    if not math.isfinite(_num(plan.context)) or _num(plan.context) < 1:
        raise ValueError(f"Plan: context must be >= 1 token (got {_num(plan.context):g}).")
    for name in ("sp", "lora", "a2a_overlap", "moe_dedup"):
        if _num(getattr(plan, name)) not in (0, 1):
            raise ValueError(f"Plan: {name} must be 0 or 1 (got {_num(getattr(plan, name)):g}).")
    if not math.isfinite(_num(plan.grad_bytes)) or _num(plan.grad_bytes) <= 0:
        raise ValueError(f"Plan: grad_bytes must be > 0 (got {_num(plan.grad_bytes):g}).")
    dp, mb, gb = _num(plan.dp), _num(plan.microbatch), _num(plan.global_batch)
    if gb % (dp * mb):
        raise ValueError(
            f"Plan: global_batch={gb:g} must be a multiple of dp*microbatch={dp * mb:g}; "
            "adjust --global-batch or --microbatch."
        )
    if _num(plan.vpp) > 1 and _num(plan.pp) == 1:
        raise ValueError("Plan: vpp > 1 (interleaved schedule) needs pp > 1.")
    chips = _num(n_chips(plan))
    if max_chips is not None and chips > max_chips:
        raise ValueError(
            f"Plan: tp*pp*dp*cp = {chips:g} chips exceeds the largest cluster of this system "
            f"({max_chips:g}); reduce dp."
        )
    if plan.phase != "train" and (_num(plan.pp) > 1 or _num(plan.cp) > 1):
        raise ValueError(
            "Plan: serving plans use tp, dp and ep (pp = cp = 1); drop --pp/--cp "
            f"(got pp={_num(plan.pp):g}, cp={_num(plan.cp):g})."
        )
    if model is not None and _num(plan.mtp_accept) > 0 and _num(model.mtp_layers) == 0:
        raise ValueError(
            f"Plan: --mtp-accept needs a model with MTP modules ({model.name} has none)."
        )
    if model is not None:
        tp, pp, cp = _num(plan.tp), _num(plan.pp), _num(plan.cp)
        ep, experts = _num(plan.ep), _num(model.n_experts)
        if even_experts and experts > 0 and experts % ep:
            raise ValueError(
                f"Plan: ep={ep:g} must divide the model's n_experts={experts:g}; "
                "pick an ep that divides it."
            )
        if experts == 0 and ep > 1:
            raise ValueError(f"Plan: ep={ep:g} needs an MoE model ({model.name} is dense).")
        grid = ep * _num(plan.etp)
        if grid > 1 and (tp * _num(plan.dp) * cp) % grid:
            raise ValueError(
                f"Plan: ep*etp={grid:g} must divide tp*dp*cp={tp * _num(plan.dp) * cp:g} "
                "(experts are spread over the data-parallel ranks of a stage)."
            )
        if experts == 0 and _num(plan.etp) > 1:
            raise ValueError(f"Plan: etp={_num(plan.etp):g} needs an MoE model.")
        heads, kv = _num(model.n_heads), _num(model.n_kv_heads)
        if heads % tp:
            raise ValueError(
                f"Plan: tp={tp:g} must divide the model's n_heads={heads:g}; "
                "pick a tp that divides it."
            )
        if kv % tp and tp % kv:
            raise ValueError(f"Plan: tp={tp:g} and n_kv_heads={kv:g} must divide one another.")
        if even_layers and _num(model.n_layers) % (pp * _num(plan.vpp)):
            raise ValueError(
                f"Plan: pp*vpp={pp * _num(plan.vpp):g} must divide "
                f"n_layers={_num(model.n_layers):g}."
            )
        if _num(plan.seq_len) % cp:
            raise ValueError(f"Plan: cp={cp:g} must divide seq_len={_num(plan.seq_len):g}.")
    return plan


def n_chips(plan: Plan):
    return plan.tp * plan.pp * plan.dp * plan.cp


def n_microbatches(plan: Plan):
    return safe_div(plan.global_batch, plan.dp * plan.microbatch)


def tokens_per_microbatch(plan: Plan):
    """Tokens one chip's matmuls see per micro-batch (CP splits the sequence)."""
    return safe_div(plan.microbatch * plan.seq_len, plan.cp)


def kv_width_local(model: Model, plan: Plan):
    """K (or V) width on one TP rank: KV heads are split over TP, and replicated once TP
    exceeds their number (Megatron copies a whole KV head to each rank)."""
    return jnp.maximum(safe_div(model.n_kv_heads, plan.tp), 1.0) * model.d_head


def attention_matmuls(model: Model, plan: Plan, t) -> dict:
    """Projection matmuls of one attention block on one chip for `t` tokens:
    name -> (m, n, k, count). TP splits heads; MLA's down-projections are replicated."""
    d, tp = model.d_model, plan.tp
    one = jnp.ones_like(t)
    if model.attention == "mla":
        h = safe_div(model.n_heads, tp)
        qk = model.d_head + model.rope_head_dim
        has_q_lora = model.q_lora_rank > 0
        return {
            "q_down": (t, model.q_lora_rank, d, jnp.where(has_q_lora, 1.0, 0.0) * one),
            "q_up": (t, h * qk, jnp.where(has_q_lora, model.q_lora_rank, d), one),
            "kv_down": (t, model.kv_lora_rank + model.rope_head_dim, d, one),
            "kv_up": (t, h * (model.d_head + model.v_head_dim), model.kv_lora_rank, one),
            "attn_out": (t, d, h * model.v_head_dim, one),
        }
    d_q, _ = attn_dims(model)
    return {
        "qkv": (t, safe_div(d_q, tp) + 2.0 * kv_width_local(model, plan), d, one),
        "attn_out": (t, d, safe_div(d_q, tp), one),
    }


def dense_ffn_matmuls(model: Model, plan: Plan, t) -> dict:
    d_ff_local = safe_div(model.d_ff, plan.tp)
    mats = ffn_mats(model)
    return {
        "ffn_in": (t, d_ff_local, model.d_model, (mats - 1.0) * jnp.ones_like(t)),
        "ffn_out": (t, model.d_model, d_ff_local, jnp.ones_like(t)),
    }


def moe_tokens_per_chip(plan: Plan, t):
    """Tokens entering one chip's MoE layer: TP ranks hold disjoint sequence shards there."""
    return safe_div(t, plan.tp)


def moe_matmuls(model: Model, plan: Plan, t) -> dict:
    """Expert, shared-expert and router matmuls of one MoE layer on one chip for `t` tokens of
    the attention block. The busiest rank sees `moe_imbalance` x the mean routed tokens."""
    tm = moe_tokens_per_chip(plan, t)
    d, de = model.d_model, model.d_ff_expert
    mats = ffn_mats(model)
    # redundant expert slots: a rank holds ceil(E / ep) experts when ep does not divide E
    local = jnp.ceil(safe_div(model.n_experts, plan.ep) - 1e-4)
    # with expert TP the etp ranks gather each other's tokens and each computes 1/etp of the
    # expert width: the same FLOPs per chip in wider-m, narrower-n GEMMs
    per_expert = (
        safe_div(tm * model.top_k * plan.ep * plan.etp, model.n_experts) * plan.moe_imbalance
    )
    de_local = safe_div(de, plan.etp)
    ds = model.n_shared_experts * de
    one = jnp.ones_like(t)
    return {
        "expert_in": (per_expert, de_local, d, (mats - 1.0) * local),
        "expert_out": (per_expert, d, de_local, local),
        "shared_in": (tm, ds, d, (mats - 1.0) * jnp.where(ds > 0, 1.0, 0.0) * one),
        "shared_out": (tm, d, ds, jnp.where(ds > 0, 1.0, 0.0) * one),
        "router": (tm, model.n_experts, d, one),
    }


def attention_shape(model: Model, plan: Plan):
    """(s_q, s_kv, d_qk, d_v, heads) of the flash-attention kernel on one chip per
    micro-batch: CP splits the queries, every rank attends to the whole sequence."""
    s_local = safe_div(plan.seq_len, plan.cp)
    heads = plan.microbatch * safe_div(model.n_heads, plan.tp)
    qk, v = attention_flops_dims(model)
    return s_local, plan.seq_len, qk, v, heads


def elementwise_bytes_per_layer(model: Model, plan: Plan, t=None):
    """Forward HBM bytes of the memory-bound kernels of one layer (norms, residuals,
    dropout, activation function, MoE permutation) on one chip for `t` tokens (default:
    one training micro-batch)."""
    t = tokens_per_microbatch(plan) if t is None else t
    el = BYTES_PER_ELEMENT["bf16"]
    d_shard = jnp.where(plan.sp > 0.5, safe_div(model.d_model, plan.tp), model.d_model)
    mats = ffn_mats(model)
    f = moe_fraction(model)
    ffn = (1.0 - f) * (mats + 1.0) * safe_div(model.d_ff, plan.tp) + f * safe_div(
        model.top_k * ((mats + 1.0) * model.d_ff_expert + 4.0 * model.d_model), plan.tp
    )
    return t * el * (14.0 * d_shard + ffn)


def activation_bytes_per_layer(model: Model, plan: Plan):
    """Activation bytes one layer stores for backward, per micro-batch, on one chip."""
    t = tokens_per_microbatch(plan)
    d_q, _ = attn_dims(model)
    tp = plan.tp
    d_part = 10.0 * model.d_model
    d_part = jnp.where(plan.sp > 0.5, safe_div(d_part, tp), d_part)
    attn_part = safe_div(4.0 * d_q, tp) + 4.0 * kv_width_local(model, plan)
    f = moe_fraction(model)
    moe_part = safe_div(
        model.top_k * (2.0 * ffn_mats(model) * model.d_ff_expert + 4.0 * model.d_model)
        + model.n_shared_experts * 2.0 * ffn_mats(model) * model.d_ff_expert,
        tp,
    )
    ffn_part = (1.0 - f) * safe_div(2.0 * ffn_mats(model) * model.d_ff, tp) + f * moe_part
    stored = t * (d_part + attn_part + ffn_part)
    full = t * 2.0 * jnp.where(plan.sp > 0.5, safe_div(model.d_model, tp), model.d_model)
    return jnp.where(plan.recompute > 1.5, full, stored), stored


def moe_fraction(model: Model):
    """Share of layers that are MoE layers."""
    return safe_div(n_moe_layers(model), model.n_layers)


def params_split_per_chip(model: Model, plan: Plan):
    """(dense, expert) parameters held by one chip of the last pipeline stage (the largest: it
    holds the output head; with pp = 1 also the input embedding). Dense weights are split
    over TP; routed experts over EP (expert tensor parallelism 1)."""
    layers = safe_div(model.n_layers, plan.pp)
    f = moe_fraction(model)
    shared = model.n_shared_experts * params_expert(model) + model.d_model * model.n_experts
    dense_layer = (
        params_attention(model) + 2.0 * model.d_model + (1.0 - f) * params_ffn(model) + f * shared
    )
    vd = model.vocab * model.d_model
    embed = jnp.where(plan.pp > 1.5, vd, jnp.where(model.tied_embeddings, 1.0, 2.0) * vd)
    dense = safe_div(layers * dense_layer + embed, plan.tp)
    local = jnp.ceil(safe_div(model.n_experts, plan.ep) - 1e-4)  # redundant slots round up
    expert = layers * f * safe_div(local, plan.etp) * params_expert(model)
    return dense, expert


def params_per_chip(model: Model, plan: Plan):
    dense, expert = params_split_per_chip(model, plan)
    return dense + expert


def expert_dp_size(plan: Plan):
    """Ranks holding the same expert shard (expert data parallelism): tp*dp*cp / (ep*etp)."""
    return safe_div(plan.tp * plan.dp * plan.cp, plan.ep * plan.etp)


@dataclass
class Memory:
    """Bytes per chip (the most loaded pipeline stage), and whether they fit in HBM."""

    weights_bytes: Array
    gradients_bytes: Array
    optimizer_bytes: Array
    activations_bytes: Array
    total_bytes: Array
    capacity_bytes: Array
    overshoot_bytes: Array
    feasible: Array


def memory(model: Model, plan: Plan, hbm_bytes) -> Memory:
    """Per-chip memory of a training plan (ZeRO shards over DP x CP ranks)."""
    dense, expert = params_split_per_chip(model, plan)
    dshard, eshard = plan.dp * plan.cp, expert_dp_size(plan)

    def sharded(bytes_per_param, stage):
        d, e = dense * bytes_per_param, expert * bytes_per_param
        on = plan.zero > stage - 0.5
        return jnp.where(on, safe_div(d, dshard) + safe_div(e, eshard), d + e)

    weights = sharded(BYTES_PER_ELEMENT["bf16"], 3.0)
    grads = (1.0 - plan.lora) * sharded(plan.grad_bytes, 2.0)
    opt = (1.0 - plan.lora) * sharded(OPTIMIZER_BYTES, 1.0)
    per_layer, stored = activation_bytes_per_layer(model, plan)
    layers = safe_div(model.n_layers, plan.pp)
    nmb = n_microbatches(plan)
    inflight = jnp.minimum(plan.pp, nmb) * (1.0 + safe_div(plan.pp - 1.0, plan.pp * plan.vpp))
    inflight = jnp.where(plan.vpp > 1.5, inflight, jnp.minimum(plan.pp, nmb))
    acts = layers * per_layer * inflight
    # with full recompute one layer's full activations are rebuilt for its backward pass
    acts = acts + jnp.where(plan.recompute > 1.5, stored, 0.0)
    # fp32 logits of the last stage for the loss
    acts = acts + tokens_per_microbatch(plan) * safe_div(model.vocab, plan.tp) * 4.0
    total = weights + grads + opt + acts
    over = jnp.maximum(total - hbm_bytes, 0.0)
    return Memory(
        weights_bytes=weights,
        gradients_bytes=grads,
        optimizer_bytes=opt,
        activations_bytes=acts,
        total_bytes=total,
        capacity_bytes=hbm_bytes + 0.0 * total,
        overshoot_bytes=over,
        feasible=(over <= 0.0).astype(jnp.float32),
    )


def plan_dict(plan: Plan) -> dict:
    """JSON-friendly view of a plan (ints where integral)."""
    out = {}
    for f in dataclasses.fields(plan):
        v = getattr(plan, f.name)
        if isinstance(v, str):
            out[f.name] = v
            continue
        x = float(v)
        out[f.name] = int(x) if x == round(x) else x
    inv = {v: k for k, v in RECOMPUTE.items()}
    out["recompute"] = inv.get(float(plan.recompute), out["recompute"])
    out["sp"] = bool(float(plan.sp) > 0.5)
    out["lora"] = bool(float(plan.lora) > 0.5)
    return out
