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
reach every cost and region field. The host side loads TOML from configs/costs/ and
configs/regions/ with validation (`load_cost`, `load_region`); bounds sit beside the fields
(field metadata "bound").

>>> cost, region = load_cost("gb200_nvl72"), load_region("us_average")
>>> c = run_cost(cost, region, n_chips=72.0, power_w=120e3, tokens_per_s=72 * 1000.0)
>>> bool(c.usd_per_mtoken > 0) and bool(0 < c.energy_share < 1)
True
>>> rented = replace(cost, hourly_usd_per_chip=jnp.float32(2.21))   # SA-TCO, facts §28
>>> round(float(usd_per_mtoken(rented, region, n_chips=72.0, power_w=120e3,
...                            tokens_per_s=72 * 1000.0)), 4)       # 2.21e6 / 3.6e6
0.6139
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from emu.numerics import safe_div
from emu.struct import dataclass, float_leaves, replace, set_path, static_field

__all__ = [
    "Cost",
    "Region",
    "CostBreakdown",
    "run_cost",
    "usd_per_mtoken",
    "from_result",
    "electricity_price",
    "with_region_pue",
    "elasticities",
    "newton",
    "load_cost",
    "load_region",
    "cost_reference",
    "list_costs",
    "list_regions",
    "apply_overrides",
    "HOURS_PER_YEAR",
]

Array = jnp.ndarray

#: hours in a (365-day) year: the unit of useful life
HOURS_PER_YEAR = 8760.0


def _leaf(bound: str, unit: str, help: str) -> Any:
    """A float leaf with its bound, unit and help beside it (read by the loaders).
    Bounds: ">0", ">=0", ">=1", "(0,1]"."""
    return dataclasses.field(metadata={"bound": bound, "unit": unit, "help": help})


@dataclass
class Cost:
    """Capital cost of one catalog system, per chip, and how it is spread over time.

    Per-chip numbers carry each chip's share of its unit (rack, supernode), as the power
    model attributes switch and optics watts per chip. `chip_origin` (ISO country of the
    accelerator's maker) decides whether a region's chip subsidy applies.
    `hourly_usd_per_chip` > 0 replaces the whole build-up by an all-in hourly price."""

    name: str = static_field()
    chip_origin: str = static_field(default="")
    chip_usd: Array = _leaf(">=0", "USD per chip", "accelerator package (dies, HBM)")
    host_usd_per_chip: Array = _leaf(
        ">=0", "USD per chip", "CPUs, boards, memory, trays, racks, power shelves, cooling"
    )
    scale_up_usd_per_chip: Array = _leaf(
        ">=0", "USD per chip", "scale-up switches, boxes and electrical cables"
    )
    scale_out_usd_per_chip: Array = _leaf(
        ">=0", "USD per chip", "scale-out NICs not on the chip, switch ports, fibre"
    )
    optics_usd_per_chip: Array = _leaf(">=0", "USD per chip", "optical transceivers, all tiers")
    hardware_life_years: Array = _leaf(">0", "years", "useful life of the IT hardware")
    facility_usd_per_w: Array = _leaf(
        ">=0", "USD per W of IT power", "data-centre capital (building, power, cooling)"
    )
    facility_life_years: Array = _leaf(">0", "years", "useful life of the facility")
    utilisation: Array = _leaf("(0,1]", "fraction", "share of the year spent on paid work")
    hourly_usd_per_chip: Array = _leaf(
        ">=0", "USD per chip-hour", "all-in hourly price; 0 = build up from the parts"
    )


@dataclass
class Region:
    """Where the system runs: electricity price (USD per kWh, converted from the local
    currency by the loader) and PUE. `subsidised_electricity_usd_per_kwh` applies to chips
    whose origin is `subsidy_chip_origin` (empty: no subsidy; then it equals the base)."""

    name: str = static_field()
    country: str = static_field(default="")
    subsidy_chip_origin: str = static_field(default="")
    electricity_usd_per_kwh: Array = _leaf(">=0", "USD per kWh", "industrial electricity")
    subsidised_electricity_usd_per_kwh: Array = _leaf(
        ">=0", "USD per kWh", "price for subsidised (domestic) chips"
    )
    pue: Array = _leaf(">=1", "ratio", "facility power / IT power of the site")


