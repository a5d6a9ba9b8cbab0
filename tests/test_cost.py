"""emu.cost: the cost model (golden values, the SemiAnalysis cross-check, jit/vmap, gradients
checked against finite differences, properties) and its loaders (validation messages)."""

from __future__ import annotations

import math
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import emu
from emu import cost as C
from emu import costs_catalog as K
from emu.struct import float_leaves, replace, set_path

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
REQUIRED_REGIONS = ("us_average", "us_iowa", "china_coast", "china_dc_subsidy", "south_africa")


@pytest.fixture(scope="module")
def gb():
    return K.load_cost("gb200_nvl72")


@pytest.fixture(scope="module")
def cm():
    return K.load_cost("cloudmatrix384")


@pytest.fixture(scope="module")
def us():
    return K.load_region("us_average")


def run(cost, region, n=72.0, power=120e3, tps=72e3, prov=None):
    return C.run_cost(cost, region, n_chips=n, power_w=power, tokens_per_s=tps, provisioned_w=prov)


# ----------------------------------------------------------------------------- golden values


def test_build_up_matches_the_formula_by_hand(gb, us):
    """Hand computation from the file's numbers (float64) against emu (float32)."""
    n, p, tps, prov = 72.0, 110e3, 5.0e4, 122e3
    per_chip = 35000.0 + 9222.22 + 3000.0 + 4688.0 + 2800.0
    hours = 8760.0 * 0.8
    hardware = n * per_chip / (4.0 * hours)
    facility = 25.0 * prov / (10.0 * hours)
    energy = p * 1.3 * 0.0806 / 1000.0
    total = hardware + facility + energy
    c = run(gb, us, n, p, tps, prov)
    assert float(c.hardware_usd_per_hour) == pytest.approx(hardware, rel=1e-6)
    assert float(c.facility_usd_per_hour) == pytest.approx(facility, rel=1e-6)
    assert float(c.energy_usd_per_hour) == pytest.approx(energy, rel=1e-6)
    assert float(c.usd_per_hour) == pytest.approx(total, rel=1e-6)
    assert float(c.usd_per_mtoken) == pytest.approx(total * 1e6 / (3600.0 * tps), rel=1e-6)
    assert float(c.energy_share) == pytest.approx(energy / total, rel=1e-5)
    per_m = 1e6 / (3600.0 * tps)
    assert float(c.capital_usd_per_mtoken) == pytest.approx((hardware + facility) * per_m, rel=1e-6)
    assert float(c.energy_usd_per_mtoken) == pytest.approx(energy * per_m, rel=1e-6)
    assert float(c.all_in_usd_per_mtoken) == 0.0
    assert float(c.capex_usd) == pytest.approx(n * per_chip + 25.0 * prov, rel=1e-6)
    parts = (
        c.chips_usd_per_hour
        + c.hosts_usd_per_hour
        + c.scale_up_usd_per_hour
        + c.scale_out_usd_per_hour
        + c.optics_usd_per_hour
    )
    assert float(parts) == pytest.approx(float(c.hardware_usd_per_hour), rel=1e-6)
    assert float(c.all_in_usd_per_hour) == 0.0


def test_semianalysis_cross_check_gb200(catalog):
    """Issue 13: with the SA-TCO hourly cost for GB200 (facts §28, 2.21 USD per GPU-hour) as
    input, usd_per_mtoken == hourly x 1e6 / (3600 x tokens/s per GPU), for an emu run."""
    sys = catalog["nvl72"]
    r = emu.evaluate(sys, catalog["llama8"], emu.make_plan(tp=8, dp=9, global_batch=72,
                                                           seq_len=4096))  # fmt: skip
    cost = K.load_cost("gb200_nvl72", reference_hourly=True)
    assert K.cost_reference("gb200_nvl72")["hourly_usd_per_chip"] == 2.21
    assert float(cost.hourly_usd_per_chip) == pytest.approx(2.21)
    per_gpu = float(r.tokens_per_s) / float(r.n_chips)
    want = 2.21 * 1e6 / (3600.0 * per_gpu)
    for region in REQUIRED_REGIONS:  # neither electricity, PUE nor utilisation enters
        for u in (1.0, 0.5):
            c = C.from_result(replace(cost, utilisation=jnp.float32(u)), K.load_region(region), r,
                              system=sys)  # fmt: skip
            assert float(c.usd_per_mtoken) == pytest.approx(want, rel=2e-6)
            assert float(c.usd_per_hour) == pytest.approx(2.21 * float(r.n_chips), rel=1e-6)
            assert float(c.energy_share) == 0.0 and float(c.capital_usd_per_hour) == 0.0


