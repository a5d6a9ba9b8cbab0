"""Cost of ownership: capital, facility and energy -> USD per hour and per million tokens.

A run on `n_chips` chips that draws `power_w` of IT power (emu's power model) and produces
`tokens_per_s` costs, per hour of running (H = 8,760 hours a year, u = `utilisation`):

    hardware_usd_per_hour = n_chips * (chip + host + scale_up + scale_out + optics)_usd_per_chip
                            / (hardware_life_years * H * u)
    facility_usd_per_hour = facility_usd_per_w * provisioned_w / (facility_life_years * H * u)
    energy_usd_per_hour   = power_w * pue * electricity_usd_per_kwh / 1000
    usd_per_hour          = hardware + facility + energy            (the build-up), or
                          = n_chips * hourly_usd_per_chip           (an all-in price, when > 0)
    usd_per_mtoken        = usd_per_hour * 1e6 / (3600 * tokens_per_s)   (inf at 0 tokens/s)

Capital (straight-line, no financing) accrues over every hour of a year; a system busy a share
u of them carries 1/u of its hourly capital into each running hour. Energy is paid while
running; idle draw is neglected. `provisioned_w` (default `power_w`) is the IT power the
facility is built for: pass the full-load power (`from_result(..., system=)` does).

An all-in hourly price per chip (SemiAnalysis's AI-cloud TCO per GPU-hour, facts §28) replaces
the build-up: it is what a renter pays per hour of the run, so utilisation does not touch it
and usd_per_mtoken = hourly x 1e6 / (3600 x tokens/s per chip) exactly.

PUE and electricity come from the `Region`: PUE belongs to the site (climate, cooling plant),
so the region's PUE overrides the system TOML's `facility.pue` in cost (`with_region_pue`
applies it to a System so that `RunResult.facility_power_w` agrees). A region may sell
electricity cheaper to chips of one origin (`subsidy_chip_origin`; China's data-centre
provinces and domestic chips, FT Nov 2025 via facts §28); `Cost.chip_origin` selects the price.

The pure functions (`run_cost`, `usd_per_mtoken`, `from_result`) are JAX: jit, vmap and grad
reach every cost and region field. Bounds, units and help sit beside the fields
(`emu.struct.field`), so `emu.struct.check` and `emu.overrides.apply_overrides` validate a
Cost or Region as they do a System. The TOML files in configs/costs/ and configs/regions/
are loaded on the host side by `emu.costs_catalog` (`load_cost`, `load_region`).

>>> f = jnp.float32
>>> cost = Cost(name="toy", chip_usd=f(35e3), host_usd_per_chip=f(9e3),
...             scale_up_usd_per_chip=f(3e3), scale_out_usd_per_chip=f(4.7e3),
...             optics_usd_per_chip=f(2.8e3),
...             hardware_life_years=f(4), facility_usd_per_w=f(25), facility_life_years=f(10),
...             utilisation=f(0.8), hourly_usd_per_chip=f(0))
>>> region = Region(name="us", electricity_usd_per_kwh=f(0.08),
...                 subsidised_electricity_usd_per_kwh=f(0.08), pue=f(1.3))
>>> c = run_cost(cost, region, n_chips=72.0, power_w=120e3, tokens_per_s=72 * 1000.0)
>>> bool(c.usd_per_mtoken > 0) and bool(0 < c.energy_share < 1)
True
>>> rented = replace(cost, hourly_usd_per_chip=f(2.21))   # SA-TCO, facts §28
>>> round(float(usd_per_mtoken(rented, region, n_chips=72.0, power_w=120e3,
...                            tokens_per_s=72 * 1000.0)), 4)       # 2.21e6 / 3.6e6
0.6139
"""

from __future__ import annotations

import math

import numpy as np

from emu._backend import jax, jnp
from emu.numerics import safe_div
from emu.struct import (
    check,
    dataclass,
    field,
    float_leaves,
    has_tracer,
    real_scalar,
    replace,
    static_field,
)

__all__ = [
    "Cost",
    "Region",
    "CostBreakdown",
    "run_cost",
    "check_cost_inputs",
    "usd_per_mtoken",
    "from_result",
    "electricity_price",
    "with_region_pue",
    "elasticities",
    "newton",
    "HOURS_PER_YEAR",
]

Array = jnp.ndarray

#: hours in a (365-day) year: the unit of useful life
HOURS_PER_YEAR = 8760.0


