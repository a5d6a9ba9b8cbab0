"""emu.objective: throughput, efficiency and energy of a run, and the SLO-limited batch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

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


# --- dies as ranks: per-chip and per-rank figures (issue 11) ---


def test_cloudmatrix_plans_count_dies_and_report_packages(catalog):
    from emu.catalog import load_model
    from emu.hardware import usable_hbm_bytes

    cm, model = catalog["cm"], load_model("deepseek_r1")
    # the CM paper's decode deployment: 160 NPUs = 320 dies, DP320/EP320, 48 per die (§5.1)
    plan = make_plan(
        dp=320, ep=320, microbatch=48, global_batch=320 * 48, context=4096, phase="decode",
        precision="int8", recompute="none", zero=0, mtp_accept=0.7, a2a_overlap=True,
    )  # fmt: skip
    r = evaluate(cm, model, plan)
    assert float(r.n_ranks) == 320 and float(r.n_chips) == 160
    assert float(r.tokens_per_s_per_chip) == pytest.approx(
        2 * float(r.tokens_per_s_per_rank), rel=1e-6
    )
    assert float(r.tokens_per_s_per_chip) * 160 == pytest.approx(float(r.tokens_per_s), rel=1e-6)
    # memory is per die: 64 GiB reported less the 4 GiB runtime reserve
    assert float(r.memory.capacity_bytes) == pytest.approx((64 - 4) * 2**30, rel=1e-6)
    assert float(usable_hbm_bytes(cm.chip)) == pytest.approx(2 * (64 - 4) * 2**30, rel=1e-6)
    assert bool(r.feasible)
    # MFU over ranks x die peak equals the forward FLOPs over packages x package INT8 peak
    from emu.workload import attention_flops_dims, params_active

    qk, v = attention_flops_dims(model)
    fpt = 2 * float(params_active(model)) + 2 * float(
        model.n_layers * 4096 * model.n_heads * (qk + v)
    )
    want = fpt * float(r.tokens_per_s) / (160 * 1500e12)
    assert float(r.mfu) == pytest.approx(want, rel=1e-4)
    # one-die-per-chip systems: chips == ranks
    h = evaluate(catalog["h100"], catalog["llama8"], make_plan(tp=8, global_batch=8))
    assert float(h.n_chips) == float(h.n_ranks) == 8
    assert float(h.tokens_per_s_per_chip) == float(h.tokens_per_s_per_rank)


def test_evaluate_computes_on_the_rank_view(catalog):
    # a two-die system and its rank view (each die a chip) run the same plan identically;
    # only the package count differs
    from emu.topology import rank_system

    cm, model = catalog["cm"], catalog["llama8"]
    plan = make_plan(tp=8, dp=4, global_batch=32, seq_len=4096)
    r, rr = evaluate(cm, model, plan), evaluate(rank_system(cm), model, plan)
    assert float(r.n_ranks) == float(rr.n_ranks) == 32
    assert float(r.n_chips) == 16 and float(rr.n_chips) == 32
    assert float(rr.step_time_s) == pytest.approx(float(r.step_time_s), rel=1e-6)
    assert float(rr.power_w) == pytest.approx(float(r.power_w), rel=1e-6)
    assert float(rr.mfu) == pytest.approx(float(r.mfu), rel=1e-6)


# --- MFU counts what the time model spends (issue 16) ---


def test_mfu_numerator_is_the_spent_flops():
    from emu.objective import train_flops_per_token
    from emu.workload import example_model, model_flops_per_token

    m = example_model()
    plan = make_plan(seq_len=8192)
    palm = float(model_flops_per_token(m, 8192.0))
    spent = float(train_flops_per_token(m, plan))
    attn_full = 12 * 32 * 8192 * 4096
    assert spent == pytest.approx(palm - attn_full / 2, rel=1e-6)  # causal: half the scores
    lora = make_plan(seq_len=8192, lora=True)
    n = float(model_flops_per_token(m, 0.0)) / 6
    assert float(train_flops_per_token(m, lora)) == pytest.approx(spent - 2 * n, rel=1e-6)


def test_mfu_above_one_with_the_palm_numerator_is_gone(catalog):
    # a long-sequence plan on a chip whose attention runs near peak: the PaLM numerator
    # counts the full s^2 scores the causal kernels skip and reports MFU 1.4
    from emu.struct import replace
    from emu.workload import model_flops_per_token

    h = catalog["h100"]
    fast = replace(
        h,
        chip=replace(h.chip, matmul_efficiency=jnp.float32(1.0), matmul_half_dim=jnp.float32(0.0)),
    )
    m = catalog["llama8"]
    plan = make_plan(dp=8, global_batch=8, seq_len=131072, recompute="full", zero=3)
    r = evaluate(fast, m, plan)
    palm = float(model_flops_per_token(m, 131072.0)) * float(r.tokens_per_s) / (8 * 989e12)
    assert palm > 1.0
    assert 0.0 < float(r.mfu) <= 1.0


_EVALUATE = jax.jit(evaluate)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mfu_is_between_zero_and_one_on_random_valid_training_plans(catalog, data):
    """Property (issue 16): 0 <= MFU <= 1 on every valid training plan, long sequences and
    near-peak chips included (the chip's efficiency curve is drawn too)."""
    from emu.catalog import load_model
    from emu.plan import validate_plan
    from emu.struct import replace

    name = data.draw(st.sampled_from(["h100", "cm"]))
    model = data.draw(st.sampled_from(["llama8", "mixtral"]))
    system = catalog[name]
    m = load_model("mixtral_8x7b") if model == "mixtral" else catalog[model]
    f = jnp.float32
    chip = replace(
        system.chip,
        matmul_efficiency=f(data.draw(st.floats(0.5, 1.0))),
        matmul_half_dim=f(data.draw(st.floats(0.0, 100.0))),
        hbm_efficiency=f(data.draw(st.floats(0.3, 1.0))),
    )
    system = replace(system, chip=chip)
    pick = lambda xs: data.draw(st.sampled_from(xs))  # noqa: E731
    kw = dict(
        tp=pick([1, 2, 4, 8]), cp=pick([1, 2, 4, 8]), pp=pick([1, 2, 4]), dp=pick([1, 2, 4]),
        microbatch=pick([1, 2, 4]), seq_len=pick([4096, 32768, 131072, 262144]),
        recompute=pick(["none", "selective", "full"]), zero=pick([0, 1, 2, 3]),
        sp=pick([True, False]), lora=pick([True, False]),
        ep=pick([1, 2, 4, 8]) if model == "mixtral" else 1,
    )  # fmt: skip
    kw["vpp"] = pick([1, 2]) if kw["pp"] > 1 else 1
    kw["global_batch"] = kw["dp"] * kw["microbatch"] * pick([1, 4])
    try:
        plan = validate_plan(make_plan(**kw), m)
    except ValueError:
        assume(False)
    r = _EVALUATE(system, m, plan)
    assert 0.0 <= float(r.mfu) <= 1.0 + 1e-6, (kw, float(r.mfu))
    assert float(r.step_time_s) > 0 and np.isfinite(float(r.tokens_per_s))
