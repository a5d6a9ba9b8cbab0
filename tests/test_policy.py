"""emu.policy: the plan rule, the serving rule and the largest batch under an SLO; errors
name parameters, never flags."""

import re

import jax.numpy as jnp
import pytest

import emu
from emu.policy import (
    DEFAULT_BATCH_TOKENS,
    ServingFitError,
    auto_plan,
    divisors,
    with_largest_batch,
)
from emu.struct import replace


@pytest.fixture(scope="module")
def sys_models():
    return (
        emu.load_system("gb200_nvl72"),
        emu.load_model("llama3_70b"),
        emu.load_model("deepseek_v3"),
    )


def _rate(system, model, plan):
    r = emu.evaluate(system, model, plan)
    return float(r.tokens_per_s) if float(r.feasible) > 0.5 else -1.0


def test_training_rule(sys_models):
    system, llama, _ = sys_models
    p = auto_plan(system, llama, 72, seq_len=8192)
    assert int(p.tp * p.pp * p.dp * p.cp) == 72 and int(p.cp) == 1
    # the fastest of its candidates that fits: the rule at no other TP is faster, and the
    # base rule's own TP (8) is slower here
    best = _rate(system, llama, p)
    assert best > 0
    for tp in (1, 2, 4, 8):
        other = auto_plan(system, llama, 72, seq_len=8192, tp=tp)
        assert _rate(system, llama, other) <= best * (1 + 1e-3), tp
    assert int(p.tp) != 8
    assert _rate(system, llama, auto_plan(system, llama, 72, seq_len=8192, tp=8)) < best
    tokens = float(p.global_batch) * 8192
    assert DEFAULT_BATCH_TOKENS <= tokens < DEFAULT_BATCH_TOKENS + 9 * 8192  # smallest multiple
    kept = auto_plan(system, llama, 72, seq_len=8192, tp=4, zero=3, recompute="full")
    assert int(kept.tp) == 4 and int(kept.zero) == 3 and float(kept.recompute) == 2.0


def test_training_rule_splits_long_sequences_over_context_parallel_ranks():
    """A 1M-token sequence (NeMo's long-context Llama 2 7B on 1,024 H100) is split over CP
    ranks, faster than the CP-1 plan; an 8K sequence (`emu compare`'s) tries no CP at all."""
    h100, small = emu.load_system("dgx_h100"), emu.load_model("llama2_7b")
    seq = 1 << 20
    p = auto_plan(h100, small, 1024, seq_len=seq)
    assert int(p.cp) > 1 and seq // int(p.cp) >= 4096
    no_cp = auto_plan(h100, small, 1024, seq_len=seq, cp=1)
    assert _rate(h100, small, p) > 1.5 * _rate(h100, small, no_cp)
    short = emu.policy.training_candidates(h100, small, 1024, {"seq_len": 8192})
    assert len(short) == 3 and all("cp" not in c for c in short)  # TP 1, 2, 4 besides 8
    given = emu.policy.training_candidates(h100, small, 1024, {"seq_len": 8192, "tp": 8})
    assert given == []  # TP given, a short sequence: the base plan alone, not even rated


def test_training_rule_where_no_plan_fits_returns_the_base_rules_plan():
    """Nothing fits (Llama 3 405B on one 8-GPU node): the plan the diagnosis explains is the
    base rule's (the largest TP, full recomputation), not whichever candidate came last."""
    h100, big = emu.load_system("dgx_h100"), emu.load_model("llama3_405b")
    p = auto_plan(h100, big, 8, seq_len=8192)
    assert float(emu.evaluate(h100, big, p).feasible) < 0.5
    base = emu.policy._rule_plan(h100, big, 8, {"seq_len": 8192})
    assert emu.plan_dict(p) == emu.plan_dict(base) and int(p.tp) == 8
    assert float(p.recompute) == 2.0  # full: the last the base rule tried


