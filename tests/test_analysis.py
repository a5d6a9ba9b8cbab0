"""emu.analysis: run's JSON object, describe's totals, sensitivity's elasticities."""

import math

import pytest

import emu
from emu.analysis import describe, run, sensitivity


@pytest.fixture(scope="module")
def small():
    system, model = emu.load_system("dgx_h100"), emu.load_model("llama3_8b")
    return system, model, emu.make_plan(tp=8, dp=1, global_batch=8, seq_len=4096)


def test_run_object(small):
    d = run(*small)
    assert d["system"] == "dgx_h100" and d["phase"] == "train" and d["plan"]["tp"] == 8
    assert d["ttft_s"] is None and d["tpot_s"] is None  # only in prefill / decode
    assert isinstance(d["feasible"], bool) and d["memory"]["feasible"] == d["feasible"]
    assert d["compile_s"] > 0 and d["breakdown"]["total_s"] == pytest.approx(d["step_time_s"])


def test_run_refuses_a_non_finite_result(small):
    system, model, _ = small
    plan = emu.make_plan(tp=8, dp=1, global_batch=1e38, seq_len=1e7)  # overflows float32
    with pytest.raises(ValueError, match="not finite"):
        run(system, model, plan)


def test_describe_totals_are_chip_values_times_chips():
    system = emu.load_system("gb200_nvl72")
    d = describe(system)
    assert d["n_chips"] == 72
    assert d["hbm_bytes"] == pytest.approx(72 * float(system.chip.hbm_bytes))
    assert d["facility_power_w"] == pytest.approx(d["power_w"] * d["pue"], rel=1e-5)


def test_sensitivity_is_sorted_and_scale_free(small):
    d = sensitivity(*small)
    tpj = [abs(v["tokens_per_joule"]) for v in d["elasticities"].values()]
    assert tpj == sorted(tpj, reverse=True)
    e = list(d["elasticities"].values())
    assert all(math.isfinite(v["tokens_per_s"]) for v in e)
    # whole counts with no design meaning have no elasticity (dies_per_chip reported -0.98)
    assert not {"n_chips", "chip.dies_per_chip"} & set(d["elasticities"])
    assert "tiers.nvlink.domain_chips" in d["elasticities"]  # the topology search varies it
