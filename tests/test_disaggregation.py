"""Attention/expert disaggregation (issue 11: xDeepServe's 768-die decode deployment on a
CloudMatrix 384 runs as published): the plan knobs and their rules, rank accounting, the
step composition max(chain, g t_exp), memory per kind of rank, the row rule, the CLI and
finite, FD-checked gradients."""

import json

import jax
import jax.numpy as jnp
import pytest
from _cli import run_cli, run_json

from emu import validation as V
from emu.catalog import load_model, load_system
from emu.objective import evaluate
from emu.parallelism import inference_memory, params_split_per_chip
from emu.plan import make_plan, n_ranks
from emu.struct import replace

SYSTEM, MODEL = load_system("cloudmatrix384"), load_model("deepseek_r1")
#: xDeepServe §7.1: 480 attention dies in 3 DP domains of 160, EP288 on 288 expert dies,
#: 96 sequences per attention die, MTP accepted 90% of the time
XDS = dict(
    phase="decode", tp=1, dp=480, ep=288, expert_ranks=288, attention_groups=3, microbatch=96,
    context=3072, mtp_accept=0.9, precision="int8",
)  # fmt: skip


def xds(**changes):
    return make_plan(**{**XDS, **changes})


def test_expert_ranks_count_as_ranks_and_chips():
    plan = xds()
    assert float(n_ranks(plan)) == 480 + 288
    r = evaluate(SYSTEM, MODEL, plan)
    assert float(r.n_ranks) == 768 and float(r.n_chips) == 384  # two dies per 910C
    # tokens come from the attention ranks only, per chip over all 384 packages
    per_step = 480 * 96 * 1.9
    assert float(r.tokens_per_s) == pytest.approx(per_step / float(r.step_time_s), rel=1e-5)
    assert float(r.tokens_per_s_per_chip) == pytest.approx(float(r.tokens_per_s) / 384, rel=1e-5)


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(ep=8), "expert_ranks=288 needs ep=288"),
        (dict(attention_groups=7), "attention_groups=7 must divide dp=480"),
        (dict(expert_ranks=0, ep=16, attention_groups=3), "attention_groups=3 needs expert_ranks"),
        (dict(phase="train", context=None, mtp_accept=0.0), "expert_ranks applies to decode"),
    ],
)
def test_plan_rules_name_the_knob(changes, message):
    with pytest.raises(ValueError, match=message):
        xds(**changes)


def test_colocated_plans_are_untouched_by_the_new_knobs():
    plan = xds(expert_ranks=0, attention_groups=1, dp=768, ep=768)
    r = evaluate(SYSTEM, MODEL, plan)
    assert float(r.breakdown.bubble_s) == 0.0
    assert float(n_ranks(plan)) == 768


def test_step_is_the_slower_of_the_domain_chain_and_the_experts_turns():
    """t_layer = max(t_att + t_a2e + t_exp + t_e2a, g t_exp): with few domains the chain
    sets the pace (no wait); when the expert ranks serve many domains of a large batch,
    g t_exp exceeds the chain and the attention ranks wait (bubble_s)."""
    few = evaluate(SYSTEM, MODEL, xds(attention_groups=1))
    b = few.breakdown
    assert float(b.bubble_s) == 0.0
    chain = b.compute_s + b.exposed_comm_s
    assert float(b.total_s) == pytest.approx(float(chain), rel=1e-6)
    # a tiny attention block: the expert ranks' turns dominate
    slow_experts = replace(SYSTEM, chip=replace(SYSTEM.chip, kernel_overhead_s=jnp.float32(1e-7)))
    waits = [
        float(
            evaluate(
                slow_experts, MODEL, xds(attention_groups=g, microbatch=480)
            ).breakdown.bubble_s
        )
        for g in (1, 480)
    ]
    assert waits[0] == 0.0 and waits[1] > 0.0
    # the step never beats either bound
    r = evaluate(SYSTEM, MODEL, xds(attention_groups=480))
    b = r.breakdown
    assert float(b.total_s) >= float(b.compute_s + b.exposed_comm_s) * (1 - 1e-6)


def test_expert_work_per_domain_scales_with_the_domain_size():
    """Each domain sends (dp / g) t tokens to the expert ranks: more domains, fewer tokens
    per turn, less expert time per layer on the chain."""
    e = [
        float(evaluate(SYSTEM, MODEL, xds(attention_groups=g)).breakdown.expert_s)
        for g in (1, 3, 12)
    ]
    assert e[0] > e[1] > e[2] > 0