def test_training_rule_picks_a_small_tp_for_a_small_model_and_ep_across_nodes():
    """The base rule's TP 8 for an 8B model on one 8-GPU node is slower than the TP its
    candidates find; an MoE model on 8-GPU servers may spread its experts over nodes."""
    h100 = emu.load_system("dgx_h100")
    small = emu.load_model("llama3_8b")
    p = auto_plan(h100, small, 8, seq_len=8192)
    assert int(p.tp) < 8
    tp8 = auto_plan(h100, small, 8, seq_len=8192, tp=8)
    assert _rate(h100, small, p) > 1.2 * _rate(h100, small, tp8)
    ds = emu.load_model("deepseek_v3")
    moe = auto_plan(h100, ds, 256, seq_len=4096)
    assert int(moe.ep) > 8 and _rate(h100, ds, moe) > 0
    inside = auto_plan(h100, ds, 256, seq_len=4096, ep=8)
    assert _rate(h100, ds, moe) > _rate(h100, ds, inside)


def test_serving_rule_for_moe(sys_models):
    system, _, ds = sys_models
    p = auto_plan(system, ds, 72, phase="decode", precision="fp8", seq_len=4096)
    # EP = every rank of the NVLink domain: 256 experts in 72 x 4 slots (32 redundant)
    assert int(p.tp) == 1 and int(p.dp) == 72 and int(p.ep) == 72
    assert float(p.zero) == 0 and float(p.recompute) == 0
    on_two_racks = auto_plan(system, ds, 144, phase="prefill", precision="fp8", seq_len=4096)
    assert int(on_two_racks.ep) == 144  # up to one rank per expert (256) beyond the domain
    h800 = emu.load_system("hgx_h800")  # 8-GPU nodes: EP across nodes, as DeepSeek's
    assert int(auto_plan(h800, ds, 128, phase="decode", precision="fp8", seq_len=4096).ep) == 128


def test_serving_rule_decodes_with_the_models_mtp_module(sys_models):
    """DeepSeek-V3/R1 decode with their MTP module unless the plan sets its speculation (the
    default was none: 206 tokens/s per chip on CloudMatrix 384 against the 1,943 its
    published MTP deployment measures)."""
    from emu.policy import DEFAULT_MTP_ACCEPT

    system, llama, ds = sys_models
    kw = dict(phase="decode", precision="fp8", seq_len=4096)
    assert float(auto_plan(system, ds, 72, **kw).mtp_accept) == pytest.approx(DEFAULT_MTP_ACCEPT)
    assert float(auto_plan(system, ds, 72, **kw, mtp_accept=0.0).mtp_accept) == 0.0
    drafted = auto_plan(system, ds, 72, **kw, draft_tokens=2, accept_len=2.4)
    assert float(drafted.mtp_accept) == 0.0 and float(drafted.draft_tokens) == 2.0
    assert float(auto_plan(system, ds, 72, **kw, accept_len=1.0).mtp_accept) == 0.0
    assert float(auto_plan(system, llama, 72, **kw).mtp_accept) == 0.0  # no MTP module
    prefill = auto_plan(system, ds, 72, **{**kw, "phase": "prefill"})
    assert float(prefill.mtp_accept) == 0.0
    from emu.policy import default_mtp_accept  # what `emu search` gives its Problem

    assert default_mtp_accept(ds, "decode") == DEFAULT_MTP_ACCEPT
    assert default_mtp_accept(ds, "prefill") == default_mtp_accept(llama, "decode") == 0.0


@pytest.mark.parametrize(
    "kw,needle",
    [
        (dict(tp=0), "tp must be a positive integer"),
        (dict(zero=7), "zero must be 0, 1, 2 or 3"),
        (dict(tpp=2), "unknown knob 'tpp'. Did you mean 'tp'"),
        (dict(tp=3), "must divide"),
        (dict(phase="decode", pp=2), "serving plans take tp, dp and ep only; drop pp"),
        (dict(mtp_accept=1.5), r"mtp_accept must be in \[0, 1\)"),
    ],
)
def test_errors_name_parameters_not_flags(sys_models, kw, needle):
    system, llama, _ = sys_models
    with pytest.raises(ValueError, match=needle) as e:
        auto_plan(system, llama, 72, **kw)
    assert "--" not in str(e.value)


