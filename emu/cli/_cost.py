"""Cost flags of `emu run`, `compare`, `serve`, `sensitivity`, `search`, `sweep` and `list`:
`--region`, `--cost`, `--hourly-price`, `--reference-hourly`, and `--set cost.<field>=V` /
`--set region.<field>=V`; the cost block of a result (emu.analysis.cost_block) and its text.

Without `--region` nothing changes. With it, the system's `facility.pue` becomes the region's
(emu.cost.with_region_pue: the facility power and the energy cost use one PUE) and every
result gains `usd_per_hour`, `usd_per_mtoken` and a `cost` breakdown.
"""

from __future__ import annotations

import argparse
import math

from emu import analysis, costs_catalog
from emu import cost as C
from emu.cli import _render as render
from emu.cli._types import in_range
from emu.overrides import parse_override
from emu.struct import field_info

#: --set prefixes that go to the cost and the region instead of the system
PREFIXES = ("cost.", "region.")


def add_cost_args(p: argparse.ArgumentParser) -> None:
    """The cost flags (one group)."""
    g = p.add_argument_group(
        "cost (with --region: usd_per_hour, usd_per_mtoken and a cost breakdown; "
        "--set cost.<field>=V / region.<field>=V, fields in `emu list --fields SYSTEM`)"
    )
    g.add_argument(
        "--region",
        metavar="NAME|PATH",
        help="price the run in a region (electricity, PUE): "
        + ", ".join(costs_catalog.list_regions())
        + ", or a TOML file; its PUE replaces the system's",
    )
    g.add_argument(
        "--cost",
        metavar="NAME|PATH",
        help="capital costs (configs/costs/; default: the system's own file)",
    )
    g.add_argument(
        "--hourly-price",
        type=_price,
        metavar="USD",
        help="all-in price per chip-hour, replacing the build-up (= --set "
        "cost.hourly_usd_per_chip=USD; e.g. 2.21, SemiAnalysis's GB200 TCO)",
    )
    g.add_argument(
        "--reference-hourly",
        action="store_true",
        help="use the cost file's published all-in price per chip-hour ([reference])",
    )


#: argparse type of --hourly-price: a positive, finite USD per chip-hour (0 would mean "no
#: price" to the cost model, which then built the cost up instead, silently)
_price = in_range(
    0.0, 1000.0, "a price in (0, 1000] USD per chip-hour", closed_lo=False,
    hint="; leave it out for the cost built up from capex, power and hosting",
)  # fmt: skip


def is_cost_path(path: str) -> bool:
    return path.startswith(PREFIXES)


def plain_number_message(item: str, error: Exception) -> str | None:
    """For a `--set cost.*/region.*` value with a unit the parser does not know (`35k`,
    `80%`), the message that those fields take plain numbers (USD, fractions, years), which
    the generic list of byte, watt and second units does not say; None otherwise."""
    path, _, value = item.partition("=")
    path = path.strip()
    if "unknown unit" not in str(error):
        return None
    for prefix, cls in (("cost.", C.Cost), ("region.", C.Region)):
        info = field_info(cls).get(path.removeprefix(prefix)) if path.startswith(prefix) else None
        if info is not None:
            got = f"(got '{value.strip()}'){_as_plain(value)}"
            return f"{path} takes a plain number, {info.unit}, without a unit {got}."
    return None


#: suffixes a price or a share is often written with -> their factor
_PLAIN = {"%": 0.01, "k": 1e3, "K": 1e3, "M": 1e6}


def _as_plain(value: str) -> str:
    """'; write 0.8' for '80%', '; write 35000' for '35k', else ''."""
    v = value.strip()
    factor = _PLAIN.get(v[-1:])
    try:
        x = float(v[:-1]) * factor if factor else math.nan
    except ValueError:
        return ""
    return f"; write {x:.10g}" if math.isfinite(x) else ""


