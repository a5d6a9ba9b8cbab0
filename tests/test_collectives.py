import math

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
    assert near == pytest.approx(1e8 / (450e9 * 0.836) + 0.71e-6, rel=1e-4)
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
        want = 2 * 7 / 8 * 1e9 / (50e9 * 0.933)  # the InfiniBand tier of example_system
        assert float(t) == pytest.approx(want, rel=1e-5)
        with pytest.raises(ValueError, match="already registered"):
            collectives.register("toy-direct")(direct)
        from emu.plan import make_plan

        assert make_plan(algorithm="toy-direct").algorithm == "toy-direct"
    finally:
        del collectives.ALGORITHMS["toy-direct"]
    with pytest.raises(ValueError, match="unknown algorithm 'toy-direct'"):
        collectives.all_reduce_time(SYS, f32(1e9), f32(8), algorithm="toy-direct")


# --- networks as measured (issue 11): shapes, bounds, golden curves, gradients ---


@pytest.fixture(scope="module")
def network_fit():
    """Catalog systems with the link parameters of the standalone network fit
    (tests/data/network_fit.toml), so the curves below check the collective formulas at one
    fixed parameter set and do not move with a refit of the shipped calibration (whose
    priors are assumptions, not fits)."""
    import tomllib
    from pathlib import Path

    from emu.catalog import calibration, load_system

    cal = calibration(fitted=False)
    path = Path(__file__).parent / "data" / "network_fit.toml"
    cal["link"] = tomllib.loads(path.read_text())["link"]
    return {
        n: load_system(n, calibration=cal)
        for n in ("gb200_nvl72", "dgx_h100", "atlas800t_a2", "cloudmatrix384", "hgx_h800")
    }  # noqa: E501


def _busbw(system, size, n, algorithm="ring"):
    t = collectives.all_reduce_time(system, f32(size), f32(n), algorithm=algorithm)
    return size / float(t) * 2 * (n - 1) / n


def test_golden_allreduce_curves_of_the_measured_sources(network_fit):
    nvl = network_fit["gb200_nvl72"]
    # facts §27: Azure ND GB200, 4 GPUs of one tray, NCCL ring: 680 GB/s at 8 GB
    assert _busbw(nvl, 8 * 2**30, 4) == pytest.approx(680e9, rel=0.03)
    assert _busbw(nvl, 2**20, 4) == pytest.approx(80e9, rel=0.15)  # 80 GB/s at 1 MB
    # facts §27: CoreWeave, 1,440 GPUs in 20 racks: 346 GB/s at 4 GB (the ring's 2.9k hops)
    assert _busbw(nvl, 4 * 2**30, 1440, "hierarchical") == pytest.approx(346e9, rel=0.03)
    # facts §26: 910B HCCS full mesh, m of 8 NPUs use m - 1 of 7 links: 18 / 45 / 126 GB/s
    a2 = network_fit["atlas800t_a2"]
    got = [_busbw(a2, 4 * 2**30, n, "hierarchical") for n in (2, 4, 8)]
    assert got == pytest.approx([18e9, 45e9, 126e9], rel=0.15)
    # facts "Bandwidth": NVLS all-reduce on 8 H100s ~480 GB/s, ring ~370
    h = network_fit["dgx_h100"]
    assert _busbw(h, 8 * 2**30, 8, "hierarchical") == pytest.approx(480e9, rel=0.03)
    assert _busbw(h, 8 * 2**30, 8, "ring") == pytest.approx(370e9, rel=0.03)