def test_largest_batch_meets_the_slo_and_one_more_does_not(sys_models):
    system, llama, _ = sys_models
    plan = auto_plan(system, llama, 72, phase="decode", seq_len=4096)
    # an SLO twice batch 1's TPOT: met by more than one sequence, whatever the physics
    one = emu.struct.replace(plan, microbatch=1.0, global_batch=plan.dp)
    slo = 2.0 * float(emu.evaluate(system, llama, one).tpot_s)
    best = with_largest_batch(system, llama, plan, slo)
    n = int(best.microbatch)
    assert n > 1
    assert float(emu.evaluate(system, llama, best).tpot_s) <= slo
    more = emu.struct.replace(
        best, microbatch=best.microbatch + 1, global_batch=best.dp * (best.microbatch + 1)
    )
    r = emu.evaluate(system, llama, more)
    assert float(r.tpot_s) > slo or float(r.feasible) < 0.5
    assert float(best.global_batch) == n * float(best.dp)
    with pytest.raises(ValueError, match="positive number of seconds"):
        with_largest_batch(system, llama, plan, -1.0)


def test_divisors():
    assert divisors(12) == [1, 2, 3, 4, 6, 12] and divisors(1) == [1]


def test_each_system_has_its_own_precision_per_phase():
    from emu.policy import default_precision

    cm, nvl = emu.load_system("cloudmatrix384"), emu.load_system("gb200_nvl72")
    assert [default_precision(cm, p) for p in ("train", "prefill", "decode")] == [
        "bf16", "int8", "int8",
    ]  # fmt: skip
    assert [default_precision(nvl, p) for p in ("train", "prefill", "decode")] == [
        "bf16", "fp8", "fp8",
    ]  # fmt: skip


@pytest.mark.parametrize(
    "case,needle",
    [
        ("tp3", "tp=3 must divide the model's n_heads=64"),
        ("216_chips", "216 ranks exceeds the largest cluster of this system: 72 ranks"),
        ("fp8_on_ascend", "Ascend 910C has no fp8 support"),
    ],
)
def test_the_api_checks_concrete_plans_against_the_system(case, needle):
    """emu.evaluate used to return a "feasible" 515k tok/s for these (issue 15)."""
    import jax

    llama = emu.load_model("llama3_70b")
    system = emu.load_system("gb200_nvl72")
    plan = emu.make_plan(tp=3, dp=24, global_batch=24, seq_len=4096)
    if case == "216_chips":  # a one-rack system: its outermost tier holds 72 chips
        system = emu.load_system("gb200_nvl72", {"tiers.scale_out.domain_chips": 72})
        plan = emu.make_plan(tp=8, dp=27, global_batch=27, seq_len=4096)
    if case == "fp8_on_ascend":
        system = emu.load_system("cloudmatrix384")
        plan = emu.make_plan(tp=8, dp=48, global_batch=48, seq_len=4096, precision="fp8")
    with pytest.raises(ValueError, match=re.escape(needle)):
        emu.evaluate(system, llama, plan)
    # traced code never raises: jit passes the same plan through (RunResult.feasible is data)
    r = jax.jit(emu.evaluate)(system, llama, plan)
    assert r.step_time_s.shape == ()


def test_diagnose_names_the_reason_and_the_moves_left():
    from emu.analysis import run
    from emu.policy import check_result, diagnose

    system, llama = emu.load_system("gb200_nvl72"), emu.load_model("llama3_70b")
    plan = emu.make_plan(tp=2, dp=36, microbatch=4, global_batch=144, seq_len=8192, zero=3)
    r = run(system, llama, plan)
    reasons, _ = diagnose(r)
    assert not r["feasible"] and reasons[0].startswith("out of memory: ")
    assert "--recompute full" in reasons[0] and "--zero" not in reasons[0]  # zero=3 already
    deep = emu.make_plan(tp=8, pp=10, dp=9, global_batch=9, seq_len=8192, zero=1)
    _, warnings = diagnose(run(system, llama, emu.make_plan(**{**emu.plan_dict(deep)})))
    assert any("pipeline bubble" in w for w in warnings)
    with pytest.raises(ValueError, match=r"MFU 1.5 is outside \[0, 1\]"):
        check_result({**r, "mfu": 1.5})