def _cost_overrides(args) -> tuple[dict, dict]:
    """(cost, region) overrides of the --set flags, by field name."""
    cost_o, region_o = {}, {}
    for item in args.set:
        try:
            path, value = parse_override(item)
        except ValueError:
            continue  # reported by the system overrides
        if path.startswith("cost."):
            cost_o[path[5:]] = value
        elif path.startswith("region."):
            region_o[path[7:]] = value
    return cost_o, region_o


def _requested(args) -> bool:
    cost_o, region_o = _cost_overrides(args)
    return bool(
        args.cost or args.hourly_price is not None or args.reference_hourly or cost_o or region_o
    )


def region(args) -> C.Region | None:
    """The --region (with its --set region.* overrides), or None; ValueError for cost flags
    without a region."""
    if getattr(args, "region", None) is None:
        if hasattr(args, "region") and _requested(args):
            raise ValueError(
                "--cost, --hourly-price, --reference-hourly and --set cost.*/region.* price "
                "a run in a region: add --region NAME (`emu list` shows them)."
            )
        return None
    _, region_o = _cost_overrides(args)
    return costs_catalog.load_region(args.region, region_o)


def with_region(args, system):
    """`system` with the region's PUE (unchanged without --region)."""
    r = region(args)
    if r is None:
        return system
    if any(item.partition("=")[0].strip() == "facility.pue" for item in args.set):
        raise ValueError(
            "with --region the PUE is the region's (it replaces the system's facility.pue); "
            "write --set region.pue=V instead of facility.pue."
        )
    if any(item.partition("=")[0].strip() == "facility.pue" for item in getattr(args, "grid", [])):
        raise ValueError(  # the power would follow the grid and the cost the region's PUE
            "with --region the PUE is the region's (it replaces the system's facility.pue); "
            "a --grid of facility.pue would price every point at the region's. Sweep the PUE "
            "without --region, or compare regions one run each."
        )
    return C.with_region_pue(system, r)


def _load_cost(args, system_name: str) -> C.Cost:
    """The Cost of the flags: --cost or the system's own file, --hourly-price,
    --reference-hourly and the --set cost.* overrides."""
    cost_o, region_o = _cost_overrides(args)
    sources = (
        args.hourly_price is not None,
        args.reference_hourly,
        "hourly_usd_per_chip" in cost_o,
    )
    if sum(sources) > 1:
        raise ValueError(
            "--hourly-price, --reference-hourly and --set cost.hourly_usd_per_chip set the "
            "same price; give one."
        )
    if args.hourly_price is not None:
        cost_o["hourly_usd_per_chip"] = args.hourly_price
    name = args.cost or system_name
    if args.cost is None and name not in costs_catalog.list_costs():
        raise ValueError(
            f"no cost file for system '{name}' (known: {', '.join(costs_catalog.list_costs())}); "
            "give --cost NAME|PATH or --hourly-price USD."
        )
    cost = costs_catalog.load_cost(name, cost_o, reference_hourly=args.reference_hourly)
    idle = [f"cost.{k}" for k in cost_o if k in _BUILD_UP_ONLY]
    idle += [f"region.{k}" for k in region_o if k in _ENERGY_PRICES]
    if idle and float(cost.hourly_usd_per_chip) > 0:
        raise ValueError(
            f"--set {idle[0]} does not change an all-in hourly price (it covers capital and "
            "electricity at any utilisation); drop it, or drop the hourly price to build the "
            "cost up."
        )
    return cost


#: fields an all-in hourly price makes idle (the capital parts still give `capex_usd`)
_BUILD_UP_ONLY = ("utilisation", "hardware_life_years", "facility_life_years")
#: cost fields that under an all-in price move only the capital shown, not the cost (noted)
_CAPEX_ONLY = (
    "chip_usd", "host_usd_per_chip", "scale_up_usd_per_chip", "scale_out_usd_per_chip",
    "optics_usd_per_chip", "facility_usd_per_w",
)  # fmt: skip
_ENERGY_PRICES = ("electricity_usd_per_kwh", "subsidised_electricity_usd_per_kwh")


