"""Throughput, efficiency and energy of a run: the outputs researchers optimise.

    tokens_per_s      = tokens per step / step time   (train: global_batch * seq_len;
                        prefill: prompt tokens; decode: accepted output tokens, all DP ranks)
    tokens_per_joule  = tokens_per_s / power_w        (power_w: average IT power)
    mfu               = model FLOPs per token * tokens_per_s / (n_ranks * peak_rank[precision])

Ranks are what plans count (`plan.n_ranks`); chips are packages, n_chips = n_ranks / d with
d the system's dies per chip (Ascend 910C: 2), so per-chip figures are per-rank times d and
n_ranks * peak_rank = n_chips * peak_chip. The MFU numerator counts the FLOPs the time model
spends, so 0 <= mfu <= 1 on every valid plan: causal attention (half the s^2 scores, as the
flash-attention kernels skip them) and no weight gradients for frozen LoRA weights.

>>> from emu.topology import example_system
>>> from emu.workload import example_model
>>> from emu.parallelism import make_plan
>>> r = evaluate(example_system(), example_model(), make_plan(tp=8, global_batch=16,
...                                                            seq_len=8192))
>>> bool(0.2 < float(r.mfu) < 0.8), bool(r.feasible)
(True, True)
"""

from __future__ import annotations

from emu._backend import is_numpy, jax, jnp
from emu.hardware import peak_flops, usable_hbm_bytes
from emu.numerics import safe_div
from emu.parallelism import Memory, Plan, inference_memory, memory, n_ranks
from emu.power import PowerBreakdown, step_power
from emu.step import StepBreakdown, inference_step, train_step
from emu.struct import dataclass, replace
from emu.topology import System, rank_system
from emu.workload import (
    Model,
    attended_context,
    attention_flops_dims,
    causal_pair_fraction,
    params_active,
)

__all__ = [
    "RunResult",
    "evaluate",
    "tokens_per_joule",
    "tokens_per_s",
    "train_flops_per_token",
    "inference_memory",
    "max_batch_under_slo",
]

Array = jnp.ndarray
#: bisection steps of `max_batch_under_slo` on log(batch): 40 halvings of log(4096) leave
#: ~1e-11 of relative error, far below float32 resolution
_BISECTION_STEPS = 40


@dataclass
class RunResult:
    """Everything `emu run` reports, as a pytree (SI units), with the same structure in
    every phase: `breakdown` a StepBreakdown, `memory` a Memory (per rank), `power` a
    PowerBreakdown. `n_chips` counts packages and `n_ranks` the devices plans count (equal
    unless a chip holds several dies); `tokens_per_s_per_chip` and `_per_rank` likewise.
    `ttft_s` (prefill) and `tpot_s` (decode) are 0 in phases where they do not apply."""

    n_chips: Array
    n_ranks: Array
    step_time_s: Array
    tokens_per_s: Array
    tokens_per_s_per_chip: Array
    tokens_per_s_per_rank: Array
    tokens_per_joule: Array
    power_w: Array
    facility_power_w: Array
    energy_per_step_j: Array
    mfu: Array
    ttft_s: Array
    tpot_s: Array
    feasible: Array
    breakdown: StepBreakdown
    memory: Memory
    power: PowerBreakdown


def _forward_flops_per_token(model: Model, context):
    """Forward model FLOPs per token attending to `context` tokens (the mean over the layers):
    2 active params + 2 n_layers context H (d_qk + d_v)."""
    qk, v = attention_flops_dims(model)
    return 2.0 * params_active(model) + 2.0 * model.n_layers * context * model.n_heads * (qk + v)


def train_flops_per_token(model: Model, plan: Plan):
    """Training model FLOPs per token that the time model spends (no recomputation):
    2 N_active (1 + bwd) + 3 * 2 n_layers (seq_len f) H (d_qk + d_v), with bwd = 2 (1 for
    frozen LoRA weights: input gradients only) and causal attention (forward plus a backward
    of twice its FLOPs; f the share of the scores a causal pass computes, 1/2 without a
    sliding window, `workload.causal_pair_fraction`). `workload.model_flops_per_token` is the PaLM
    convention (full attention, 6N) that sources' MFU figures use."""
    qk, v = attention_flops_dims(model)
    # the scored share of a causal pass: 1/2, less on layers with a sliding window
    frac = causal_pair_fraction(model, plan.seq_len)
    attn = 6.0 * model.n_layers * frac * plan.seq_len * model.n_heads * (qk + v)
    return 2.0 * params_active(model) * (3.0 - plan.lora) + attn


