"""What a plan puts on each chip: matmul shapes, bytes, parameters and memory.

The plan itself (its knobs, `make_plan`, `validate_plan`, `plan_dict`) lives in `emu.plan`
and is re-exported here. Megatron conventions (Narayanan et al. SC21; Korthikanti et al.
2022): ranks are ordered TP (innermost, stride 1), CP, DP, PP. Every degree is a float32
leaf so one compiled function serves a sweep; integrality and divisibility are checked on
the host (`validate_plan`) and reported as data by traced code.

Activation memory per layer and token, with flash attention (no s^2 term) and bf16
activations, generalises Korthikanti's 34*h to GQA and SwiGLU:
    10 d (/tp with SP) + (2 (d_q + 2 d_kv) + 2 d_q)/tp + 2 * mats * d_ff / tp   bytes.
FP8 training (Transformer Engine's FP8/MXFP8 recipes) saves the 1-byte cast of most
linear layers' inputs for the backward pass instead of the bf16 input
(`fp8_linear_input_saving` says which). A pipeline's peak is the larger of its first
stage (the most micro-batches in flight) and its last (fewer in flight, plus the loss's
fp32 logits).

>>> from emu.workload import example_model
>>> p = make_plan(tp=8, pp=1, dp=4, global_batch=64, seq_len=8192)
>>> round(float(n_microbatches(p)))
16
"""

from __future__ import annotations

from emu._backend import jax, jnp
from emu.numerics import safe_div
from emu.plan import (
    PHASES,
    RECOMPUTE,
    Plan,
    make_plan,
    n_chips,
    n_microbatches,
    n_ranks,
    plan_dict,
    validate_plan,
)
from emu.struct import dataclass, replace
from emu.units import BYTES_PER_ELEMENT
from emu.workload import (
    Model,
    attended_context,
    attention_flops_dims,
    attn_dims,
    ffn_mats,
    kv_cache_bytes_per_token,
    n_moe_layers,
    params_active,
    params_attention,
    params_expert,
    params_ffn,
)

__all__ = [
    # re-exported from emu.plan (their home since the knob declarations moved there)
    "Plan",
    "make_plan",
    "validate_plan",
    "plan_dict",
    "n_chips",
    "n_ranks",
    "n_microbatches",
    "RECOMPUTE",
    "PHASES",
    # per-chip work
    "tokens_per_microbatch",
    "kv_width_local",
    "attention_matmuls",
    "dense_ffn_matmuls",
    "moe_tokens_per_chip",
    "moe_matmuls",
    "attention_shape",
    "elementwise_bytes_per_layer",
    "activation_bytes_per_layer",
    "activation_output_width",
    "fp8_linear_input_saving",
    "moe_fraction",
    "local_experts",
    "expert_slots",
    "speculation",
    "full_stage_layers",
    "stage_layers",
    "params_split_per_chip",
    "params_per_chip",
    "expert_dp_size",
    # memory
    "Memory",
    "memory",
    "train_memory",
    "inference_memory",
    "OPTIMIZER_BYTES",
    "OPTIMIZER_TRAFFIC_BYTES",
]

Array = jnp.ndarray
#: optimizer state bytes per parameter: fp32 master weights + Adam m and v
OPTIMIZER_BYTES = 12.0
#: HBM traffic of one Adam update per parameter (read/write master, m, v, grad, bf16 weight)
OPTIMIZER_TRAFFIC_BYTES = 30.0


def tokens_per_microbatch(plan: Plan):
    """Tokens one chip's matmuls see per micro-batch: microbatch * seq_len / cp (CP splits
    the sequence)."""
    return safe_div(plan.microbatch * plan.seq_len, plan.cp)


def kv_width_local(model: Model, plan: Plan):
    """K (or V) width on one TP rank, elements: max(n_kv_heads / tp, 1) * d_head. KV heads
    are split over TP and replicated once TP exceeds their number (Megatron copies a whole
    KV head to each rank)."""
    return jnp.maximum(safe_div(model.n_kv_heads, plan.tp), 1.0) * model.d_head


