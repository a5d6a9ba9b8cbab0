"""Disaggregated serving: prefill and decode instances with their own parallelism.

Requests of `prompt_len` input and `output_len` output tokens flow through a prefill
instance (its own chips and plan) and then a decode instance. The deployment serves

    requests/s = min(prefill_tokens_per_s / prompt_len, decode_tokens_per_s / output_len)

so the slower side sets the rate and the other idles part of the time (its power is still
drawn: instances are provisioned, not elastic). Output tokens per second per chip and per
joule count both instances' chips and power. TTFT is the prefill latency of one batch, TPOT
the decode step time per accepted token.

>>> import emu
>>> from emu.parallelism import make_plan
>>> sys, m = emu.load_system("hgx_h800"), emu.load_model("deepseek_v3")
>>> pre = make_plan(tp=1, dp=32, ep=32, microbatch=4, global_batch=128, seq_len=4096,
...                 phase="prefill", precision="fp8")
>>> dec = make_plan(tp=1, dp=128, ep=128, microbatch=64, global_batch=8192, seq_len=4096,
...                 context=4096, phase="decode", precision="fp8")
>>> r = disaggregated(sys, m, pre, dec, prompt_len=4096.0, output_len=1024.0)
>>> bool(r.requests_per_s > 0) and bool(r.ttft_s > 0) and bool(r.tpot_s > 0)
True
"""

from __future__ import annotations

import math

from emu._backend import jnp
from emu.numerics import safe_div
from emu.objective import RunResult, evaluate
from emu.parallelism import Plan
from emu.plan import validate_plan
from emu.struct import dataclass, is_concrete
from emu.topology import System
from emu.workload import Model

__all__ = ["ServingResult", "disaggregated"]

Array = jnp.ndarray


@dataclass
class ServingResult:
    """A prefill + decode deployment (SI units). `n_chips` counts packages, `n_ranks`
    devices (see `emu.objective.RunResult`). `prefill_utilisation` and
    `decode_utilisation` are the shares of each instance's capacity in use (one is 1)."""

    requests_per_s: Array
    tokens_per_s: Array
    tokens_per_s_per_chip: Array
    tokens_per_joule: Array
    power_w: Array
    n_chips: Array
    n_ranks: Array
    tokens_per_s_per_rank: Array
    ttft_s: Array
    tpot_s: Array
    prefill_utilisation: Array
    decode_utilisation: Array
    feasible: Array
    prefill: RunResult
    decode: RunResult


def disaggregated(
    system: System,
    model: Model,
    prefill_plan: Plan,
    decode_plan: Plan,
    *,
    prompt_len,
    output_len,
) -> ServingResult:
    """Throughput, latency and energy of serving with separate prefill and decode instances
    (both on `system`); see the module doc for the formulas. ValueError when a plan is of
    another phase (a swapped pair gave TTFT = TPOT = 0), and, for concrete inputs, when a
    length is not a positive finite number of tokens or a plan fails `validate_plan`."""
    for name, plan, want in (("prefill_plan", prefill_plan, "prefill"),
                             ("decode_plan", decode_plan, "decode")):  # fmt: skip
        if plan.phase != want:
            raise ValueError(f"{name} is a {plan.phase} plan; give a {want} plan.")
    if is_concrete(system, model, prefill_plan, decode_plan, prompt_len, output_len):
        for name, n in (("prompt_len", prompt_len), ("output_len", output_len)):
            try:
                x = math.nan if isinstance(n, bool | str) else float(n)
            except (TypeError, ValueError):
                x = math.nan
            if not 0 < x < math.inf:
                raise ValueError(f"{name} must be a positive number of tokens (got {n!r}).")
        for plan in (prefill_plan, decode_plan):
            validate_plan(
                plan, model, max_chips=float(system.tiers[-1].domain_chips),
                dies_per_chip=float(system.chip.dies_per_chip), even_layers=False,
                even_experts=False,
            )  # fmt: skip
    pre = evaluate(system, model, prefill_plan)
    dec = evaluate(system, model, decode_plan)
    pre_rps = safe_div(pre.tokens_per_s, prompt_len)
    dec_rps = safe_div(dec.tokens_per_s, output_len)
    rps = jnp.minimum(pre_rps, dec_rps)
    tokens = rps * output_len
    chips = pre.n_chips + dec.n_chips
    ranks = pre.n_ranks + dec.n_ranks
    power = pre.power_w + dec.power_w
    return ServingResult(
        requests_per_s=rps,
        tokens_per_s=tokens,
        tokens_per_s_per_chip=safe_div(tokens, chips),
        tokens_per_joule=safe_div(tokens, power),
        power_w=power,
        n_chips=chips,
        n_ranks=ranks,
        tokens_per_s_per_rank=safe_div(tokens, ranks),
        ttft_s=pre.ttft_s,
        tpot_s=dec.tpot_s,
        prefill_utilisation=safe_div(rps, pre_rps),
        decode_utilisation=safe_div(rps, dec_rps),
        feasible=pre.feasible * dec.feasible,
        prefill=pre,
        decode=dec,
    )