def evaluate(system: System, model: Model, plan: Plan) -> RunResult:
    """Step time, memory, power and efficiency of `model` on `system` under `plan`
    (training, prefill or decode by the static `plan.phase`; formulas in the module doc).

    Args: system, model, plan pytrees (float32 leaves; jit, vmap and grad go through).
    Returns: a RunResult: the step time (`emu.step`), memory (`emu.parallelism.memory`),
      average power from the activity shares of the step (`emu.power.step_power`), tokens/s
      (train: global_batch * seq_len per step; serving: tokens per DP rank times dp),
      tokens/J, MFU (model FLOPs per token: training `train_flops_per_token`; serving the
      forward 2N + attention at the decode context or half the prompt, times the share of
      prompt tokens computed), TTFT and TPOT. The system is evaluated on its ranks
      (`topology.rank_system`); memory is per rank against its usable HBM
      (`hardware.usable_hbm_bytes`).
    """
    dies = system.chip.dies_per_chip
    system = rank_system(system)
    ranks = n_ranks(plan)
    chips = safe_div(ranks, dies)
    peak = peak_flops(system.chip, plan.precision)
    mem = memory(model, plan, usable_hbm_bytes(system.chip))
    if plan.phase == "train":
        b = train_step(system, model, plan)
        tokens = plan.global_batch * plan.seq_len
        flops_per_token = train_flops_per_token(model, plan)
        busy_mm = b.matmul_s + b.expert_s + b.attention_s + b.head_s
        busy_mem = b.memory_s + b.optimizer_s
        ttft = tpot = jnp.zeros_like(b.total_s)
    else:
        b = inference_step(system, model, plan)
        decode = plan.phase == "decode"
        per_rank = jnp.where(decode, b.tokens_out, b.tokens_in)
        tokens = per_rank * plan.dp
        # the keys a token attends to, the mean over the layers: the decode context (a
        # sliding window caps it), or a prefill token's share of its causal prompt (half of
        # it without a window)
        ctx = jnp.where(
            decode,
            attended_context(model, plan.context),
            causal_pair_fraction(model, plan.seq_len) * plan.seq_len,
        )
        # MFU counts the work done: prefix-cache hits are served, not computed
        flops_per_token = _forward_flops_per_token(model, ctx) * jnp.where(
            decode, 1.0, 1.0 - plan.cache_hit
        )
        busy_mm = b.matmul_s + b.expert_s + b.attention_s + b.head_s
        busy_mem = b.memory_s
        per_seq = jnp.where(decode, safe_div(b.tokens_out, plan.microbatch), 1.0)
        tpot = jnp.where(decode, safe_div(b.total_s, per_seq), 0.0)
        ttft = jnp.where(decode, 0.0, b.total_s)
    total = b.total_s
    pw = step_power(
        system,
        ranks,
        matmul_frac=safe_div(busy_mm, total),
        memory_frac=safe_div(busy_mem, total),
        comm_frac=safe_div(b.exposed_comm_s, total),
    )
    tps = safe_div(tokens, total)
    return RunResult(
        n_chips=chips,
        n_ranks=ranks,
        step_time_s=total,
        tokens_per_s=tps,
        tokens_per_s_per_chip=safe_div(tps, chips),
        tokens_per_s_per_rank=safe_div(tps, ranks),
        tokens_per_joule=safe_div(tps, pw.it_w),
        power_w=pw.it_w,
        facility_power_w=pw.facility_w,
        energy_per_step_j=pw.it_w * total,
        mfu=safe_div(flops_per_token * tps, ranks * peak),
        ttft_s=ttft,
        tpot_s=tpot,
        feasible=mem.feasible,
        breakdown=b,
        memory=mem,
        power=pw,
    )


def tokens_per_s(system: System, model: Model, plan: Plan):
    """Tokens per second of the run (`evaluate(...).tokens_per_s`)."""
    return evaluate(system, model, plan).tokens_per_s


def tokens_per_joule(system: System, model: Model, plan: Plan):
    """Tokens per joule of IT energy (`evaluate(...).tokens_per_joule`)."""
    return evaluate(system, model, plan).tokens_per_joule


def max_batch_under_slo(system: System, model: Model, plan: Plan, slo_s, *, max_batch=4096.0):
    """The largest batch per DP rank whose latency (TPOT in decode, TTFT in prefill) meets
    `slo_s`, as a smooth function of every input, and the run at that batch.

    Bisection on log(batch) (no gradient) finds b0 with latency(b0) ~= slo; one Newton step
    b* = b0 - (latency(b0) - slo) / stop_gradient(d latency / d b) then carries the exact
    implicit-function gradient db*/dx = -(d latency/dx) / (d latency/db). Returns
    (batch, RunResult, feasible): feasible is 0 when even one sequence misses the SLO.
    """

    def latency(b):
        r = evaluate(system, model, replace(plan, microbatch=b))
        return jnp.where(plan.phase == "decode", r.tpot_s, r.ttft_s)

    dt = jnp.result_type(plan.microbatch)
    slo = jnp.asarray(slo_s, dt)
    lo0 = jnp.zeros_like(slo)
    hi0 = jnp.log(jnp.asarray(max_batch, dt)) + 0.0 * slo

    def body(_, bounds):
        lo, hi = bounds
        mid = 0.5 * (lo + hi)
        ok = jax.lax.stop_gradient(latency(jnp.exp(mid))) <= jax.lax.stop_gradient(slo)
        return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid)

    lo, _ = jax.lax.fori_loop(0, _BISECTION_STEPS, body, (lo0, hi0))
    b0 = jax.lax.stop_gradient(jnp.exp(lo))
    if is_numpy():  # forward-only backend: the same step with a central-difference slope
        h = 1e-3 * b0
        lat0, dlat = latency(b0), (latency(b0 + h) - latency(b0 - h)) / (2.0 * h)
    else:
        lat0, dlat = jax.value_and_grad(latency)(b0)
    b = b0 - safe_div(lat0 - slo, jax.lax.stop_gradient(dlat))
    b = jnp.clip(b, 1.0, jnp.asarray(max_batch, dt))
    feasible = (jax.lax.stop_gradient(latency(jnp.ones_like(slo))) <= slo).astype(jnp.float32)
    return b, evaluate(system, model, replace(plan, microbatch=b)), feasible