@dataclass
class Cost:
    """Capital cost of one catalog system, per chip, and how it is spread over time.

    Per-chip numbers carry each chip's share of its unit (rack, supernode), as the power
    model attributes switch and optics watts per chip. `chip_origin` (ISO country of the
    accelerator's maker) decides whether a region's chip subsidy applies.
    `hourly_usd_per_chip` > 0 replaces the whole build-up by an all-in hourly price."""

    name: str = static_field()
    chip_origin: str = static_field(default="")
    chip_usd: Array = field("[0, 1e7]", unit="USD per chip", help="accelerator package (dies, HBM)")
    host_usd_per_chip: Array = field(
        "[0, 1e7]",
        unit="USD per chip",
        help="CPUs, boards, memory, trays, racks, power shelves, cooling",
    )
    scale_up_usd_per_chip: Array = field(
        "[0, 1e7]", unit="USD per chip", help="scale-up switches, boxes and electrical cables"
    )
    scale_out_usd_per_chip: Array = field(
        "[0, 1e7]", unit="USD per chip", help="scale-out NICs not on the chip, switch ports, fibre"
    )
    optics_usd_per_chip: Array = field(
        "[0, 1e7]", unit="USD per chip", help="optical transceivers, all tiers"
    )
    hardware_life_years: Array = field(
        "(0, 50]", unit="years", help="useful life of the IT hardware"
    )
    facility_usd_per_w: Array = field(
        "[0, 1000]",
        unit="USD per W of IT power",
        help="data-centre capital (building, power, cooling)",
    )
    facility_life_years: Array = field("(0, 100]", unit="years", help="useful life of the facility")
    utilisation: Array = field(
        "(0, 1]", unit="fraction", help="share of the year spent on paid work"
    )
    hourly_usd_per_chip: Array = field(
        "[0, 1000]",
        unit="USD per chip-hour",
        help="all-in hourly price; 0 = build up from the parts",
    )


@dataclass
class Region:
    """Where the system runs: electricity price (USD per kWh, converted from the local
    currency by the loader) and PUE. `subsidised_electricity_usd_per_kwh` applies to chips
    whose origin is `subsidy_chip_origin` (empty: no subsidy; then it equals the base)."""

    name: str = static_field()
    country: str = static_field(default="")
    subsidy_chip_origin: str = static_field(default="")
    electricity_usd_per_kwh: Array = field(
        "[0, 10]", unit="USD per kWh", help="industrial electricity"
    )
    subsidised_electricity_usd_per_kwh: Array = field(
        "[0, 10]", unit="USD per kWh", help="price for subsidised (domestic) chips"
    )
    pue: Array = field("[1, 4]", unit="ratio", help="facility power / IT power of the site")


@dataclass
class CostBreakdown:
    """USD per hour of running for all the chips of a run, by part, and per million tokens.
    Capital parts are 0 when an all-in hourly price is used (`all_in_usd_per_hour`); then
    `energy_share` is 0 too (the price does not say how much of it is electricity).
    `capex_usd` is the up-front capital of the build-up (hardware of the run's chips plus
    facility for `provisioned_w`), reported in both modes; `electricity_usd_per_kwh` is the
    price this system pays in the region (subsidised or not). The `*_usd_per_mtoken` parts
    split `usd_per_mtoken`: capital (hardware + facility) + energy + all-in."""

    chips_usd_per_hour: Array
    hosts_usd_per_hour: Array
    scale_up_usd_per_hour: Array
    scale_out_usd_per_hour: Array
    optics_usd_per_hour: Array
    hardware_usd_per_hour: Array
    facility_usd_per_hour: Array
    capital_usd_per_hour: Array
    energy_usd_per_hour: Array
    all_in_usd_per_hour: Array
    usd_per_hour: Array
    usd_per_mtoken: Array
    capital_usd_per_mtoken: Array
    energy_usd_per_mtoken: Array
    all_in_usd_per_mtoken: Array
    energy_share: Array
    capex_usd: Array
    electricity_usd_per_kwh: Array


# --------------------------------------------------------------------------- pure functions


def electricity_price(cost: Cost, region: Region) -> Array:
    """USD per kWh this system pays in this region (the subsidised price when the region
    subsidises chips of the cost's origin; country codes compare case-insensitively)."""
    origin = region.subsidy_chip_origin.strip().upper()  # a country code: "cn" is "CN"
    eligible = bool(origin) and cost.chip_origin.strip().upper() == origin
    return region.subsidised_electricity_usd_per_kwh if eligible else region.electricity_usd_per_kwh


