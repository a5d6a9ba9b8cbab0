"""Advice on one result: why a run is infeasible and what to change (`diagnose`), warnings
for a step that wastes its chips (pipeline bubble, exposed communication, HBM nearly full),
and the physical sanity check of a concrete result (`check_result`). Sentences only, no
model code: the thresholds are the module's constants."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["diagnose", "check_result", "BUBBLE_WARN", "EXPOSED_COMM_WARN", "HBM_WARN"]

#: thresholds of the advice in `diagnose` (shares of the step time / of usable HBM)
BUBBLE_WARN, EXPOSED_COMM_WARN, HBM_WARN = 0.25, 0.4, 0.95


def _gb(x: float) -> str:
    return f"{x / 1e9:.0f} GB" if x >= 1e10 else f"{x / 1e9:.3g} GB"


def gb_of(used: float, cap: float) -> str:
    """'USED of CAP' in GB, with the digits that tell them apart ('83 GB of 83 GB' was a
    plan 0.2 GB over the capacity)."""
    a, b = _gb(used), _gb(cap)
    digits = 3
    while a == b and digits < 9:
        a, b = f"{used / 1e9:.{digits}g} GB", f"{cap / 1e9:.{digits}g} GB"
        digits += 1
    return f"{a} of {b}"


#: sequences at least this long: activations dominate, and context parallelism splits them
LONG_SEQUENCE = 16384


def _memory_fixes(plan: dict, serving: bool, moe: bool, weights_fit: bool = True) -> str:
    """What would shrink the memory of `plan`: only the moves still open on its chips (a
    degree grows only where DP ranks are left to trade for it; ZeRO shards over DP x CP; EP
    only on an MoE model)."""
    dp, cp = plan["dp"], plan.get("cp", 1)
    if serving:
        moves = []
        grow = (["ep"] if moe and plan["ep"] < plan["tp"] * dp else []) + (["tp"] if dp > 1 else [])
        moves += [f"raise {either(grow)}"] if grow else []
        moves += ["use an 8-bit --precision"] if plan["precision"] in ("bf16", "fp16") else []
        moves += ["lower --batch or --context"] if weights_fit else []  # else: no help
        moves += ["add chips"]
    else:
        grow = ["tp", "pp"] + (["cp"] if plan["seq_len"] >= LONG_SEQUENCE else [])
        grow += ["ep"] if moe and plan["ep"] < dp * cp else []
        moves = [f"raise {either(grow)}"] if dp > 1 else []  # each trades DP ranks for it
        moves += ["raise --zero"] if plan["zero"] < 3 and dp * cp > 1 else []
        if plan["recompute"] != "full":
            moves += ["--recompute full"]
        elif plan.get("recompute_fraction", 1) < 1:  # a share of the layers recomputed
            moves += ["raise --recompute-fraction (1: every layer)"]
        every_layer = plan["recompute"] == "full" and plan.get("recompute_fraction", 1) >= 1
        if not every_layer and not plan.get("recompute_activation"):
            moves += ["--recompute-activation"]
        moves += ["a smaller --microbatch"] if plan["microbatch"] > 1 else []
        moves += ["add chips"]
    return either(moves)


def either(items: list[str]) -> str:
    """ "a", "a or b", "a, b or c"."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + f" or {items[-1]}"


