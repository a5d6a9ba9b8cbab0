"""Cost through the command line (issue 13): --region and the cost flags on run, compare,
serve, sensitivity, sweep and list; the capital/energy split in JSON and text; the
SemiAnalysis cross-check through the JSON path; bad input as one line and exit 2."""

import math

import pytest
from _cli import run_cli, run_json

SMALL = ["--system", "gb200_nvl72", "--model", "llama3_8b", "--seq-len", "4096"]


def _check_block(r: dict) -> None:
    """The cost keys of a priced result add up (per hour and per million tokens)."""
    c = r["cost"]
    assert r["usd_per_hour"] == pytest.approx(
        c["hardware_usd_per_hour"] + c["facility_usd_per_hour"] + c["energy_usd_per_hour"]
        + c["all_in_usd_per_hour"], rel=1e-5)  # fmt: skip
    assert r["usd_per_mtoken"] == pytest.approx(
        r["usd_per_hour"] * 1e6 / (3600.0 * r["tokens_per_s"]), rel=1e-5
    )
    assert r["usd_per_mtoken"] == pytest.approx(
        c["capital_usd_per_mtoken"] + c["energy_usd_per_mtoken"] + c["all_in_usd_per_mtoken"],
        rel=1e-5,
    )


def test_compare_in_south_africa_shows_cost_per_token_with_the_split(capsys):
    """Issue 13 "Done when": `emu compare --region south_africa` (and --json)."""
    d = run_json(capsys, "compare", "--model", "llama3_70b", "--region", "south_africa")
    assert [r["system"] for r in d["results"]] == ["cloudmatrix384", "gb200_nvl72"]
    for r in d["results"]:
        c = r["cost"]
        assert c["region"] == "south_africa" and c["cost"] == r["system"]
        assert c["mode"] == "build-up" and 0 < c["energy_share"] < 1
        assert c["capital_usd_per_mtoken"] > 0 and c["energy_usd_per_mtoken"] > 0
        assert c["electricity_usd_per_kwh"] == pytest.approx(0.902 / 17.80, rel=1e-6)
        _check_block(r)
        # the region's PUE reached the system: facility power and energy use one PUE
        assert r["facility_power_w"] == pytest.approx(1.3 * r["power_w"], rel=1e-6)
        assert c["energy_usd_per_hour"] == pytest.approx(
            r["facility_power_w"] * c["electricity_usd_per_kwh"] / 1000.0, rel=1e-5
        )
    code, out, err = run_cli(capsys, "compare", "--model", "llama3_70b", "--region", "south_africa")
    assert code == 0, err
    table = out[out.index("cost in south_africa") :]
    for label in ("USD per M tokens", "capital (hardware + facility)", "energy", "USD per hour"):
        assert label in table
    usd = [float(x) for x in table.split("USD per M tokens")[1].split("\n")[0].split()]
    assert usd == pytest.approx([r["usd_per_mtoken"] for r in d["results"]], rel=1e-3)


def test_without_a_region_the_output_is_unchanged(capsys):
    d = run_json(capsys, "run", *SMALL)
    assert not {"usd_per_hour", "usd_per_mtoken", "cost"} & set(d)
    code, out, _ = run_cli(capsys, "run", *SMALL)
    assert code == 0 and "USD" not in out


def test_semianalysis_cross_check_through_the_cli_json(capsys):
    """With SA-TCO's 2.21 USD per GB200-hour as the input, usd_per_mtoken == hourly x 1e6 /
    (3600 x tokens/s per GPU), in every region, by --set, --hourly-price or --reference-hourly."""
    for flags in (
        ["--set", "cost.hourly_usd_per_chip=2.21"],
        ["--hourly-price", "2.21"],
        ["--reference-hourly"],
    ):
        for region in ("us_average", "south_africa"):
            d = run_json(capsys, "run", *SMALL, "--region", region, *flags)
            want = 2.21e6 / (3600.0 * d["tokens_per_s"] / d["n_chips"])
            assert d["usd_per_mtoken"] == pytest.approx(want, rel=2e-6)
            assert d["usd_per_hour"] == pytest.approx(2.21 * d["n_chips"], rel=1e-6)
            assert d["cost"]["mode"] == "all-in" and d["cost"]["energy_share"] == 0.0
    code, out, _ = run_cli(
        capsys, "run", *SMALL, "--region", "us_average", "--hourly-price", "2.21"
    )
    assert code == 0 and "all-in hourly price" in out


