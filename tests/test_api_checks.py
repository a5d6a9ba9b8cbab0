"""The library's concrete calls check their inputs and results (a red-team pass over the
Python API, session 34): values built with `emu.struct.replace` bypass the loaders'
checks, batches passed without vmap skipped every check, and `analysis.run`,
`serving.disaggregated`, `policy.largest_batch`, `Program.estimate` and
`search.Problem(fixed=...)` answered inputs they could not honour."""

import jax
import jax.numpy as jnp
import pytest

import emu
from emu.analysis import run
from emu.policy import largest_batch
from emu.search import Problem, enumerate_plans
from emu.serving import disaggregated
from emu.struct import replace, stack


@pytest.fixture(scope="module")
def smp():
    system, model = emu.load_system("gb200_nvl72"), emu.load_model("llama3_8b")
    return system, model, emu.make_plan(tp=8, dp=9, global_batch=72, seq_len=4096)


def test_evaluate_checks_system_and_model_values(smp):
    """Zero HBM bandwidth made a step faster (safe_div(x, 0) = 0 in the traced model)."""
    s, m, p = smp
    slow = replace(s, chip=replace(s.chip, hbm_bytes_per_s=jnp.float32(0.0)))
    with pytest.raises(ValueError, match=r"chip.hbm_bytes_per_s must be in \[1e\+09"):
        emu.evaluate(slow, m, p)
    with pytest.raises(ValueError, match="n_layers must be an integer"):
        emu.evaluate(s, replace(m, n_layers=jnp.float32(2.5)), p)
    # traced: unchecked, finite
    g = jax.grad(lambda x: emu.evaluate(x, m, p).tokens_per_joule)(s)
    assert jnp.isfinite(g.chip.hbm_bytes_per_s)


def test_a_batch_evaluated_eagerly_is_checked_per_element(smp):
    s, m, p = smp
    with pytest.raises(ValueError, match=r"element 1 of the batch: Plan: tp must be a positive"):
        emu.evaluate(s, m, stack([p, replace(p, tp=jnp.float32(-8.0))]))
    two = replace(p, microbatch=jnp.float32(2.0), global_batch=jnp.float32(144.0))
    r = emu.evaluate(s, m, stack([p, two]))
    assert r.mfu.shape == (2,) and bool(jnp.all((r.mfu > 0) & (r.mfu < 1)))
    one = emu.evaluate(s, m, p)
    assert float(r.step_time_s[0]) == pytest.approx(float(one.step_time_s), rel=1e-6)


def test_analysis_run_checks_the_plan_and_the_result(smp):
    s, m, p = smp
    with pytest.raises(ValueError, match="tp=3 must divide the model's n_heads=32"):
        run(s, m, replace(p, tp=jnp.float32(3.0)))
    with pytest.raises(ValueError, match="microbatch must be a positive integer"):
        run(s, m, replace(p, microbatch=jnp.float32(0.0)))


def test_disaggregated_serving_checks_phases_lengths_and_plans(smp):
    s, m, _ = smp
    pre = emu.make_plan(phase="prefill", tp=8, dp=1, microbatch=1, seq_len=4096)
    dec = emu.make_plan(phase="decode", tp=8, dp=1, microbatch=64, context=4096)
    ok = disaggregated(s, m, pre, dec, prompt_len=4096, output_len=512)
    assert float(ok.requests_per_s) > 0
    with pytest.raises(ValueError, match="output_len must be a positive number of tokens"):
        disaggregated(s, m, pre, dec, prompt_len=4096, output_len=-5)
    with pytest.raises(ValueError, match="prefill_plan is a decode plan"):
        disaggregated(s, m, dec, pre, prompt_len=4096, output_len=512)
    with pytest.raises(ValueError, match="tp=3 must divide"):
        disaggregated(s, m, replace(pre, tp=jnp.float32(3.0)), dec, prompt_len=4096, output_len=8)
    # traced lengths pass through unchecked, as any traced input
    f = jax.jit(lambda o: disaggregated(s, m, pre, dec, prompt_len=4096.0, output_len=o))
    assert float(f(512.0).requests_per_s) == pytest.approx(float(ok.requests_per_s), rel=1e-5)


