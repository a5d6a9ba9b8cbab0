"""emu.comm: communication by parallel axis, each part priced on its own."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from emu import collectives, comm
from emu.parallelism import make_plan
from emu.struct import replace, stack


def test_each_communication_axis_is_priced_on_its_own(catalog):
    sys, model = catalog["h100"], catalog["llama70"]
    one = comm.train_comm(sys, model, make_plan(tp=1, dp=8, global_batch=8, seq_len=4096))
    assert float(one.tp_s) == float(one.cp_s) == float(one.pp_s) == 0.0
    assert float(one.dp_s) > 0
    tp = comm.train_comm(sys, model, make_plan(tp=8, global_batch=1, seq_len=4096))
    assert float(tp.tp_s) > 0 and float(tp.dp_s) < float(one.dp_s)
    cp = comm.train_comm(sys, model, make_plan(cp=8, global_batch=1, seq_len=4096))
    assert float(cp.cp_s) > 0 and float(cp.tp_s) == 0.0
    pp = comm.train_comm(sys, model, make_plan(pp=8, global_batch=8, seq_len=4096))
    assert float(pp.pp_s) > 0
    assert float(tp.dispatch_s) == float(tp.combine_s) == 0.0  # a dense model


def test_tp_counts_four_collectives_per_layer_and_two_more_under_full_recompute(catalog):
    sys, model = catalog["h100"], catalog["llama70"]
    plan = make_plan(tp=8, global_batch=1, seq_len=4096, sp=False)
    act = jnp.float32(4096 * 8192 * 2.0)
    one = float(collectives.all_reduce_time(sys, act, plan.tp))
    assert float(comm.tp_time(sys, plan, act)) == pytest.approx(one, rel=1e-6)
    assert float(comm.train_comm(sys, model, plan).tp_s) == pytest.approx(80 * 4 * one, rel=1e-5)
    full = replace(plan, recompute=jnp.float32(2))
    assert float(comm.train_comm(sys, model, full).tp_s) == pytest.approx(80 * 6 * one, rel=1e-5)


def test_zero3_is_per_microbatch_without_a_pipeline(catalog):
    sys, model = catalog["h100"], catalog["llama8"]
    t = [
        float(comm.dp_time(sys, model, make_plan(dp=16, microbatch=1, global_batch=g, zero=3)))
        for g in (16, 32)
    ]
    assert t[1] == pytest.approx(2 * t[0], rel=1e-5)


def test_moe_dispatch_and_combine(catalog):
    from emu.catalog import load_model

    sys, moe = catalog["h100"], load_model("mixtral_8x7b")
    plan = make_plan(ep=8, dp=8, global_batch=8, seq_len=4096, precision="fp8")
    d, c = comm.ep_layer_time(sys, moe, plan, jnp.float32(4096))
    assert 0 < float(d) < float(c)  # 8-bit dispatch, bf16 combine
    # the busiest rank moves twice the bytes; the kernel's fixed cost stays, partly hidden
    # behind the transfer: t = (alpha^q + x^q)^(1/q) (moe_fraction 1), so x doubles
    heavy = replace(plan, moe_imbalance=jnp.float32(2.0))
    d2, _ = comm.ep_layer_time(sys, moe, heavy, jnp.float32(4096))
    alpha = float(sys.tiers[0].dispatch_latency_s)
    q = 1.0 / (1.0 - float(sys.tiers[0].a2a_latency_hiding))
    transfer = lambda t: (float(t) ** q - alpha**q) ** (1.0 / q)  # noqa: E731
    assert transfer(d2) == pytest.approx(2 * transfer(d), rel=1e-4)


def test_serving_moe_inside_the_tp_group_needs_no_all_to_all(catalog):
    """Attention TP without DP replicates the tokens over the TP ranks, so an EP x ETP
    group inside the TP group routes nothing (the layer's TP all-reduce sums the experts'
    partial outputs, TensorRT-LLM's --tp 8 --ep 2); with DP attention the EP group spans
    disjoint tokens and all-to-alls them. The TP all-reduces are the same either way."""
    from emu.catalog import load_model

    sys, moe = catalog["nvl72"], load_model("deepseek_r1")
    t = jnp.float32(4)
    kw = dict(phase="decode", microbatch=4, precision="fp8")
    for ep, etp in ((2, 4), (8, 1), (1, 8)):
        plan = make_plan(tp=8, ep=ep, etp=etp, **kw)
        assert float(comm.tokens_replicated(plan)) == 1.0
        c = comm.inference_comm(sys, moe, plan, t)
        assert float(c.dispatch_s) == float(c.combine_s) == 0.0 and float(c.tp_s) > 0
        d, _ = comm.ep_layer_time(sys, moe, plan, t)  # what an all-to-all would have cost
        assert float(d) > 0
    wide = make_plan(tp=8, dp=2, ep=16, **kw)  # the EP group spans two TP groups
    c = comm.inference_comm(sys, moe, wide, t)
    assert float(comm.tokens_replicated(wide)) == 0.0 and float(c.dispatch_s) > 0
    # ep 6 inside tp 8 over 24 ranks: the groups of ranks 6-11 and 18-23 straddle two TP
    # groups' different tokens, so the all-to-all stays
    straddle = make_plan(tp=8, dp=3, ep=6, **kw)
    c = comm.inference_comm(sys, moe, straddle, t)
    assert float(comm.tokens_replicated(straddle)) == 0.0 and float(c.dispatch_s) > 0
    # the TP all-reduces are the same either way
    inside = comm.inference_comm(sys, moe, make_plan(tp=8, ep=8, **kw), t)
    across = comm.inference_comm(sys, moe, make_plan(tp=8, dp=2, ep=16, **kw), t)
    assert float(inside.tp_s) == pytest.approx(float(across.tp_s), rel=1e-6)
    dp_attention = make_plan(tp=1, dp=8, ep=8, **kw)
    c = comm.inference_comm(sys, moe, dp_attention, t)
    assert float(c.dispatch_s) > 0 and float(c.combine_s) > 0 and float(c.tp_s) == 0.0


def test_a_dense_model_pays_no_expert_group_in_dp(catalog):
    # issue 14 regression: the expert group of a dense model holds no bytes, so it costs 0
    # (before: ~34 us per step of fixed latency at tp = 8)
    sys, model = catalog["h100"], catalog["llama8"]
    from emu.parallelism import params_split_per_chip

    for zero in (0, 1, 2, 3):
        plan = make_plan(tp=8, dp=4, global_batch=4, zero=zero)
        dense_p, expert_p = params_split_per_chip(model, plan)
        assert float(expert_p) == 0.0
        dense_only = comm._dp_group_time(sys, plan, dense_p, plan.dp * plan.cp, plan.tp)
        assert float(comm.dp_time(sys, model, plan)) == pytest.approx(float(dense_only), rel=1e-6)
        assert float(comm._dp_group_time(sys, plan, expert_p, 4.0, 8.0)) == 0.0


def test_inference_comm_has_no_cp_or_dp(catalog):
    sys, model = catalog["h100"], catalog["llama70"]
    plan = make_plan(tp=8, microbatch=16, phase="decode", recompute="none")
    c = comm.inference_comm(sys, model, plan, jnp.float32(16))
    assert float(c.cp_s) == float(c.dp_s) == float(c.pp_s) == 0.0 and float(c.tp_s) > 0


def test_train_comm_jits_vmaps_and_differentiates(catalog):
    sys, model = catalog["nvl72"], catalog["llama8"]
    plans = stack(
        [
            make_plan(tp=8, dp=9, global_batch=72, seq_len=4096),
            make_plan(tp=4, pp=2, dp=9, global_batch=72, seq_len=4096),
        ]
    )
    batch = jax.jit(jax.vmap(lambda p: comm.train_comm(sys, model, p)))(plans)
    loop = comm.train_comm(sys, model, jax.tree_util.tree_map(lambda x: x[1], plans))
    np.testing.assert_allclose(float(batch.tp_s[1]), float(loop.tp_s), rtol=1e-6)
    g = jax.grad(lambda s: comm.train_comm(s, model, make_plan(tp=8, dp=9)).tp_s)(sys)
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree_util.tree_leaves(g))