def test_cost_fields_are_settable_and_move_the_price(capsys):
    base = ["run", *SMALL, "--region", "us_iowa"]
    a = run_json(capsys, *base)
    b = run_json(capsys, *base, "--set", "cost.chip_usd=70000", "--set", "region.pue=1.5")
    assert b["usd_per_mtoken"] > a["usd_per_mtoken"]
    assert b["cost"]["chips_usd_per_hour"] == pytest.approx(2 * a["cost"]["chips_usd_per_hour"])
    assert b["facility_power_w"] == pytest.approx(1.5 * b["power_w"], rel=1e-6)
    # the plan and the physics did not change with the price
    assert b["tokens_per_s"] == a["tokens_per_s"] and b["power_w"] == a["power_w"]


@pytest.mark.parametrize(
    "args,needle",
    [
        (["run", "--region", "atlantis"], "unknown region 'atlantis'. Known: china_coast"),
        (["run", "--region", "south_afrika"], "Did you mean 'south_africa'?"),
        (["run", "--region", "us_average", "--set", "cost.hardware_life_years=0"],
         "cost.hardware_life_years must be in (0, 50] years (got 0); a life of zero"),
        (["run", "--region", "us_average", "--set", "cost.facility_life_years=0"],
         "cost.facility_life_years must be in (0, 100] years (got 0)"),
        (["run", "--region", "us_average", "--set", "region.electricity_usd_per_kwh=-1"],
         "(got -1); prices and costs cannot be negative"),
        (["run", "--region", "us_average", "--set", "cost.chip_usd=-5"],
         "cost.chip_usd must be in [0, 1e+07] USD per chip (got -5)"),
        (["run", "--region", "us_average", "--hourly-price", "-2"],
         "--hourly-price: must be a price in (0, 1000] USD per chip-hour (got '-2')"),
        (["run", "--region", "us_average", "--set", "cost.utilisation=1.5"], "in (0, 1] fraction"),
        (["run", "--region", "us_average", "--set", "region.pue=0.9"], "at least 1"),
        (["run", "--region", "us_average", "--set", "cost.pue=1.2"], "write region.pue"),
        (["run", "--region", "us_average", "--set", "facility.pue=1.1"], "--set region.pue=V"),
        (["run", "--region", "us_average", "--set", "cost.chips_usd=1"], "unknown key 'cost."),
        (["run", "--set", "cost.utilisation=0.5"], "add --region NAME"),
        (["run", "--cost", "gb200_nvl72"], "add --region NAME"),
        (["run", "--region", "us_average", "--cost", "gb200"], "unknown cost (system) 'gb200'"),
        (["run", "--region", "us_average", "--hourly-price", "2", "--reference-hourly"],
         "give one"),
        (["run", "--system", "cloudmatrix384", "--region", "us_average", "--reference-hourly"],
         "no [reference] hourly_usd_per_chip"),
        (["serve", "--region", "atlantis"], "unknown region 'atlantis'"),
        (["sensitivity", "--region", "us_average", "--set", "cost.hardware_life_years=0"],
         "a life of zero"),
        (["sweep", "--objective", "usd_per_mtoken"], "usd_per_mtoken needs --region"),
        (["search", "--region", "us_average", "--set", "region.electricity_usd_per_kwh=-0.1"],
         "cannot be negative"),
        (["compare", "--region", "us_average", "--set", "cost.utilisation=0"], "(0, 1]"),
        (["describe", "gb200_nvl72", "--set", "cost.utilisation=0.5"],
         "describe shows the system as built; --set cost.utilisation prices a run"),
        # a subsidised price where the region subsidises nothing did nothing; one above the
        # unsubsidised price was used as the price
        (["run", "--region", "us_average", "--set",
          "region.subsidised_electricity_usd_per_kwh=1"], "subsidises no chips"),
        (["run", "--system", "cloudmatrix384", "--chips", "16", "--region", "china_dc_subsidy",
          "--set", "region.subsidised_electricity_usd_per_kwh=5"],
         "exceeds the unsubsidised one (0.063 USD/kWh)"),
        # inputs an all-in hourly price makes idle were shown as applied and changed nothing
        (["run", "--region", "us_average", "--hourly-price", "2", "--set",
          "cost.utilisation=0.1"], "--set cost.utilisation does not change an all-in hourly"),
        (["run", "--region", "us_average", "--reference-hourly", "--set",
          "region.electricity_usd_per_kwh=5"], "--set region.electricity_usd_per_kwh does not"),
        # two sources of one price: the --set one was used, or (at 0) the build-up
        (["run", "--region", "us_average", "--reference-hourly", "--set",
          "cost.hourly_usd_per_chip=0"], "give one"),
        # a price or share written with a suffix got the list of byte/watt/second units
        (["run", "--region", "us_average", "--set", "cost.chip_usd=35k"],
         "cost.chip_usd takes a plain number, USD per chip, without a unit (got '35k'); "
         "write 35000."),
        (["run", "--region", "us_average", "--set", "cost.utilisation=80%"], "; write 0.8."),
        (["run", "--region", "us_average", "--set", "cost.chip_usd=nan"], "must be finite"),
        # a known unit on a cost field was applied as its SI number (5kW -> 5000 USD)
        (["run", "--region", "us_average", "--set", "cost.chip_usd=5kW"],
         "'5kW' is in W, but cost.chip_usd takes a plain number"),
        (["serve", "--system", "dgx_h100", "--model", "llama3_70b", "--mtp-accept", "0.5"],
         "--mtp-accept needs a model with MTP modules (llama3_70b has none); serve models no"),
    ],
)  # fmt: skip
def test_bad_cost_input_is_one_line_exit_2(capsys, args, needle):
    code, out, err = run_cli(capsys, *args)
    assert code == 2, err
    assert needle in err, err
    assert err.count("\n") == 1 and "Traceback" not in err and out == ""