def test_largest_batch_sizes_serving_plans_under_a_real_slo(smp):
    s, m, p = smp
    dec = emu.make_plan(phase="decode", tp=8, dp=1, microbatch=1, context=4096)
    assert largest_batch(s, m, dec, 0.05) > 1
    with pytest.raises(ValueError, match="got a train plan"):
        largest_batch(s, m, p, 0.05)
    for bad in (float("nan"), -1.0, "50ms"):
        with pytest.raises(ValueError, match="the SLO must be a positive number of seconds"):
            largest_batch(s, m, dec, bad)
    with pytest.raises(ValueError, match="tp=3 must divide"):
        largest_batch(s, m, replace(dec, tp=jnp.float32(3.0)), 0.05)


def test_a_fixed_knob_is_fixed_without_free():
    """`Problem(fixed=(("tp", 8),))` searched tp 1-8 unless `free` was also given."""
    h, m = emu.load_system("dgx_h100"), emu.load_model("llama3_8b")
    plans = enumerate_plans(h, m, Problem("dgx_h100", "llama3_8b", 16, fixed=(("tp", 8),)))
    assert set(plans[:, 0].tolist()) == {8.0} and len(plans) > 1
    with pytest.raises(ValueError, match="tp is both free and fixed"):
        enumerate_plans(
            h, m, Problem("dgx_h100", "llama3_8b", 16, free=("tp",), fixed=(("tp", 8),))
        )
    # a choice knob fixed by its name, as make_plan takes it ("no valid plan" before)
    named = enumerate_plans(h, m, Problem("dgx_h100", "llama3_8b", 16,
                                          fixed=(("recompute", "full"),)))  # fmt: skip
    coded = enumerate_plans(h, m, Problem("dgx_h100", "llama3_8b", 16, fixed=(("recompute", 2),)))
    assert named.shape == coded.shape and (named == coded).all()
    with pytest.raises(ValueError, match=r"Problem.fixed must be \(knob, value\) pairs"):
        enumerate_plans(h, m, Problem("dgx_h100", "llama3_8b", 16, fixed=(("tp",),)))
    with pytest.raises(ValueError, match="Problem.fixed: unknown recompute 'fully'; known"):
        enumerate_plans(h, m, Problem("dgx_h100", "llama3_8b", 16, fixed=(("recompute", "fully"),)))


def test_wrong_types_are_one_value_error_naming_the_parameter(smp):
    """Each of these ended in a TypeError, AttributeError or IndexError from deep inside,
    or was silently coerced (chips=True planned one chip)."""
    import numpy as np

    from emu.policy import auto_plan
    from emu.search import Space

    s, m, p = smp
    # overrides take unit strings, as --set does, and name the path otherwise
    hbm = emu.load_system("gb200_nvl72", {"chip.hbm_bytes_per_s": "16TB/s"}).chip.hbm_bytes_per_s
    assert float(hbm) == pytest.approx(16e12, rel=1e-6)
    for bad, needle in (
        ({"chip.tdp_w": [1000]}, "chip.tdp_w: the value must be one number"),
        ({"chip.tdp_w": "16TB/s"}, "chip.tdp_w: '16TB/s' is in bytes/s"),
        ({1: 2}, "override paths are dotted strings"),
        (["chip.tdp_w=1kW"], "overrides must be a dict"),
    ):
        with pytest.raises(ValueError, match=needle):
            emu.load_system("gb200_nvl72", bad)
    with pytest.raises(ValueError, match="system must be an emu System \\(got Model\\)"):
        emu.evaluate(m, s, p)
    with pytest.raises(ValueError, match="plan must be an emu Plan \\(got dict\\)"):
        emu.evaluate(s, m, {"tp": 8})
    decode = emu.make_plan(phase="decode", tp=8, dp=9, microbatch=1, context=4096)
    with pytest.raises(ValueError, match="stack: element 1 differs from element 0"):
        stack([p, decode])
    for chips in ("72", True, 7.5):
        with pytest.raises(ValueError, match="chips must be a positive integer"):
            auto_plan(s, m, chips)
    assert float(auto_plan(s, m, np.int64(72)).tp) >= 1
    h = emu.load_system("dgx_h100")
    for kw, needle in (
        (dict(seq_len=-1), "seq_len must be a positive integer"),
        (dict(chips=True), "chips must be positive integers"),
        (dict(global_batch=0), "global_batch must be a positive integer or None"),
        (dict(power_cap="60kW"), "the power cap must be a positive finite number"),
    ):
        with pytest.raises(ValueError, match=needle):
            enumerate_plans(h, m, Problem("dgx_h100", "llama3_8b", **{"chips": 16, **kw}))
    problem = Problem("dgx_h100", "llama3_8b", 16, free=("pp",))
    with pytest.raises(ValueError, match="grid chip.hbm_bytes_per_s: give a list of numbers"):
        Space(h, m, problem, {"chip.hbm_bytes_per_s": "3e12"})