@settings(max_examples=30, deadline=None)
@given(
    name=st.sampled_from(["gb200_nvl72", "dgx_h100", "atlas800t_a2", "cloudmatrix384"]),
    n=st.sampled_from([2, 3, 4, 8, 16, 72, 128, 768]),
    stride=st.sampled_from([1, 2, 8]),
    algorithm=st.sampled_from(["hierarchical", "ring", "ring_flat"]),
)
def test_busbw_rises_with_size_and_stays_below_the_link(network_fit, name, n, stride, algorithm):
    from emu.topology import members, rank_system

    system = network_fit[name]
    sizes = [2.0**k for k in range(12, 36, 2)]
    bw = [_busbw(system, s, n, algorithm) for s in sizes]
    assert all(b2 >= b1 * (1 - 1e-5) for b1, b2 in zip(bw, bw[1:], strict=False)), bw
    # bounded by the fastest link a rank has: eta W x (NVLS gain) on its innermost tier
    r = rank_system(system)
    _, m = members(r.tiers, f32(n), f32(stride))
    cap = max(
        float(collectives.effective_bandwidth(t))
        * float(t.allreduce_speedup)
        * min(float(m[k - 1]) if k else 1.0, float(t.ring_channels))
        for k, t in enumerate(r.tiers)
    )
    assert max(bw) <= cap * (1 + 1e-5)


def test_nothing_to_send_costs_nothing(network_fit):
    for name, s in network_fit.items():
        for fn in TIMES:
            assert float(fn(s, f32(0.0), f32(64))) == 0.0, name
            assert float(fn(s, f32(1e9), f32(1))) == 0.0, name
        a = collectives.moe_all_to_all(s, f32(0.0), 8.0, f32(64))
        assert float(a.time_s) == 0.0 and float(a.bottleneck_bytes) == 0.0
        assert float(collectives.moe_all_to_all_time(s, f32(1e6), 8.0, f32(1))) == 0.0
        assert float(collectives.send_recv_time(s, f32(0.0), stride=f32(8))) == 0.0


def test_ring_flat_is_slower_across_nodes_and_equal_inside(network_fit):
    h = network_fit["dgx_h100"]
    inside = [
        float(collectives.all_gather_time(h, f32(1e9), f32(8), algorithm=a))
        for a in ("ring", "ring_flat")
    ]
    assert inside[0] == pytest.approx(inside[1], rel=1e-6)
    across = [
        float(collectives.all_gather_time(h, f32(1e9), f32(32), algorithm=a))
        for a in ("ring", "ring_flat")
    ]
    assert across[1] > 4 * across[0]  # one NIC instead of eight


def test_moe_dispatch_on_cloudmatrix_dies_follows_deepep_ascend(network_fit):
    # facts §2 (DEA): normal dispatch, 4,096 tokens x 7,168 INT8 (+4 scale) bytes, top-8,
    # dedup per rank: bottleneck bandwidth 146 / 107 / 102 / 81 / 57 GB/s at EP 8 ... 128 dies
    cm = network_fit["cloudmatrix384"]
    got = []
    for ep in (8, 16, 32, 64, 128):
        a = collectives.moe_all_to_all(cm, f32(4096 * 7172), 8.0, f32(ep), dedup=1.0)
        got.append(float(a.bottleneck_bytes / a.time_s) / 1e9)
    # falls with the group (the peer penalty) from ~146 towards 57, as measured
    assert all(b < a for a, b in zip(got, got[1:], strict=False))
    assert got[0] == pytest.approx(146, rel=0.25) and got[0] / got[-1] > 1.3


def test_one_sided_all_to_all_on_nvlink5(network_fit):
    # facts §27 (TRT18): one-sided dispatch at batch 2048, BF16 14,336 B/token: 753 GB/s of
    # "logical" bandwidth (T min(e, K) b / t) at EP 8, falling to 588 at EP 64
    nvl = network_fit["gb200_nvl72"]
    got = []
    for ep in (8, 64):
        t = collectives.moe_all_to_all_time(nvl, f32(2048 * 14336), 8.0, f32(ep), dedup=0.0)
        got.append(2048 * 8 * 14336 / float(t) / 1e9)
    assert got[0] == pytest.approx(753, rel=0.15) and got[1] == pytest.approx(588, rel=0.15)
    # the combine's fixed cost (it also sums the K returned copies, as they arrive) makes it
    # slower than the dispatch of the same bytes
    d = collectives.moe_all_to_all_time(nvl, f32(2048 * 14336), 8.0, f32(8), dedup=0.0)
    c = collectives.moe_all_to_all_time(
        nvl, f32(2048 * 14336), 8.0, f32(8), dedup=0.0, combine=True
    )
    assert float(c) > float(d)


