"""emu.objective: throughput, efficiency and energy of a run, and the SLO-limited batch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from emu.objective import RunResult, evaluate, max_batch_under_slo, tokens_per_joule
from emu.parallelism import make_plan


def test_tokens_per_joule_is_tokens_per_s_over_power(catalog):
    sys, model = catalog["nvl72"], catalog["llama8"]
    plan = make_plan(tp=8, dp=9, global_batch=72, seq_len=4096)
    r = evaluate(sys, model, plan)
    assert isinstance(r, RunResult)
    assert float(r.tokens_per_s) == pytest.approx(72 * 4096 / float(r.step_time_s), rel=1e-6)
    assert float(r.tokens_per_joule) == pytest.approx(
        float(r.tokens_per_s) / float(r.power_w), rel=1e-6
    )
    assert float(tokens_per_joule(sys, model, plan)) == pytest.approx(float(r.tokens_per_joule))
    assert float(r.energy_per_step_j) == pytest.approx(
        float(r.power_w) * float(r.step_time_s), rel=1e-6
    )
    assert 0 < float(r.mfu) < 1 and float(r.ttft_s) == float(r.tpot_s) == 0.0


def test_power_scales_with_the_chips_in_use(catalog):
    sys, model = catalog["nvl72"], catalog["llama8"]
    a = evaluate(sys, model, make_plan(tp=8, dp=9, global_batch=72, seq_len=4096))
    b = evaluate(sys, model, make_plan(tp=8, dp=18, global_batch=144, seq_len=4096))
    assert float(b.power_w) == pytest.approx(2 * float(a.power_w), rel=1e-2)


def test_decode_latency_and_slo_batch(catalog):
    sys, model = catalog["h100"], catalog["llama70"]
    plan = make_plan(tp=8, microbatch=1, context=4096, phase="decode", recompute="none")
    r = evaluate(sys, model, plan)
    assert float(r.tpot_s) == pytest.approx(float(r.step_time_s), rel=1e-6)
    b, run, ok = max_batch_under_slo(sys, model, plan, 0.05)
    assert float(ok) == 1.0 and float(run.tpot_s) == pytest.approx(0.05, rel=1e-3)
    assert float(b) > 1
    g = jax.grad(lambda s: max_batch_under_slo(s, model, plan, 0.05)[0])(sys)
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree_util.tree_leaves(g))
    assert float(g.chip.hbm_bytes_per_s) > 0  # more bandwidth, larger batch


def test_prefill_cache_hits_raise_throughput(catalog):
    sys, model = catalog["h100"], catalog["llama70"]
    cold = make_plan(tp=8, microbatch=2, seq_len=8192, phase="prefill", recompute="none")
    warm = make_plan(
        tp=8, microbatch=2, seq_len=8192, phase="prefill", recompute="none", cache_hit=0.5
    )
    rc, rw = evaluate(sys, model, cold), evaluate(sys, model, warm)
    assert float(rw.ttft_s) < float(rc.ttft_s) and float(rw.tokens_per_s) > float(rc.tokens_per_s)
    assert jnp.isfinite(rw.mfu)
