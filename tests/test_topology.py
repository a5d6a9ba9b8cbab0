"""emu.topology: group placement over tiers, reshaping, and the declared tier bounds."""

import jax
import jax.numpy as jnp
import pytest

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
    assert set(field_info(Tier)) == {
        f for f, v in Tier.__dataclass_fields__.items() if v.metadata.get("pytree_node")
    }
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
