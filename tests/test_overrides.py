"""emu.overrides: one validation path for --set, --grid, TOML and the API (issue 16: grids
used to skip the checks --set applies, and subnormal values were flushed to 0)."""

import re

import numpy as np
import pytest

import emu
from emu.overrides import apply_overrides, parse_override, split_overrides
from emu.search import Problem, Space, check_grid


@pytest.fixture(scope="module")
def nvl72():
    return emu.load_system("gb200_nvl72")


def test_parse_and_split():
    assert parse_override(" chip.tdp_w = 1e3") == ("chip.tdp_w", 1000.0)
    for bad, needle in (("chip.tdp_w", "expected PATH=VALUE"), ("x=abc", "not a number")):
        with pytest.raises(ValueError, match=needle):
            parse_override(bad)
    with pytest.raises(ValueError, match="must be finite"):
        parse_override("chip.tdp_w=inf")
    assert split_overrides({"a.b": 1, "model.n_layers": 2, "plan.tp": 4}) == (
        {"a.b": 1},
        {"n_layers": 2},
        {"tp": 4},
    )


@pytest.mark.parametrize(
    "path,value,needle",
    [
        ("chip.hbm_bytes", -1.0, r"chip.hbm_bytes must be in \[1e\+08, 1e\+14\] bytes"),
        ("chip.idle_w", 5000.0, "chip.idle_w=5000 exceeds chip.tdp_w"),
        ("tiers.nvlink.latency_s", 1e-39, "outside the float32 range"),  # a subnormal
        ("facility.psu_efficiency", 1e-38, "psu_efficiency must be"),
        ("chip.hbm_byte", 1.0, "unknown field path 'chip.hbm_byte'. Did you mean"),
    ],
)
def test_bad_values_are_refused_with_the_path(nvl72, path, value, needle):
    with pytest.raises(ValueError, match=needle):
        apply_overrides(nvl72, {path: value}, "system")


@pytest.mark.parametrize(
    "path,edge,beyond",
    [
        ("tiers.nvlink.a2a_latency_hiding", 0.99, 0.995),  # [0, 0.99]: 0.99 -> 0.99000001
        ("tiers.nvlink.efficiency", 0.01, 0.009),  # [0.01, 1]: 0.01 -> 0.0099999998
    ],
)
def test_a_bound_float32_cannot_hold_exactly_is_admitted(nvl72, path, edge, beyond):
    s = apply_overrides(nvl72, {path: edge})
    assert float(getattr(s.tiers[0], path.split(".")[-1])) == float(np.float32(edge))
    with pytest.raises(ValueError, match="must be in"):
        apply_overrides(nvl72, {path: beyond})


def test_good_values_are_applied_as_float32(nvl72):
    s = apply_overrides(nvl72, {"chip.hbm_bytes_per_s": 4e12, "facility.pue": 1.3})
    assert float(s.chip.hbm_bytes_per_s) == float(np.float32(4e12))
    assert s.chip.hbm_bytes_per_s.dtype == np.float32
    assert apply_overrides(nvl72, {}) is nvl72


def test_plans_and_models_take_the_same_path():
    plan = emu.make_plan(tp=8, dp=9, global_batch=72)
    with pytest.raises(ValueError, match="zero must be 0, 1, 2 or 3"):
        apply_overrides(plan, {"zero": 7}, "Plan")
    model = emu.load_model("llama3_8b")
    with pytest.raises(ValueError, match="n_kv_heads=3 must divide"):
        apply_overrides(model, {"n_kv_heads": 3}, "model")


@pytest.mark.parametrize(
    "grid,needle",
    [
        ({"chip.idle_w": [100.0, 5000.0]}, "exceeds chip.tdp_w"),
        ({"chip.hbm_bytes": [80e9, 1e30]}, "chip.hbm_bytes"),
        ({"tiers.nvlink.base_latency_s": [0.0, 1e-39]}, "float32 range"),
        ({"domain": [7.5]}, "whole number of chips"),
    ],
)
def test_grid_values_pass_the_checks_of_any_override(nvl72, grid, needle):
    with pytest.raises(ValueError, match=needle):
        check_grid(nvl72, grid)


def test_a_grid_cannot_remove_the_searched_precision(nvl72):
    """A sweep over peak bf16 FLOP/s = 0 used to report the zero-FLOP chip as the best."""
    model = emu.load_model("llama3_8b")
    grid = {"chip.peak_flops_per_s.bf16": [0.0, 2.5e15]}
    with pytest.raises(ValueError, match="without bf16 support"):
        Space(nvl72, model, Problem("gb200_nvl72", "llama3_8b", 8, free=("pp",)), grid)


@pytest.mark.parametrize(
    "text,path,si",
    [
        ("chip.hbm_bytes_per_s=16TB/s", "chip.hbm_bytes_per_s", 16e12),
        ("chip.hbm_bytes=141GiB", "chip.hbm_bytes", 141 * 2**30),
        ("chip.hbm_bytes=80 GB", "chip.hbm_bytes", 80e9),
        ("tiers.nvlink.latency_s=2us", "tiers.nvlink.latency_s", 2e-6),
        ("tiers.nvlink.base_latency_s=0.02ms", "tiers.nvlink.base_latency_s", 2e-5),
        ("chip.tdp_w=1.2kW", "chip.tdp_w", 1200.0),
        ("chip.peak_flops_per_s.bf16=989TFLOPS", "chip.peak_flops_per_s.bf16", 989e12),
        ("tiers.scale_out.bytes_per_s=400Gb/s", "tiers.scale_out.bytes_per_s", 50e9),
    ],
)
def test_values_with_units(text, path, si):
    """`--set chip.hbm_bytes_per_s=16TB/s` used to be refused (issue 15)."""
    from emu.catalog import load_system
    from emu.struct import float_leaves

    p, v = parse_override(text)
    assert p == path and v == pytest.approx(si)
    s = apply_overrides(load_system("gb200_nvl72"), {p: v})
    assert float(float_leaves(s)[path]) == pytest.approx(si, rel=1e-6)


@pytest.mark.parametrize(
    "text,needle",
    [
        ("chip.tdp_w=3furlongs", "unknown unit 'furlongs' in '3furlongs'; known units: GB"),
        ("chip.tdp_w=16TB/s", "'16TB/s' is in bytes/s, but chip.tdp_w takes W (W, kW, MW)"),
        ("facility.pue=1.2GB", "facility.pue takes a plain number"),
        ("chip.hbm_bytes=80gb", "unknown unit 'gb'"),  # bits or bytes? refused, not guessed
    ],
)
def test_unknown_or_mismatched_units_are_refused(text, needle):
    from emu.catalog import load_system

    with pytest.raises(ValueError, match=re.escape(needle)):
        p, v = parse_override(text)
        apply_overrides(load_system("gb200_nvl72"), {p: v})