def test_parts_add_up_to_the_sourced_totals():
    """Each [total] in configs/costs/ is met by its parts (the loader checks it; so does this)."""
    checked = 0
    for name in K.list_costs():
        data = tomllib.loads((CONFIGS / "costs" / f"{name}.toml").read_text())
        t = data.get("total")
        if t is None:
            continue
        cost = K.load_cost(name)
        got = sum(float(getattr(cost, p)) for p in t["parts"]) * t["chips"]
        assert got == pytest.approx(t["usd"], rel=1e-5), name
        checked += 1
    assert checked >= 4  # gb200, gb300, cloudmatrix384, dgx_a100


def test_a_wrong_total_is_rejected(tmp_path):
    text = (CONFIGS / "costs" / "gb200_nvl72.toml").read_text().replace("usd = 3.4e6", "usd = 4e6")
    p = tmp_path / "gb.toml"
    p.write_text(text)
    with pytest.raises(ValueError, match=r"add up to 3,400,000 USD per 72 chips .* says 4,000,000"):
        K.load_cost(p)


# ----------------------------------------------------------------------------- catalog


def test_every_catalog_system_and_required_region_loads():
    assert K.list_costs() == emu.list_systems()
    assert set(REQUIRED_REGIONS) <= set(K.list_regions())
    for name in K.list_costs():
        cost = K.load_cost(name)
        assert cost.name == name and cost.chip_origin in ("US", "CN")
        assert float(cost.chip_usd) > 0
    for name in K.list_regions():
        data = tomllib.loads((CONFIGS / "regions" / f"{name}.toml").read_text())
        assert data.get("source") and data.get("date"), f"{name}: needs source and date"
        r = K.load_region(name)
        assert 0.01 < float(r.electricity_usd_per_kwh) < 0.5 and 1.0 <= float(r.pue) < 2.0


def test_currency_conversion_and_the_domestic_chip_subsidy(gb, cm):
    za = K.load_region("south_africa")
    assert float(za.electricity_usd_per_kwh) == pytest.approx(0.902 / 17.80, rel=1e-6)
    cn = K.load_region("china_dc_subsidy")
    assert float(cn.subsidised_electricity_usd_per_kwh) == pytest.approx(0.40 / 7.1287, rel=1e-6)
    # the FT subsidy is for domestic chips only: CloudMatrix gets it, NVL72 does not
    assert float(C.electricity_price(cm, cn)) == pytest.approx(0.0561, abs=1e-4)
    assert float(C.electricity_price(gb, cn)) == pytest.approx(0.063, rel=1e-6)
    coast = K.load_region("china_coast")  # no subsidy there
    assert float(C.electricity_price(cm, coast)) == float(C.electricity_price(gb, coast))


def test_region_pue_reaches_the_system(catalog, us):
    sys = C.with_region_pue(catalog["nvl72"], replace(us, pue=jnp.float32(1.17)))
    r = emu.evaluate(sys, catalog["llama8"], emu.make_plan(tp=8, dp=9, global_batch=72,
                                                           seq_len=4096))  # fmt: skip
    assert float(r.facility_power_w) == pytest.approx(1.17 * float(r.power_w), rel=1e-6)


# ----------------------------------------------------------------------------- jit, vmap


def test_vmap_over_prices_equals_the_loop_and_compiles_once(gb, us):
    prices = jnp.asarray([0.03, 0.06, 0.09, 0.2], jnp.float32)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def f(price, tps):
        reg = replace(us, electricity_usd_per_kwh=price)
        return C.usd_per_mtoken(gb, reg, n_chips=72.0, power_w=1.2e5, tokens_per_s=tps)

    batch = jax.vmap(f, in_axes=(0, None))(prices, jnp.float32(7e4))
    loop = [
        float(C.usd_per_mtoken(gb, replace(us, electricity_usd_per_kwh=p), n_chips=72.0,
                               power_w=1.2e5, tokens_per_s=7e4))
        for p in prices
    ]  # fmt: skip
    np.testing.assert_allclose(np.asarray(batch), loop, rtol=1e-6)
    for tps in (1e4, 2e4, 3e4):  # new values, same shapes: no retrace
        f(prices[0], jnp.float32(tps))


