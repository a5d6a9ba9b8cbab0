"""The cost catalog: TOML in configs/costs/ and configs/regions/ -> validated `emu.cost.Cost`
and `emu.cost.Region` pytrees (host side).

`load_cost` takes a catalog system name (one cost file per system, `list_costs()`) or the
path of a TOML file; fields it leaves out come from configs/costs/defaults.toml. A `[total]`
table states a sourced total that the listed parts must add up to (checked on load); a
`[reference]` table a published all-in hourly price (`cost_reference`, `reference_hourly`).
`load_region` takes a region name (`list_regions()`) or a path; prices quoted in a local
currency (`[local]`) are converted at the stated rate. Every number is checked against the
bounds declared beside its field in emu.cost (`emu.struct.check_value`), every loaded tree
by `emu.struct.check`. Overrides (`{"utilisation": 0.6}`, as `--set cost.utilisation=0.6`
gives them without the prefix) go through the same checks. Every problem raises ValueError
with one line that says what, where and how to fix it.

>>> cost, region = load_cost("gb200_nvl72"), load_region("south_africa")
>>> cost.chip_origin, region.country, round(float(region.electricity_usd_per_kwh), 4)
('US', 'ZA', 0.0507)
>>> load_cost("gb200_nvl72", {"hardware_life_years": 0})
Traceback (most recent call last):
...
ValueError: cost 'gb200_nvl72': cost.hardware_life_years must be in (0, 50] years (got 0); \
a life of zero would spread the capital over no hours.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from pathlib import Path
from typing import Any

from emu._backend import jnp
from emu.catalog import _check_stem, config_dir, load_toml
from emu.cost import Cost, Region
from emu.overrides import check_unit
from emu.struct import check, check_value, field_info, float_leaves, replace, set_path

__all__ = [
    "load_cost",
    "load_region",
    "cost_reference",
    "region_info",
    "list_costs",
    "list_regions",
    "apply_cost_overrides",
]

Array = jnp.ndarray


def _names(kind: str) -> list[str]:
    d = config_dir() / kind
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
    return config_dir() / kind / f"{s}.toml"


#: why a value is refused, said after the rule (by field; "negative" for any price below 0)
_WHY = {
    "hardware_life_years": "a life of zero would spread the capital over no hours",
    "facility_life_years": "a life of zero would spread the capital over no hours",
    "utilisation": "utilisation is the share of the year the system does paid work",
    "pue": "PUE is facility power / IT power, at least 1",
    "negative": "prices and costs cannot be negative",
}


def _number(value: Any, cls, name: str, where: str) -> Array:
    """One checked float32 leaf of `cls.<name>` (ValueError names `where` and says why)."""
    info = field_info(cls)[name]
    try:
        x = check_value(value, info, where)
    except ValueError as e:
        why = _WHY.get(name)
        if why is None and isinstance(value, int | float) and not isinstance(value, bool):
            why = _WHY["negative"] if value < 0 else None
        if why is None:
            raise
        raise ValueError(f"{str(e).rstrip('.')}; {why}.") from None
    return jnp.float32(x)


def _leaf_fields(cls) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls) if f.metadata.get("pytree_node", True)}


def _unknown_key(where: str, key: str, allowed: list[str]) -> ValueError:
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return ValueError(f"{where}: unknown key '{key}'.{hint} Known keys: {', '.join(allowed)}.")


def apply_cost_overrides(tree: Cost | Region, overrides: dict | None, where: str = ""):
    """`tree` (a Cost or a Region) with leaves replaced by field name (`{"utilisation": 0.6}`;
    a leading `cost.` / `region.` is accepted), each value checked against its field's
    bounds, then the whole tree (`emu.struct.check`)."""
    if not overrides:
        return tree
    prefix = "cost" if isinstance(tree, Cost) else "region"
    fields = sorted(float_leaves(tree))
    for path, value in overrides.items():
        name = path.removeprefix(f"{prefix}.")
        if name not in fields:
            other, cls = ("region", Region) if prefix == "cost" else ("cost", Cost)
            if name in _leaf_fields(cls):
                raise ValueError(
                    f"{where or prefix}: {name} belongs to the {other}, not the {prefix}; "
                    f"write {other}.{name}."
                )
            raise _unknown_key(
                where or prefix, f"{prefix}.{name}", [f"{prefix}.{f}" for f in fields]
            )
        w = f"{where}: {prefix}.{name}" if where else f"{prefix}.{name}"
        check_unit(value, field_info(type(tree))[name], f"{prefix}.{name}")  # 5kW as USD
        tree = set_path(tree, name, _number(value, type(tree), name, w))
    return check(tree, where)


def _country_code(data: dict, key: str, where: str) -> str:
    """`data[key]` (default "") as an upper-case ISO 3166-1 alpha-2 code, "" for none (blank
    too): what the subsidy test (`emu.cost`) compares. ValueError for anything else: a
    spelled-out "China" never matched a region's "CN", so the subsidy was lost silently."""
    code = data.get(key, "")
    if not isinstance(code, str) or not re.fullmatch(r"(?:[A-Za-z]{2})?", code.strip()):
        raise ValueError(
            f'{where}.{key} must be a two-letter country code, e.g. "CN" or "US", or "" for '
            f"none (got {code!r})."
        )
    return code.strip().upper()