def test_numpy_scalars_pass_and_a_single_move_reads_as_one(smp, capsys):
    import numpy as np
    from _cli import run_cli

    s, m, _ = smp
    dec = emu.make_plan(phase="decode", tp=8, dp=1, microbatch=1, context=4096)
    n = largest_batch(s, m, dec, 0.05)
    assert (
        largest_batch(s, m, dec, np.float32(0.05))
        == largest_batch(s, m, dec, jnp.float32(0.05))
        == n
    )
    # a two-axis batch evaluated eagerly: results checked, no per-element slicing error
    mb = jnp.ones((2, 3))
    r = emu.evaluate(s, m, replace(emu.make_plan(tp=8, dp=9, seq_len=4096), microbatch=mb,
                                   global_batch=9 * mb))  # fmt: skip
    assert r.mfu.shape == (2, 3)
    # ... and each of its elements checked (a tp of 3 in a 2-D batch ran unchecked), and
    # batch axes that do not broadcast refused in one line (JAX's shape error before)
    p = emu.make_plan(tp=8, dp=9, seq_len=4096)
    with pytest.raises(ValueError, match=r"element \(0, 1\) of the batch: Plan: tp=3 must"):
        emu.evaluate(s, m, replace(p, tp=jnp.array([[8.0, 3.0], [8.0, 8.0]])))
    with pytest.raises(ValueError, match=r"shapes \[\(2,\), \(3,\)\], which do not broadcast"):
        emu.evaluate(s, m, replace(p, seq_len=jnp.array([1024.0, 2048.0]),
                                   tp=jnp.array([8.0, 4.0, 2.0])))  # fmt: skip
    # only "add chips" is left: one move, not " or add chips"
    args = ["run", "--system", "dgx_h100", "--model", "llama3_405b", "--phase", "decode"]
    code, _, err = run_cli(capsys, *args, "--chips", "1", "--precision", "fp8")
    assert code == 2 and err.rstrip().endswith("at tp=1); try more --chips (now 1).")
    code, out, _ = run_cli(capsys, *args, "--chips", "1", "--precision", "fp8", "--batch", "1")
    assert out.splitlines()[0].endswith("per chip; add chips.")  # weights alone: no --batch move


