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


def test_stack_names_the_static_field_that_differs():
    """Two models that differ only in their name were "its static fields (... structure)"."""
    import pytest

    import emu

    with pytest.raises(ValueError, match="element 1 differs from element 0 in 'name'"):
        stack([emu.load_model("llama3_8b"), emu.load_model("llama2_7b")])
    with pytest.raises(ValueError, match="differs from element 0 in 'phase'"):
        stack([emu.make_plan(tp=8), emu.make_plan(tp=8, phase="decode")])


def test_a_static_field_by_path_says_it_is_static():
    """`load_model(name, {"ffn": "gelu"})` said "unknown field path 'ffn'. Did you mean d_ff?"."""
    import pytest

    import emu

    with pytest.raises(ValueError, match="'ffn' is a static field .* copy the catalog TOML"):
        emu.load_model("llama3_8b", {"ffn": "gelu"})
    with pytest.raises(ValueError, match="unknown field path 'd_fff'. Did you mean d_ff"):
        emu.load_model("llama3_8b", {"d_fff": 3})


# --- field metadata beside the field, and the one validation path ---

import math  # noqa: E402

import numpy as np  # noqa: E402

from emu.struct import (  # noqa: E402
    FieldInfo,
    check,
    check_value,
    dataclass,
    error,
    field,
    field_info,
    info_at,
    parse_bounds,
    replace,
    static_field,
)


@dataclass
class _Pipe:
    name: str = static_field()
    kind: str = field(static=True, default="copper", choices=("copper", "optical"), help="medium")
    rate: jnp.ndarray = field("(0, 1]", help="a fraction")
    count: jnp.ndarray = field("[1, inf)", integer=True, unit="links", help="links")
    peak: dict = field("[1e9, 1e18]", zero_ok=True, unit="FLOP/s", help="per precision")

    def _cross_check(self, where, at):
        if float(self.count) > 100 and float(self.rate) > 0.5:
            raise error(where, f"{at}count={float(self.count):g} needs {at}rate <= 0.5.")


def _pipe(**kw):
    base = dict(
        name="p",
        rate=jnp.float32(0.5),
        count=jnp.float32(4),
        peak={"a": jnp.float32(1e12), "b": jnp.float32(0.0)},
    )
    return _Pipe(**{**base, **kw})


def test_field_metadata_lives_beside_the_field():
    info = field_info(_Pipe)
    assert set(info) == {"kind", "rate", "count", "peak"}
    assert info["rate"] == FieldInfo(lo=0.0, hi=1.0, lo_open=True, help="a fraction")
    assert info["count"].describe() == "a positive integer (links)"
    assert info["peak"].describe() == "0 or in [1e+09, 1e+18] FLOP/s"
    assert parse_bounds("[0, 1)") == dict(lo=0.0, hi=1.0, lo_open=False, hi_open=True)
    with pytest.raises(ValueError, match="interval"):
        parse_bounds("0..1")


@pytest.mark.parametrize(
    "change,needle",
    [
        (dict(rate=jnp.float32(0.0)), r"rate must be in \(0, 1\] \(got 0\)"),
        (dict(rate=jnp.float32(float("nan"))), "rate must be"),
        (dict(count=jnp.float32(2.5)), r"count must be a positive integer \(links\)"),
        (dict(count=jnp.float32(200.0)), "count=200 needs rate <= 0.5"),  # cross-field rule
        (dict(kind="steel"), "unknown kind 'steel'; known: copper, optical"),
        (dict(peak={"a": jnp.float32(5.0)}), r"peak.a must be 0 or in \[1e\+09"),
        (dict(rate=jnp.float32(1e-39)), "float32 range"),  # subnormal
    ],
)
def test_check_rejects_values_outside_their_declared_bounds(change, needle):
    pipe = _pipe(**change)
    if "count=200" in needle:
        pipe = replace(pipe, rate=jnp.float32(0.9))
    with pytest.raises(ValueError, match=needle) as e:
        check(pipe, "pipe 'p'")
    assert str(e.value).startswith("pipe 'p': ")


def test_check_walks_nested_trees_and_batches():
    check(_pipe())
    stacked = stack([_pipe(), _pipe(rate=jnp.float32(0.25))])
    with pytest.raises(ValueError, match="rate must be"):
        check(replace(stacked, rate=jnp.asarray([0.5, 2.0], jnp.float32)))
    sys = example_system()
    assert info_at(sys, "chip.tdp_w").unit == "W"
    assert info_at(sys, "tiers.nvlink.bytes_per_s").unit == "bytes/s"
    assert info_at(sys, "chip.peak_flops_per_s.bf16").zero_ok
    assert info_at(sys, "overlap.host_kernel_s").hi == 1e-2
    assert info_at(sys, "nonsense.path") is None


def test_check_value_converts_raw_numbers_to_float32():
    assert check_value(9e11, FieldInfo(lo=1e6, hi=1e14), "bw") == pytest.approx(9e11)
    for bad, needle in (
        (True, "must be a number"),
        ("9e11", "must be a number"),
        (1e40, "float32 range"),
        (1e-46, "float32 range"),  # underflows to 0
        (1e-39, r"in \[1e\+06"),  # below the bound (and a subnormal)
        (math.inf, "must be"),
        (-1.0, r"bw must be in \[1e\+06, 1e\+14\] \(got -1\)"),
    ):
        with pytest.raises(ValueError, match=needle):
            check_value(bad, FieldInfo(lo=1e6, hi=1e14), "bw")
    assert check_value(np.float64(2.0), None, "x") == 2.0
    with pytest.raises(ValueError, match="float32 range"):
        check_value(1e-39, FieldInfo(lo=0.0), "latency_s")  # a subnormal where 0 is allowed
