"""Host-side orchestration: choose a plan, evaluate it compiled, describe systems, and turn
results into JSON-ready dicts. The CLI is a thin layer over these functions.

Plan rule when degrees are left out (stated in `emu run --help` and the README):
TP = the largest power of two <= 8 that divides the heads and fits in the innermost
scale-up tier; CP = 1; PP = the smallest divisor of the layers that makes the plan fit in
HBM (selective recomputation first, then full); DP takes the remaining chips. The default
global batch is the smallest multiple of dp * microbatch holding >= 4 Mi tokens.

>>> from emu.config import load_system, load_model
>>> plan = auto_plan(load_system("gb200_nvl72"), load_model("llama3_70b"), 72, seq_len=8192)
>>> [int(plan.tp), int(plan.pp), int(plan.dp)]
[8, 1, 9]
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from emu.hardware import peak_flops
from emu.objective import evaluate, max_batch_under_slo
from emu.parallelism import Plan, make_plan, memory, plan_dict, validate_plan
from emu.power import full_load_power
from emu.struct import float_leaves
from emu.topology import System
from emu.units import PRECISIONS
from emu.workload import Model

__all__ = ["auto_plan", "run", "describe", "sensitivity", "tree_to_dict", "enable_cache"]

DEFAULT_BATCH_TOKENS = 4 * 2**20


def enable_cache() -> None:
    """Persistent compilation cache in the user's cache directory (quick repeated runs)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    path = Path(base) / "emu" / "jax"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def _divisors(n: int) -> list[int]:
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]))


def _int(x) -> int:
    return int(round(float(x)))