def test_dedup_sends_fewer_copies_and_grows_with_tokens(network_fit):
    h800 = network_fit["hgx_h800"]
    for ep in (8, 16, 64):
        one = collectives.moe_all_to_all(h800, f32(4096 * 7392), 8.0, f32(ep), dedup=1.0)
        each = collectives.moe_all_to_all(h800, f32(4096 * 7392), 8.0, f32(ep), dedup=0.0)
        assert float(one.bottleneck_bytes) <= float(each.bottleneck_bytes) * (1 + 1e-6)
    ts = [
        float(collectives.moe_all_to_all_time(h800, f32(t * 7392), 8.0, f32(16)))
        for t in (1, 128, 4096)
    ]
    assert ts[0] < ts[1] < ts[2]


def test_per_copy_message_floor(network_fit):
    """`a2a_message_s`: a kernel that sends each token copy on its own (dedup 0) takes at
    least that long per copy, so below h b / tau its time no longer falls with the bytes
    (CloudMatrix-Infer's decode dispatch moves half the combine's bytes in about the
    combine's time, facts §26); deduplicated kernels and calls without a token count are
    unaffected; its gradient is finite and matches finite differences."""

    def with_floor(s, tau):
        tiers = tuple(
            replace(t, a2a_message_s=jnp.asarray(tau, jnp.asarray(t.a2a_message_s).dtype))
            if t.link == "ub"
            else t
            for t in s.tiers
        )
        return replace(s, tiers=tiers)

    cm = network_fit["cloudmatrix384"]
    floor, none = with_floor(cm, 1e-7), with_floor(cm, 0.0)

    def t(s, b, dedup=0.0, tokens=128.0):
        return float(
            collectives.moe_all_to_all_time(s, f32(128 * b), 8.0, f32(8), dedup=dedup,
                                            tokens=f32(tokens))
        )  # fmt: skip

    assert t(floor, 3586) == pytest.approx(t(floor, 7172), rel=1e-6)  # message-bound
    assert t(none, 7172) - t(none, 3586) > 1e-5  # without the floor the bytes matter
    assert t(floor, 7172) > 1.3 * t(none, 7172)
    # large copies are bandwidth-bound either way; dedup and a missing token count: no floor
    assert t(floor, 4 * 14336) == pytest.approx(t(none, 4 * 14336), rel=1e-6)
    assert t(floor, 7172, dedup=1.0) == pytest.approx(t(none, 7172, dedup=1.0), rel=1e-6)
    assert t(floor, 7172, tokens=0.0) == pytest.approx(t(none, 7172), rel=1e-6)
    with jax.enable_x64(True):
        s64 = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float64), floor)

        def logt(tau):
            return jnp.log(
                collectives.moe_all_to_all_time(with_floor(s64, tau), 128.0 * 7172, 8.0, 8.0,
                                                dedup=0.0, tokens=128.0)
            )  # fmt: skip

        tau, h = 1e-7, 1e-5
        analytic = float(jax.grad(logt)(jnp.float64(tau))) * tau
        fd = (float(logt(tau * np.exp(h))) - float(logt(tau * np.exp(-h)))) / (2 * h)
        assert np.isfinite(analytic) and analytic > 0.1
        assert analytic == pytest.approx(fd, rel=1e-3)