def test_memory_per_kind_of_rank():
    """An attention rank holds the dense weights without the shared experts and no routed
    expert; the plan is infeasible when the expert ranks cannot hold their slots."""
    plan = xds()
    mem = inference_memory(MODEL, plan, 64e9)
    dense, _ = params_split_per_chip(MODEL, plan)
    assert float(mem.weights_bytes) < float(dense)  # int8: 1 byte/param, minus shared experts
    colocated = inference_memory(
        MODEL, xds(expert_ranks=0, attention_groups=1, dp=768, ep=768), 64e9
    )
    assert float(mem.weights_bytes) < float(colocated.weights_bytes)
    assert float(mem.feasible) == 1.0
    # 256 routed experts on 8 expert ranks: 32 slots x 58 layers x 44M params > 64 GB
    crowded = xds(dp=760, ep=8, expert_ranks=8, attention_groups=1)
    assert float(inference_memory(MODEL, crowded, 64e9).feasible) == 0.0
    assert float(evaluate(SYSTEM, MODEL, crowded).feasible) == 0.0


def test_gradients_are_finite_and_match_finite_differences():
    plan = xds()

    def tps(hbm, bw):
        chip = replace(SYSTEM.chip, hbm_bytes_per_s=hbm, kernel_overhead_s=bw)
        return evaluate(replace(SYSTEM, chip=chip), MODEL, plan).tokens_per_s

    x0 = (SYSTEM.chip.hbm_bytes_per_s, SYSTEM.chip.kernel_overhead_s)
    g = jax.grad(tps, argnums=(0, 1))(*x0)
    assert all(bool(jnp.isfinite(v)) for v in g)
    for i, v in enumerate(g):
        h = 1e-2 * float(x0[i])
        up = [jnp.float32(float(x) + (h if j == i else 0.0)) for j, x in enumerate(x0)]
        dn = [jnp.float32(float(x) - (h if j == i else 0.0)) for j, x in enumerate(x0)]
        fd = (float(tps(*up)) - float(tps(*dn))) / (2 * h)
        assert float(v) == pytest.approx(fd, rel=0.05, abs=1e-6 * abs(fd) + 1e-30)
    # and with respect to the plan's batch (the serving batch rule's Newton step needs it)
    db = jax.grad(lambda b: evaluate(SYSTEM, MODEL, replace(plan, microbatch=b)).step_time_s)(
        plan.microbatch
    )
    assert bool(jnp.isfinite(db)) and float(db) > 0


def test_the_xdeepserve_row_is_modelled_as_published():
    rows = {json.loads(x)["id"]: json.loads(x) for x in open(V.default_measurements())}
    row = rows["xds_decode_disagg_moe_attention_768dies"]
    plan, slo = V.row_plan(row, V.row_model(row), dies=2)
    got = {
        k: float(getattr(plan, k)) for k in ("tp", "dp", "ep", "expert_ranks", "attention_groups")
    }
    assert got == dict(tp=1.0, dp=480.0, ep=288.0, expert_ranks=288.0, attention_groups=3.0)
    assert float(plan.microbatch) == 96 and float(plan.context) == 3072  # "2K+2K": 2K + 2K/2
    assert float(plan.mtp_accept) == pytest.approx(0.9) and slo is None
    res = V.validate_rows([row])[0]
    assert res["status"] == "ok" and res["predicted"] > 0
    # a colocated row is not mistaken for a disaggregated one
    plan, _ = V.row_plan(rows["xds_decode_colocated_dp288_ep288"], V.row_model(row), dies=2)
    assert float(plan.expert_ranks) == 0.0 and float(plan.attention_groups) == 1.0


def test_cli_runs_the_published_plan_and_shows_it(capsys):
    args = ["run", "--system", "cloudmatrix384", "--model", "deepseek_r1", "--phase", "decode",
            "--dp", "480", "--expert-ranks", "288", "--attention-groups", "3", "--batch", "96",
            "--mtp-accept", "0.9", "--context", "3072"]  # fmt: skip
    r = run_json(capsys, *args)
    r = r["results"][0] if "results" in r else r
    assert r["plan"]["expert_ranks"] == 288 and r["plan"]["ep"] == 288  # ep follows
    assert r["n_ranks"] == 768 and r["tokens_per_s"] > 0
    code, out, _ = run_cli(capsys, *args)
    assert code in (0, 1) and "expert_ranks=288 attention_groups=3" in out
    code, _, err = run_cli(capsys, *args[:-2], "--context", "3072", "--ep", "8")
    assert code == 2 and err.count("\n") == 1 and "needs ep=288" in err
    code, _, err = run_cli(
        capsys, "run", "--model", "llama3_70b", "--phase", "decode", "--expert-ranks", "8"
    )
    assert code == 2 and "needs an MoE model" in err