def notes(args, system, cost: C.Cost) -> list[str]:
    """A note when --cost names another system's file: its chip, host and fabric prices and
    its chip origin (a region's subsidy) then price this system; and one when an all-in
    hourly price makes the --set capital fields informational (they priced nothing)."""
    out = []
    if getattr(args, "cost", None) and cost.name != system.name:
        out.append(
            f"--cost {args.cost}: {system.name} is priced with the capital costs of "
            f"'{cost.name}' (its chip, host and fabric prices; chip origin "
            f"{cost.chip_origin or 'not given'})."
        )
    # the part prices an all-in price leaves to the capex line (`_BUILD_UP_ONLY`: refused)
    given = (item.partition("=")[0].strip() for item in getattr(args, "set", None) or ())
    capital = [p for p in given if p.removeprefix("cost.") in _CAPEX_ONLY]
    if capital and float(cost.hourly_usd_per_chip) > 0:
        if getattr(args, "hourly_price", None) is not None:
            by = "--hourly-price"
        elif getattr(args, "reference_hourly", False):
            by = "--reference-hourly"
        elif any(i.startswith("cost.hourly_usd_per_chip") for i in getattr(args, "set", ())):
            by = "--set cost.hourly_usd_per_chip"
        else:
            by = "the cost's hourly_usd_per_chip"
        out.append(
            f"{', '.join(capital)}: the all-in hourly price ({by}) sets the cost per token, "
            "so the capital fields change only the 'capital incl. facility (USD)' line; "
            f"without {by} they price it."
        )
    return out


def pricing(args, system) -> tuple[C.Cost, C.Region] | None:
    """(Cost, Region) of the flags for `system`, or None without --region."""
    reg = region(args)
    return None if reg is None else (_load_cost(args, system.name), reg)


def block(args, system, result) -> dict:
    """The cost keys to merge into a result object ({} without --region)."""
    p = pricing(args, system)
    return {} if p is None else analysis.cost_block(system, result, *p)


def _usd(x) -> str:
    return "-" if x is None else f"{x:.4g}"


def text(results: list[dict], names: list[str] | None = None) -> str:
    """The cost table of priced results (one column each): USD per M tokens with its
    capital/energy split, USD per hour by part, energy share; '' when none is priced."""
    priced = [r for r in results if "cost" in r]
    if not priced:
        return ""
    names = names or [r.get("system", "") for r in results]
    cs = [r["cost"] for r in priced]
    all_in = any(c["mode"] == "all-in" for c in cs)
    rows = [
        ["USD per M tokens", *[_usd(r["usd_per_mtoken"]) for r in priced]],
        [
            "  80% interval",
            *[
                render.plain_band((r.get("interval") or {}).get("usd_per_mtoken"), ".4g")
                for r in priced
            ],
        ],  # fmt: skip
        ["  capital (hardware + facility)", *[_usd(c["capital_usd_per_mtoken"]) for c in cs]],
        ["  energy", *[_usd(c["energy_usd_per_mtoken"]) for c in cs]],
    ]
    if all_in:
        rows.append(["  all-in hourly price", *[_usd(c["all_in_usd_per_mtoken"]) for c in cs]])
    rows += [
        ["USD per hour", *[_usd(r["usd_per_hour"]) for r in priced]],
        ["  hardware", *[_usd(c["hardware_usd_per_hour"]) for c in cs]],
        ["  facility", *[_usd(c["facility_usd_per_hour"]) for c in cs]],
        ["  energy", *[_usd(c["energy_usd_per_hour"]) for c in cs]],
    ]
    if all_in:
        rows.append(["  all-in", *[_usd(c["all_in_usd_per_hour"]) for c in cs]])
    rows += [
        ["energy share", *[f"{100 * c['energy_share']:.1f}%" for c in cs]],
        ["electricity (USD/kWh)", *[f"{c['electricity_usd_per_kwh']:.4g}" for c in cs]],
        ["capital incl. facility (USD)", *[render.si(c["capex_usd"], "USD") for c in cs]],
        ["cost file (mode)", *[f"{c['cost']} ({c['mode']})" for c in cs]],
    ]
    c0 = cs[0]
    rate = "all-in hourly price" if all_in else f"utilisation {100 * c0['utilisation']:.3g}%"
    head = f"cost in {c0['region']} (PUE {c0['pue']:.3g}, {rate})"
    if any(r["usd_per_mtoken"] is None and r.get("feasible") is False for r in priced):
        head += "; infeasible: no cost per token"
    cols = [n for n, r in zip(names, results, strict=True) if "cost" in r]
    return "\n\n" + render.table(rows, [head, *cols])