def test_serving_that_cannot_fit_says_what_to_change():
    """DeepSeek-R1 serving used to stop at "does not fit in HBM" / "misses the 2 s TTFT SLO"
    with no numbers and no move to make."""
    h100, r1 = emu.load_system("dgx_h100"), emu.load_model("deepseek_r1")
    plan = auto_plan(h100, r1, 8, phase="decode", precision="bf16", seq_len=4096)
    oom = r"does not fit in HBM on dgx_h100 \(\d+ GB of 83 GB per chip, .*\); use an 8-bit"
    with pytest.raises(ValueError, match=oom) as e:
        with_largest_batch(h100, r1, plan, 0.05)
    # ep is already all 8 ranks: only tp can grow (dp 8 to trade); the weights alone overflow,
    # so a shorter context is no move
    assert isinstance(e.value, ServingFitError) and e.value.reason == "memory"
    assert e.value.degrees == ("tp",) and not e.value.weights_fit
    assert "raise tp or add chips" in str(e.value) and "context" not in str(e.value)
    nvl = emu.load_system("gb200_nvl72")
    plan = auto_plan(nvl, r1, 72, phase="prefill", precision="fp8", seq_len=4096)
    with pytest.raises(ValueError, match=r"even batch 1 takes [\d.]+ s; relax the SLO, add chips"):
        with_largest_batch(nvl, r1, plan, 0.001)
    # a dense model on one chip: no degree to raise, and none named
    llama = emu.load_model("llama3_8b")
    plan = auto_plan(h100, llama, 1, phase="decode", precision="bf16", seq_len=4096)
    with pytest.raises(ServingFitError, match=r"at tp=1\); use an 8-bit precision, add chips or "
                       r"shorten the context\.$") as e:  # fmt: skip
        with_largest_batch(h100, llama, replace(plan, context=jnp.float32(1e6)), 0.05)
    assert e.value.degrees == () and e.value.weights_fit


def test_chips_are_packages_and_plans_count_dies():
    """`--chips 384` on a CloudMatrix 384 is 768 ranks (two dies per 910C); the memory check
    is per die, and the error for a wrong DP says both counts."""
    cm, llama = emu.load_system("cloudmatrix384"), emu.load_model("llama3_70b")
    plan = auto_plan(cm, llama, 384, seq_len=8192)
    assert int(plan.tp * plan.pp * plan.dp * plan.cp) == 768
    r = emu.evaluate(cm, llama, plan)
    assert float(r.n_chips) == 384 and float(r.n_ranks) == 768
    assert float(r.memory.capacity_bytes) < float(cm.chip.hbm_bytes) / 2
    with pytest.raises(ValueError, match=re.escape("the rank count 768 (384 chips x 2 dies)")):
        auto_plan(cm, llama, 384, seq_len=8192, tp=8, pp=1, dp=8)


def test_prefill_widens_tp_only_when_batch_1_misses_the_slo():
    from emu.policy import with_largest_batch

    cm, r1 = emu.load_system("cloudmatrix384"), emu.load_model("deepseek_r1")
    plan = auto_plan(cm, r1, 384, phase="prefill", precision="int8", seq_len=8192)
    assert int(plan.tp) == 1
    with pytest.raises(ValueError, match="no batch meets the TTFT SLO"):
        with_largest_batch(cm, r1, plan, 2.0)
    wider = with_largest_batch(cm, r1, plan, 2.0, widen_tp=True)
    assert int(wider.tp) > 1 and int(wider.tp * wider.dp) == 768
    assert float(emu.evaluate(cm, r1, wider).ttft_s) <= 2.0
    # a loose SLO keeps the rule's tp
    assert int(with_largest_batch(cm, r1, plan, 10.0, widen_tp=True).tp) == 1