def test_ring_chunking_spans_the_alpha_beta_bound_to_the_optimal_pipeline(network_fit):
    """`ring_chunking` c of the farthest spanned tier: t = base + x/B + L + 2 c sqrt(x L / B);
    c = 0 is the alpha-beta bound, c = 1 the optimally chunked pipeline, time rising with c
    in between; the inner tier's c does not matter once the ring crosses the outer one."""
    gb = network_fit["gb200_nvl72"]

    def with_c(s, k, c):
        t = replace(s.tiers[k], ring_chunking=f32(c))
        return replace(s, tiers=s.tiers[:k] + (t,) + s.tiers[k + 1 :])

    def t(s, size=128.0, nbytes=2.0**26):
        return float(collectives.all_reduce_time(s, f32(nbytes), f32(size), algorithm="ring"))

    inv_bw, hops, base, *_ = collectives.ring_bandwidth(gb, f32(128.0))
    x, lat = 2 * 127 / 128 * 2.0**26 * float(inv_bw), 2 * float(hops)
    assert t(with_c(gb, 1, 0.0)) == pytest.approx(float(base) + x + lat, rel=1e-5)
    assert t(with_c(gb, 1, 1.0)) == pytest.approx(
        float(base) + (math.sqrt(x) + math.sqrt(lat)) ** 2, rel=1e-5
    )
    times = [t(with_c(gb, 1, c)) for c in (0.0, 0.25, 0.5, 1.0)]
    assert all(a < b for a, b in zip(times, times[1:], strict=False))
    # 128 ranks cross the NVLink domain: the NVLink tier's c plays no part; 4 ranks do not
    assert t(with_c(gb, 0, 0.0)) == pytest.approx(t(with_c(gb, 0, 1.0)), rel=1e-6)
    assert t(with_c(gb, 0, 0.0), size=4.0) < t(with_c(gb, 0, 1.0), size=4.0)


_NEW_LINK_FIELDS = (
    "efficiency", "latency_s", "ring_chunking", "base_latency_s", "ring_channels",
    "nvls_latency_s", "a2a_efficiency", "a2a_peer_penalty", "dispatch_latency_s",
    "combine_latency_s", "a2a_latency_hiding",
)  # fmt: skip


def test_gradients_of_the_link_parameters_match_finite_differences(network_fit):
    """d log t / d log p of every per-link collective parameter, jax.grad against central
    finite differences in log space (float64), on cases where each parameter matters
    (`a2a_message_s`, 0 in these systems, in `test_per_copy_message_floor`)."""
    f64 = lambda tree: jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float64), tree)  # noqa: E731
    cases = [
        # (system, function of the system, tier index, fields that matter there); nested
        # tiers of one link type act as one fabric with the inner tier's parameters
        ("gb200_nvl72", lambda s: collectives.all_reduce_time(s, 2.0**28, 128.0, algorithm="ring"),
         1, ("efficiency", "latency_s", "ring_channels", "ring_chunking")),
        ("gb200_nvl72", lambda s: collectives.all_reduce_time(s, 2.0**24, 4.0, algorithm="ring"),
         0, ("efficiency", "latency_s", "base_latency_s")),
        ("dgx_h100", lambda s: collectives.all_reduce_time(s, 2.0**22, 8.0),
         0, ("efficiency", "nvls_latency_s", "base_latency_s")),
        ("cloudmatrix384", lambda s: collectives.moe_all_to_all_time(s, 4096.0 * 7172, 8.0, 64.0),
         1, ("a2a_efficiency", "a2a_peer_penalty", "dispatch_latency_s")),
        ("cloudmatrix384", lambda s: collectives.moe_all_to_all_time(
            s, 128.0 * 14336, 8.0, 32.0, dedup=0.0, combine=True),
         1, ("a2a_efficiency", "a2a_peer_penalty", "combine_latency_s", "a2a_latency_hiding")),
    ]  # fmt: skip
    seen = set()
    with jax.enable_x64(True):
        for name, fn, k, fields in cases:
            system = f64(network_fit[name])
            logt = lambda s, fn=fn: jnp.log(fn(s))  # noqa: E731
            grad = jax.grad(logt)(system)
            for field in fields:
                p = float(getattr(system.tiers[k], field))
                analytic = float(getattr(grad.tiers[k], field)) * p

                def at(scale, field=field, system=system, k=k, p=p, logt=logt):
                    t = replace(system.tiers[k], **{field: jnp.float64(p * scale)})
                    tiers = system.tiers[:k] + (t,) + system.tiers[k + 1 :]
                    return float(logt(replace(system, tiers=tiers)))

                h = 1e-5
                fd = (at(np.exp(h)) - at(np.exp(-h))) / (2 * h)
                assert abs(analytic) > 1e-4, (name, field)
                assert analytic == pytest.approx(fd, rel=1e-3, abs=1e-6), (name, field)
                seen.add(field)
    assert seen == set(_NEW_LINK_FIELDS)