def diagnose(
    run: dict, *, slo_s: float | None = None, moe: bool | None = None
) -> tuple[list[str], list[str]]:
    """(why the run is infeasible, warnings) for an `emu.analysis.run` dict, each a sentence
    that says what to change. Infeasible: out of memory; the latency SLO missed (when
    `slo_s` is given; `moe`: whether the model has experts, so that raising EP is advice;
    by default read from the plan's ep > 1). Warnings: a pipeline bubble >= BUBBLE_WARN of
    the step, exposed communication >= EXPOSED_COMM_WARN, HBM use >= HBM_WARN of
    capacity."""
    reasons, warnings = [], []
    mem, b, plan = run["memory"], run["breakdown"], run["plan"]
    used, cap = mem["total_bytes"], mem["capacity_bytes"]
    serving = run["phase"] != "train"
    if not run["feasible"] and used > cap:
        moe = plan.get("ep", 1) > 1 if moe is None else moe
        weights_fit = mem.get("weights_bytes", 0) < cap
        fix = "; " + _memory_fixes(plan, serving, moe, weights_fit)
        multi_die = run.get("n_ranks", run.get("n_chips")) != run.get("n_chips")
        per = "per die" if multi_die else "per chip"
        reasons.append(f"out of memory: {gb_of(used, cap)} {per}{fix}.")
    elif not run["feasible"] and plan.get("expert_ranks") and mem["overshoot_bytes"] > 0:
        # attention/expert disaggregation: the attention ranks fit, the expert ranks do not
        need = cap + mem["overshoot_bytes"]
        reasons.append(
            f"out of memory on the {plan['expert_ranks']} expert ranks: each needs "
            f"{gb_of(need, cap)} for its expert slots; raise --expert-ranks."
        )
    if slo_s is not None and serving:
        lat, what = (run["tpot_s"], "TPOT") if run["phase"] == "decode" else (run["ttft_s"], "TTFT")
        if lat is not None and lat > slo_s:
            reasons.append(
                f"{what} {lat:.3g} s misses the {slo_s:g} s SLO; lower --batch (or leave it out "
                "for the largest batch meeting it), add chips or relax the SLO."
            )
    total = b["total_s"]
    bubble = b.get("bubble_s", 0) / total if total > 0 else 0.0
    if bubble >= BUBBLE_WARN and plan.get("expert_ranks"):  # bubble_s: the wait on experts
        warnings.append(
            f"the attention ranks wait on the expert ranks for {bubble:.0%} of the step: use "
            "fewer --attention-groups or more --expert-ranks."
        )
    elif bubble >= BUBBLE_WARN:
        mbs = plan["global_batch"] / max(plan["dp"] * plan["microbatch"], 1)
        warnings.append(
            f"the pipeline bubble is {bubble:.0%} of the step (pp={plan['pp']}, "
            f"{mbs:g} micro-batches per step): raise --global-batch, lower --microbatch or "
            f"--pp, {'use --vpp, ' if mbs >= plan['pp'] else ''}or try --plan best."
        )
    if total > 0 and b.get("exposed_comm_s", 0) / total >= EXPOSED_COMM_WARN:
        warnings.append(
            f"exposed communication is {b['exposed_comm_s'] / total:.0%} of the step: change "
            "tp/ep/dp (keep tp inside the scale-up domain) or try --plan best."
        )
    if run["feasible"] and cap > 0 and used / cap >= HBM_WARN:
        warnings.append(
            f"HBM use is {used / cap:.0%} of capacity ({_gb(used)} of {_gb(cap)}): little "
            "headroom for fragmentation and peaks."
        )
    return reasons, warnings


#: the result fields `check_result` reads
CHECKED_FIELDS = ("step_time_s", "power_w", "tokens_per_s", "mfu", "energy_per_step_j")
#: (holds, what is wrong): each works on floats and, element-wise, on arrays
_RULES = (
    (lambda r: r["step_time_s"] > 0, lambda r: f"step time {r['step_time_s']:g} s is not positive"),
    (lambda r: r["power_w"] > 0, lambda r: f"power {r['power_w']:g} W is not positive"),
    (lambda r: r["tokens_per_s"] >= 0, lambda r: f"tokens/s {r['tokens_per_s']:g} is negative"),
    (
        lambda r: (0 <= r["mfu"]) & (r["mfu"] <= 1 + 1e-6),
        lambda r: f"MFU {r['mfu']:.3g} is outside [0, 1]",
    ),
)


def check_result(run: dict) -> None:
    """ValueError unless the run is physically possible: every number finite, step time and
    power > 0, tokens/s >= 0 and 0 <= MFU <= 1 (never report an impossible number). The
    fields may be arrays (a batch): the first impossible element is named."""
    where = f"{run['system']}/{run['model']}"
    keys = [k for k in CHECKED_FIELDS if k in run]
    arrays = np.broadcast_arrays(*(np.asarray(run[k], np.float64) for k in keys))
    v = {k: a.reshape(-1) for k, a in zip(keys, arrays, strict=True)}
    ok = np.all([np.isfinite(a) for a in v.values()], axis=0)
    ok &= np.all([holds(v) for holds, _ in _RULES], axis=0)
    if ok.all():
        return
    i = int(np.argmin(ok))
    r = {k: float(a[i]) for k, a in v.items()}
    head = f"element {i} of the batch: " if arrays[0].ndim else ""
    for k in keys:
        if not math.isfinite(r[k]):
            raise ValueError(
                f"{head}{where}: {k} is not finite; an input is outside the float32 range "
                "(check seq_len, global_batch and the overridden values)."
            )
    for holds, text in _RULES:
        if not holds(r):
            raise ValueError(
                f"{head}{where}: {text(r)}; the inputs are outside what emu models (check the "
                "--set values and the plan)."
            )