def test_training_rule_tries_micro_batches_and_interleaving_on_its_fastest_plan():
    """Qwen3-30B-A3B on 8 B300 waits on the host's per-expert kernel launches at one sequence
    per micro-batch; the rule takes a larger one, at the same global batch. A pipelined plan
    (Llama 3 70B on 72 GB200) is interleaved where that is faster. Knobs given are kept."""
    b300, small_moe = emu.load_system("dgx_b300"), emu.load_model("qwen3_30b_a3b")
    p = auto_plan(b300, small_moe, 8, seq_len=4096)
    one = auto_plan(b300, small_moe, 8, seq_len=4096, microbatch=1)
    assert int(p.microbatch) > 1 and int(one.microbatch) == 1
    assert float(p.global_batch) == float(one.global_batch)
    assert _rate(b300, small_moe, p) > 2 * _rate(b300, small_moe, one)
    assert float(emu.evaluate(b300, small_moe, one).breakdown.host_wait_s) > 0
    for mb in (2, 4, 8):  # no other micro-batch at its degrees is faster
        try:
            other = auto_plan(b300, small_moe, 8, seq_len=4096, microbatch=mb, tp=1, ep=8)
        except ValueError:  # needs a pipeline, whose DP groups EP 8 cannot tile
            continue
        assert _rate(b300, small_moe, other) <= _rate(b300, small_moe, p) * (1 + 1e-3), mb

    nvl, llama = emu.load_system("gb200_nvl72"), emu.load_model("llama3_70b")
    q = auto_plan(nvl, llama, 72, seq_len=8192)
    assert int(q.pp) > 1 and int(q.vpp) > 1
    flat = auto_plan(nvl, llama, 72, seq_len=8192, vpp=1)
    assert _rate(nvl, llama, q) > _rate(nvl, llama, flat)
    kept = auto_plan(nvl, llama, 72, seq_len=8192, microbatch=1, vpp=1)
    assert int(kept.microbatch) == 1 and int(kept.vpp) == 1
    assert emu.policy.schedule_candidates(llama, {"microbatch": 1, "vpp": 1}, kept) == []
    # a given global batch is kept, and the micro-batch still chosen at it
    given = auto_plan(b300, small_moe, 8, seq_len=4096, global_batch=64)
    assert float(given.global_batch) == 64 and int(given.microbatch) > 1
    # the degrees given (the rule's own): the micro-batch and interleaving are still chosen
    pinned = auto_plan(b300, small_moe, 8, seq_len=4096, tp=1, ep=8)
    assert int(pinned.microbatch) == int(p.microbatch)
    assert int(auto_plan(nvl, llama, 72, seq_len=8192, tp=2).vpp) == int(q.vpp)


def test_a_larger_micro_batch_never_wins_by_taking_a_larger_global_batch():
    """Qwen3-30B-A3B on 256 H100 runs DP 256 and waits on the host at one sequence per
    micro-batch: the rule's default batch at micro-batch 8 would be twice that at 4 (2,048
    sequences, 8 Mi tokens), and faster in emu for that reason too; the rule keeps its
    batch within 1/8 of its first plan's. A plan that does not wait on the host keeps one
    sequence per micro-batch (Llama 3 8B on 8 H100)."""
    h100, small_moe = emu.load_system("dgx_h100"), emu.load_model("qwen3_30b_a3b")
    p = auto_plan(h100, small_moe, 256, seq_len=4096)
    first = auto_plan(h100, small_moe, 256, seq_len=4096, microbatch=1, vpp=1)
    assert int(first.dp) == 256 and float(first.global_batch) == 1024
    assert int(p.microbatch) > 1
    assert abs(float(p.global_batch) / float(first.global_batch) - 1) <= 0.125
    dense = auto_plan(h100, emu.load_model("llama3_8b"), 8, seq_len=8192)
    assert int(dense.microbatch) == 1


