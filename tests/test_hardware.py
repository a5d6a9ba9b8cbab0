"""emu.hardware: bounds declared beside the fields, checked by emu.struct.check."""

import jax.numpy as jnp
import pytest

import emu
from emu.hardware import Chip, Facility, Host, Overlap, example_chip, example_overlap, peak_flops
from emu.struct import check, field_info, replace, set_path


def test_every_hardware_field_declares_bounds_unit_or_help():
    for cls in (Chip, Host, Facility, Overlap):
        info = field_info(cls)
        leaves = [f for f in cls.__dataclass_fields__.values() if f.metadata.get("pytree_node")]
        assert {f.name for f in leaves} == set(info), cls.__name__
        for name, i in info.items():
            assert i.help, f"{cls.__name__}.{name} has no help"
            assert i.lo > float("-inf"), f"{cls.__name__}.{name} has no lower bound"


@pytest.mark.parametrize("name", emu.list_systems())
def test_catalog_systems_pass_the_declared_bounds(name):
    check(emu.load_system(name), name)


@pytest.mark.parametrize(
    "path,value,needle",
    [
        ("chip.matmul_efficiency", 1e-38, r"in \[0.01, 1\] \(got 1e-38\)"),  # subnormal
        ("chip.kernel_overhead_s", 1e-40, "float32 range"),  # subnormal where 0 is allowed
        ("chip.matmul_efficiency", 1e-3, r"in \[0.01, 1\]"),  # below the meaningful minimum
        ("chip.hbm_efficiency", 1.2, r"in \[0.01, 1\]"),
        ("chip.hbm_bytes", 186.0, "bytes"),  # GB instead of bytes
        ("chip.tdp_w", float("inf"), "chip.tdp_w must be"),
        ("chip.idle_w", 5000.0, "chip.idle_w=5000 exceeds chip.tdp_w"),
        ("chip.peak_flops_per_s.fp8", 5.0, "FLOP/s"),
        ("facility.psu_efficiency", 0.5, r"in \(0.5, 1\]"),
        ("facility.pue", 0.9, "facility.pue"),
        ("overlap.tp", 1.5, "overlap.tp"),
        ("overlap.host_kernel_s", -1e-6, "overlap.host_kernel_s"),
        ("tiers.nvlink.latency_s", 1.0, "seconds|s \\(got 1\\)"),
        ("tiers.nvlink.latency_s", 1e-39, "float32 range"),
        ("tiers.nvlink.domain_chips", 72.5, "integer"),
        ("n_chips", 2e5, "outermost tier"),
        ("host.cpu_w", float("nan"), "host.cpu_w"),
    ],
)
def test_bad_system_values_are_rejected_naming_the_path(path, value, needle):
    system = set_path(emu.load_system("gb200_nvl72"), path, jnp.float32(value))
    with pytest.raises(ValueError, match=needle) as e:
        check(system, "system 'gb200_nvl72'")
    assert str(e.value).startswith("system 'gb200_nvl72': ")


def test_zero_peak_means_unsupported_but_bf16_or_fp16_is_required():
    chip = example_chip()
    peaks = {**chip.peak_flops_per_s, "fp4": jnp.float32(0.0)}
    check(replace(chip, peak_flops_per_s=peaks))
    none = {k: jnp.float32(0.0) for k in peaks}
    with pytest.raises(ValueError, match="bf16 or fp16 must be > 0"):
        check(replace(chip, peak_flops_per_s=none))


def test_peak_flops_names_the_precision():
    assert float(peak_flops(example_chip(), "fp8")) == pytest.approx(1979e12)
    with pytest.raises(ValueError, match="unknown precision 'fp6'"):
        peak_flops(example_chip(), "fp6")


def test_examples_pass_their_bounds():
    check(example_chip())
    check(example_overlap())


def test_usable_memory_is_the_reported_capacity_less_the_reserve(catalog):
    from emu.hardware import usable_hbm_bytes
    from emu.struct import replace

    h100 = catalog["h100"].chip
    # nvidia-smi 81559 MiB less 2.5 GiB: 77.1 GiB, more than the decimal "80 GB" minus nothing
    assert float(h100.hbm_bytes) == 81559 * 2**20
    assert float(usable_hbm_bytes(h100)) == pytest.approx(81559 * 2**20 - 2.5 * 2**30, rel=1e-6)
    cm = catalog["cm"].chip  # 2 dies x (64 GiB - 4 GiB)
    assert float(usable_hbm_bytes(cm)) == pytest.approx(2 * (64 - 4) * 2**30, rel=1e-6)
    with pytest.raises(ValueError, match="leaves no memory"):
        check(replace(h100, hbm_reserve_bytes=jnp.float32(90e9)))