# ----------------------------------------------------------------------------- gradients


def _f64(tree):
    return jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float64), tree)


@pytest.mark.parametrize("mode", ["build-up", "all-in"])
@pytest.mark.parametrize("system,region", [("gb200_nvl72", "us_average"),
                                           ("cloudmatrix384", "china_dc_subsidy")])  # fmt: skip
def test_gradients_match_finite_differences(mode, system, region):
    """d usd_per_mtoken / d x for every cost and region field, against central finite
    differences in log space (x(1 +- h)), in float64."""
    with jax.enable_x64(True):
        cost = _f64(K.load_cost(system, reference_hourly=False))
        if mode == "all-in":
            cost = replace(cost, hourly_usd_per_chip=jnp.float64(2.21))
        reg = _f64(K.load_region(region))
        kw = dict(n_chips=jnp.float64(384.0), power_w=jnp.float64(5.2e5),
                  tokens_per_s=jnp.float64(4.0e5), provisioned_w=jnp.float64(5.6e5))  # fmt: skip

        def f(tree):
            return C.usd_per_mtoken(tree["cost"], tree["region"], **kw)

        tree = {"cost": cost, "region": reg}
        grads = float_leaves(jax.grad(f)(tree))
        values = float_leaves(tree)
        assert set(grads) == set(values) and len(values) == 13
        h = 1e-6
        for path, x in values.items():
            g = float(grads[path])
            assert math.isfinite(g), path
            up = float(f(set_path(tree, path, x * (1 + h))))
            dn = float(f(set_path(tree, path, x * (1 - h))))
            fd = (up - dn) / (2 * h)  # d f / d ln x
            assert float(x) * g == pytest.approx(fd, rel=1e-5, abs=1e-9 * float(f(tree))), path
            if mode == "build-up" and path in ("cost.chip_usd", "region.pue"):
                assert float(x) * g > 0  # the check can fail: these fields matter


def test_gradients_are_finite_at_the_edges(gb, us):
    """Zero tokens/s (value inf, gradient 0), one chip, zero power, zero-cost parts."""
    zero = replace(gb, chip_usd=jnp.float32(0.0), optics_usd_per_chip=jnp.float32(0.0))
    cases = [(gb, 72.0, 1.2e5, 0.0), (gb, 1.0, 0.0, 1.0), (zero, 72.0, 1e5, 5e4)]
    for cost, n, power, tps in cases:

        def f(tree, field, n=n, power=power, tps=tps):
            c = C.run_cost(tree["cost"], tree["region"], n_chips=n, power_w=power, tokens_per_s=tps)
            return getattr(c, field)

        for field in ("usd_per_hour", "usd_per_mtoken", "energy_share"):
            g = jax.grad(f)({"cost": cost, "region": us}, field)
            assert all(np.isfinite(float(v)) for v in float_leaves(g).values()), field
    c = run(gb, us, tps=0.0)
    assert math.isinf(float(c.usd_per_mtoken))  # nothing produced: no finite price per token


def test_elasticities(gb, us):
    e = C.elasticities(gb, us, n_chips=72.0, power_w=1.2e5, tokens_per_s=7e4)
    assert e["tokens_per_s"] == pytest.approx(-1.0, abs=1e-5)
    # capital parts + facility + energy shares sum to 1 (cost is homogeneous of degree 1)
    shares = [v for k, v in e.items() if k.endswith("_usd_per_chip") or k == "cost.chip_usd"]
    total = sum(shares) + e["cost.facility_usd_per_w"] + e["region.electricity_usd_per_kwh"]
    assert total == pytest.approx(1.0, abs=1e-4)
    assert e["region.pue"] == pytest.approx(e["power_w"], rel=1e-5)
    assert e["cost.utilisation"] == pytest.approx(-(1.0 - e["power_w"]), abs=1e-4)


# ----------------------------------------------------------------------------- properties