@dataclass
class CostBreakdown:
    """USD per hour of running for all the chips of a run, by part, and per million tokens.
    Capital parts are 0 when an all-in hourly price is used (`all_in_usd_per_hour`); then
    `energy_share` is 0 too (the price does not say how much of it is electricity).
    `capex_usd` is the up-front capital of the build-up (hardware of the run's chips plus
    facility for `provisioned_w`), reported in both modes; `electricity_usd_per_kwh` is the
    price this system pays in the region (subsidised or not)."""

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
    energy_share: Array
    capex_usd: Array
    electricity_usd_per_kwh: Array


# --------------------------------------------------------------------------- pure functions


def electricity_price(cost: Cost, region: Region) -> Array:
    """USD per kWh this system pays in this region (the subsidised price when the region
    subsidises chips of the cost's origin)."""
    eligible = bool(region.subsidy_chip_origin) and cost.chip_origin == region.subsidy_chip_origin
    return region.subsidised_electricity_usd_per_kwh if eligible else region.electricity_usd_per_kwh


def run_cost(
    cost: Cost, region: Region, *, n_chips, power_w, tokens_per_s, provisioned_w=None
) -> CostBreakdown:
    """Hourly cost and cost per million tokens of a run (formulas in the module doc).

    `power_w`: average IT power of the run (RunResult.power_w); `provisioned_w`: the IT power
    the facility capital is charged on (default `power_w`; the full-load power is the honest
    choice). All arguments may be traced."""
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
        usd_per_mtoken=safe_div(total * 1e6, 3600.0 * tokens_per_s, jnp.inf),
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
    pass; sorted by magnitude. A 1% rise in x raises the cost per token by e %."""
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
    g = jax.jit(jax.value_and_grad(lambda u: f(jnp.exp(u)) if log_space else f(u)))
    u = math.log(x0) if log_space else float(x0)
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


# --------------------------------------------------------------------------- host side: TOML


def _config_dir() -> Path:
    from emu.catalog import config_dir

    return config_dir()


def _names(kind: str) -> list[str]:
    d = _config_dir() / kind
    return sorted(p.stem for p in d.glob("*.toml") if p.stem != "defaults") if d.is_dir() else []


def list_costs() -> list[str]:
    """Systems with a cost file in configs/costs/."""
    return _names("costs")


def list_regions() -> list[str]:
    """Regions in configs/regions/."""
    return _names("regions")


def _resolve(name_or_path: str | Path, kind: str, what: str) -> Path:
    s = str(name_or_path)
    if s.endswith(".toml") or "/" in s:
        return Path(s)
    known = _names(kind)
    if s not in known:
        close = difflib.get_close_matches(s, known, n=2, cutoff=0.5)
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(
            f"unknown {what} '{s}'.{hint} Known: {', '.join(known) or 'none'}; "
            "or pass the path of a TOML file."
        )
    return _config_dir() / kind / f"{s}.toml"


def _read(path: Path, what: str) -> dict:
    from emu.catalog import load_toml

    return load_toml(path, what)


_BOUND_TEXT = {
    ">0": "must be > 0",
    ">=0": "must be >= 0",
    ">=1": "must be >= 1",
    "(0,1]": "must be in (0, 1]",
}


def _ok(bound: str, x: float) -> bool:
    return {">0": x > 0, ">=0": x >= 0, ">=1": x >= 1, "(0,1]": 0 < x <= 1}[bound]


def _fields(cls) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls) if f.metadata.get("pytree_node", True)}


def _number(value: Any, where: str, f: dataclasses.Field) -> Array:
    bound, unit = f.metadata["bound"], f.metadata["unit"]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(
            f"{where} must be a number in {unit} (got {type(value).__name__} {value!r})."
        )
    x = float(value)
    if not math.isfinite(x) or abs(x) > 3.4e38:
        raise ValueError(f"{where} must be a finite number in {unit} (got {value!r}).")
    if not _ok(bound, x):
        fix = {
            ">0": "a life of zero would spread the capital over no hours",
            "(0,1]": "utilisation is the share of the year the system does paid work",
            ">=1": "PUE is facility power / IT power, at least 1",
            ">=0": "prices and costs cannot be negative",
        }[bound]
        raise ValueError(f"{where} {_BOUND_TEXT[bound]} (got {value!r}); {fix}.")
    return jnp.float32(x)


def _unknown_key(where: str, key: str, allowed: list[str]) -> ValueError:
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return ValueError(f"{where}: unknown key '{key}'.{hint} Known keys: {', '.join(allowed)}.")


_COST_META = ("name", "description", "system", "chip_origin", "source", "total", "reference")


def _cost_from(data: dict, where: str, defaults: dict) -> Cost:
    fields = _fields(Cost)
    allowed = sorted(set(fields) | set(_COST_META))
    for key in data:
        if key not in allowed:
            raise _unknown_key(where, key, allowed)
    kw = {}
    for name, f in fields.items():
        if name in data:
            kw[name] = _number(data[name], f"{where}.{name}", f)
        elif name in defaults:
            kw[name] = _number(defaults[name], f"{where} (defaults.toml).{name}", f)
        else:
            raise ValueError(
                f"{where}: missing '{name}' ({f.metadata['unit']}: {f.metadata['help']}); "
                f"add `{name} = ...` to the file or to configs/costs/defaults.toml."
            )
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError(f"{where}.name must be a non-empty string.")
    origin = data.get("chip_origin", "")
    if not isinstance(origin, str):
        raise ValueError(f'{where}.chip_origin must be a country code string, e.g. "US".')
    cost = Cost(name=name, chip_origin=origin, **kw)
    total = data.get("total")
    if total is not None:
        _check_total(cost, total, where)
    return cost


def _check_total(cost: Cost, total: Any, where: str) -> None:
    """The parts listed in [total] must add up to the sourced total per chip (0.5%)."""
    if not isinstance(total, dict) or not {"usd", "chips", "parts"} <= set(total):
        raise ValueError(f"{where}.total must be a table with usd, chips and parts.")
    fields = _fields(Cost)
    parts = total["parts"]
    if not isinstance(parts, list) or not parts or any(p not in fields for p in parts):
        raise ValueError(f'{where}.total.parts must list cost fields, e.g. ["chip_usd"].')
    usd, chips = total["usd"], total["chips"]
    if not all(isinstance(v, int | float) and v > 0 for v in (usd, chips)):
        raise ValueError(f"{where}.total.usd and .chips must be positive numbers.")
    got = sum(float(getattr(cost, p)) for p in parts) * chips
    if abs(got - usd) > 5e-3 * usd:
        raise ValueError(
            f"{where}: the parts {', '.join(parts)} add up to {got:,.0f} USD per "
            f"{chips:g} chips but [total] says {usd:,.0f}; fix the parts or the total."
        )


def apply_overrides(tree, overrides: dict | None, *, where: str = "--set"):
    """Replace Cost or Region leaves by field name (as `--set cost.<field>` / `region.<field>`
    give them, without the prefix), checking each value against the field's bound."""
    if not overrides:
        return tree
    fields = _fields(type(tree))
    for path, value in overrides.items():
        if path not in fields:
            raise _unknown_key(where, path, sorted(fields))
        tree = set_path(tree, path, _number(value, f"{where} {path}", fields[path]))
    return tree


