import math

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
        bound = b.compute_s + comm + b.bubble_s + b.optimizer_s + b.host_wait_s
        assert total <= float(bound) * (1 + 1e-6)


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


def test_interleaving_cannot_hide_the_stages_a_short_pipeline_leaves_empty(catalog):
    """With fewer micro-batches m than stages, each round of chunks waits for the first
    micro-batch to come round the pp stages: bubble (pp - 1)/vpp + (pp - m)(1 - 1/vpp) in
    micro-batch times, so one micro-batch takes pp t_mb at any vpp (it took (pp - 1)/vpp,
    2.3x faster than a 1F1B pipeline for a sequence that runs strictly in order), and from
    m = pp on the interleaved (pp - 1)/vpp of Narayanan et al."""
    from emu.step import pipeline_bubble

    def bubble(m, vpp):
        plan = make_plan(tp=2, pp=4, dp=9, vpp=vpp, global_batch=9 * m, seq_len=8192)
        return float(pipeline_bubble(plan, jnp.float32(1.0)))

    for m in (1, 2, 3, 4, 8):
        assert bubble(m, 1) == pytest.approx(3.0)  # 1F1B: (pp - 1) at any m
    assert [bubble(m, 4) for m in (1, 2, 3, 4, 8)] == pytest.approx([3.0, 2.25, 1.5, 0.75, 0.75])
    # in a whole step: one micro-batch interleaved 4 ways is no faster than 1F1B
    one = {v: train_step(catalog["nvl72"], catalog["llama70"], make_plan(
        tp=2, pp=4, dp=9, vpp=v, global_batch=9, seq_len=8192)) for v in (1, 4)}  # fmt: skip
    assert float(one[4].total_s) >= 0.98 * float(one[1].total_s)


def test_full_recompute_costs_about_a_third_more_compute(catalog):
    base = make_plan(tp=8, dp=9, global_batch=72, seq_len=4096, recompute="selective")
    full = replace(base, recompute=jnp.float32(2))
    c0 = float(train_step(catalog["nvl72"], catalog["llama8"], base).compute_s)
    c1 = float(train_step(catalog["nvl72"], catalog["llama8"], full).compute_s)
    assert 1.2 < c1 / c0 < 1.4


def test_recomputing_a_share_of_layers_costs_that_share_of_a_forward(catalog):
    """recompute_fraction f repeats the forward of f of the layers: compute (and the TP
    traffic of the repeated forward) is linear in f between no recompute and full."""
    base = make_plan(tp=8, dp=9, global_batch=72, seq_len=4096, recompute="full")
    step = lambda f: train_step(
        catalog["nvl72"], catalog["llama8"], replace(base, recompute_fraction=jnp.float32(f))
    )
    none = train_step(catalog["nvl72"], catalog["llama8"], replace(base, recompute=jnp.float32(0)))
    for field in ("compute_s", "tp_comm_s"):
        c0, c1 = float(getattr(none, field)), float(getattr(step(1.0), field))
        assert c1 > c0
        for f in (0.25, 0.5):
            assert float(getattr(step(f), field)) == pytest.approx(c0 + f * (c1 - c0), rel=1e-5)


def test_recomputing_the_activation_costs_a_memory_bound_pass_unless_all_is_recomputed(catalog):
    """--recompute-activation adds a small memory-bound pass per layer (under 2% here) and
    nothing when every layer is recomputed in full anyway."""
    base = make_plan(tp=8, dp=9, global_batch=72, seq_len=4096)
    on = replace(base, recompute_activation=jnp.float32(1.0))
    step = lambda p: train_step(catalog["nvl72"], catalog["llama8"], p)  # noqa: E731
    m0, m1 = float(step(base).memory_s), float(step(on).memory_s)
    assert m1 > m0 and float(step(on).total_s) < 1.02 * float(step(base).total_s)
    full = replace(base, recompute=jnp.float32(2))
    extra = lambda p: (
        float(  # noqa: E731
            step(replace(p, recompute_activation=jnp.float32(1.0))).memory_s
        )
        - float(step(p).memory_s)
    )
    assert extra(full) == pytest.approx(0.0, abs=1e-9)
    # half the layers recomputed in full: half the extra pass of no full recompute
    half = replace(full, recompute_fraction=jnp.float32(0.5))
    assert extra(half) == pytest.approx(0.5 * (m1 - m0), rel=1e-4)


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


