import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emu import collectives
from emu.struct import replace
from emu.topology import example_system

SYS = example_system()
f32 = jnp.float32


def busbw(t, nbytes, n):
    return nbytes / t * 2 * (n - 1) / n


def test_golden_h100_ring_allreduce_busbw():
    # NCCL-212 (facts §10): ring all-reduce on 8 H100s reaches ~370 GB/s bus bandwidth with
    # large messages. Ring algorithm, 8 GB buffer, latency negligible.
    t = collectives.all_reduce_time(SYS, f32(8e9), f32(8), algorithm="ring")
    assert busbw(float(t), 8e9, 8) == pytest.approx(370e9, rel=0.02)


def test_group_of_one_costs_nothing():
    for fn in (
        collectives.all_reduce_time,
        collectives.all_gather_time,
        collectives.reduce_scatter_time,
        collectives.all_to_all_time,
    ):
        assert float(fn(SYS, f32(1e9), f32(1))) == 0.0


def test_crossing_nodes_is_slower_than_inside():
    inside = collectives.all_reduce_time(SYS, f32(1e9), f32(8))
    across = collectives.all_reduce_time(SYS, f32(1e9), f32(8), stride=f32(8))
    assert float(across) > 3 * float(inside)


@settings(max_examples=40, deadline=None)
@given(b=st.floats(1e3, 1e11), k=st.floats(1.01, 10.0), n=st.sampled_from([2, 4, 8, 16, 64]))
def test_monotone_in_bytes_and_bandwidth(b, k, n):
    t1 = float(collectives.all_reduce_time(SYS, f32(b), f32(n)))
    t2 = float(collectives.all_reduce_time(SYS, f32(b * k), f32(n)))
    assert t2 >= t1
    faster = replace(SYS, tiers=tuple(replace(t, bytes_per_s=t.bytes_per_s * k) for t in SYS.tiers))
    t3 = float(collectives.all_reduce_time(faster, f32(b), f32(n)))
    assert t3 <= t1 * (1 + 1e-6)


def test_jit_and_vmap_match_loop():
    sizes = jnp.array([1e3, 1e6, 1e9], dtype=jnp.float32)
    groups = jnp.array([2.0, 8.0, 64.0], dtype=jnp.float32)
    f = jax.jit(jax.vmap(lambda b, g: collectives.all_reduce_time(SYS, b, g)))
    loop = [
        float(collectives.all_reduce_time(SYS, b, g)) for b, g in zip(sizes, groups, strict=True)
    ]
    np.testing.assert_allclose(np.asarray(f(sizes, groups)), loop, rtol=1e-6)


def test_gradients_finite_at_edges():
    def f(b, g):
        return collectives.all_reduce_time(SYS, b, g) + collectives.all_to_all_time(SYS, b, g)

    for b, g in ((0.0, 1.0), (0.0, 8.0), (1e6, 1.0), (1e6, 8.0)):
        gb, gg = jax.grad(f, argnums=(0, 1))(f32(b), f32(g))
        assert np.isfinite(float(gb)) and np.isfinite(float(gg))


def test_send_recv_uses_the_tier_the_pair_shares():
    near = float(collectives.send_recv_time(SYS, f32(1e8), stride=f32(1)))
    far = float(collectives.send_recv_time(SYS, f32(1e8), stride=f32(8)))
    assert near == pytest.approx(1e8 / (450e9 * 0.82) + 1e-6, rel=1e-4)
    assert far > near
