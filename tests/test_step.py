import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from emu.objective import evaluate
from emu.parallelism import make_plan
from emu.step import train_step
from emu.struct import replace, stack


def _plans():
    return [
        make_plan(tp=8, pp=1, dp=9, global_batch=72, seq_len=4096),
        make_plan(tp=4, pp=2, dp=9, global_batch=144, seq_len=8192, recompute="full"),
        make_plan(tp=8, pp=9, dp=1, global_batch=32, seq_len=2048, zero=3),
        make_plan(tp=2, pp=4, dp=9, global_batch=72, seq_len=8192, vpp=2, sp=False),
    ]


def test_step_is_bounded_by_compute_and_communication(catalog):
    for plan in _plans():
        b = train_step(catalog["nvl72"], catalog["llama8"], plan)
        comm = b.tp_comm_s + b.cp_comm_s + b.pp_comm_s + b.dp_comm_s
        total = float(b.total_s)
        assert max(float(b.compute_s), 0.0) <= total
        assert total <= float(b.compute_s + comm + b.bubble_s + b.optimizer_s) * (1 + 1e-6)


def test_faster_scale_up_never_slows_a_step(catalog):
    sys = catalog["nvl72"]
    fast = replace(
        sys, tiers=(replace(sys.tiers[0], bytes_per_s=sys.tiers[0].bytes_per_s * 2), *sys.tiers[1:])
    )
    for plan in _plans():
        assert float(train_step(fast, catalog["llama8"], plan).total_s) <= float(
            train_step(sys, catalog["llama8"], plan).total_s
        ) * (1 + 1e-6)


def test_vmapped_batch_equals_loop_and_compiles_once(catalog):
    plans = _plans()
    batch = stack(plans[:2] + plans[3:])  # same static structure
    sys, model = catalog["nvl72"], catalog["llama8"]

    @jax.jit
    @chex.assert_max_traces(n=1)
    def f(p):
        return jax.vmap(lambda q: evaluate(sys, model, q).tokens_per_joule)(p)

    got = np.asarray(f(batch))
    f(batch)  # second call must not retrace
    loop = [float(evaluate(sys, model, p).tokens_per_joule) for p in plans[:2] + plans[3:]]
    np.testing.assert_allclose(got, loop, rtol=1e-5)


def test_pipeline_bubble_matches_1f1b_formula(catalog):
    plan = make_plan(tp=8, pp=4, dp=1, global_batch=16, seq_len=4096)
    b = train_step(catalog["cm"], catalog["llama70"], plan)
    nmb = 16
    per_mb = (
        float(b.total_s) - float(b.bubble_s) - float(b.optimizer_s) - float(b.exposed_dp_s)
    ) / nmb
    assert float(b.bubble_s) == pytest.approx(3 * per_mb, rel=1e-4)


def test_full_recompute_costs_about_a_third_more_compute(catalog):
    base = make_plan(tp=8, dp=9, global_batch=72, seq_len=4096, recompute="selective")
    full = replace(base, recompute=jnp.float32(2))
    c0 = float(train_step(catalog["nvl72"], catalog["llama8"], base).compute_s)
    c1 = float(train_step(catalog["nvl72"], catalog["llama8"], full).compute_s)
    assert 1.2 < c1 / c0 < 1.4


def test_zero_stages_order_dp_traffic(catalog):
    # ZeRO-2 reduce-scatters every micro-batch, ZeRO-3 also gathers weights every one
    sys, model = catalog["h100"], catalog["llama8"]
    dp = [
        float(
            train_step(
                sys, model, make_plan(tp=1, dp=64, global_batch=512, seq_len=2048, zero=z)
            ).dp_comm_s
        )
        for z in (1, 2, 3)
    ]
    assert dp[0] < dp[1] < dp[2]