def test_list_shows_regions_and_cost_fields(capsys):
    d = run_json(capsys, "list")
    assert {"us_average", "us_iowa", "china_coast", "china_dc_subsidy", "south_africa"} <= set(
        d["regions"]
    )
    regions = run_json(capsys, "list", "--regions")["regions"]
    za = next(r for r in regions if r["name"] == "south_africa")
    assert (
        za["source"]
        and za["date"]
        and za["electricity_usd_per_kwh"] == pytest.approx(0.0507, abs=1e-4)
    )
    f = run_json(capsys, "list", "--fields", "gb200_nvl72", "--region", "south_africa")
    assert f["cost.chip_usd"] == 35000.0 and f["cost.utilisation"] == pytest.approx(0.8)
    assert f["region.electricity_usd_per_kwh"] == pytest.approx(0.0507, abs=1e-4)
    assert "chip.tdp_w" in f and "region.pue" in f
    code, out, _ = run_cli(capsys, "list", "--fields", "gb200_nvl72")
    assert code == 0 and "cost.hardware_life_years" in out and "USD per chip-hour" in out
    for path in (p for p in f if p.startswith(("cost.", "region."))):  # every one is settable
        assert f"{path} " in out


def test_serve_prices_the_deployment_and_each_instance(capsys):
    d = run_json(capsys, "serve", "--region", "china_dc_subsidy")
    assert d["cost"]["electricity_usd_per_kwh"] == pytest.approx(0.40 / 7.1287, rel=1e-5)
    for r in (d, d["prefill"], d["decode"]):
        _check_block(r)
    # one deployment = both instances' chips, power and facility
    assert d["usd_per_hour"] == pytest.approx(
        d["prefill"]["usd_per_hour"] + d["decode"]["usd_per_hour"], rel=1e-5
    )


def test_sweep_minimises_cost_per_token_and_rows_carry_it(capsys):
    args = ["sweep", "--system", "dgx_h100", "--model", "llama3_8b", "--seq-len", "4096",
            "--chips", "8,16", "--free", "tp,pp", "--top", "50"]  # fmt: skip
    d = run_json(capsys, *args, "--objective", "usd_per_mtoken", "--region", "south_africa")
    usd = [r["usd_per_mtoken"] for r in d["top"]]
    assert len(usd) > 5 and usd == sorted(usd) and all(u > 0 for u in usd)
    assert all(r["objective"] == r["usd_per_mtoken"] for r in d["top"])
    best = d["best"]  # the full run of the best row carries the same price, and its split
    assert best["usd_per_mtoken"] == pytest.approx(usd[0], rel=1e-5)
    _check_block(best)
    assert d["problem"]["cost"]["region"] == "south_africa"
    # tokens/J as objective: the rows still carry the price; without a region they carry None
    e = run_json(capsys, *args, "--region", "south_africa")
    assert all(r["usd_per_mtoken"] > 0 for r in e["top"])
    assert min(r["usd_per_mtoken"] for r in e["top"]) >= usd[0] * (1 - 1e-6)
    n = run_json(capsys, *args)
    assert all(r["usd_per_mtoken"] is None for r in n["top"]) and "cost" not in n["best"]