def attention_matmuls(model: Model, plan: Plan, t) -> dict:
    """Projection matmuls of one attention block on one chip for `t` tokens, as
    name -> (m, n, k, count): GQA's fused QKV (t, d_q/tp + 2 kv_width_local, d) and output
    (t, d, d_q/tp); MLA's down-projections replicated, up-projections split over TP heads."""
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
    """Matmuls of one dense FFN on one chip for `t` tokens, name -> (m, n, k, count): the
    mats - 1 input matrices (t, d_ff/tp, d) and the output (t, d, d_ff/tp)."""
    d_ff_local = safe_div(model.d_ff, plan.tp)
    mats = ffn_mats(model)
    return {
        "ffn_in": (t, d_ff_local, model.d_model, (mats - 1.0) * jnp.ones_like(t)),
        "ffn_out": (t, model.d_model, d_ff_local, jnp.ones_like(t)),
    }


def moe_tokens_per_chip(plan: Plan, t):
    """Tokens entering one chip's MoE layer, t / tp: TP ranks hold disjoint sequence shards
    there."""
    return safe_div(t, plan.tp)


#: slack below an integer before `local_experts` rounds up: E / ep is computed in float32,
#: so an exact quotient such as 256 / 8 must not round up to 33
_CEIL_SLACK = 1e-4


def _ceil(x):
    # ceil with the gradient of x (straight through), robust to float32 quotients
    return x + jax.lax.stop_gradient(jnp.ceil(x - _CEIL_SLACK) - x)


def local_experts(model: Model, plan: Plan):
    """Routed-expert slots on one rank: ceil(n_experts / ep). EP need not divide the
    experts: the slots round up and the spare ones hold replicas of the hottest experts
    (EPLB; DeepSeek-V3 serving, xDeepServe EP288 on 256 experts: one slot per die)."""
    return jnp.ceil(safe_div(model.n_experts, plan.ep) - _CEIL_SLACK)


def expert_slots(model: Model, plan: Plan):
    """Routed-expert slots of an EP group: ep * ceil(n_experts / ep) >= n_experts (the
    replicas' weights are counted in memory; EPLB spreads the routed load over all slots)."""
    return plan.ep * local_experts(model, plan)


def full_stage_layers(model: Model, plan: Plan):
    """Layers of the fullest pipeline stage, vpp * ceil(n_layers / (pp vpp)) (n_layers / pp
    for even splits): the stage whose weights and activations set the memory."""
    return plan.vpp * _ceil(safe_div(model.n_layers, plan.pp * plan.vpp))


def stage_layers(model: Model, plan: Plan):
    """(layers, head) of the heaviest pipeline stage, the one the step is priced on: each
    of the pp * vpp chunks holds c = ceil(n_layers / (pp vpp)) layers, except that the
    first and last stages give up the r = pp vpp c - n_layers missing ones (Megatron's
    uneven first/last stages; Llama 3 405B: PP16 over 126 layers, stages of 8 with 7 on the
    first and last, arXiv:2407.21783 §3.3.2). An interior stage holds vpp c layers, the last
    vpp c - ceil(r / 2) plus the output head; the heavier by forward matmul FLOPs per token
    (2 params per layer vs 2 vocab d_model for the head) sets the step. `head` is 1 when it
    is the last stage. Even splits give (n_layers / pp, 1)."""
    chunks = plan.pp * plan.vpp
    c = _ceil(safe_div(model.n_layers, chunks))
    full = full_stage_layers(model, plan)
    missing = jax.lax.stop_gradient(jnp.maximum(chunks * c - model.n_layers, 0.0))
    last = jnp.maximum(full - jnp.ceil(0.5 * missing - _CEIL_SLACK), 0.0)
    head = model.vocab * model.d_model
    per_layer = safe_div(params_active(model) - head, model.n_layers)
    last_heavier = (full - last) * per_layer <= head
    return jnp.where(last_heavier, last, full), jnp.where(last_heavier, 1.0, 0.0)