@settings(max_examples=40, deadline=None)
@given(
    k=st.floats(0.01, 100.0),
    # prices emu accepts: 0 or a normal float32 (run_cost refuses a subnormal one, as every
    # field check does; test_concrete_cost_inputs_are_checked holds that)
    price=st.floats(0.0, 0.5).filter(lambda p: p == 0.0 or p >= 1.2e-38),
    util=st.floats(0.05, 1.0),
    tps=st.floats(1.0, 1e7),
)
def test_properties(gb, us, k, price, util, tps):
    cost = replace(gb, utilisation=jnp.float32(util))
    reg = replace(us, electricity_usd_per_kwh=jnp.float32(price))
    a = run(cost, reg, 72.0, 1.2e5, tps, 1.3e5)
    # a k-times larger deployment making k times the tokens costs the same per token
    b = run(cost, reg, 72.0 * k, 1.2e5 * k, tps * k, 1.3e5 * k)
    assert float(b.usd_per_mtoken) == pytest.approx(float(a.usd_per_mtoken), rel=1e-4)
    # dearer electricity or chips never make a token cheaper
    dear = run(cost, replace(reg, electricity_usd_per_kwh=jnp.float32(price + 0.01)), 72.0,
               1.2e5, tps, 1.3e5)  # fmt: skip
    assert float(dear.usd_per_mtoken) > float(a.usd_per_mtoken)
    assert 0.0 <= float(a.energy_share) <= 1.0
    # capital per running hour scales as 1 / utilisation; energy does not
    full = run(replace(gb, utilisation=jnp.float32(1.0)), reg, 72.0, 1.2e5, tps, 1.3e5)
    assert float(a.capital_usd_per_hour) * util == pytest.approx(
        float(full.capital_usd_per_hour), rel=1e-5
    )
    assert float(a.energy_usd_per_hour) == pytest.approx(float(full.energy_usd_per_hour), rel=1e-6)


def test_newton_solves_linear_and_nonlinear_crossovers(gb, cm, us):
    """The capital cost per 910C at which CloudMatrix matches NVL72 per token (linear, the
    root may be negative), and the NVL72 utilisation at which it matches CloudMatrix (1/u)."""
    nv = dict(n_chips=72.0, power_w=1.2e5, tokens_per_s=72 * 3000.0)
    cmk = dict(n_chips=384.0, power_w=5.2e5, tokens_per_s=384 * 1000.0)
    target = C.usd_per_mtoken(gb, us, **nv)

    def gap_chip(x):
        return C.usd_per_mtoken(replace(cm, chip_usd=x), us, **cmk) - target

    x, ok = C.newton(gap_chip, 7000.0, log_space=False)
    # a negative root is the linear extrapolation newton documents: concrete cost inputs
    # are checked (a negative price is refused), traced ones are not
    assert ok and abs(float(jax.jit(gap_chip)(jnp.float32(x)))) < 1e-4 * float(target)
    cm_cost = C.usd_per_mtoken(cm, us, **cmk)

    def gap_util(u):
        return C.usd_per_mtoken(replace(gb, utilisation=u), us, **nv) - cm_cost

    u, ok = C.newton(gap_util, 0.5)
    assert ok and 0 < u < 0.8
    assert float(gap_util(jnp.float32(u))) == pytest.approx(0.0, abs=1e-4 * float(cm_cost))


# ----------------------------------------------------------------------------- bad input


def _region_file(tmp_path, body: str) -> Path:
    p = tmp_path / "r.toml"
    p.write_text('name = "r"\ndate = "2025"\nsource = "test"\n' + body)
    return p