def check_cost_inputs(cost: Cost, region: Region, **numbers) -> None:
    """ValueError naming the field when a concrete input of `run_cost` is out of its
    bounds (every element of a batch): the Cost and Region fields against the bounds beside
    them (a utilisation or a life of 0 made capital free, a negative one negative), and the
    run's `n_chips` (> 0), `power_w`, `provisioned_w` and `tokens_per_s` (>= 0; 0 tokens/s
    costs inf per token), all numbers (not strings or booleans) that float32, the dtype the
    cost is computed in, holds (1e40 chips gave NaN)."""
    for obj, cls in ((cost, Cost), (region, Region)):
        if not isinstance(obj, cls):
            raise ValueError(
                f"run_cost: expected a {cls.__name__} (got {type(obj).__name__}); the "
                "arguments are (cost, region, n_chips=, power_w=, tokens_per_s=)."
            )
    check(cost, "Cost")
    check(region, "Region")
    big = float(np.finfo(np.float32).max)
    for name, value in numbers.items():
        if value is None:
            continue
        a = np.asarray(value)
        if a.dtype.kind not in "iuf" and str(a.dtype) != "bfloat16":
            raise ValueError(f"run_cost: {name} must be a number (got {value!r}).")
        a = a.astype(np.float64)
        bad = ~np.isfinite(a) | ((a <= 0) if name == "n_chips" else (a < 0)) | (a > big)
        if bad.any():
            sign = "> 0" if name == "n_chips" else ">= 0"
            raise ValueError(
                f"run_cost: {name} must be a finite number {sign}, at most {big:.3g} "
                f"(got {a[bad][0]:g})."
            )


def _check_concrete(cost, region, n_chips, power_w, tokens_per_s, provisioned_w) -> bool:
    """`check_cost_inputs` where every input is concrete (True: checked); traced inputs
    (jit, vmap, grad) pass unchecked (False)."""
    numbers = dict(
        n_chips=n_chips, power_w=power_w, tokens_per_s=tokens_per_s, provisioned_w=provisioned_w
    )
    if has_tracer(cost, region, numbers):
        return False
    check_cost_inputs(cost, region, **numbers)
    return True


def run_cost(
    cost: Cost, region: Region, *, n_chips, power_w, tokens_per_s, provisioned_w=None
) -> CostBreakdown:
    """Hourly cost and cost per million tokens of a run (formulas in the module doc).

    `power_w`: average IT power of the run (RunResult.power_w); `provisioned_w`: the IT power
    the facility capital is charged on (default `power_w`; the full-load power is the honest
    choice). All arguments may be traced; concrete ones are checked first
    (`check_cost_inputs`), traced ones are not."""
    _check_concrete(cost, region, n_chips, power_w, tokens_per_s, provisioned_w)
    prov = power_w if provisioned_w is None else provisioned_w
    hours = HOURS_PER_YEAR * cost.utilisation
    hw_hours = hours * cost.hardware_life_years
    per_hour = lambda usd_per_chip: safe_div(n_chips * usd_per_chip, hw_hours)  # noqa: E731
    rented = cost.hourly_usd_per_chip > 0
    own = jnp.where(rented, 0.0, 1.0)
    chips = own * per_hour(cost.chip_usd)
    hosts = own * per_hour(cost.host_usd_per_chip)
    up = own * per_hour(cost.scale_up_usd_per_chip)
    out = own * per_hour(cost.scale_out_usd_per_chip)
    optics = own * per_hour(cost.optics_usd_per_chip)
    hardware = chips + hosts + up + out + optics
    facility = own * safe_div(cost.facility_usd_per_w * prov, hours * cost.facility_life_years)
    price = electricity_price(cost, region)
    energy = own * power_w * region.pue * price / 1000.0
    all_in = (1.0 - own) * n_chips * cost.hourly_usd_per_chip
    total = hardware + facility + energy + all_in
    capex = (
        n_chips
        * (
            cost.chip_usd
            + cost.host_usd_per_chip
            + cost.scale_up_usd_per_chip
            + cost.scale_out_usd_per_chip
            + cost.optics_usd_per_chip
        )
        + cost.facility_usd_per_w * prov
    )
    per_mtoken = lambda usd_per_hour: safe_div(  # noqa: E731
        usd_per_hour * 1e6, 3600.0 * tokens_per_s, jnp.inf
    )
    return CostBreakdown(
        chips_usd_per_hour=chips,
        hosts_usd_per_hour=hosts,
        scale_up_usd_per_hour=up,
        scale_out_usd_per_hour=out,
        optics_usd_per_hour=optics,
        hardware_usd_per_hour=hardware,
        facility_usd_per_hour=facility,
        capital_usd_per_hour=hardware + facility,
        energy_usd_per_hour=energy,
        all_in_usd_per_hour=all_in,
        usd_per_hour=total,
        usd_per_mtoken=per_mtoken(total),
        capital_usd_per_mtoken=per_mtoken(hardware + facility),
        energy_usd_per_mtoken=per_mtoken(energy),
        all_in_usd_per_mtoken=per_mtoken(all_in),
        energy_share=safe_div(energy, total),
        capex_usd=capex,
        electricity_usd_per_kwh=price + 0.0 * total,
    )