def test_a_problem_names_its_system_and_estimate_checks_its_arguments():
    h, m = emu.load_system("dgx_h100"), emu.load_model("llama3_8b")
    with pytest.raises(ValueError, match="Problem.system is 'gb200_nvl72' but the system"):
        enumerate_plans(h, m, Problem("gb200_nvl72", "llama3_8b", 8))
    # the model too: a sweep of llama3_8b labelled its results mixtral_8x7b (session 36)
    with pytest.raises(ValueError, match="Problem.model is 'mixtral_8x7b' but the model"):
        enumerate_plans(h, m, Problem("dgx_h100", "mixtral_8x7b", 8))
    from emu.program import from_hlo

    hlo = "\n".join([
        "HloModule m, entry_computation_layout={(f32[8,8]{1,0})->f32[8,8]{1,0}}",
        "ENTRY e {",
        "  p = f32[8,8]{1,0} parameter(0)",
        "  ROOT t = f32[8,8]{1,0} tanh(p)",
        "}",
    ])  # fmt: skip
    prog = from_hlo(hlo, {"data": 1})
    assert prog.estimate(h, tokens_per_step=8)[0].step_time_s > 0
    for wrong in (["gb200_nvl72"], m):  # a name or a model: AttributeError / TypeError before
        with pytest.raises(ValueError, match="estimate takes Systems"):
            prog.estimate(wrong)
    assert len(prog.estimate({"h": h}.values())) == 1  # any iterable of Systems
    for size in (1.5, 0, "2"):  # 1.5 was cut to 1, 0 met a device-count message
        with pytest.raises(ValueError, match=f"mesh axis 'data' has size {size!r}; give each"):
            from_hlo(hlo, {"data": size})
    # a file read in binary mode is the same module; a cut text and a non-text are refused
    # (the cut one priced the computations it had read; bytes gave a TypeError)
    same = from_hlo(hlo.encode(), {"data": 1}).estimate(h, tokens_per_step=8)[0]
    assert float(same.step_time_s) == float(prog.estimate(h, tokens_per_step=8)[0].step_time_s)
    with pytest.raises(ValueError, match="computation 'e' has no closing"):
        from_hlo(hlo.rsplit("\n", 2)[0], {"data": 1})
    with pytest.raises(ValueError, match="hlo must be the module's text, a str"):
        from_hlo(None, {"data": 1})
    for kw, needle in (
        (dict(top=0), "top must be a positive integer"),
        (dict(algorithm="bogus"), "unknown algorithm 'bogus'"),
        (dict(tokens_per_step=float("nan")), "tokens_per_step must be a finite number"),
    ):
        with pytest.raises(ValueError, match=needle):
            prog.estimate(h, **{"tokens_per_step": 8, **kw})
    hot = replace(h, chip=replace(h.chip, tdp_w=jnp.float32(-1000.0)))  # gave -357 W
    with pytest.raises(ValueError, match="tdp_w"):
        prog.estimate(hot, tokens_per_step=8)


def test_a_problem_refuses_fields_it_would_ignore():
    """A Problem field of another phase (a TTFT SLO in training, a KV context in prefill)
    or an expert knob on a dense model was accepted and changed nothing."""
    h, dense, moe = (emu.load_system("dgx_h100"), emu.load_model("llama3_8b"),
                     emu.load_model("mixtral_8x7b"))  # fmt: skip
    for kw, needle in (
        (dict(ttft_slo=0.5), "ttft_slo applies to prefill problems only (this one is train)"),
        (dict(tpot_slo=0.02), "tpot_slo applies to decode problems only"),
        (dict(phase="prefill", context=100), "context applies to decode problems only"),
        (dict(cache_hit=0.5), "cache_hit applies to prefill problems only"),
        (dict(moe_imbalance=1.3), "moe_imbalance applies to MoE models' experts"),
        (dict(a2a_overlap=True), "a2a_overlap applies to MoE models' experts"),
    ):
        p = Problem("dgx_h100", "llama3_8b", 8, **kw)
        with pytest.raises(ValueError, match=needle.replace("(", r"\(").replace(")", r"\)")):
            enumerate_plans(h, dense, p)
    assert len(enumerate_plans(h, moe, Problem("dgx_h100", "mixtral_8x7b", 8, moe_imbalance=1.3)))
    ok = Problem("dgx_h100", "llama3_8b", 8, phase="decode", context=100, kv_precision="fp8")
    assert len(enumerate_plans(h, dense, ok))