_COST_META = ("name", "description", "system", "chip_origin", "source", "total", "reference")


def _cost_from(data: dict, where: str, defaults: dict) -> Cost:
    fields = _leaf_fields(Cost)
    allowed = sorted(set(fields) | set(_COST_META))
    for key in data:
        if key not in allowed:
            raise _unknown_key(where, key, allowed)
    infos = field_info(Cost)
    kw = {}
    for name in fields:
        if name in data:
            kw[name] = _number(data[name], Cost, name, f"{where}.{name}")
        elif name in defaults:
            kw[name] = _number(defaults[name], Cost, name, f"{where} (defaults.toml).{name}")
        else:
            info = infos[name]
            raise ValueError(
                f"{where}: missing '{name}' ({info.unit}: {info.help}); "
                f"add `{name} = ...` to the file or to configs/costs/defaults.toml."
            )
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError(f"{where}.name must be a non-empty string.")
    origin = _country_code(data, "chip_origin", where)
    cost = check(Cost(name=name, chip_origin=origin, **kw), where)
    total = data.get("total")
    if total is not None:
        _check_total(cost, total, where)
    return cost


def _check_total(cost: Cost, total: Any, where: str) -> None:
    """The parts listed in [total] must add up to the sourced total per chip (0.5%)."""
    if not isinstance(total, dict) or not {"usd", "chips", "parts"} <= set(total):
        raise ValueError(f"{where}.total must be a table with usd, chips and parts.")
    fields = _leaf_fields(Cost)
    parts = total["parts"]
    if not isinstance(parts, list) or not parts or any(p not in fields for p in parts):
        raise ValueError(f'{where}.total.parts must list cost fields, e.g. ["chip_usd"].')
    usd, chips = total["usd"], total["chips"]
    if not all(
        isinstance(v, int | float) and not isinstance(v, bool) and v > 0 for v in (usd, chips)
    ):
        raise ValueError(f"{where}.total.usd and .chips must be positive numbers.")
    got = sum(float(getattr(cost, p)) for p in parts) * chips
    if abs(got - usd) > 5e-3 * usd:
        raise ValueError(
            f"{where}: the parts {', '.join(parts)} add up to {got:,.0f} USD per "
            f"{chips:g} chips but [total] says {usd:,.0f}; fix the parts or the total."
        )


def load_cost(
    name_or_path: str | Path, overrides: dict | None = None, *, reference_hourly: bool = False
) -> Cost:
    """The validated Cost of a catalog system (configs/costs/<system>.toml) or a TOML file.
    Fields not in the file come from configs/costs/defaults.toml. `reference_hourly`: use the
    file's [reference] all-in hourly price (SemiAnalysis TCO) instead of the build-up.
    `overrides` by field name, checked (`apply_cost_overrides`)."""
    path = _resolve(name_or_path, "costs", "cost (system)")
    where = f"cost '{Path(path).stem}'"
    d = config_dir() / "costs" / "defaults.toml"
    defaults = load_toml(d, "cost defaults") if d.is_file() else {}
    for key in defaults:
        if key not in _leaf_fields(Cost):
            raise _unknown_key("configs/costs/defaults.toml", key, sorted(_leaf_fields(Cost)))
    data = load_toml(path, "cost")
    cost = _cost_from(data, where, defaults)
    ref = data.get("reference")
    # the reference price is checked whenever given (a nan waited for --reference-hourly)
    if reference_hourly or (isinstance(ref, dict) and "hourly_usd_per_chip" in ref):
        hourly = cost_reference(path)["hourly_usd_per_chip"]
    if reference_hourly:
        cost = replace(cost, hourly_usd_per_chip=_number(hourly, Cost, "hourly_usd_per_chip",
                                                         f"{where}.reference"))  # fmt: skip
    return apply_cost_overrides(cost, overrides, where)


