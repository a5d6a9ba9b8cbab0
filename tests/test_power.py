import pytest

from emu.analysis import describe
from emu.catalog import list_systems, load_system
from emu.objective import evaluate
from emu.parallelism import make_plan
from emu.power import full_load_power


def test_cloudmatrix384_totals_come_out_of_the_parts():
    d = describe(load_system("cloudmatrix384"))
    # facts §4: 288.7 PF dense BF16 (752 TF SKU; SA's ~300 PF uses 780 TF); SA: ~559 kW
    assert d["peak_flops_per_s"]["bf16"] == pytest.approx(288.8e15, rel=0.01)
    assert d["power_w"] == pytest.approx(559e3, rel=0.03)
    # 384 packages x 2 dies x 65536 MiB as npu-smi reports it (decimal nominal: 49.2e12)
    assert d["hbm_bytes"] == pytest.approx(384 * 2 * 65536 * 2**20, rel=1e-6)
    assert d["hbm_bytes_per_s"] == pytest.approx(1229e12, rel=0.01)
    assert "fp8" not in d["peak_flops_per_s"]  # 910C has no FP8 (facts §1)


def test_gb200_nvl72_totals_come_out_of_the_parts():
    d = describe(load_system("gb200_nvl72"))
    assert d["peak_flops_per_s"]["bf16"] == pytest.approx(180e15, rel=0.01)
    assert 120e3 <= d["power_w"] <= 145e3  # facts §8, Disagreement 10
    assert d["hbm_bytes_per_s"] == pytest.approx(576e12, rel=0.01)


@pytest.mark.parametrize("name", list_systems())
def test_parts_sum_to_total(name):
    p = full_load_power(load_system(name))
    parts = p.chips_w + p.cpus_w + p.host_other_w + p.switches_w + p.optics_w + p.nics_w
    assert float(parts + p.psu_loss_w) == pytest.approx(float(p.it_w), rel=1e-5)
    assert float(p.facility_w) >= float(p.it_w)


def test_average_power_between_idle_and_full_load(catalog):
    sys = catalog["nvl72"]
    r = evaluate(sys, catalog["llama70"], make_plan(tp=8, dp=9, global_batch=72, seq_len=8192))
    full = float(full_load_power(sys, 72.0).it_w)
    assert 0.5 * full < float(r.power_w) <= full
    assert float(r.tokens_per_joule) == pytest.approx(
        float(r.tokens_per_s) / float(r.power_w), rel=1e-6
    )