def moe_matmuls(model: Model, plan: Plan, t) -> dict:
    """Expert, shared-expert and router matmuls of one MoE layer on one rank for `t` tokens
    of the attention block, name -> (m, n, k, count). The EP x ETP group routes
    t/tp * top_k * ep * etp token copies over its `expert_slots`, so each local slot sees
    t/tp * top_k * ep * etp / slots tokens (slots = n_experts when ep divides them; EPLB
    balances replicas), times `moe_imbalance` on the busiest rank; expert TP splits the
    expert width over etp (same FLOPs, wider m, narrower n)."""
    tm = moe_tokens_per_chip(plan, t)
    d, de = model.d_model, model.d_ff_expert
    mats = ffn_mats(model)
    local = local_experts(model, plan)
    per_expert = (
        safe_div(tm * model.top_k * plan.ep * plan.etp, expert_slots(model, plan))
        * plan.moe_imbalance
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
    """(s_q, s_kv, d_qk, d_v, heads) of the flash-attention kernel on one chip per training
    micro-batch or prefill batch: CP splits the queries (s_q = seq_len / cp), every rank
    attends to the whole sequence (s_kv = seq_len); heads = microbatch * n_heads / tp."""
    s_local = safe_div(plan.seq_len, plan.cp)
    heads = plan.microbatch * safe_div(model.n_heads, plan.tp)
    qk, v = attention_flops_dims(model)
    return s_local, plan.seq_len, qk, v, heads


#: bf16 elements per token and (sharded) d_model element that one layer's memory-bound
#: kernels move forward: norms, residual adds, dropout and rotary embedding (an estimate
#: counting each kernel's reads and writes)
_ELEMENTWISE_D = 14.0
#: MoE permutation traffic per routed copy, in d_model elements (permute and unpermute,
#: each a read and a write)
_PERMUTE_D = 4.0


def _d_per_rank(model: Model, plan: Plan):
    """d_model elements per token a rank holds outside attention and the FFN: d / tp with
    sequence parallelism, else d."""
    return jnp.where(plan.sp > 0.5, safe_div(model.d_model, plan.tp), model.d_model)


def elementwise_bytes_per_layer(model: Model, plan: Plan, t=None):
    """Forward HBM bytes of the memory-bound kernels of one layer on one chip for `t` tokens
    (default: one training micro-batch), bf16:
    t * 2 * (14 d_shard + (1 - f)(mats + 1) d_ff/tp + f top_k ((mats + 1) d_ff_e + 4 d)/tp)
    with d_shard = d/tp under SP, f the MoE share of layers."""
    t = tokens_per_microbatch(plan) if t is None else t
    el = BYTES_PER_ELEMENT["bf16"]
    d_shard = _d_per_rank(model, plan)
    mats = ffn_mats(model)
    f = moe_fraction(model)
    ffn = (1.0 - f) * (mats + 1.0) * safe_div(model.d_ff, plan.tp) + f * safe_div(
        model.top_k * ((mats + 1.0) * model.d_ff_expert + _PERMUTE_D * model.d_model), plan.tp
    )
    return t * el * (_ELEMENTWISE_D * d_shard + ffn)


#: Korthikanti et al. 2022 (arXiv:2205.05198) Eq. 2: bytes per token and d_model element
#: stored outside attention and the FFN (layer norms, residual, dropout masks); split over
#: TP with sequence parallelism
_ACT_D = 10.0
#: bytes per token and width element of the attention inputs kept for backward (Q and the
#: output: 4 d_q / tp; K and V: 4 kv_width_local), bf16 with two copies
_ACT_ATTN = 4.0
#: bytes per token kept under full recomputation: the bf16 layer input, d (/tp with SP)
_ACT_FULL = 2.0


#: training precisions whose linear layers quantise their inputs (Transformer Engine's
#: FP8 and MXFP8 recipes; NVFP4 counted at FP8's byte, an upper bound)
_QUANTISED_TRAINING = ("fp8", "fp4")


def fp8_linear_input_saving(model: Model, plan: Plan):
    """Bytes per token and layer that FP8 training does not keep (0 in other precisions).
    Transformer Engine's FP8 linear layers save one FP8 copy of their input (1 byte per
    element; MXFP8 adds 1/32 byte of scales, not counted) for the weight gradient where
    bf16 training saves the bf16 input (2 bytes): TE v2.8 `_Linear.forward` keeps only the
    column-wise FP8 copy, `LayerNormLinear` its FP8 normalised output, `GroupedLinear`
    each expert's FP8 input; DeepSeek-V3 caches the same inputs in FP8 (arXiv:2412.19437
    §3.3.3). One byte less per element of these inputs among `activation_bytes_per_layer`'s
    terms (d_n = d, /tp with SP):
    - the QKV projection's normalised input, d_n (GQA/MHA; MLA's separate down-projections
      each keep an FP8 copy of it, so no saving);
    - dense layers: the FFN's normalised input d_n and its down-projection input d_ff / tp;
    - MoE layers: each routed copy's expert input and down-projection input,
      top_k (d + d_ff_e) / tp, and the shared experts' down-projection input,
      n_shared d_ff_e / tp, less d_n for the FP8 copy of the normalised input their
      up-projection adds (the router's gate stays in bf16 and keeps the bf16 one).
    The attention output projection's input is the output flash attention keeps in bf16
    for its own backward; Megatron (TE >= 2.6, current scaling) saves that tensor instead
    of a copy, so it counts nothing here (delayed scaling adds an FP8 copy, d_q / tp)."""
    if plan.precision not in _QUANTISED_TRAINING:
        return jnp.zeros_like(plan.tp)
    tp = plan.tp
    d_n = _d_per_rank(model, plan)
    qkv = 0.0 * d_n if model.attention == "mla" else d_n
    dense = d_n + safe_div(model.d_ff, tp)
    # the shared experts' FP8 copy of their input is the normalised input, d_n (not /tp
    # without sequence parallelism)
    moe = safe_div(
        model.top_k * (model.d_model + model.d_ff_expert)
        + model.n_shared_experts * model.d_ff_expert,
        tp,
    ) - jnp.where(model.n_shared_experts > 0, d_n, 0.0)
    f = moe_fraction(model)
    return qkv + (1.0 - f) * dense + f * moe


def activation_output_width(model: Model, plan: Plan):
    """Elements per token of one layer's FFN activation outputs on one rank (the inputs of
    the down projections), the mean over the layers: (1 - f) d_ff / tp dense, f (top_k +
    n_shared) d_ff_e / tp in MoE layers."""
    f = moe_fraction(model)
    dense = safe_div(model.d_ff, plan.tp)
    moe = safe_div((model.top_k + model.n_shared_experts) * model.d_ff_expert, plan.tp)
    return (1.0 - f) * dense + f * moe


def activation_bytes_per_layer(model: Model, plan: Plan):
    """(kept, stored) activation bytes of one layer per micro-batch on one chip: `stored` is
    what a layer saves for backward, with flash attention (no s^2 term), generalising
    Korthikanti's 34 d per token to GQA and SwiGLU:
        t (10 d [/tp with SP] + 4 d_q/tp + 4 kv_local + (1 - f) 2 mats d_ff/tp + f moe/tp),
        moe = top_k (2 mats d_ff_e + 4 d) + n_shared 2 mats d_ff_e,
    less `fp8_linear_input_saving` in FP8 training, less the bf16 activation outputs
    (`activation_output_width`, 2 bytes; none in FP8 training, whose down projections keep
    their own FP8 copy) when `recompute_activation` rebuilds them in backward. `kept` is
    `stored`, or under full recomputation the mean over the stage's layers, of which the
    `recompute_fraction` share keeps only its input (2 d [/tp]) and the rest `stored`
    (Megatron's block method recomputes the first N layers of each stage chunk)."""
    t = tokens_per_microbatch(plan)
    d_q, _ = attn_dims(model)
    tp = plan.tp
    d_part = _ACT_D * model.d_model
    d_part = jnp.where(plan.sp > 0.5, safe_div(d_part, tp), d_part)
    attn_part = safe_div(_ACT_ATTN * d_q, tp) + _ACT_ATTN * kv_width_local(model, plan)
    f = moe_fraction(model)
    moe_part = safe_div(
        model.top_k * (2.0 * ffn_mats(model) * model.d_ff_expert + _PERMUTE_D * model.d_model)
        + model.n_shared_experts * 2.0 * ffn_mats(model) * model.d_ff_expert,
        tp,
    )
    ffn_part = (1.0 - f) * safe_div(2.0 * ffn_mats(model) * model.d_ff, tp) + f * moe_part
    fp8 = fp8_linear_input_saving(model, plan)
    # FP8 training keeps only the down projection's own FP8 copy of its input, which the
    # activation recompute does not free (an assumption: MindSpeed discards the bf16 output)
    kept_bf16 = 0.0 if plan.precision in _QUANTISED_TRAINING else 2.0
    act_out = plan.recompute_activation * kept_bf16 * activation_output_width(model, plan)
    stored = t * (d_part + attn_part + ffn_part - fp8 - act_out)
    full = t * _ACT_FULL * _d_per_rank(model, plan)
    share = plan.recompute_fraction
    return jnp.where(plan.recompute > 1.5, share * full + (1.0 - share) * stored, stored), stored


def moe_fraction(model: Model):
    """Share of layers that are MoE layers (0 for dense models)."""
    return safe_div(n_moe_layers(model), model.n_layers)


def params_split_per_chip(model: Model, plan: Plan):
    """(dense, expert) parameters held by one rank of the fullest pipeline stage
    (`full_stage_layers`) with the output head (an upper bound of the last stage; with
    pp = 1 also the input embedding). Dense weights (attention,
    norms, dense FFN, shared experts, router, embeddings) are split over TP; routed experts
    over EP (local_experts slots), and each expert's width over ETP."""
    layers = full_stage_layers(model, plan)
    f = moe_fraction(model)
    shared = model.n_shared_experts * params_expert(model) + model.d_model * model.n_experts
    dense_layer = (
        params_attention(model) + 2.0 * model.d_model + (1.0 - f) * params_ffn(model) + f * shared
    )
    vd = model.vocab * model.d_model
    embed = jnp.where(plan.pp > 1.5, vd, jnp.where(model.tied_embeddings, 1.0, 2.0) * vd)
    dense = safe_div(layers * dense_layer + embed, plan.tp)
    expert = layers * f * safe_div(local_experts(model, plan), plan.etp) * params_expert(model)
    return dense, expert


def params_per_chip(model: Model, plan: Plan):
    """Parameters held by one chip of the last pipeline stage: dense + expert."""
    dense, expert = params_split_per_chip(model, plan)
    return dense + expert


def expert_dp_size(plan: Plan):
    """Ranks holding the same expert shard (expert data parallelism): tp*dp*cp / (ep*etp)."""
    return safe_div(plan.tp * plan.dp * plan.cp, plan.ep * plan.etp)


@dataclass
class Memory:
    """Bytes per chip (the most loaded pipeline stage), and whether they fit in HBM. The same
    fields in every phase: training has no KV cache, serving no gradients or optimizer
    states (those fields are 0 there). `total_bytes` is the sum of the five parts;
    `overshoot_bytes` = max(total - capacity, 0); `feasible` 1 when it fits, else 0."""

    weights_bytes: Array
    gradients_bytes: Array
    optimizer_bytes: Array
    activations_bytes: Array
    kv_cache_bytes: Array
    total_bytes: Array
    capacity_bytes: Array
    overshoot_bytes: Array
    feasible: Array


def _fits(weights, grads, opt, acts, kv, hbm_bytes, total) -> Memory:
    over = jnp.maximum(total - hbm_bytes, 0.0)
    return Memory(
        weights_bytes=weights,
        gradients_bytes=grads,
        optimizer_bytes=opt,
        activations_bytes=acts,
        kv_cache_bytes=kv,
        total_bytes=total,
        capacity_bytes=hbm_bytes + 0.0 * total,
        overshoot_bytes=over,
        feasible=(over <= 0.0).astype(jnp.float32),
    )


#: bytes per element of the fp32 logits the last stage keeps for the loss
_LOGIT_BYTES = 4.0


def train_memory(model: Model, plan: Plan, hbm_bytes) -> Memory:
    """Per-chip memory of a training plan on the most loaded stage (bytes).

    Weights (bf16), gradients (`grad_bytes` each) and optimizer states (OPTIMIZER_BYTES per
    parameter) are sharded over DP x CP ranks (experts over their expert-DP ranks) from ZeRO
    stage 3, 2 and 1 on; LoRA keeps neither gradients nor optimizer states of the frozen
    weights. Activations: `activation_bytes_per_layer` for each layer of the stage times the
    micro-batches in flight, plus one layer's full activations rebuilt under full
    recomputation; the peak is the larger of two stages (Megatron's schedules: a rank
    holds its warm-up micro-batches plus one, in chunks of L / vpp layers): the first,
    min(pp, n_mb) micro-batches for 1F1B and min(pp, n_mb)(1 + (pp - 1)/(pp vpp))
    interleaved (Narayanan et al. SC21 §2.2), and the last, min(((vpp - 1) pp + 1)/vpp,
    n_mb) (one for 1F1B) plus the fp32 logits of one micro-batch (the whole model when
    pp = 1)."""
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
    layers = full_stage_layers(model, plan)
    nmb = n_microbatches(plan)
    ranks = jnp.minimum(plan.pp, nmb)
    first = ranks * (1.0 + safe_div(plan.pp - 1.0, plan.pp * plan.vpp))
    first = jnp.where(plan.vpp > 1.5, first, ranks)
    last = jnp.minimum(safe_div((plan.vpp - 1.0) * plan.pp + 1.0, plan.vpp), nmb)
    # with full recompute one layer's full activations are rebuilt for its backward pass
    rebuilt = jnp.where(plan.recompute > 1.5, stored, 0.0)
    logits = tokens_per_microbatch(plan) * safe_div(model.vocab, plan.tp) * _LOGIT_BYTES
    acts = rebuilt + jnp.maximum(layers * per_layer * first, layers * per_layer * last + logits)
    total = weights + grads + opt + acts
    zero = 0.0 * total
    return _fits(weights, grads, opt, acts, zero, hbm_bytes, total)


#: activation elements per token of the one layer a serving pass keeps live: the residual
#: stream, attention input/output and normalised copies (4 d) and the FFN intermediate
#: (2 d_ff: gate and up); an assumption, small beside weights and KV cache
_SERVE_ACT_D, _SERVE_ACT_FF = 4.0, 2.0


def speculation(model: Model, plan: Plan):
    """(k, A): draft tokens verified per sequence per decode step and the mean tokens each
    step emits per sequence. draft_tokens > 0: (draft_tokens, accept_len); else one MTP
    draft when mtp_accept > 0 and the model has MTP modules: (1, 1 + mtp_accept); else
    (0, 1)."""
    mtp = jnp.where((plan.mtp_accept > 0) & (model.mtp_layers > 0), 1.0, 0.0)
    spec = plan.draft_tokens > 0
    k = jnp.where(spec, plan.draft_tokens, mtp)
    return k, jnp.where(spec, plan.accept_len, 1.0 + mtp * plan.mtp_accept)


def inference_memory(model: Model, plan: Plan, hbm_bytes) -> Memory:
    """Per-chip memory when serving (bytes): weights (dense / tp, experts / ep, at the plan's
    precision, 16-bit at most), the KV cache of `microbatch` sequences of `context` (decode)
    or `seq_len` (prefill) tokens (in decode at most `attention_window` on a layer with a
    sliding window) over the layers of a stage (KV heads split over TP up to
    their number; MLA's latent is replicated) at `kv_precision` bytes per element, and the
    activations of one layer (bf16). With attention/expert disaggregation (`expert_ranks` > 0)
    the fields describe an attention rank (no expert weights); `feasible` also asks that an
    expert rank holds its `local_experts` slots and their tokens' activations."""
    dense, expert = params_split_per_chip(model, plan)
    w_el = min(BYTES_PER_ELEMENT[plan.precision], 2.0)
    weights = (dense + expert) * w_el
    decode = plan.phase == "decode"
    # a decoding sequence keeps at most attention_window tokens on a layer with a sliding
    # window; a prefill pass writes the whole prompt's K and V first (paged engines free the
    # blocks outside the window afterwards), so it holds them all
    tokens = jnp.where(decode, attended_context(model, plan.context), plan.seq_len)
    kv_tok = kv_cache_bytes_per_token(model, plan.kv_precision) * jnp.where(
        model.attention == "mla", 1.0, safe_div(1.0, jnp.minimum(plan.tp, model.n_kv_heads))
    )
    kv = plan.microbatch * tokens * safe_div(model.n_layers, plan.pp) * kv_tok
    # decode keeps the new token and its drafts live, at least two tokens per sequence
    live = jnp.maximum(1.0 + speculation(model, plan)[0], 2.0)
    t = jnp.where(decode, plan.microbatch * live, plan.microbatch * plan.seq_len)
    width = _SERVE_ACT_D * model.d_model + _SERVE_ACT_FF * jnp.maximum(
        model.d_ff, model.d_ff_expert
    )
    acts = t * width * BYTES_PER_ELEMENT["bf16"]
    # attention/expert disaggregation (decode, expert_ranks > 0): an attention rank holds
    # the dense weights without the shared experts; an expert rank holds its expert slots
    # (routed and shared alike, `local_experts` of ep = expert_ranks) and its tokens' FFN
    # activations; the plan fits when both kinds of rank do
    disagg = plan.expert_ranks > 0.5
    layers = full_stage_layers(model, plan)
    shared = layers * moe_fraction(model) * model.n_shared_experts * params_expert(model)
    weights = jnp.where(disagg, (dense - safe_div(shared, plan.tp)) * w_el, weights)
    # the sum in the order the golden outputs pin: weights, then KV cache, then activations
    total = weights + kv + acts
    zero = 0.0 * total
    mem = _fits(weights, zero, zero, acts, kv, hbm_bytes, total)
    # an expert rank runs the shared experts for its tokens too (`emu.step`), so it holds them
    expert_rank = (expert + shared) * w_el + (
        t * _SERVE_ACT_FF * model.d_ff_expert * BYTES_PER_ELEMENT["bf16"]
    )
    over = jnp.where(
        disagg, jnp.maximum(mem.overshoot_bytes, expert_rank - hbm_bytes), mem.overshoot_bytes
    )
    return replace(mem, overshoot_bytes=over, feasible=(over <= 0.0).astype(jnp.float32))


def memory(model: Model, plan: Plan, hbm_bytes) -> Memory:
    """Per-chip memory of `plan` against `hbm_bytes` of HBM: `train_memory` for training
    plans, `inference_memory` for prefill and decode (by the static `plan.phase`)."""
    if plan.phase == "train":
        return train_memory(model, plan, hbm_bytes)
    return inference_memory(model, plan, hbm_bytes)
