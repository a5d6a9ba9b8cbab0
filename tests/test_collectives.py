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


# --- the algorithm registry: every entry conforms; adding one is a local change ---

TIMES = (
    collectives.all_reduce_time,
    collectives.reduce_scatter_time,
    collectives.all_gather_time,
)


@pytest.mark.parametrize("name", list(collectives.ALGORITHMS))
def test_every_registered_algorithm_runs_through_jit_vmap_and_grad(name):
    sizes = jnp.array([0.0, 1e3, 1e6, 1e9], dtype=jnp.float32)
    groups = jnp.array([8.0, 2.0, 16.0, 64.0], dtype=jnp.float32)
    strides = jnp.array([1.0, 8.0, 1.0, 2.0], dtype=jnp.float32)
    for fn in TIMES:

        def t(b, g, s, fn=fn):
            return fn(SYS, b, g, stride=s, algorithm=name)

        loop = [float(t(b, g, s)) for b, g, s in zip(sizes, groups, strides, strict=True)]
        batch = jax.jit(jax.vmap(t))(sizes, groups, strides)
        np.testing.assert_allclose(np.asarray(batch), loop, rtol=1e-6)
        assert all(x >= 0 and np.isfinite(x) for x in loop)
        assert float(t(f32(1e9), f32(1), f32(1))) == 0.0  # a group of one costs nothing
        assert float(t(f32(2e9), f32(8), f32(1))) >= float(t(f32(1e9), f32(8), f32(1)))
        grads = jax.vmap(jax.grad(t, argnums=(0, 1)))(sizes, groups, strides)
        assert all(np.isfinite(np.asarray(x)).all() for x in grads)
        # gradient with respect to the system reaches the tiers, finite
        gs = jax.grad(lambda s, fn=fn: fn(s, f32(1e8), f32(16), algorithm=name))(SYS)
        assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree_util.tree_leaves(gs))
    # the plan knob accepts every registered name, and the step runs under it
    from emu.plan import make_plan
    from emu.step import train_step
    from emu.workload import example_model

    plan = make_plan(tp=8, global_batch=8, seq_len=1024, algorithm=name)
    assert float(train_step(SYS, example_model(), plan).tp_comm_s) > 0


def test_a_toy_algorithm_is_one_function_plus_one_registry_entry():
    @collectives.register("toy-direct")
    def direct(system, nbytes, size, stride, *, passes, reduce):
        # every chip sends its share straight to every peer over the slowest tier it spans
        bw = min(collectives.effective_bandwidth(t) for t in system.tiers)
        return passes * (size - 1.0) / jnp.maximum(size, 1.0) * nbytes / bw

    try:
        t = collectives.all_reduce_time(SYS, f32(1e9), f32(8), algorithm="toy-direct")
        want = 2 * 7 / 8 * 1e9 / (50e9 * 0.85)  # the InfiniBand tier of example_system
        assert float(t) == pytest.approx(want, rel=1e-5)
        with pytest.raises(ValueError, match="already registered"):
            collectives.register("toy-direct")(direct)
        from emu.plan import make_plan

        assert make_plan(algorithm="toy-direct").algorithm == "toy-direct"
    finally:
        del collectives.ALGORITHMS["toy-direct"]
    with pytest.raises(ValueError, match="unknown algorithm 'toy-direct'"):
        collectives.all_reduce_time(SYS, f32(1e9), f32(8), algorithm="toy-direct")