def sensitivity_text(d: dict, top: int) -> str:
    """`emu sensitivity --region`: elasticities of USD per M tokens beside tokens/J, tokens/s."""
    rows = [
        [
            k,
            f"{v['value']:.4g}",
            render.elasticity(v["usd_per_mtoken"]),
            render.elasticity(v["tokens_per_joule"]),
            render.elasticity(v["tokens_per_s"]),
        ]
        for k, v in list(d["elasticities"].items())[:top]
    ]
    plan = f"plan: {render.plan_text(d['plan'])}\n" if d.get("plan") else ""
    return (
        f"{d['system']} / {d['model']} in {d['region']}: {_usd(d['usd_per_mtoken'])} USD per M "
        f"tokens, tokens/J {d['tokens_per_joule']:.4g}, tokens/s {d['tokens_per_s']:.4g}\n"
        f"{plan}elasticity d ln(y) / d ln(x), largest |USD per M tokens| first\n"
        + render.table(rows, ["field", "value", "USD/Mtok", "tokens/J", "tokens/s"])
    )


def field_rows(args, system_name: str) -> dict:
    """`emu list --fields`: the cost.* fields of the system's cost (as the cost flags give
    it) and the region.* fields of --region (default us_average), by dotted path."""
    from emu.struct import float_leaves

    out = {}
    if args.cost or system_name in costs_catalog.list_costs():
        cost = _load_cost(args, system_name)
        out |= {f"cost.{k}": float(v) for k, v in float_leaves(cost).items()}
    _, region_o = _cost_overrides(args)
    reg = costs_catalog.load_region(args.region or "us_average", region_o)
    out |= {f"region.{k}": float(v) for k, v in float_leaves(reg).items()}
    return out


def unit_of(path: str) -> str:
    """The declared unit of a cost.* / region.* path."""
    from emu.struct import field_info

    prefix, _, name = path.partition(".")
    info = field_info(C.Cost if prefix == "cost" else C.Region).get(name)
    return info.unit if info is not None else "-"


def regions() -> list[str]:
    return costs_catalog.list_regions()


def regions_json(names: list[str]) -> list[dict]:
    """`emu list --regions --json`: each region's values and what its file says of itself."""
    from emu.struct import float_leaves

    out = []
    for n in names:
        r = costs_catalog.load_region(n)
        values = {k: float(v) for k, v in float_leaves(r).items()}
        info = costs_catalog.region_info(n)
        out.append({**info, "subsidy_chip_origin": r.subsidy_chip_origin, **values})
    return out


def regions_text(names: list[str]) -> str:
    """`emu list --regions`: each region with its electricity price, PUE, date and source."""
    rows = []
    for n in names:
        r, info = costs_catalog.load_region(n), costs_catalog.region_info(n)
        sub = ""
        if r.subsidy_chip_origin:
            price = float(r.subsidised_electricity_usd_per_kwh)
            sub = f" ({price:.4f} {r.subsidy_chip_origin} chips)"
        rows.append(
            [n, f"{float(r.electricity_usd_per_kwh):.4f}{sub}", f"{float(r.pue):.3g}",
             str(info["date"]), str(info["description"])]
        )  # fmt: skip
    return render.table(rows, ["region", "USD/kWh", "PUE", "date", "description"])