def cost_reference(name_or_path: str | Path) -> dict:
    """The [reference] table of a cost file: a published all-in hourly price per chip and its
    source, e.g. {"hourly_usd_per_chip": 2.21, "source": "SA-TCO ..."}."""
    path = _resolve(name_or_path, "costs", "cost (system)")
    ref = load_toml(path, "cost").get("reference")
    h = ref.get("hourly_usd_per_chip") if isinstance(ref, dict) else None
    if h is None:
        raise ValueError(
            f"cost '{Path(path).stem}' has no [reference] hourly_usd_per_chip (no published "
            "all-in hourly price); set cost.hourly_usd_per_chip yourself."
        )
    where = f"cost '{Path(path).stem}'.reference.hourly_usd_per_chip"
    if float(_number(h, Cost, "hourly_usd_per_chip", where)) <= 0:  # the field's bounds
        raise ValueError(
            f"{where} must be > 0; leave hourly_usd_per_chip out where there is no published "
            "all-in price."
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


def _local_prices(data: dict, where: str) -> dict:
    """`data` with prices given in a local currency ([local]) converted to USD."""
    local = data.get("local")
    if local is None:
        return data
    data = dict(data)
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
    return data


def _region_from(data: dict, where: str) -> Region:
    fields = _leaf_fields(Region)
    allowed = sorted(set(fields) | set(_REGION_META) | {"subsidy_chip_origin"})
    for key in data:
        if key not in allowed:
            raise _unknown_key(where, key, allowed)
    data = _local_prices(data, where)
    origin = _country_code(data, "subsidy_chip_origin", where)  # " " is none, as below
    if origin and "subsidised_electricity_usd_per_kwh" not in data:
        raise ValueError(
            f"{where}: subsidy_chip_origin = {origin!r} needs a subsidised electricity price."
        )
    if not origin and "subsidised_electricity_usd_per_kwh" in data:
        raise ValueError(
            f"{where}: a subsidised electricity price without subsidy_chip_origin applies to "
            'no chip; add subsidy_chip_origin = "CN" (the country of the chips it subsidises) '
            "or drop the subsidised price."
        )
    if "subsidised_electricity_usd_per_kwh" not in data and "electricity_usd_per_kwh" in data:
        data["subsidised_electricity_usd_per_kwh"] = data["electricity_usd_per_kwh"]
    infos = field_info(Region)
    kw = {}
    for name in fields:
        if name not in data:
            info = infos[name]
            raise ValueError(
                f"{where}: missing '{name}' ({info.unit}: {info.help}); "
                f"add `{name} = ...` to the file."
            )
        kw[name] = _number(data[name], Region, name, f"{where}.{name}")
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError(f"{where}.name must be a non-empty string.")
    country = data.get("country", "")
    region = check(Region(name=name, country=str(country), subsidy_chip_origin=origin, **kw), where)
    _check_subsidy(region, where)
    return region


def load_region(name_or_path: str | Path, overrides: dict | None = None) -> Region:
    """The validated Region from configs/regions/ (`list_regions()`) or a TOML file, with
    optional overrides by field name (`{"electricity_usd_per_kwh": 0.1}`)."""
    path = _resolve(name_or_path, "regions", "region")
    where = f"region '{Path(path).stem}'"
    data = load_toml(path, "region")
    _check_stem(data, path, "region")  # results are keyed by the region's name
    region = _region_from(data, where)
    key = "subsidised_electricity_usd_per_kwh"
    given = {str(k).removeprefix("region.") for k in overrides or {}}
    if key in given and not region.subsidy_chip_origin:
        raise ValueError(
            f"{where} subsidises no chips (no subsidy_chip_origin), so region.{key} would "
            "change nothing; set region.electricity_usd_per_kwh instead."
        )
    region = apply_cost_overrides(region, overrides, where)
    _check_subsidy(region, where)
    return region


def _check_subsidy(region: Region, where: str) -> None:
    """A subsidised price above the unsubsidised one is a typo, not a subsidy."""
    sub, full = (
        float(region.subsidised_electricity_usd_per_kwh),
        float(region.electricity_usd_per_kwh),
    )
    if region.subsidy_chip_origin and sub > full:
        raise ValueError(
            f"{where}: the subsidised electricity price ({sub:g} USD/kWh) exceeds the "
            f"unsubsidised one ({full:g} USD/kWh); a subsidy lowers the price: set "
            f"region.subsidised_electricity_usd_per_kwh <= {full:g} (or the unsubsidised "
            "price higher)."
        )


def region_info(name_or_path: str | Path) -> dict:
    """What a region file says about itself: name, description, country, date, source (for
    `emu list`)."""
    path = _resolve(name_or_path, "regions", "region")
    data = load_toml(path, "region")
    return {k: data.get(k, "") for k in ("name", "description", "country", "date", "source")}