@pytest.mark.parametrize(
    "body,message",
    [
        ("electricity_usd_per_kwh = -0.1\npue = 1.3\n", r"electricity_usd_per_kwh must be in "
         r"\[0, 10\] USD per kWh \(got -0.1\); prices and costs cannot be negative"),
        ("electricity_usd_per_kwh = 0.1\npue = 0.9\n", r"pue must be in \[1, 4\] ratio "
         r"\(got 0.9\); PUE is facility power"),
        ("electricity_usd_per_kwh = 0.1\n", r"missing 'pue'"),
        ("electricity_usd_per_kwh = 0.1\npue = 1.2\nprice = 3\n", r"unknown key 'price'"),
        ('electricity_usd_per_kwh = "cheap"\npue = 1.2\n', r"electricity_usd_per_kwh must "
         r"be a number \(got str 'cheap'\)"),
        ('pue = 1.2\n[local]\ncurrency = "ZAR"\ndate = "2025"\nelectricity_per_kwh = 0.9\n',
         r"missing 'per_usd'"),
        ('pue = 1.2\n[local]\ncurrency = "ZAR"\ndate = "2025"\nper_usd = 0\n'
         'electricity_per_kwh = 0.9\n', r"per_usd must be > 0"),
        ('electricity_usd_per_kwh = 0.1\npue = 1.2\nsubsidy_chip_origin = "CN"\n',
         r"needs a subsidised electricity price"),
        ('electricity_usd_per_kwh = 0.1\nsubsidised_electricity_usd_per_kwh = 0.01\npue = 1.2\n'
         'subsidy_chip_origin = "China"\n', r"must be a two-letter country code, e\.g\. \"CN\""),
    ],
)  # fmt: skip
def test_bad_region_files(tmp_path, body, message):
    with pytest.raises(ValueError, match=message) as e:
        K.load_region(_region_file(tmp_path, body))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("hardware_life_years", 0.0, r"cost.hardware_life_years must be in \(0, 50\] years \(got "
         r"0\); a life of zero would spread the capital over no hours"),
        ("facility_life_years", -1.0, r"facility_life_years must be in \(0, 100\] years"),
        ("utilisation", 0.0, r"utilisation must be in \(0, 1\] fraction \(got 0\); utilisation is"),
        ("utilisation", 1.5, r"utilisation must be in \(0, 1\]"),
        ("chip_usd", -5.0, r"chip_usd must be in \[0, 1e\+07\] USD per chip \(got -5\); prices"),
        ("hourly_usd_per_chip", float("nan"), r"hourly_usd_per_chip must be in .* \(got nan\)"),
        ("hourly_usd_per_chip", 5e3, r"must be in \[0, 1000\] USD per chip-hour \(got 5000\)\.$"),
    ],
)  # fmt: skip
def test_bad_cost_values(field, value, message):
    with pytest.raises(ValueError, match=message) as e:
        K.load_cost("gb200_nvl72", {field: value})
    assert "\n" not in str(e.value) and str(e.value).startswith("cost 'gb200_nvl72': cost.")


def test_unknown_names_list_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown region 'south_afrika'\. Did you mean "
                       r"'south_africa'\? Known: china_coast, .*us_iowa") as e:  # fmt: skip
        K.load_region("south_afrika")
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match=r"unknown cost \(system\) 'gb200'.*'gb200_nvl72'"):
        K.load_cost("gb200")
    with pytest.raises(
        ValueError, match=r"unknown key 'cost.chips_usd'.*Known keys: cost.chip_usd"
    ):
        K.load_cost("gb200_nvl72", {"chips_usd": 1.0})
    with pytest.raises(ValueError, match=r"pue belongs to the region, not the cost; write region"):
        K.load_cost("gb200_nvl72", {"pue": 1.2})
    with pytest.raises(ValueError, match=r"region 'us_average': region\.electricity.*got -1"):
        K.load_region("us_average", {"electricity_usd_per_kwh": -1.0})
    with pytest.raises(ValueError, match=r"no \[reference\] hourly_usd_per_chip"):
        K.load_cost("cloudmatrix384", reference_hourly=True)
    with pytest.raises(ValueError, match=r"not found"):
        K.load_region("/nonexistent/region.toml")


def test_overrides_apply_and_keep_float32(us):
    r = K.load_region("us_average", {"electricity_usd_per_kwh": 0.12, "pue": 1.1})
    assert float(r.electricity_usd_per_kwh) == pytest.approx(0.12)
    assert r.pue.dtype == jnp.float32 and r.name == "us_average"
    c = K.load_cost("cloudmatrix384", {"chip_usd": 20000})
    assert float(c.chip_usd) == 20000.0 and c.chip_usd.dtype == jnp.float32


# ----------------------------------------------------------------------------- search