def _with_host(system, host_kernel_s):
    return replace(
        system, overlap=replace(system.overlap, host_kernel_s=jnp.float32(host_kernel_s))
    )


def test_host_bound_moe_micro_batches():
    """Fine-grained MoE with few tokens per micro-batch: the host issuing per-expert kernels
    sets the pace, more so with more experts per chip; a large dense step never waits on the
    host; with a free host the step is the GPU-only step."""
    from emu.catalog import load_model, load_system

    sys = load_system("dgx_h100")
    moe = load_model("qwen3_30b_a3b")

    def plan(ep, mb):
        return make_plan(
            ep=ep, dp=8, microbatch=mb, global_batch=8 * mb * 4, seq_len=4096, precision="fp8"
        )

    slow = _with_host(sys, 60e-6)
    few = train_step(slow, moe, plan(8, 1))  # 16 experts per chip
    many = train_step(slow, moe, plan(1, 1))  # all 128 experts on every chip
    assert float(few.host_wait_s) > 0.0
    assert float(many.host_wait_s) > float(few.host_wait_s)
    # more tokens per micro-batch give the GPU enough work to hide the host
    big = train_step(slow, moe, plan(8, 16))
    assert float(big.host_wait_s) / float(big.total_s) < float(few.host_wait_s) / float(few.total_s)
    # the step grows monotonically with the host cost, and a free host changes nothing
    t = [float(train_step(_with_host(sys, h), moe, plan(8, 1)).total_s) for h in (0, 3e-5, 6e-5)]
    assert t[0] <= t[1] <= t[2] and t[0] < t[2]
    free = train_step(_with_host(sys, 0.0), moe, plan(8, 1))
    assert float(free.host_wait_s) == 0.0
    dense = train_step(slow, load_model("llama3_70b"), make_plan(tp=8, dp=1, seq_len=8192))
    assert float(dense.host_wait_s) == 0.0


def test_fsdp_under_a_pipeline_gathers_once_per_step(catalog):
    """ZeRO-3 alone gathers and reduces every micro-batch; under a pipeline (a stage holds
    1/pp of the model) weights stay gathered over the step's micro-batches."""
    sys, model = catalog["h100"], catalog["llama70"]

    def dp_comm(pp, gb):
        p = make_plan(tp=8, pp=pp, dp=8, global_batch=gb, seq_len=4096, zero=3)
        return float(train_step(sys, model, p).dp_comm_s)

    assert dp_comm(1, 64) == pytest.approx(2 * dp_comm(1, 32), rel=1e-5)
    assert dp_comm(2, 64) == pytest.approx(dp_comm(2, 32), rel=1e-5)
    # once per step, still at least ZeRO-1's gradient reduce-scatter + weight all-gather
    z1 = float(
        train_step(
            sys, model, make_plan(tp=8, pp=2, dp=8, global_batch=64, seq_len=4096, zero=1)
        ).dp_comm_s
    )
    assert dp_comm(2, 64) >= 0.5 * z1


# --- the step as a pipeline of named parts; one breakdown type in every phase ---