def load_cost(
    name_or_path: str | Path, overrides: dict | None = None, *, reference_hourly: bool = False
) -> Cost:
    """The validated Cost of a catalog system (configs/costs/<system>.toml) or a TOML file.
    Fields not in the file come from configs/costs/defaults.toml. `reference_hourly`: use the
    file's [reference] all-in hourly price (SemiAnalysis TCO) instead of the build-up."""
    path = _resolve(name_or_path, "costs", "cost (system)")
    where = f"cost '{Path(path).stem}'"
    d = _config_dir() / "costs" / "defaults.toml"
    defaults = _read(d, "cost defaults") if d.is_file() else {}
    for key in defaults:
        if key not in _fields(Cost):
            raise _unknown_key("configs/costs/defaults.toml", key, sorted(_fields(Cost)))
    cost = _cost_from(_read(path, "cost"), where, defaults)
    if reference_hourly:
        hourly = cost_reference(path)["hourly_usd_per_chip"]
        cost = replace(cost, hourly_usd_per_chip=jnp.float32(hourly))
    return apply_overrides(cost, overrides, where=f"{where}: --set cost.")


def cost_reference(name_or_path: str | Path) -> dict:
    """The [reference] table of a cost file: a published all-in hourly price per chip and its
    source, e.g. {"hourly_usd_per_chip": 2.21, "source": "SA-TCO ..."}."""
    path = _resolve(name_or_path, "costs", "cost (system)")
    ref = _read(path, "cost").get("reference")
    h = ref.get("hourly_usd_per_chip") if isinstance(ref, dict) else None
    if not isinstance(h, int | float) or isinstance(h, bool) or not h > 0:
        raise ValueError(
            f"cost '{Path(path).stem}' has no [reference] hourly_usd_per_chip (no published "
            "all-in hourly price); set cost.hourly_usd_per_chip yourself."
        )
    return dict(ref)


