"""The KV-cache precision knob (Plan.kv_precision): FP8 halves the KV cache per token and the
bytes a decode step reads from it, so a KV-capacity-bound decode holds twice the sequences;
bf16 (the default) leaves every number as it was; the CLI flag round-trips."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _cli import run_cli, run_json

import emu
from emu import policy
from emu.objective import evaluate
from emu.parallelism import memory
from emu.plan import KV_PRECISIONS, make_plan, plan_dict
from emu.step import decode_attention
from emu.struct import replace
from emu.topology import rank_system
from emu.workload import kv_cache_bytes_per_token


def _decode(model, kv="bf16", *, tp=1, batch=64, ctx=32768):
    return make_plan(
        tp=tp, microbatch=batch, global_batch=batch, seq_len=ctx, context=ctx,
        phase="decode", precision="fp8", kv_precision=kv,
    )  # fmt: skip


def test_the_leaf_stores_bytes_per_element_and_json_the_name():
    p = make_plan(phase="decode", kv_precision="fp8")
    assert float(p.kv_precision) == KV_PRECISIONS["fp8"] == 1.0
    assert plan_dict(p)["kv_precision"] == "fp8"
    assert make_plan(**plan_dict(p)).kv_precision == p.kv_precision
    assert plan_dict(make_plan())["kv_precision"] == "bf16"
    assert float(make_plan().kv_precision) == 2.0


def test_unknown_kv_precision_names_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown kv_precision 'fp4'; known: bf16, fp8"):
        make_plan(kv_precision="fp4")


@pytest.mark.parametrize("name,tp", [("llama3_70b", 1), ("llama3_70b", 8), ("deepseek_r1", 8)])
def test_fp8_halves_the_kv_cache_memory_per_token(name, tp):
    system, model = emu.load_system("gb200_nvl72"), emu.load_model(name)
    hbm = float(rank_system(system).chip.hbm_bytes)
    bf16 = memory(model, _decode(model, tp=tp, batch=8, ctx=4096), hbm)
    fp8 = memory(model, _decode(model, "fp8", tp=tp, batch=8, ctx=4096), hbm)
    assert float(bf16.kv_cache_bytes) > 0
    assert float(fp8.kv_cache_bytes) == pytest.approx(0.5 * float(bf16.kv_cache_bytes), rel=1e-6)
    assert float(fp8.weights_bytes) == float(bf16.weights_bytes)
    assert float(kv_cache_bytes_per_token(model, 1.0)) == 0.5 * float(
        kv_cache_bytes_per_token(model)
    )


@pytest.mark.parametrize("name,tp,slower", [("llama3_70b", 1, 1.0), ("deepseek_r1", 8, 100.0)])
def test_fp8_halves_the_bytes_a_kv_bound_decode_step_reads(name, tp, slower):
    """Where the attention core is bound by its KV read its time less the launch halves with
    the bytes. GQA at a long context is (~8 FLOP/byte); MLA's packed kernel is compute-bound
    on a GB200 once its KV is FP8, so its HBM is slowed `slower` times to expose the read."""
    system, model = emu.load_system("gb200_nvl72"), emu.load_model(name)
    bw = system.chip.hbm_bytes_per_s / slower
    system = replace(system, chip=replace(system.chip, hbm_bytes_per_s=bw))
    launch = float(rank_system(system).chip.kernel_overhead_s)
    bf16 = float(decode_attention(system, model, _decode(model, tp=tp), 1.0)) - launch
    fp8 = float(decode_attention(system, model, _decode(model, "fp8", tp=tp), 1.0)) - launch
    assert fp8 == pytest.approx(0.5 * bf16, rel=1e-5)


def test_fp8_kv_never_slows_the_attention_core_nor_beats_half():
    system, model = emu.load_system("gb200_nvl72"), emu.load_model("deepseek_r1")
    launch = float(rank_system(system).chip.kernel_overhead_s)
    bf16 = float(decode_attention(system, model, _decode(model, tp=8), 1.0)) - launch
    fp8 = float(decode_attention(system, model, _decode(model, "fp8", tp=8), 1.0)) - launch
    assert 0.5 * bf16 <= fp8 < bf16


def test_a_kv_capacity_bound_decode_holds_about_twice_the_sequences():
    system, model = emu.load_system("gb200_nvl72"), emu.load_model("llama3_70b")
    plan = _decode(model, batch=1, ctx=4096)
    b16 = policy.largest_batch(system, model, plan, 1.0)
    b8 = policy.largest_batch(system, model, replace(plan, kv_precision=jnp.float32(1.0)), 1.0)
    # batch = (HBM - weights) / KV per sequence; the small activation term keeps it under 2x
    assert 1.9 <= b8 / b16 <= 2.05, (b16, b8)
    r16 = evaluate(system, model, replace(plan, microbatch=jnp.float32(b16)))
    r8 = evaluate(system, model, replace(plan, microbatch=jnp.float32(b8)))
    # twice the sequences share each weight read: more tokens per second, though not 2x
    assert float(r8.tokens_per_s) > 1.1 * float(r16.tokens_per_s)


def test_bf16_default_leaves_every_number_unchanged():
    system, model = emu.load_system("dgx_h100"), emu.load_model("llama3_70b")
    kw = dict(tp=8, microbatch=32, global_batch=32, seq_len=8192, context=8192, phase="decode")
    a = evaluate(system, model, make_plan(**kw))
    b = evaluate(system, model, make_plan(**kw, kv_precision="bf16"))
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    c = evaluate(system, model, make_plan(**kw, kv_precision="fp8"))
    assert float(c.step_time_s) < float(a.step_time_s)


def test_grad_with_respect_to_the_kv_leaf_is_finite_and_positive_for_step_time():
    system, model = emu.load_system("gb200_nvl72"), emu.load_model("llama3_70b")
    plan = _decode(model, batch=64, ctx=8192)

    def step(x):
        return evaluate(system, model, replace(plan, kv_precision=x)).step_time_s

    for x in (1.0, 2.0):
        g = float(jax.grad(step)(jnp.float32(x)))
        assert np.isfinite(g) and g > 0, (x, g)


def test_training_ignores_the_kv_precision():
    system, model = emu.load_system("dgx_h100"), emu.load_model("llama3_8b")
    kw = dict(tp=8, global_batch=8, seq_len=4096)
    a = evaluate(system, model, make_plan(**kw))
    b = evaluate(system, model, make_plan(**kw, kv_precision="fp8"))
    assert float(a.step_time_s) == float(b.step_time_s)
    assert float(a.memory.total_bytes) == float(b.memory.total_bytes)


def test_cli_flag_round_trip_and_plan_line(capsys):
    args = ("run", "--model", "llama3_70b", "--phase", "decode", "--chips", "1")
    args += ("--context", "4096", "--tpot-slo", "0.1")
    d8 = run_json(capsys, *args, "--kv-precision", "fp8")
    d16 = run_json(capsys, *args)
    assert d8["plan"]["kv_precision"] == "fp8" and d16["plan"]["kv_precision"] == "bf16"
    assert d8["plan"]["microbatch"] >= 1.9 * d16["plan"]["microbatch"]
    code, out, _ = run_cli(capsys, *args, "--kv-precision", "fp8")
    assert code == 0 and "kv=fp8" in out
    plan = make_plan(**d8["plan"])
    assert float(plan.kv_precision) == 1.0


def test_cli_bad_kv_precision_is_one_error_line(capsys):
    for cmd in ("run", "serve", "compare"):
        code, out, err = run_cli(capsys, cmd, "--kv-precision", "fp4")
        lines = err.strip().splitlines()
        assert code == 2 and out == "", cmd
        assert len(lines) == 1 and lines[0].startswith("emu: error:") and "'fp4'" in lines[0]


def test_search_takes_the_kv_precision(capsys):
    """A KV-bound decode (Llama 3 70B at 32K context on 8 GB200): the search with an FP8 KV
    cache finds plans with the KV precision fixed and more tokens/s than with bf16."""
    args = ["search", "--system", "gb200_nvl72", "--model", "llama3_70b", "--phase", "decode",
            "--chips", "8", "--context", "32768"]  # fmt: skip
    fp8 = run_json(capsys, *args, "--kv-precision", "fp8")
    bf16 = run_json(capsys, *args)
    assert fp8["problem"]["kv_precision"] == "fp8" and bf16["problem"]["kv_precision"] == "bf16"
    assert fp8["best"]["plan"]["kv_precision"] == "fp8"
    assert fp8["best"]["tokens_per_s"] > 1.5 * bf16["best"]["tokens_per_s"]
    code, _, err = run_cli(capsys, "search", "--kv-precision", "fp8")  # training: no KV cache
    assert code == 2 and "--kv-precision applies to prefill/decode plans only" in err


def test_serve_takes_the_kv_precision_for_both_instances(capsys):
    d = run_json(capsys, "serve", "--kv-precision", "fp8")
    assert d["prefill"]["plan"]["kv_precision"] == "fp8"
    assert d["decode"]["plan"]["kv_precision"] == "fp8"
    assert run_json(capsys, "serve")["decode"]["plan"]["kv_precision"] == "bf16"


def test_plan_best_keeps_the_kv_precision(capsys):
    d = run_json(capsys, "run", "--system", "gb200_nvl72", "--model", "llama3_70b", "--phase",
                 "decode", "--chips", "8", "--kv-precision", "fp8", "--plan", "best")  # fmt: skip
    assert d["plan"]["kv_precision"] == "fp8"