def test_train_step_is_the_composition_of_its_parts(catalog):
    from emu import comm, step

    sys, model = catalog["nvl72"], catalog["llama70"]
    plan = make_plan(tp=4, pp=2, dp=9, global_batch=144, seq_len=8192, vpp=2)
    work = step.train_compute(sys, model, plan)
    c = comm.train_comm(sys, model, plan)
    t_gpu = step.microbatch_time(sys.overlap, plan, work, c)
    t_mb = jnp.maximum(t_gpu, step.host_time(sys, model, plan))
    nmb = 144 / (9 * 1)
    b = train_step(sys, model, plan)
    assert float(b.compute_s) == pytest.approx(nmb * float(work.total_s), rel=1e-6)
    assert float(b.tp_comm_s) == pytest.approx(nmb * float(c.tp_s), rel=1e-6)
    assert float(b.bubble_s) == pytest.approx(float(step.pipeline_bubble(plan, t_mb)), rel=1e-6)
    assert float(b.bubble_s) == pytest.approx((2 - 1) / 2 * float(t_mb), rel=1e-6)
    total = (
        nmb * float(t_mb)
        + float(b.bubble_s)
        + float(step.exposed_dp(sys.overlap, plan, work, c))
        + float(step.optimizer_time(sys, model, plan))
    )
    assert float(b.total_s) == pytest.approx(total, rel=1e-6)
    # exposure lies between none and all of the micro-batch's communication
    raw = c.tp_s + c.cp_s + c.pp_s + c.dispatch_s + c.combine_s
    assert float(work.total_s) <= float(t_gpu) <= float(work.total_s + raw) * (1 + 1e-6)


def test_run_result_has_the_same_structure_in_every_phase(catalog):
    sys, model = catalog["nvl72"], catalog["llama8"]
    plans = [
        make_plan(tp=8, dp=9, global_batch=72, seq_len=4096),
        make_plan(tp=8, dp=9, microbatch=2, seq_len=4096, phase="prefill", recompute="none"),
        make_plan(tp=8, dp=9, microbatch=64, context=4096, phase="decode", recompute="none"),
    ]
    results = [evaluate(sys, model, p) for p in plans]
    structs = {jax.tree_util.tree_structure(r) for r in results}
    assert len(structs) == 1
    train, prefill, decode = results
    assert float(train.memory.kv_cache_bytes) == 0.0 and float(train.memory.optimizer_bytes) > 0
    for r in (prefill, decode):
        assert float(r.memory.kv_cache_bytes) > 0
        assert float(r.memory.optimizer_bytes) == float(r.memory.gradients_bytes) == 0.0
        assert float(r.breakdown.bubble_s) == float(r.breakdown.dp_comm_s) == 0.0
        parts = r.memory.weights_bytes + r.memory.kv_cache_bytes + r.memory.activations_bytes
        assert float(r.memory.total_bytes) == pytest.approx(float(parts), rel=1e-6)
    assert float(decode.breakdown.tokens_out) == 64.0 and float(decode.breakdown.tokens_in) == 0
    assert float(prefill.breakdown.tokens_in) == 2 * 4096
    assert float(train.breakdown.tokens_in) == 72 / 9 * 4096


def test_decode_attention_reads_the_kv_cache(catalog):
    from emu.step import decode_attention

    sys, model = catalog["h100"], catalog["llama70"]
    short = make_plan(tp=8, microbatch=32, context=1024, phase="decode", recompute="none")
    long = replace(short, context=jnp.float32(32768))
    launch = float(sys.chip.kernel_overhead_s)
    t0 = float(decode_attention(sys, model, short, jnp.float32(1.0))) - launch
    t1 = float(decode_attention(sys, model, long, jnp.float32(1.0))) - launch
    # memory-bound: a 32 x longer cache takes 32 x the time beyond the fixed launch
    assert t1 / t0 == pytest.approx(32.0, rel=1e-3)


def test_decode_layers_pay_their_small_kernels(catalog):
    # every launch costs kernel_overhead_s; a decode pass launches the same GEMMs, norms,
    # attention core and head as a prefill pass plus DECODE_KERNELS_PER_LAYER per layer
    from emu.step import DECODE_KERNELS_PER_LAYER, inference_compute

    sys, model = catalog["h100"], catalog["llama70"]
    dec = make_plan(tp=8, microbatch=32, context=1024, phase="decode", recompute="none")
    pre = make_plan(tp=8, microbatch=1, seq_len=1024, phase="prefill", recompute="none")

    def launches_s(plan):
        def total(ko):
            chip = replace(sys.chip, kernel_overhead_s=jnp.float32(ko))
            return float(inference_compute(replace(sys, chip=chip), model, plan).total_s)

        return total(1e-5) - total(0.0)

    extra = launches_s(dec) - launches_s(pre)
    expected = float(model.n_layers) * DECODE_KERNELS_PER_LAYER * 1e-5
    assert extra == pytest.approx(expected, rel=1e-3)


