"""emu.topology: group placement over tiers, reshaping, and the declared tier bounds."""

import jax
import jax.numpy as jnp
import pytest

import emu
from emu.struct import check, field_info, replace
from emu.topology import (
    TOPOLOGY_KNOBS,
    System,
    Tier,
    example_system,
    participants,
    reshape,
    tier_names,
)

f32 = jnp.float32


def test_participants_multiply_to_the_group_size():
    sys = example_system()
    for size, stride in ((1, 1), (8, 1), (16, 1), (4, 8), (64, 2)):
        n = participants(sys.tiers, f32(size), f32(stride))
        prod = 1.0
        for x in n:
            prod *= float(x)
        assert prod == pytest.approx(size)
    # ranks 8 apart leave the 8-chip NVLink domain at once
    assert [float(x) for x in participants(sys.tiers, f32(4), f32(8))] == [1.0, 4.0]


def test_reshape_scales_bandwidth_and_power_and_flags_copper_reach():
    sys = example_system()
    s, bad = reshape(sys, scaleup_bw=2.0)
    assert float(s.tiers[0].bytes_per_s) == pytest.approx(2 * float(sys.tiers[0].bytes_per_s))
    assert float(bad) == 0.0
    _, bad = reshape(sys, domain=576.0, optics_share=0.0)  # copper reaches 72 chips
    assert float(bad) > 0.0
    with pytest.raises(ValueError, match="unknown topology knob"):
        reshape(sys, domian=8.0)
    assert set(TOPOLOGY_KNOBS) >= {"domain", "scaleup_bw", "scaleout_bw"}


def test_reshape_is_differentiable():
    g = jax.grad(lambda x: reshape(example_system(), scaleup_bw=x)[0].tiers[0].bytes_per_s)(
        f32(1.0)
    )
    assert float(g) == pytest.approx(450e9, rel=1e-6)


def test_tier_and_system_bounds_are_declared_and_checked():
    # every leaf declares its bounds; the one static field with metadata is the topology
    assert set(field_info(Tier)) == {
        f for f, v in Tier.__dataclass_fields__.items() if v.metadata.get("pytree_node")
    } | {"topology"}
    assert "n_chips" in field_info(System)
    sys = example_system()
    check(sys)
    assert tier_names(sys) == ["nvlink", "infiniband"]
    nv, ib = sys.tiers
    with pytest.raises(ValueError, match="used twice"):
        check(replace(sys, tiers=(nv, replace(ib, name="nvlink"))))
    with pytest.raises(ValueError, match="no smaller than the tier inside it"):
        check(replace(sys, tiers=(nv, replace(ib, domain_chips=f32(4)))))
    with pytest.raises(ValueError, match=r"oversubscription must be in \[1, 64\]"):
        check(replace(sys, tiers=(nv, replace(ib, oversubscription=f32(0.5)))))
    with pytest.raises(
        ValueError, match="unknown tiers.nvlink.topology 'torus'; known: switch, mesh"
    ):
        check(replace(sys, tiers=(replace(nv, topology="torus"), ib)))


def test_scale_up_domains_tile_the_system():
    # a scale-up domain holds whole domains of the tier inside it and divides the system,
    # where it is no larger (a group straddling two domains is not modelled); the
    # outermost, scale-out tier is the whole cluster and need not be a multiple
    with pytest.raises(ValueError, match=r"domain_chips=3 does not divide the system's n_chips=8"):
        emu.load_system("dgx_h100", {"tiers.nvlink.domain_chips": 3})
    with pytest.raises(ValueError, match=r"ub_supernode.domain_chips=100 is not a multiple of"):
        emu.load_system("cloudmatrix384", {"tiers.ub_supernode.domain_chips": 100})
    assert float(emu.load_system("dgx_h100", {"tiers.nvlink.domain_chips": 16}).n_chips) == 8
    assert float(emu.load_system("gb200_nvl72", {"tiers.nvlink.domain_chips": 36}).n_chips) == 72


# --- dies as ranks (issue 11): the TOML keeps packages, the cost model computes per die ---


def test_cloudmatrix_ranks_are_dies(catalog):
    from emu.topology import n_ranks, node_tier, rank_system

    cm = catalog["cm"]
    assert float(cm.n_chips) == 384 and float(n_ranks(cm)) == 768
    r = rank_system(cm)
    assert float(r.n_chips) == 768 and float(r.chip.dies_per_chip) == 1
    # per die: half the package (facts §25: 376 TF BF16, 64 GB at 1.6 TB/s, UB 196 GB/s)
    assert float(r.chip.peak_flops_per_s["bf16"]) == pytest.approx(376e12, rel=1e-6)
    assert float(r.chip.hbm_bytes_per_s) == pytest.approx(1.6e12, rel=1e-6)
    assert float(r.chip.hbm_bytes) == pytest.approx(65536 * 2**20, rel=1e-6)
    assert float(r.chip.tdp_w) == pytest.approx(400.0)
    die, ub_node, ub_super, roce = r.tiers
    assert die.link == "d2d" and die.topology == "mesh" and float(die.domain_chips) == 2
    assert float(die.bytes_per_s) == pytest.approx(270e9, rel=1e-6)
    assert float(ub_node.domain_chips) == 16 and float(ub_super.domain_chips) == 768
    assert float(ub_node.bytes_per_s) == pytest.approx(196e9, rel=1e-6)
    assert float(roce.bytes_per_s) == pytest.approx(25e9, rel=1e-6)  # 200 Gb/s per die
    # totals are unchanged and the view is idempotent
    assert float(r.n_chips * r.chip.peak_flops_per_s["bf16"]) == pytest.approx(
        float(cm.n_chips * cm.chip.peak_flops_per_s["bf16"]), rel=1e-6
    )
    assert rank_system(r) is r
    assert node_tier(cm).name == "ub_node"  # the die tier holds one package


def test_one_die_per_chip_is_the_system_itself(catalog):
    from emu.topology import rank_system

    nvl = catalog["nvl72"]
    assert rank_system(nvl) is nvl
    traced = jax.jit(lambda s: rank_system(s).tiers[0].bytes_per_s)(nvl)
    assert float(traced) == float(nvl.tiers[0].bytes_per_s)  # x / 1 is exact


def test_rank_power_adds_up_to_the_package(catalog):
    from emu.power import full_load_power
    from emu.topology import rank_system

    cm = catalog["cm"]
    whole = full_load_power(cm)
    dies = full_load_power(rank_system(cm))
    assert float(dies.it_w) == pytest.approx(float(whole.it_w), rel=1e-5)
