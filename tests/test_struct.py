import jax.numpy as jnp
import pytest

from emu.struct import float_leaves, get_path, set_path, stack
from emu.topology import example_system


def test_float_leaves_addresses_tiers_by_name():
    leaves = float_leaves(example_system())
    assert "tiers.nvlink.bytes_per_s" in leaves
    assert "chip.peak_flops_per_s.bf16" in leaves
    assert all(not isinstance(v, str) for v in leaves.values())


def test_set_path_changes_only_that_leaf():
    s = example_system()
    s2 = set_path(s, "tiers.infiniband.bytes_per_s", jnp.float32(1e11))
    assert float(get_path(s2, "tiers.infiniband.bytes_per_s")) == pytest.approx(1e11)
    assert float(get_path(s2, "tiers.nvlink.bytes_per_s")) == float(s.tiers[0].bytes_per_s)


def test_unknown_path_suggests_close_match():
    with pytest.raises(ValueError, match="Did you mean chip.hbm_bytes_per_s"):
        set_path(example_system(), "chip.hbm_byte_per_s", 1.0)


def test_stack_adds_leading_axis():
    s = stack([example_system(), example_system()])
    assert s.chip.tdp_w.shape == (2,)