def auto_plan(
    system: System,
    model: Model,
    chips: int,
    *,
    seq_len: int = 4096,
    global_batch: int | None = None,
    microbatch: int = 1,
    tp: int | None = None,
    pp: int | None = None,
    dp: int | None = None,
    cp: int | None = None,
    vpp: int = 1,
    zero: int = 1,
    recompute: str | None = None,
    sp: bool = True,
    precision: str = "bf16",
    grad_bytes: float | None = None,
    ep: int | None = None,
    etp: int = 1,
    phase: str = "train",
    context: int | None = None,
    mtp_accept: float = 0.0,
    moe_imbalance: float = 1.0,
    a2a_overlap: bool = False,
    cache_hit: float = 0.0,
) -> Plan:
    """A valid plan for `chips` chips; degrees given are kept, the others chosen by the rule.

    MoE models: EP = the largest divisor of the experts that divides tp*dp*cp and fits in the
    scale-up domain (training) or the chip count (inference). Inference: pp = cp = 1; TP = 1
    for MoE models (data-parallel attention, expert-parallel MoE), else the smallest power of
    two <= 8 whose weights fit in HBM."""
    if chips < 1 or chips != int(chips):
        raise ValueError(f"--chips must be a positive integer (got {chips}).")
    chips = int(chips)
    max_chips = float(system.tiers[-1].domain_chips)
    if chips > max_chips:
        raise ValueError(
            f"--chips {chips} exceeds the largest cluster of {system.name} ({max_chips:g}); "
            "reduce --chips or raise the outermost tier's domain_chips."
        )
    for name, v in (
        ("ep", ep),
        ("etp", etp),
        ("context", context),
        ("tp", tp),
        ("pp", pp),
        ("dp", dp),
        ("cp", cp),
        ("vpp", vpp),
        ("microbatch", microbatch),
        ("seq-len", seq_len),
        ("global-batch", global_batch),
    ):
        if v is not None and (v != int(v) or v < 1):
            raise ValueError(f"--{name} must be a positive integer (got {v}).")
    if phase != "train":
        extra = {
            "--pp": pp,
            "--cp": cp if cp != 1 else None,
            "--etp": etp if etp != 1 else None,
            "--vpp": vpp if vpp != 1 else None,
        }
        bad = [k for k, v in extra.items() if v is not None]
        if bad:
            raise ValueError(f"serving plans use --tp, --dp and --ep only; drop {', '.join(bad)}.")
        return _auto_inference_plan(
            system,
            model,
            chips,
            seq_len=seq_len,
            microbatch=microbatch,
            tp=tp,
            dp=dp,
            ep=ep,
            phase=phase,
            context=context,
            mtp_accept=mtp_accept,
            moe_imbalance=moe_imbalance,
            a2a_overlap=a2a_overlap,
            cache_hit=cache_hit,
            precision=precision,
        )
    if zero not in (0, 1, 2, 3):
        raise ValueError(f"--zero must be 0, 1, 2 or 3 (got {zero}).")
    _check_precision(system, precision)
    heads, kv, layers = _int(model.n_heads), _int(model.n_kv_heads), _int(model.n_layers)
    cp = 1 if cp is None else cp
    if tp is None:
        inner = _int(system.tiers[0].domain_chips)
        free = chips // cp if chips % cp == 0 else 1
        if dp is not None and pp is not None:
            free = max(1, free // max(dp * pp, 1))
        tp = 1
        for t in (8, 4, 2):
            if t <= inner and heads % t == 0 and (kv % t == 0 or t % kv == 0) and free % t == 0:
                tp = t
                break
    rest = chips / (tp * cp)
    if rest != int(rest):
        raise ValueError(
            f"Plan: tp*cp = {tp * cp} must divide the chip count {chips}; adjust --tp or --cp."
        )
    rest = int(rest)
    if pp is None and dp is not None:
        pp = rest // dp if rest % dp == 0 else None
        if pp is None:
            raise ValueError(f"Plan: dp={dp} must divide chips/(tp*cp) = {rest}; adjust --dp.")
    if pp is not None and rest % pp:
        raise ValueError(
            f"Plan: pp={pp} must divide chips/(tp*cp) = {rest}; adjust --pp or --chips."
        )
    candidates = (
        [pp]
        if pp is not None
        else [d for d in _divisors(rest) if layers % (d * vpp) == 0 and (vpp == 1 or d > 1)]
    )
    if not candidates:
        raise ValueError(
            f"Plan: no pipeline degree divides both n_layers={layers} and chips/(tp*cp)={rest}; "
            "set --pp and --dp explicitly."
        )

    def build(pp_, rc):
        dp_ = rest // pp_
        gb = global_batch
        if gb is None:
            unit = dp_ * microbatch
            gb = unit * max(1, math.ceil(DEFAULT_BATCH_TOKENS / seq_len / unit))
        ep_ = ep if ep is not None else _auto_ep(system, model, tp * dp_ * cp // etp)
        return make_plan(
            ep=ep_,
            etp=etp,
            moe_imbalance=moe_imbalance,
            a2a_overlap=a2a_overlap,
            tp=tp,
            pp=pp_,
            dp=dp_,
            cp=cp,
            microbatch=microbatch,
            global_batch=gb,
            seq_len=seq_len,
            vpp=vpp,
            zero=zero,
            recompute=rc,
            sp=sp,
            precision=precision,
            grad_bytes=grad_bytes,
        )

    recomputes = [recompute] if recompute else ["selective", "full"]
    chosen = None
    for rc in recomputes:
        for p in candidates:
            plan = build(p, rc)
            if float(memory(model, plan, system.chip.hbm_bytes).feasible) > 0.5:
                chosen = plan
                break
        if chosen is not None:
            break
    if chosen is None:  # nothing fits: the deepest pipeline, reported as infeasible
        chosen = build(candidates[-1], recomputes[-1])
    if dp is not None and _int(chosen.dp) != dp:
        raise ValueError(
            f"Plan: tp*pp*dp*cp = {tp * _int(chosen.pp) * dp * cp} must equal n_chips = "
            f"{chips}; adjust dp (got dp={dp})."
        )
    return check_plan(system, model, chosen, chips)


def scale_up_domain(system: System) -> float:
    """Chips in the largest domain below the scale-out tier (NVL72: 72, CM384: 384)."""
    tiers = system.tiers
    return float((tiers[-2] if len(tiers) > 1 else tiers[0]).domain_chips)


def _auto_ep(system: System, model: Model, ranks: int, *, limit: float | None = None) -> int:
    experts = _int(model.n_experts)
    if experts == 0:
        return 1
    cap = scale_up_domain(system) if limit is None else limit
    return max(d for d in _divisors(experts) if ranks % d == 0 and d <= cap)


def _auto_inference_plan(
    system,
    model,
    chips,
    *,
    seq_len,
    microbatch,
    tp,
    dp,
    ep,
    phase,
    context,
    mtp_accept,
    moe_imbalance,
    a2a_overlap,
    cache_hit,
    precision,
) -> Plan:
    heads = _int(model.n_heads)
    moe = _int(model.n_experts) > 0
    if tp is None:
        tp = 1
        if not moe:
            for t in (1, 2, 4, 8):
                if heads % t or chips % t:
                    continue
                tp = t
                probe = make_plan(
                    tp=t,
                    dp=chips // t,
                    seq_len=seq_len,
                    phase=phase,
                    microbatch=microbatch,
                    context=context,
                    precision=precision,
                )
                from emu.objective import inference_memory

                if float(inference_memory(model, probe, system.chip.hbm_bytes).feasible) > 0.5:
                    break
    if chips % tp:
        raise ValueError(f"Plan: tp={tp} must divide the chip count {chips}; adjust --tp.")
    dp_ = chips // tp
    if dp is not None and dp != dp_:
        raise ValueError(
            f"Plan: tp*pp*dp*cp = {tp * dp} must equal n_chips = {chips}; adjust dp (got dp={dp})."
        )
    ep_ = ep if ep is not None else _auto_ep(system, model, chips, limit=chips)
    plan = make_plan(
        tp=tp,
        dp=dp_,
        ep=ep_,
        microbatch=microbatch,
        global_batch=dp_ * microbatch,
        seq_len=seq_len,
        context=context,
        phase=phase,
        mtp_accept=mtp_accept,
        moe_imbalance=moe_imbalance,
        a2a_overlap=a2a_overlap,
        cache_hit=cache_hit,
        precision=precision,
        recompute="none",
        zero=0,
    )
    return check_plan(system, model, plan, chips)


def _check_precision(system: System, precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision '{precision}'; known: {', '.join(PRECISIONS)}.")
    if float(peak_flops(system.chip, precision)) <= 0:
        have = [p for p in PRECISIONS if float(peak_flops(system.chip, p)) > 0]
        raise ValueError(
            f"{system.chip.name} has no {precision} support; use one of: {', '.join(have)}."
        )


def check_plan(system: System, model: Model, plan: Plan, chips: int | None = None) -> Plan:
    """Validate a fully specified plan against the system and model."""
    _check_precision(system, plan.precision)
    if chips is not None:
        n = _int(plan.tp * plan.pp * plan.dp * plan.cp)
        if n != chips:
            raise ValueError(
                f"Plan: tp*pp*dp*cp = {n} must equal n_chips = {chips}; adjust dp "
                f"(got dp={_int(plan.dp)})."
            )
    return validate_plan(plan, model, max_chips=float(system.tiers[-1].domain_chips))


_evaluate = jax.jit(evaluate)
_max_batch = jax.jit(max_batch_under_slo)  # module level: compiled once per structure


def tree_to_dict(tree) -> dict:
    """A pytree dataclass as nested JSON-ready dicts of floats."""
    out = {}
    for f in dataclasses.fields(tree):
        if not f.metadata.get("pytree_node", True):
            continue
        v = getattr(tree, f.name)
        if dataclasses.is_dataclass(v):
            out[f.name] = tree_to_dict(v)
        else:
            out[f.name] = float(v)
    return out


def run(system: System, model: Model, plan: Plan) -> dict:
    """Evaluate one configuration (compiled) and return the `run` JSON object."""
    t0 = time.perf_counter()
    compiled = _evaluate.lower(system, model, plan).compile()
    t1 = time.perf_counter()
    r = jax.block_until_ready(compiled(system, model, plan))
    t2 = time.perf_counter()
    d = tree_to_dict(r)
    _check_finite(d, f"{system.name}/{model.name}")
    d["feasible"] = bool(d["feasible"] > 0.5)
    d["memory"]["feasible"] = d["feasible"]
    if plan.phase != "prefill":
        d["ttft_s"] = None
    if plan.phase != "decode":
        d["tpot_s"] = None
    return {
        "system": system.name,
        "model": model.name,
        "phase": plan.phase,
        "plan": plan_dict(plan),
        **d,
        "compile_s": t1 - t0,
        "eval_s": t2 - t1,
    }


def largest_batch(system: System, model: Model, plan: Plan, slo_s: float) -> int:
    """The largest integer batch per DP rank meeting the phase's latency SLO (exactly
    re-evaluated), or raise if even one sequence misses it."""
    from emu.struct import replace

    b, _, ok = _max_batch(system, model, plan, jnp.float32(slo_s))
    if float(ok) < 0.5:
        what = "TPOT" if plan.phase == "decode" else "TTFT"
        raise ValueError(
            f"no batch meets the {what} SLO of {slo_s:g} s on {system.name}; even batch 1 "
            "misses it: relax the SLO or add chips."
        )
    n = max(1, int(float(b)))
    lat = "tpot_s" if plan.phase == "decode" else "ttft_s"

    def ev(k):
        return _evaluate(system, model, replace(plan, microbatch=jnp.float32(k)))

    # the batch must also fit in HBM (weights + KV cache): largest feasible batch, by halving
    if float(ev(1).feasible) < 0.5:
        raise ValueError(
            f"even batch 1 does not fit in HBM on {system.name}: the weights and KV cache "
            "need more memory; add chips (or --tp) or shorten --context."
        )
    lo, hi = 1, n
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if float(ev(mid).feasible) > 0.5 else (lo, mid - 1)
    n = lo
    while n > 1:  # exact re-evaluation at the integer batch
        if float(getattr(ev(n), lat)) <= slo_s:
            break
        n -= 1
    return n


def _check_finite(d: dict, what: str, prefix: str = "") -> None:
    for k, v in d.items():
        if isinstance(v, dict):
            _check_finite(v, what, f"{prefix}{k}.")
        elif isinstance(v, float) and not math.isfinite(v):  # noqa: SIM114
            raise ValueError(
                f"{what}: {prefix}{k} is not finite; an input is outside the float32 range "
                "(check --seq-len, --global-batch and --set values)."
            )


def describe(system: System) -> dict:
    """System totals from the parts (one system unit of `n_chips` chips)."""
    n = float(system.n_chips)
    p = full_load_power(system)
    return {
        "system": system.name,
        "chip": system.chip.name,
        "n_chips": int(n) if n == int(n) else n,
        "peak_flops_per_s": {
            k: n * float(v) for k, v in system.chip.peak_flops_per_s.items() if float(v) > 0
        },
        "hbm_bytes": n * float(system.chip.hbm_bytes),
        "hbm_bytes_per_s": n * float(system.chip.hbm_bytes_per_s),
        "tiers": [
            {
                "name": t.name,
                "link": t.link,
                "domain_chips": float(t.domain_chips),
                "bytes_per_s_per_chip": float(t.bytes_per_s),
                "total_bytes_per_s": n * float(t.bytes_per_s),
                "oversubscription": float(t.oversubscription),
            }
            for t in system.tiers
        ],
        "scale_up_bytes_per_s_per_chip": float(system.tiers[0].bytes_per_s),
        "scale_out_bytes_per_s_per_chip": float(system.tiers[-1].bytes_per_s),
        "power_w": float(p.it_w),
        "facility_power_w": float(p.facility_w),
        "power": tree_to_dict(p),
        "pue": float(system.facility.pue),
    }


def _log_outputs(system, model, plan):
    r = evaluate(system, model, plan)
    return jnp.stack([jnp.log(r.tokens_per_joule), jnp.log(r.tokens_per_s)])


_jac = jax.jit(jax.jacrev(_log_outputs))


def sensitivity(system: System, model: Model, plan: Plan) -> dict:
    """Elasticities d ln(y) / d ln(x) of tokens/J and tokens/s for every float field x of
    the system, from one reverse-mode pass; sorted by |elasticity of tokens/J|."""
    r = _evaluate(system, model, plan)
    grads = _jac(system, model, plan)
    values = float_leaves(system)
    g = float_leaves(grads)
    rows = {}
    for path, x in values.items():
        gx = g[path]
        rows[path] = {
            "value": float(x),
            "tokens_per_joule": float(x * gx[0]),
            "tokens_per_s": float(x * gx[1]),
        }
    ordered = dict(sorted(rows.items(), key=lambda kv: -abs(kv[1]["tokens_per_joule"])))
    return {
        "system": system.name,
        "model": model.name,
        "plan": plan_dict(plan),
        "tokens_per_joule": float(r.tokens_per_joule),
        "tokens_per_s": float(r.tokens_per_s),
        "elasticities": ordered,
    }