_REGION_META = ("name", "description", "country", "date", "source", "local")
_LOCAL_KEYS = (
    "currency",
    "per_usd",
    "date",
    "source",
    "electricity_per_kwh",
    "subsidised_electricity_per_kwh",
)


def _region_from(data: dict, where: str) -> Region:
    fields = _fields(Region)
    allowed = sorted(set(fields) | set(_REGION_META) | {"subsidy_chip_origin"})
    for key in data:
        if key not in allowed:
            raise _unknown_key(where, key, allowed)
    data = dict(data)
    local = data.get("local")
    if local is not None:  # prices in a local currency: convert at the stated rate
        if not isinstance(local, dict):
            raise ValueError(f"{where}.local must be a table [local].")
        for key in local:
            if key not in _LOCAL_KEYS:
                raise _unknown_key(f"{where}.local", key, list(_LOCAL_KEYS))
        for key in ("currency", "per_usd", "date"):
            if key not in local:
                raise ValueError(
                    f"{where}.local: missing '{key}'; a local price needs its currency, the "
                    "exchange rate per USD and the rate's date."
                )
        if not {"electricity_per_kwh", "subsidised_electricity_per_kwh"} & set(local):
            raise ValueError(
                f"{where}.local: give electricity_per_kwh (or subsidised_electricity_per_kwh) "
                f"in {local['currency']} per kWh."
            )
        rate = local["per_usd"]
        if isinstance(rate, bool) or not isinstance(rate, int | float) or not rate > 0:
            raise ValueError(
                f"{where}.local.per_usd must be > 0 (units of {local['currency']} per USD)."
            )
        for src, dst in (
            ("electricity_per_kwh", "electricity_usd_per_kwh"),
            ("subsidised_electricity_per_kwh", "subsidised_electricity_usd_per_kwh"),
        ):
            if src in local:
                if dst in data:
                    raise ValueError(f"{where}: give {dst} or local.{src}, not both.")
                v = local[src]
                if isinstance(v, bool) or not isinstance(v, int | float):
                    raise ValueError(f"{where}.local.{src} must be a number.")
                data[dst] = v / rate
    origin = data.get("subsidy_chip_origin", "")
    if not isinstance(origin, str):
        raise ValueError(f'{where}.subsidy_chip_origin must be a country code string or "".')
    if origin and "subsidised_electricity_usd_per_kwh" not in data:
        raise ValueError(
            f"{where}: subsidy_chip_origin = {origin!r} needs a subsidised electricity price."
        )
    if "subsidised_electricity_usd_per_kwh" not in data and "electricity_usd_per_kwh" in data:
        data["subsidised_electricity_usd_per_kwh"] = data["electricity_usd_per_kwh"]
    kw = {}
    for name, f in fields.items():
        if name not in data:
            raise ValueError(
                f"{where}: missing '{name}' ({f.metadata['unit']}: {f.metadata['help']}); "
                f"add `{name} = ...` to the file."
            )
        kw[name] = _number(data[name], f"{where}.{name}", f)
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError(f"{where}.name must be a non-empty string.")
    country = data.get("country", "")
    return Region(name=name, country=str(country), subsidy_chip_origin=origin, **kw)


def load_region(name_or_path: str | Path, overrides: dict | None = None) -> Region:
    """The validated Region from configs/regions/ (`list_regions()`) or a TOML file, with
    optional overrides by field name (`{"electricity_usd_per_kwh": 0.1}`)."""
    path = _resolve(name_or_path, "regions", "region")
    where = f"region '{Path(path).stem}'"
    region = _region_from(_read(path, "region"), where)
    return apply_overrides(region, overrides, where=f"{where}: --set region.")