def test_serve_takes_a_disaggregated_decode_instance(capsys):
    out = run_json(
        capsys, "serve", "--decode-chips", "384", "--decode-expert-ranks", "288",
        "--decode-attention-groups", "3", "--mtp-accept", "0.9",
    )  # fmt: skip
    d = out["decode"]["plan"]
    assert (d["dp"], d["ep"], d["expert_ranks"], d["attention_groups"]) == (480, 288, 288, 3)
    assert out["prefill"]["plan"]["expert_ranks"] == 0 and out["tokens_per_s"] > 0
    code, _, err = run_cli(capsys, "serve", "--decode-expert-ranks", "-3")
    assert code == 2 and "non-negative integer" in err


def test_expert_side_does_not_depend_on_the_attention_tp():
    """An expert rank receives (dp/g) t / E tokens whatever the attention ranks' TP: the same
    domain tokens at tp 1, 2, 4 give the same expert time and dispatch."""
    out = []
    for tp, dp, b in ((1, 480, 96), (2, 240, 192), (4, 120, 384)):
        r = evaluate(SYSTEM, MODEL, xds(tp=tp, dp=dp, microbatch=b, attention_groups=1))
        out.append((float(r.breakdown.expert_s), float(r.breakdown.dispatch_s)))
    assert out[1] == pytest.approx(out[0], rel=1e-5) and out[2] == pytest.approx(out[0], rel=1e-5)


def test_expert_ranks_hold_the_shared_experts_they_run():
    from emu.workload import params_expert

    crowded = xds(dp=760, ep=8, expert_ranks=8, attention_groups=1, microbatch=1)
    mem = inference_memory(MODEL, crowded, 64e9)
    assert float(mem.total_bytes) < 64e9  # the attention ranks fit ...
    slots = 256 / 8 + 1  # ... an expert rank holds 32 routed slots and the shared expert
    moe_layers = float(MODEL.n_layers - MODEL.n_dense_layers)
    need = slots * moe_layers * float(params_expert(MODEL))  # int8: one byte per parameter
    assert float(mem.overshoot_bytes) + 64e9 == pytest.approx(need, rel=0.01)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--expert-ranks", "8", "--batch", "1", "--tpot-slo", "5"],
         "out of memory on the 8 expert ranks"),
        (["--expert-ranks", "8"], "the 8 expert ranks cannot hold their experts"),
        (["--expert-ranks", "288", "--a2a-overlap", "--batch", "4"], "a2a_overlap does not apply"),
        (["--attention-groups", "5"], "needs expert_ranks > 0"),
        (["--expert-ranks", "288", "--plan", "best"], "--plan best searches with expert_ranks"),
    ],
)  # fmt: skip
def test_disaggregated_plans_fail_with_the_fix(capsys, flags, message):
    base = ["run", "--system", "cloudmatrix384", "--model", "deepseek_r1", "--phase", "decode"]
    code, out, err = run_cli(capsys, *base, *flags)
    assert code in (0, 2) and message in out + err  # 0: an INFEASIBLE result, said first
    if code == 2:
        assert err.count("\n") == 1 and err.startswith("emu: error:")


def test_the_wait_on_expert_ranks_is_named_as_such(capsys):
    code, out, _ = run_cli(
        capsys, "run", "--system", "cloudmatrix384", "--model", "deepseek_r1", "--phase",
        "decode", "--expert-ranks", "288", "--attention-groups", "480", "--batch", "96",
    )  # fmt: skip
    assert "attention ranks wait on the expert ranks" in out and "pipeline bubble" not in out


def test_compare_names_the_system_an_error_comes_from(capsys):
    code, _, err = run_cli(
        capsys, "compare", "--model", "deepseek_r1", "--phase", "decode", "--expert-ranks", "100"
    )
    assert code == 2 and err.startswith("emu: error: gb200_nvl72: ") and "below" in err


def test_attention_ranks_keep_their_tp_all_reduces():
    one = evaluate(SYSTEM, MODEL, xds(attention_groups=1)).breakdown
    two = evaluate(SYSTEM, MODEL, xds(tp=2, dp=240, microbatch=192, attention_groups=1)).breakdown
    assert float(one.tp_comm_s) == 0.0 and float(two.tp_comm_s) > 0.0
    extra = float(two.exposed_comm_s) - float(two.dispatch_s + two.combine_s)
    assert extra > 0.0  # the exposed share of the TP all-reduces is on the step
    assert float(two.exposed_comm_s) > float(one.exposed_comm_s)