def test_sensitivity_with_a_region_gives_cost_elasticities(capsys):
    """Cost elasticities through the CLI, checked against finite differences of `emu run`
    for a cost field, a region field and a system field."""
    s = run_json(capsys, "sensitivity", *SMALL, "--region", "us_average")
    e = s["elasticities"]
    assert {"cost.chip_usd", "cost.utilisation", "region.pue", "chip.tdp_w"} <= set(e)
    assert all(math.isfinite(v["usd_per_mtoken"]) for v in e.values())
    assert e["cost.utilisation"]["usd_per_mtoken"] < -0.5  # capital dominates
    h = 0.01
    for path in ("cost.chip_usd", "region.electricity_usd_per_kwh", "chip.matmul_efficiency"):
        x = e[path]["value"]
        base = ["run", *SMALL, "--region", "us_average"]
        up = run_json(capsys, *base, "--set", f"{path}={x * (1 + h)}")
        dn = run_json(capsys, *base, "--set", f"{path}={x * (1 - h)}")
        fd = (math.log(up["usd_per_mtoken"]) - math.log(dn["usd_per_mtoken"])) / (
            math.log(1 + h) - math.log(1 - h)
        )
        assert abs(e[path]["usd_per_mtoken"]) > 0.01, path  # the check can fail
        assert e[path]["usd_per_mtoken"] == pytest.approx(fd, rel=0.02, abs=2e-3), path


def test_region_overrides_by_either_spelling_are_checked_alike():
    """`load_region(name, {"region.<field>": v})` skipped the subsidy check."""
    from emu.costs_catalog import load_region

    key = "subsidised_electricity_usd_per_kwh"
    for k in (key, f"region.{key}"):
        with pytest.raises(ValueError, match="subsidises no chips"):
            load_region("us_average", {k: 1.0})
    with pytest.raises(ValueError, match=f"set region.{key} <= 0.03"):
        load_region("china_dc_subsidy", {"region.electricity_usd_per_kwh": 0.03})


def test_what_a_price_does_not_cover_is_said(capsys):
    """Another system's cost file is named in a note (it priced B200s at 910C prices without
    a word); an infeasible plan has no cost per token (it was priced below the feasible one);
    the all-in header does not show the utilisation it ignores."""
    base = ["run", "--system", "gb200_nvl72", "--model", "llama3_70b", "--region", "us_average"]
    d = run_json(capsys, *base, "--cost", "cloudmatrix384")
    assert any("priced with the capital costs of 'cloudmatrix384'" in n for n in d["notes"])
    assert not any("--cost" in n for n in run_json(capsys, *base, "--cost", "gb200_nvl72")["notes"])
    bad = run_json(capsys, *base, "--tp", "1", "--pp", "1", "--dp", "72", "--recompute", "none")
    assert bad["feasible"] is False and bad["usd_per_mtoken"] is None
    assert bad["cost"]["energy_usd_per_mtoken"] is None and bad["usd_per_hour"] > 0
    code, out, _ = run_cli(capsys, *base, "--tp", "1", "--pp", "1", "--dp", "72")
    assert code == 0 and "infeasible: no cost per token" in out
    code, out, _ = run_cli(capsys, *base, "--hourly-price", "2")
    assert "(PUE 1.3, all-in hourly price)" in out and "utilisation" not in out


def test_serve_says_which_instance_is_short_and_by_how_much(capsys):
    args = ["serve", "--system", "dgx_h100", "--model", "llama3_70b"]
    d = run_json(capsys, *args, "--decode-batch", "100000")
    assert d["feasible"] is False and d["decode"]["feasible"] is False
    assert d["prefill"]["feasible"] is True
    assert d["infeasible_reasons"][0].startswith("the decode instance is out of memory: 18.9 TB")
    d = run_json(capsys, *args, "--decode-batch", "256", "--tpot-slo", "30ms")  # as `run`
    assert d["feasible"] is False and d["decode"]["feasible"] is False
    assert d["infeasible_reasons"][0].startswith("the decode instance's TPOT 0.0391 s misses")
    priced = run_json(capsys, *args, "--decode-batch", "256", "--tpot-slo", "30ms",
                      "--region", "us_average")  # fmt: skip
    assert priced["usd_per_mtoken"] is None and priced["decode"]["usd_per_mtoken"] is None
    assert priced["prefill"]["usd_per_mtoken"] > 0
    assert run_json(capsys, *args)["infeasible_reasons"] == []  # the batch rule meets the SLO
    assert run_json(capsys, *args, "--decode-batch", "256")["feasible"] is True  # 39 < 50 ms