def test_a_given_batch_takes_a_pipeline_or_candidate_that_divides_it(sys_models):
    """A given global batch is kept: the rule uses only plans whose dp x micro-batch divide
    it (a deeper pipeline of the same TP, else another of its candidates), and where none
    does it says which batches would work, in one error, instead of naming a dp the user
    never chose."""
    system, llama, deepseek = sys_models
    h100 = emu.load_system("dgx_h100")
    # 64 H100, TP 8: the shallowest pipeline has dp 8, which 100 does not divide; dp 4 does
    p = auto_plan(h100, llama, 64, seq_len=8192, global_batch=100)
    assert int(p.global_batch) == 100 and 100 % int(p.dp * p.microbatch) == 0
    # DeepSeek-V3's 61 layers leave TP 8 no pipeline, so the base plan has dp = chips / 8;
    # at 64K tokens the rule's CP candidates have smaller DP groups, and one divides 2
    p = auto_plan(h100, deepseek, 32, seq_len=65536, global_batch=2)
    assert int(p.global_batch) == 2 and 2 % int(p.dp * p.microbatch) == 0 and int(p.cp) > 1
    # none of the rule's plans on one NVL72 divides 1,000: their units and the nearest batch
    with pytest.raises(emu.policy.BatchError) as err:
        auto_plan(system, llama, 72, seq_len=8192, global_batch=1000)
    msg = str(err.value)
    assert "dp x micro-batch: 9, 18, 36, 72" in msg and "nearest: 999" in msg, msg
    assert isinstance(err.value, ValueError) and "\n" not in msg
    ok = auto_plan(system, llama, 72, seq_len=8192, global_batch=999)
    assert int(ok.global_batch) == 999
    with pytest.raises(emu.policy.BatchError, match=r"global_batch=1000 .*nearest: 999\)"):
        auto_plan(system, llama, 72, seq_len=8192, global_batch=1000.0)  # counts print whole


def test_a_given_dp_the_base_tp_cannot_take_is_tried_at_the_other_tps(sys_models):
    """dp 8 on one NVL72: the base rule's TP 8 leaves 9 ranks, which 8 does not divide, but
    TP 1 with a 9-stage pipeline takes it (it was an error naming chips/(tp*cp) = 9, a TP the
    user never chose); dp 5 fits no TP, and the error says that every TP was tried."""
    system, llama, _ = sys_models
    p = auto_plan(system, llama, 72, seq_len=8192, dp=8)
    assert int(p.dp) == 8 and int(p.tp * p.pp * p.dp * p.cp) == 72
    with pytest.raises(emu.policy.RuleError, match=r"TP 8, and no other TP it tries \(1, 2, 4\)"):
        auto_plan(system, llama, 72, seq_len=8192, dp=5)
    # a pipeline deeper than the layers fails at every TP: that reason, not a TP's ranks
    with pytest.raises(ValueError, match=r"pp\*vpp = 64 exceeds n_layers=32") as err:
        auto_plan(system, emu.load_model("llama3_8b"), 64, seq_len=8192, pp=64)
    assert not isinstance(err.value, emu.policy.RuleError)
    with pytest.raises(ValueError, match="adjust dp") as err:  # TP given: its own error
        auto_plan(system, llama, 72, seq_len=8192, dp=8, tp=8)
    assert "other TP" not in str(err.value)


def test_an_overshoot_is_printed_with_the_digits_that_show_it():
    """'83 GB of 83 GB per chip' did not fit: both sides rounded to the same number."""
    from emu.advice import gb_of

    assert gb_of(83.2e9, 83.0e9) == "83.2 GB of 83 GB"
    assert gb_of(230e9, 190e9) == "230 GB of 190 GB"
    assert gb_of(83.0004e9, 83.0001e9) == "83.0004 GB of 83.0001 GB"
