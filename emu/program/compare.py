"""What `emu.evaluate` charges for a dense training plan, in a traced program's terms.

`reference(system, model, plan)` returns FLOPs per device per step, bytes per collective kind
per step and the step time of emu's analytic model (`emu.step.train_step`), so that a traced
program of the same model and plan can be checked against it (`compare`). Bytes follow
train_step's accounting (full buffers; see emu.program.table for the program side):

    TP  per layer and micro-batch, (4 + 2 full-recompute) collectives of t d bf16 bytes:
        all-gather + reduce-scatter each with sequence parallelism, all-reduce without
    CP  all-gather of K and V forward (again under full recompute), reduce-scatter backward
    PP  2 vpp sends of the boundary activations per micro-batch (collective-permute)
    DP  ZeRO 0: all-reduce of the gradients; 1: reduce-scatter of the gradients and
        all-gather of the bf16 weights; 2: the reduce-scatter every micro-batch; 3: a
        reduce-scatter and two all-gathers every micro-batch (one each with pp > 1)

FLOPs: model FLOPs (`emu.workload.model_flops_per_token`, the PaLM convention) and the FLOPs
the step executes with flash attention, whose backward recomputes the scores
(`emu.step.ATTN_BWD` = 2.5 forward passes of attention instead of 2); the traced program's
dot FLOPs are the latter (masked scores included: the kernels' dots compute them).

>>> import emu
>>> from emu.workload import example_model
>>> r = reference(emu.load_system("gb200_nvl72"), example_model(),
...               emu.make_plan(tp=8, dp=1, seq_len=4096, zero=0))
>>> sorted(k for k, v in r["bytes"].items() if v > 0)
['all-gather', 'reduce-scatter']
"""

from __future__ import annotations

import emu
from emu import step as emu_step
from emu.parallelism import params_split_per_chip, tokens_per_microbatch
from emu.program.table import COLLECTIVE_KINDS
from emu.topology import System
from emu.workload import Model, attention_flops_dims, model_flops_per_token

__all__ = ["reference", "compare"]


def reference(system: System, model: Model, plan) -> dict:
    """emu's FLOPs, collective bytes by kind and step time for `plan` (dense training)."""
    f = float
    if plan.phase != "train":
        raise ValueError("reference: only training plans (phase 'train') are compared.")
    if f(model.n_experts) > 0 or f(plan.ep) > 1:
        raise ValueError("reference: MoE plans are not compared yet (dense models only).")
    chips = f(plan.tp) * f(plan.pp) * f(plan.dp) * f(plan.cp)
    layers = f(model.n_layers) / f(plan.pp)
    nmb = f(plan.global_batch) / (f(plan.dp) * f(plan.microbatch))
    t = f(tokens_per_microbatch(plan))
    re = f(plan.recompute_fraction) if f(plan.recompute) > 1.5 else 0.0
    act = t * f(model.d_model) * 2.0
    out = dict.fromkeys(COLLECTIVE_KINDS, 0.0)
    if f(plan.tp) > 1:
        per_step = nmb * layers * (4.0 + 2.0 * re) * act
        if f(plan.sp) > 0.5:
            out["all-gather"] += per_step
            out["reduce-scatter"] += per_step
        else:
            out["all-reduce"] += per_step
    if f(plan.cp) > 1:
        kv_width = max(f(model.n_kv_heads) / f(plan.tp), 1.0) * f(model.d_head)
        kv = f(plan.microbatch) * f(plan.seq_len) * 2.0 * kv_width * 2.0
        out["all-gather"] += nmb * layers * (1.0 + re) * kv
        out["reduce-scatter"] += nmb * layers * kv
    if f(plan.pp) > 1:
        pp_bytes = act / f(plan.tp) if f(plan.sp) > 0.5 else act
        out["collective-permute"] += nmb * 2.0 * f(plan.vpp) * pp_bytes
    dense_p, _ = params_split_per_chip(model, plan)
    if f(plan.dp) * f(plan.cp) > 1:
        trainable = 1.0 - f(plan.lora)
        grad = f(dense_p) * trainable * f(plan.grad_bytes)
        weights = f(dense_p) * 2.0
        zero = f(plan.zero)
        if zero < 0.5:
            out["all-reduce"] += grad
        elif zero < 2.5:
            out["reduce-scatter"] += grad * (nmb if zero > 1.5 else 1.0)
            out["all-gather"] += weights * trainable
        elif f(plan.pp) > 1.5:
            out["reduce-scatter"] += grad
            out["all-gather"] += weights
        else:
            out["reduce-scatter"] += nmb * grad
            out["all-gather"] += nmb * 2.0 * weights
    tokens = f(plan.global_batch) * f(plan.seq_len)
    model_flops = f(model_flops_per_token(model, plan.seq_len)) * tokens / chips
    qk, v = attention_flops_dims(model)
    attn_fwd = 2.0 * f(model.n_layers) * f(plan.seq_len) * f(model.n_heads) * f(qk + v)
    attn_bwd = getattr(emu_step, "ATTN_BWD", 2.5)
    executed = model_flops + (attn_bwd - 2.0) * attn_fwd * tokens / chips
    r = emu.evaluate(system, model, plan)
    return {
        "flops": executed,
        "model_flops": model_flops,
        "bytes": out,
        "step_time_s": f(r.step_time_s),
        "tokens_per_step": tokens,
    }


def compare(program, system: System, model: Model, plan) -> dict:
    """Side by side: the traced `program` (an emu.program.Program) and emu.evaluate on
    `system`; relative errors (program / emu - 1) of FLOPs, each collective kind's bytes
    (None where emu charges none) and the step time."""
    ref = reference(system, model, plan)
    tokens = ref["tokens_per_step"]
    got = program.estimate(system, tokens_per_step=tokens)[0]
    mine = program.collective_bytes()

    def err(a, b):
        return a / b - 1.0 if b else None

    return {
        "system": system.name,
        "devices": program.n_devices,
        "flops": (got.flops, ref["flops"], err(got.flops, ref["flops"])),
        "bytes": {k: (mine[k], ref["bytes"][k], err(mine[k], ref["bytes"][k])) for k in mine},
        "step_time_s": (
            got.step_time_s,
            ref["step_time_s"],
            err(got.step_time_s, ref["step_time_s"]),
        ),
    }