def test_small_decode_batches_read_only_the_experts_they_route_to():
    from emu.step import _active_experts

    def shapes(m):
        m = jnp.float32(m)
        one = jnp.float32(1.0)
        return {
            "expert_in": (m, 4096.0 * one, 7168.0 * one, 16.0 * one),
            "expert_out": (m, 7168.0 * one, 2048.0 * one, 8.0 * one),
        }

    for m in (0.05, 0.5, 3.0):
        got = _active_experts(shapes(m))
        for name, (m0, _, _, c0) in shapes(m).items():
            m1, _, _, c1 = got[name]
            share = 1.0 - math.exp(-m)
            assert float(c1) == pytest.approx(float(c0) * share, rel=1e-5)  # idle experts
            assert float(m1 * c1) == pytest.approx(float(m0 * c0), rel=1e-5)  # same FLOPs
    busy = _active_experts(shapes(40.0))  # every expert gets tokens: unchanged
    assert float(busy["expert_in"][3]) == pytest.approx(16.0, rel=1e-6)
    g = jax.grad(lambda m: _active_experts(shapes(m))["expert_in"][3])(jnp.float32(0.5))
    assert np.isfinite(float(g)) and float(g) > 0


def test_uneven_stages_run_on_the_heaviest_stage(catalog):
    # Llama 3 405B, PP16 over 126 layers (arXiv:2407.21783 §3.3.2): the step is priced on an
    # interior stage of 8 layers without the head; the same model with 128 layers (even
    # 8-layer stages, the last with the head) only adds the head
    from emu.catalog import load_model
    from emu.step import pipeline_bubble, train_compute

    sys = catalog["nvl72"]
    m126 = load_model("llama3_405b")
    m128 = replace(m126, n_layers=jnp.float32(128))
    plan = make_plan(tp=8, pp=16, dp=1, global_batch=16, seq_len=8192)
    c126, c128 = train_compute(sys, m126, plan), train_compute(sys, m128, plan)
    assert float(c126.matmul_s) == pytest.approx(float(c128.matmul_s), rel=1e-6)
    assert float(c126.head_s) == 0.0 < float(c128.head_s)
    b = train_step(sys, m126, plan)
    t_mb = (
        float(b.total_s) - float(b.bubble_s) - float(b.exposed_dp_s) - float(b.optimizer_s)
    ) / 16
    assert float(b.bubble_s) == pytest.approx(15 * t_mb, rel=1e-5)
    assert float(pipeline_bubble(plan, jnp.float32(t_mb))) == pytest.approx(float(b.bubble_s))
    r126, r128 = evaluate(sys, m126, plan), evaluate(sys, m128, plan)
    assert float(r126.memory.weights_bytes) == pytest.approx(float(r128.memory.weights_bytes))
    assert float(r126.step_time_s) < float(r128.step_time_s)


def test_speculative_decoding_verifies_k_and_emits_the_accept_length():
    from emu.catalog import load_model, load_system

    sys, ds = load_system("hgx_h800"), load_model("deepseek_v3")
    base = dict(dp=32, ep=32, microbatch=64, global_batch=2048, context=4096, phase="decode",
                precision="fp8", recompute="none", zero=0)  # fmt: skip
    mtp = evaluate(sys, ds, make_plan(**base, mtp_accept=0.7))
    k1 = evaluate(sys, ds, make_plan(**base, draft_tokens=1, accept_len=1.7))
    assert float(k1.step_time_s) == pytest.approx(float(mtp.step_time_s), rel=1e-6)
    assert float(k1.tokens_per_s) == pytest.approx(float(mtp.tokens_per_s), rel=1e-6)
    k3 = evaluate(sys, ds, make_plan(**base, draft_tokens=3, accept_len=2.5))
    assert float(k3.breakdown.tokens_out) == pytest.approx(64 * 2.5)
    assert float(k3.step_time_s) > float(k1.step_time_s)  # 4 tokens verified, 3 drafted
    assert float(k3.tpot_s) == pytest.approx(float(k3.step_time_s) / 2.5, rel=1e-6)