def test_the_cost_objective_needs_a_price_and_keys_the_sweep_by_it(catalog):
    """usd_per_mtoken is a registered, minimised objective that needs Problem.cost; the
    problem's signature (sweep resume key) changes with every cost and region value."""
    from emu.search import OBJECTIVES, Problem, check_problem

    obj = OBJECTIVES["usd_per_mtoken"]
    assert obj.sign == -1.0 and obj.needs == ("cost",)
    sys = catalog["h100"]
    bare = Problem("dgx_h100", "llama3_8b", 8, objective="usd_per_mtoken")
    with pytest.raises(ValueError, match=r"needs Problem.cost = \(Cost, Region\)"):
        check_problem(sys, bare)
    with pytest.raises(ValueError, match=r"must be a \(emu.cost.Cost, emu.cost.Region\) pair"):
        check_problem(sys, replace(bare, cost=(K.load_region("us_average"),) * 2))
    price = (K.load_cost("dgx_h100"), K.load_region("us_average"))
    priced = replace(bare, cost=price)
    check_problem(sys, priced)
    assert priced.as_dict()["cost"]["region.pue"] == pytest.approx(1.3)
    dearer = replace(priced, cost=(price[0], K.load_region("us_average", {"pue": 1.31})))
    assert len({bare.signature(), priced.signature(), dearer.signature()}) == 3


def test_the_objective_prices_an_evaluation_like_from_result(catalog):
    from emu.search import Problem, get_objective

    sys, model = catalog["h100"], catalog["llama8"]
    r = emu.evaluate(sys, model, emu.make_plan(tp=8, global_batch=8, seq_len=4096))
    price = (K.load_cost("dgx_h100"), K.load_region("china_coast"))
    p = Problem("dgx_h100", "llama3_8b", 8, objective="usd_per_mtoken", cost=price)
    got = get_objective("usd_per_mtoken").value(r, system=sys, problem=p)
    want = C.from_result(*price, r, system=sys).usd_per_mtoken
    assert float(got) == float(want) > 0


def test_concrete_cost_inputs_are_checked():
    """run_cost checked nothing: a utilisation or life of 0 made capital free (0.0175 against
    0.272 USD/M), negative prices gave negative costs; traced inputs still pass."""
    cost, region = K.load_cost("gb200_nvl72"), K.load_region("us_average")
    run = dict(n_chips=72.0, power_w=120e3, tokens_per_s=2e5)
    for tree, change, needle in (
        ("cost", dict(utilisation=jnp.float32(0)), r"Cost: utilisation must be in \(0, 1\]"),
        ("cost", dict(hardware_life_years=jnp.float32(0)), "hardware_life_years must be in"),
        ("cost", dict(chip_usd=jnp.float32(-1)), "chip_usd must be in"),
        ("region", dict(electricity_usd_per_kwh=jnp.float32(-1)), "Region: electricity_usd"),
        ("region", dict(electricity_usd_per_kwh=jnp.float32(7.2e-43)), "outside the float32"),
        ("cost", dict(utilisation=jnp.linspace(0.0, 1.0, 5)), "utilisation must be in"),
    ):
        c = replace(cost, **change) if tree == "cost" else cost
        r = replace(region, **change) if tree == "region" else region
        with pytest.raises(ValueError, match=needle):
            C.run_cost(c, r, **run)
    for name, value in (
        ("n_chips", 0.0),
        ("tokens_per_s", -1e5),
        ("power_w", float("nan")),
        ("n_chips", 1e40),
    ):  # fmt: skip  (1e40 overflowed float32: NaN)
        with pytest.raises(ValueError, match=f"run_cost: {name} must be a finite number"):
            C.run_cost(cost, region, **{**run, name: value})
    for value in ("1e6", True, [1.0, "x"]):  # a string or a boolean is no number
        with pytest.raises(ValueError, match="run_cost: tokens_per_s must be a number"):
            C.run_cost(cost, region, **{**run, "tokens_per_s": value})
    with pytest.raises(ValueError, match="expected a Cost .got Region.; the arguments are"):
        C.run_cost(region, cost, **run)
    assert math.isinf(
        float(C.run_cost(cost, region, **{**run, "tokens_per_s": 0.0}).usd_per_mtoken)
    )
    # traced: unchecked (jit and grad still reach every field)
    f = jax.jit(lambda u: C.run_cost(replace(cost, utilisation=u), region, **run).usd_per_mtoken)
    assert float(f(jnp.float32(0.5))) > float(f(jnp.float32(1.0))) > 0
    with pytest.raises(ValueError, match="tokens_per_s must be > 0"):
        C.elasticities(cost, region, **{**run, "tokens_per_s": 0.0})
    with pytest.raises(ValueError, match="x0 must be a finite number > 0 with log_space"):
        C.newton(lambda x: x - 2.0, 0.0)
    # a 0-d array is one number (it was refused as "must be a number (got ArrayImpl ...)")
    half = K.load_cost("gb200_nvl72", {"utilisation": jnp.float32(0.5)})
    assert float(half.utilisation) == 0.5
    for odd in (np.True_, np.array("0.5"), jnp.array(True), np.complex128(0.5 + 2j)):
        with pytest.raises(ValueError, match="cost.utilisation must be a number"):
            K.load_cost("gb200_nvl72", {"utilisation": odd})
    # a public module is reachable from `import emu` alone (it raised AttributeError)
    code = "import emu; print(emu.cost.run_cost.__name__, emu.search.Problem.__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.split() == ["run_cost", "Problem"], out.stderr