def usd_per_mtoken(
    cost: Cost, region: Region, *, n_chips, power_w, tokens_per_s, provisioned_w=None
) -> Array:
    """USD per million tokens: `run_cost(...).usd_per_mtoken`."""
    return run_cost(
        cost,
        region,
        n_chips=n_chips,
        power_w=power_w,
        tokens_per_s=tokens_per_s,
        provisioned_w=provisioned_w,
    ).usd_per_mtoken


def from_result(cost: Cost, region: Region, result, *, system=None) -> CostBreakdown:
    """`run_cost` of a RunResult or ServingResult (fields n_chips, power_w, tokens_per_s).
    With `system`, the facility is charged on the full-load IT power of the run's chips
    (`emu.power.full_load_power`), otherwise on the run's average power."""
    prov = None
    if system is not None:
        from emu.power import full_load_power

        prov = full_load_power(system, result.n_chips).it_w
    return run_cost(
        cost,
        region,
        n_chips=result.n_chips,
        power_w=result.power_w,
        tokens_per_s=result.tokens_per_s,
        provisioned_w=prov,
    )


def with_region_pue(system, region: Region):
    """`system` with `facility.pue` set to the region's, so that emu.evaluate's
    facility_power_w uses the same PUE as the cost."""
    return replace(system, facility=replace(system.facility, pue=region.pue))


def elasticities(
    cost: Cost, region: Region, *, n_chips, power_w, tokens_per_s, provisioned_w=None
) -> dict[str, float]:
    """d ln(usd_per_mtoken) / d ln(x) for every cost and region field (`cost.<field>`,
    `region.<field>`) and for power_w, provisioned_w and tokens_per_s, from one reverse
    pass; sorted by magnitude. A 1% rise in x raises the cost per token by e %. Concrete
    inputs are checked (`check_cost_inputs`); at 0 tokens/s the cost per token is infinite
    and has no elasticities (ValueError)."""
    if _check_concrete(cost, region, n_chips, power_w, tokens_per_s, provisioned_w):
        if np.any(np.asarray(tokens_per_s, np.float64) <= 0):
            raise ValueError(
                "elasticities: tokens_per_s must be > 0 (at 0 tokens/s the cost per token is "
                "infinite and has no elasticities)."
            )
    f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
    args = {
        "cost": cost,
        "region": region,
        "power_w": f32(power_w),
        "provisioned_w": f32(power_w if provisioned_w is None else provisioned_w),
        "tokens_per_s": f32(tokens_per_s),
    }

    def log_cost(a):
        return jnp.log(
            usd_per_mtoken(
                a["cost"],
                a["region"],
                n_chips=f32(n_chips),
                power_w=a["power_w"],
                tokens_per_s=a["tokens_per_s"],
                provisioned_w=a["provisioned_w"],
            )
        )

    g = float_leaves(jax.grad(log_cost)(args))
    x = float_leaves(args)
    out = {k: float(x[k]) * float(g[k]) for k in x}
    return dict(sorted(out.items(), key=lambda kv: -abs(kv[1])))


def newton(f, x0: float, *, log_space: bool = True, steps: int = 50, rtol: float = 1e-6):
    """Solve f(x) = 0 by Newton's method with jax.grad; returns (x, converged).

    `log_space`: iterate on ln x (x stays positive; right for prices, lives, throughputs).
    Without it, a root may be negative, which for a price means "no positive value works".
    `f` must be a JAX function of a float32 scalar."""
    x = real_scalar(x0)
    if x is None or not math.isfinite(x) or (log_space and x <= 0):
        need = "a finite number > 0 with log_space=True (it iterates on ln x)"
        raise ValueError(
            f"newton: x0 must be {need if log_space else 'a finite number'} (got {x0!r})"
            + ("; pass log_space=False to search all reals." if log_space else ".")
        )
    g = jax.jit(jax.value_and_grad(lambda u: f(jnp.exp(u)) if log_space else f(u)))
    u = math.log(x) if log_space else x
    for _ in range(steps):
        v, dv = g(jnp.float32(u))
        v, dv = float(v), float(dv)
        if not (math.isfinite(v) and math.isfinite(dv)) or dv == 0.0:
            return (math.exp(u) if log_space else u), False
        step = v / dv
        if log_space:
            step = max(min(step, 5.0), -5.0)  # at most e^5 per step: keeps exp finite
        u -= step
        scale = 1.0 if log_space else max(abs(u), 1e-12)
        if abs(step) <= rtol * scale:
            x = math.exp(u) if log_space else u
            return x, True
    return (math.exp(u) if log_space else u), False