def test_region_subsidy_rules(tmp_path):
    """A subsidised price without a chip origin applied to no chip (silently); an origin
    in lower case never matched the cost file's "CN"."""
    p = tmp_path / "r.toml"
    p.write_text('name = "r"\nelectricity_usd_per_kwh = 0.1\n'
                 'subsidised_electricity_usd_per_kwh = 0.01\npue = 1.2\n')  # fmt: skip
    with pytest.raises(ValueError, match="without subsidy_chip_origin applies to no chip"):
        K.load_region(p)
    p.write_text(p.read_text() + 'subsidy_chip_origin = "cn"\n')
    r = K.load_region(p)
    assert float(C.electricity_price(K.load_cost("cloudmatrix384"), r)) == pytest.approx(0.01)
    assert float(C.electricity_price(K.load_cost("gb200_nvl72"), r)) == pytest.approx(0.1)
    # a blank origin is none, so a subsidised price with it applies to no chip: refused
    p.write_text(p.read_text().replace('subsidy_chip_origin = "cn"', 'subsidy_chip_origin = " "'))
    with pytest.raises(ValueError, match="without subsidy_chip_origin applies to no chip"):
        K.load_region(p)
    # a cost file's origin spelled out never matched "CN": the subsidy was silently lost
    text = (K.config_dir() / "costs" / "cloudmatrix384.toml").read_text()
    for origin in ("China", "Mars", "C N", "1"):
        spelled = tmp_path / "cloudmatrix384.toml"
        spelled.write_text(text.replace('chip_origin = "CN"', f'chip_origin = "{origin}"'))
        with pytest.raises(ValueError, match="chip_origin must be a two-letter country code"):
            K.load_cost(spelled)


def test_a_wrong_reference_price_is_not_called_missing(tmp_path):
    """A negative or quoted [reference] price was reported as "has no [reference]" price."""
    text = (K.config_dir() / "costs" / "gb200_nvl72.toml").read_text()
    for bad, needle in (
        ("-3", "must be in [0, 1000] USD per chip-hour (got -3)"),
        ('"2.2"', "must be a number (got str '2.2')"),
        ("0", "must be > 0; leave hourly_usd_per_chip out"),
    ):
        p = tmp_path / "gb200_nvl72.toml"
        p.write_text(text.replace("hourly_usd_per_chip = 2.21", f"hourly_usd_per_chip = {bad}"))
        with pytest.raises(ValueError, match=re.escape(f"reference.hourly_usd_per_chip {needle}")):
            K.cost_reference(p)


def test_a_cost_files_reference_price_is_checked_even_when_not_used(tmp_path):
    """`[reference] hourly_usd_per_chip = nan` was read only under --reference-hourly."""
    from emu.catalog import config_dir
    from emu.costs_catalog import load_cost

    text = (config_dir() / "costs" / "dgx_h100.toml").read_text(encoding="utf-8")
    bad = re.sub(r"(?m)^hourly_usd_per_chip = [0-9.]+", "hourly_usd_per_chip = nan", text)
    assert bad != text
    path = tmp_path / "dgx_h100.toml"
    path.write_text(bad, encoding="utf-8")
    with pytest.raises(ValueError, match=r"reference\.hourly_usd_per_chip must be in"):
        load_cost(path)
