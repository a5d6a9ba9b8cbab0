"""emu.fast and the sweep space: correctness only (the timings are in experiments/bench_*)."""

import jax
import numpy as np
import pytest

import emu
from emu import fast
from emu.search import KNOBS, Problem, enumerate_plans, sweep


@pytest.fixture(scope="module")
def nvl72():
    return emu.load_system("gb200_nvl72")


def _close(a, b):
    return np.allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=1e-5, atol=0)


def test_space_has_every_vpp_and_divisor():
    """GPT-3 175B (96 layers): interleaving 3 and 6 (Calculon's best GPT-3 plan uses 6);
    micro-batches that are not powers of two where the batch per rank allows them."""
    system, model = emu.load_system("dgx_a100"), emu.load_model("gpt3_175b")
    k = enumerate_plans(system, model, Problem("dgx_a100", "gpt3_175b", 1024))
    col = {n: k[:, KNOBS.index(n)].astype(int) for n in KNOBS}
    assert {3, 6, 12}.issubset(set(col["vpp"]))
    per_stage = 96 // col["pp"]
    assert np.all(per_stage % col["vpp"] == 0) and np.all((col["vpp"] == 1) | (col["pp"] > 1))
    m70 = emu.load_model("llama3_70b")
    k70 = enumerate_plans(
        emu.load_system("gb200_nvl72"), m70, Problem("gb200_nvl72", "llama3_70b", 144)
    )
    mb = set(k70[:, KNOBS.index("microbatch")].astype(int))
    assert mb - {1, 2, 4, 8, 16, 32, 64, 128}  # 3, 6, ... where they divide the batch per rank


def test_every_enumerated_plan_passes_the_plan_checks():
    from emu import policy
    from emu.search import plan_of

    system, model = emu.load_system("dgx_a100"), emu.load_model("gpt3_175b")
    problem = Problem("dgx_a100", "gpt3_175b", 1024)
    k = enumerate_plans(system, model, problem)
    for i in np.random.default_rng(0).choice(len(k), 40, replace=False):
        plan = plan_of(problem, dict(zip(KNOBS, k[i].tolist(), strict=True)))
        policy.check_plan(system, model, plan, 1024)  # raises on an invalid plan


def test_packed_evaluator_equals_evaluate(nvl72):
    model = emu.load_model("llama3_8b")
    plans = [
        emu.make_plan(tp=8, dp=9, global_batch=72, seq_len=4096),
        emu.make_plan(tp=4, pp=2, dp=9, global_batch=144, seq_len=8192, recompute="full"),
        emu.make_plan(tp=2, pp=4, dp=9, vpp=2, global_batch=288, seq_len=4096, zero=3),
    ]
    ev = fast.Evaluator(nvl72, model, plans[0])
    for p in plans:
        want = emu.evaluate(nvl72, model, p)
        got = ev.result(ev.pack(nvl72, model, p))
        for name, a, b in zip(
            ev.all_outputs, jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want),
            strict=True,
        ):  # fmt: skip
            assert _close(a, b), (name, a, b)
    # a subset of outputs: the same numbers
    sub = fast.Evaluator(nvl72, model, plans[1], outputs=("step_time_s", "memory.total_bytes"))
    want = emu.evaluate(nvl72, model, plans[1])
    assert _close(np.asarray(sub()), [want.step_time_s, want.memory.total_bytes])


def test_one_configuration_runs_synchronously_with_the_same_values(nvl72, monkeypatch):
    """Under JAX's default asynchronous CPU dispatch, `Evaluator.__call__` runs on a
    synchronous CPU client of its own: bit-identical values to the default client's
    executable, whatever form the inputs take; where that client cannot be built (JAX's
    internal API moved) it falls back to the default client."""
    model = emu.load_model("llama3_8b")
    p = emu.make_plan(tp=4, pp=2, dp=9, global_batch=144, seq_len=8192)
    ev = fast.Evaluator(nvl72, model, p)
    y = np.asarray(ev())
    assert isinstance(ev._one_c, fast._SyncOne) == fast._async_cpu()
    monkeypatch.setattr(fast, "SYNC_ONE", False)
    plain = fast.Evaluator(nvl72, model, p)
    np.testing.assert_array_equal(np.asarray(plain()), y)
    assert not isinstance(plain._one_c, fast._SyncOne)
    x = ev.pack(nvl72, model, p)
    for form in (x, ev.device(x), jax.numpy.asarray(x)):
        np.testing.assert_array_equal(np.asarray(ev(form)), y)
    other = ev.pack(nvl72, model, emu.make_plan(tp=8, dp=9, global_batch=72, seq_len=4096))
    np.testing.assert_array_equal(np.asarray(ev(ev.device(other))), np.asarray(plain(other)))
    monkeypatch.setattr(fast, "SYNC_ONE", True)

    def broken(*a, **k):
        raise AttributeError("no such internal API")

    monkeypatch.setattr(fast, "_SyncOne", broken)
    fallback = fast.Evaluator(nvl72, model, p)
    np.testing.assert_array_equal(np.asarray(fallback()), y)
    assert fallback._x0d is not None  # the default client's executable and inputs


def test_one_configuration_executable_is_kept_on_disk(nvl72, monkeypatch, tmp_path):
    """The synchronous client's executable bypasses JAX's compilation caches, so emu keeps
    it on disk: a second Evaluator of the same program loads it (no compilation) and gets
    the same values; a corrupt file is compiled again and rewritten, not trusted."""
    if not fast._async_cpu():
        pytest.skip("synchronous CPU dispatch (or no CPU backend): JAX's own client is used")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    model = emu.load_model("llama3_8b")
    p = emu.make_plan(tp=8, dp=9, global_batch=72, seq_len=4096)
    y = np.asarray(fast.Evaluator(nvl72, model, p)())
    files = list((tmp_path / "emu" / "aot").glob("sync-one-*.bin"))
    assert len(files) == 1 and files[0].stat().st_size > 1000
    compile_sync = fast._compile_sync

    def no_compile(*a, **k):
        raise AssertionError("compiled again")

    monkeypatch.setattr(fast, "_compile_sync", no_compile)
    loaded = fast.Evaluator(nvl72, model, p)
    np.testing.assert_array_equal(np.asarray(loaded()), y)
    assert isinstance(loaded._one_c, fast._SyncOne)  # (a failed load would have fallen back)
    files[0].write_bytes(b"not an executable")
    monkeypatch.setattr(fast, "_compile_sync", compile_sync)
    again = fast.Evaluator(nvl72, model, p)
    np.testing.assert_array_equal(np.asarray(again()), y)
    assert isinstance(again._one_c, fast._SyncOne) and files[0].stat().st_size > 1000


def test_result_rebuilds_the_tree_jax_would(nvl72):
    """`Evaluator.result` builds the RunResult without running the dataclasses' __init__:
    the same classes, structure and leaves as `jax.tree_util.tree_unflatten`, and equal."""
    model = emu.load_model("llama3_8b")
    ev = fast.Evaluator(nvl72, model, emu.make_plan(tp=8, dp=9, global_batch=72, seq_len=4096))
    got = ev.result()
    want = jax.tree_util.tree_unflatten(ev._out_def, list(np.asarray(ev())))
    assert type(got) is type(want) and got == want
    assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(want)
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want), strict=True):
        assert type(a) is type(b) and a == b
    assert got.replace(step_time_s=1.0).step_time_s == 1.0  # a dataclass like any other


def test_packed_batch_equals_loop(nvl72):
    model = emu.load_model("llama3_8b")
    base = emu.make_plan(tp=1, dp=72, global_batch=576, seq_len=4096)
    ev = fast.Evaluator(
        nvl72, model, base, outputs=("step_time_s", "tokens_per_joule"),
        vary=("plan.tp", "plan.dp", "plan.microbatch"),
    )  # fmt: skip
    rows = np.array([[1, 72, 1], [2, 36, 2], [4, 18, 4], [8, 9, 8], [8, 9, 1]], np.float32)
    got = ev.batch(rows, block=4)  # two blocks, the last one padded
    for r, (tp, dp, mb) in zip(got, rows.tolist(), strict=True):
        p = emu.make_plan(tp=int(tp), dp=int(dp), microbatch=int(mb), global_batch=576,
                          seq_len=4096)  # fmt: skip
        want = emu.evaluate(nvl72, model, p)
        assert _close(r, [want.step_time_s, want.tokens_per_joule])


def test_full_result_batch_equals_evaluate_with_repeated_outputs_filled(nvl72):
    """The full result (every RunResult leaf) in one program of several outputs: it takes
    columns, runs in blocks (three here, the last padded), and the outputs XLA computes as
    constants (a dense model's expert and dispatch times, a training run's TTFT) or as
    copies of another (n_ranks of n_chips on one die per chip, breakdown.total_s of
    step_time_s) are filled on the host, not copied from the program: every row still
    equals `emu.evaluate`, leaf by leaf."""
    model = emu.load_model("llama3_8b")
    base = emu.make_plan(tp=1, dp=72, global_batch=576, seq_len=4096)
    ev = fast.Evaluator(nvl72, model, base, vary=("plan.tp", "plan.dp", "plan.microbatch"))
    assert ev.columns and len(ev.outputs) > fast.SPLIT
    rows = np.array([[1, 72, 1], [2, 36, 2], [4, 18, 4], [8, 9, 8], [8, 9, 1], [2, 36, 8],
                     [1, 72, 2], [4, 18, 1], [8, 9, 4]], np.float32)  # fmt: skip
    got = ev.batch(rows, block=4)
    constant, same = ev._repeated(4)
    names = ev.outputs
    if constant or same:  # (an XLA that folds nothing elsewhere: only the values below)
        assert {"ttft_s", "breakdown.expert_s"} <= {names[j] for j in constant}
        assert {(names[j], names[k]) for j, k in same.items()} >= {
            ("n_ranks", "n_chips"),
            ("breakdown.total_s", "step_time_s"),
        }
    assert got.shape == (len(rows), len(names))
    for r, (tp, dp, mb) in zip(got, rows.tolist(), strict=True):
        p = emu.make_plan(tp=int(tp), dp=int(dp), microbatch=int(mb), global_batch=576,
                          seq_len=4096)  # fmt: skip
        want = [float(x) for x in jax.tree_util.tree_leaves(emu.evaluate(nvl72, model, p))]
        np.testing.assert_allclose(r, want, rtol=2e-6, atol=0)
    # the same values without the host's fills and copies (every output copied out)
    ev._repeats[4] = (set(), {})
    np.testing.assert_array_equal(ev.batch(rows, block=4), got)
    # into the caller's array (`out`), column-major or row-major, returned as given
    for buf in (np.full((len(names), len(rows)), np.nan, np.float32).T,
                np.full((len(rows), len(names)), np.nan, np.float32)):  # fmt: skip
        assert ev.batch(rows, block=4, out=buf) is buf
        np.testing.assert_array_equal(buf, got)
    frozen = np.empty(got.shape, np.float32)
    frozen.flags.writeable = False
    for bad in (np.empty((len(rows), 3), np.float32), np.empty(got.shape, np.float64), [0.0],
                frozen):  # fmt: skip
        with pytest.raises(ValueError, match=r"out must be a writable float32 array of shape"):
            ev.batch(rows, block=4, out=bad)
    assert ev.batch(rows[:0]).shape == (0, len(names))


def test_full_result_batch_at_the_default_block_equals_copying_every_output(nvl72):
    """At the default block (`fast.BLOCK_COLUMNS`, the program the benchmarks time: XLA
    may fuse and fold it differently from a 4-row one) plus a padded second block, the
    host's fills and copies give the values a plain copy of every output gives."""
    model = emu.load_model("llama3_8b")
    base = emu.make_plan(tp=1, dp=72, global_batch=576, seq_len=4096)
    ev = fast.Evaluator(nvl72, model, base, vary=("plan.tp", "plan.dp", "plan.microbatch"))
    choices = np.array([[1, 72, 1], [2, 36, 2], [4, 18, 4], [8, 9, 8], [8, 9, 1]], np.float32)
    rows = choices[np.arange(ev.block + 5) % len(choices)]
    got = ev.batch(rows)
    constant, same = ev._repeated(ev.block)
    ev._repeats[ev.block] = (set(), {})
    np.testing.assert_array_equal(ev.batch(rows), got)
    if not (constant and same):
        pytest.skip("this XLA folds no output of the full result: no fill to check")


def test_repeated_outputs_reads_hlo_text_and_falls_back():
    """`fast.repeated_outputs` on hand-written HLO: a broadcast constant (also through a
    copy) is constant, a copy or bitcast of an earlier output's instruction is the same as
    that output; text that is not a program with a tuple of that many outputs gives
    nothing (every output copied, never a wrong fill)."""
    tup = "(" + ", ".join(["f32[4]{0}"] * 4) + ", /*index=4*/f32[4]{0})"
    text = f"""HloModule m

%f (p: f32[4]) -> f32[4] {{
  %p = f32[4]{{0}} parameter(0)
  ROOT %n = f32[4]{{0}} negate(%p)
}}

ENTRY %main.1 (v.1: f32[2,4]) -> {tup} {{
  %v.1 = f32[2,4]{{1,0}} parameter(0)
  %constant.1 = f32[] constant(0)
  %zeros = f32[4]{{0}} broadcast(%constant.1), dimensions={{}}
  %row = f32[4]{{0}} fusion(%v.1), kind=kLoop, calls=%f
  %copy = f32[4]{{0}} copy(%row)
  %copy.1 = f32[4]{{0}} copy(%zeros)
  %bit = f32[4]{{0}} bitcast(%row)
  ROOT %tuple = {tup} tuple(%row, %zeros, %copy, %copy.1, %bit)
}}
"""
    assert fast.repeated_outputs(text, 5) == ({1, 3}, {2: 0, 4: 0})
    assert fast.repeated_outputs(text, 4) == (set(), {})  # another number of outputs
    assert fast.repeated_outputs("not HLO", 5) == (set(), {})
    assert fast.repeated_outputs(text.replace("ROOT %tuple", "%tuple"), 5) == (set(), {})
    # a computation printed after ENTRY is not read (its constant tuple is not ENTRY's)
    after = text + "\n%g (q: f32[4]) -> f32[4] {\n  %k = f32[4]{0} broadcast(%constant.1)\n"
    after += "  ROOT %tuple = (f32[4]{0}, f32[4]{0}) tuple(%k, %k)\n}\n"
    assert fast.repeated_outputs(after, 5) == ({1, 3}, {2: 0, 4: 0})
    # a name defined twice, or a cycle: not a program, nothing filled
    assert fast.repeated_outputs(text.replace("%bit =", "%row ="), 5) == (set(), {})
    cyc = text.replace("copy(%row)", "copy(%bit)").replace("bitcast(%row)", "bitcast(%copy)")
    assert fast.repeated_outputs(cyc, 5) == (set(), {})
    # a copy that changes the layout, then a bitcast, reorders the values: not a copy
    moved = text.replace("%copy = f32[4]{0} copy(%row)", "%copy = f32[4]{1} copy(%row)")
    assert fast.repeated_outputs(moved, 5) == ({1, 3}, {4: 0})
    # an instruction with no operands that is not a constant (iota) varies
    iota = text.replace("broadcast(%constant.1)", "iota()")
    assert fast.repeated_outputs(iota, 5) == (set(), {2: 0, 3: 1, 4: 0})


def test_batch_program_keeps_nans_infinities_and_integer_steps(nvl72):
    """The batch programs compile with XLA's fast math (`fast.BATCH_COMPILE`, NaNs and
    infinities honoured): a row with a NaN input still comes out NaN, not a finite number,
    and rows whose quotients are exact integers (experts per rank) or round up (layers on
    the fullest stage) land on the same discrete plan as `emu.evaluate` (values within a few
    ulp, not a step apart)."""
    model = emu.load_model("deepseek_v3")
    base = emu.make_plan(tp=1, pp=4, dp=18, ep=2, global_batch=576, seq_len=4096)
    ev = fast.Evaluator(
        nvl72, model, base, outputs=("step_time_s", "memory.total_bytes"),
        vary=("plan.pp", "plan.ep", "plan.dp"),
    )  # fmt: skip
    # experts per rank 256/ep exact (must not round up), 61 layers over 4, 2 and 8 stages
    # uneven (ceil(61/pp) on the fullest stage)
    rows = np.array([[4, 2, 18], [2, 4, 36], [1, 8, 72], [8, 1, 9], [1, 4, 72],
                     [np.nan, 2, 18]], np.float32)  # fmt: skip
    got = ev.batch(rows, block=8)
    assert np.isnan(got[-1, 0])
    for r, (pp, ep, dp) in zip(got[:-1], rows[:-1].tolist(), strict=True):
        p = emu.make_plan(tp=1, pp=int(pp), dp=int(dp), ep=int(ep), global_batch=576,
                          seq_len=4096)  # fmt: skip
        want = emu.evaluate(nvl72, model, p)
        np.testing.assert_allclose(r, [want.step_time_s, want.memory.total_bytes], rtol=2e-6)


def test_batch_compile_options_keep_nan_checks_and_exact_functions():
    """What the honour flags buy, on a program small enough to show it: with XLA's fast
    math alone, `isnan(2 x)` of a NaN can fold to false and exp(NaN) come out a number (seen on
    jax 0.10.2); under BATCH_COMPILE both stay right, and exp and a division are exact."""
    import jax.numpy as jnp

    def f(x):
        return jnp.where(jnp.isnan(2.0 * x), 1.0, 0.0), jnp.exp(x), x / 3.0

    x = np.array([np.nan, 1.0, -np.inf, 0.5], np.float32)
    lowered = jax.jit(f).lower(jax.ShapeDtypeStruct(x.shape, x.dtype))
    flag, e, q = (np.asarray(v) for v in fast.compile_with(lowered, fast.BATCH_COMPILE)(x))
    np.testing.assert_array_equal(flag, [1.0, 0.0, 0.0, 0.0])
    assert np.isnan(e[0]) and e[2] == 0.0
    ref = jax.jit(f)(x)
    np.testing.assert_array_equal(e[1:], np.asarray(ref[1])[1:])
    np.testing.assert_array_equal(q[1:], np.asarray(ref[2])[1:])


def test_fast_math_is_dropped_with_any_flag_that_keeps_it_exact():
    """An XLA that does not know one of the honour flags must not compile with fast math
    alone (that would let NaNs and divisions change): `_known_options` drops both."""
    seen = []

    def compile_fn(opts):
        seen.append(dict(opts))
        if "xla_cpu_fast_math_honor_nans" in opts:
            raise RuntimeError("No such compile option: 'xla_cpu_fast_math_honor_nans'")
        return "compiled"

    assert fast._known_options(compile_fn, fast.BATCH_COMPILE) == "compiled"
    assert "xla_cpu_enable_fast_math" not in seen[-1]
    assert seen[-1]["xla_cpu_prefer_vector_width"] == 512
    assert fast._known_options(lambda o: o, fast.BATCH_COMPILE) == fast.BATCH_COMPILE


def test_evaluator_errors_name_the_fix(nvl72):
    model = emu.load_model("llama3_8b")
    p = emu.make_plan(tp=8, dp=9, global_batch=72, seq_len=4096)
    with pytest.raises(ValueError, match="unknown output 'step_time'"):
        fast.Evaluator(nvl72, model, p, outputs=("step_time",))
    with pytest.raises(ValueError, match="unknown input 'plan.tpp'"):
        fast.Evaluator(nvl72, model, p, vary=("plan.tpp",))
    with pytest.raises(ValueError, match="outputs is empty"):
        fast.Evaluator(nvl72, model, p, outputs=())
    ev = fast.Evaluator(nvl72, model, p, outputs=("step_time_s",))
    with pytest.raises(ValueError, match="outputs=None"):
        ev.result()
    decode = emu.make_plan(tp=8, dp=9, phase="decode", precision="fp8", zero=0)
    with pytest.raises(ValueError, match="structure"):
        ev.pack(nvl72, model, decode)
    if fast._async_cpu():  # emu's own client checks the packed length itself
        with pytest.raises(ValueError, match=r"ev\.pack"):
            ev(ev.x0[:5])


def test_aot_executables_round_trip(tmp_path, nvl72, monkeypatch):
    """A second `aot` (as a new process would build) loads the executable from disk and
    returns the same result as jax.jit; a corrupt file is recompiled, not trusted."""
    from emu.objective import evaluate

    monkeypatch.setenv("EMU_AOT", "sync")
    # as in a new process: an in-process `emu run` of an earlier test (the plan rule's
    # compiled evaluations) may hold this very executable in memory, and would not write it
    monkeypatch.setattr(fast, "_MEM", {})
    model = emu.load_model("llama3_8b")
    p = emu.make_plan(tp=8, dp=9, global_batch=72, seq_len=4096)
    want = float(jax.jit(evaluate)(nvl72, model, p).tokens_per_joule)
    first = fast.aot(evaluate, folder=tmp_path)
    assert float(first(nvl72, model, p).tokens_per_joule) == want
    files = list(tmp_path.glob("*.bin"))
    assert len(files) == 1
    monkeypatch.setattr(fast, "_MEM", {})  # as in a new process: nothing loaded yet
    second = fast.aot(evaluate, folder=tmp_path)
    assert float(second.lower(nvl72, model, p).compile()(nvl72, model, p).tokens_per_joule) == want
    files[0].write_bytes(b"not a pickle")
    monkeypatch.setattr(fast, "_MEM", {})
    third = fast.aot(evaluate, folder=tmp_path)
    assert float(third(nvl72, model, p).tokens_per_joule) == want


def test_aot_without_an_executable_evaluates_eagerly(tmp_path, nvl72, monkeypatch):
    """Mode "eager" (and "auto" off a terminal): the same numbers as `emu.evaluate`, and
    nothing compiled or written."""
    from emu.objective import evaluate

    model = emu.load_model("llama3_8b")
    p = emu.make_plan(tp=8, dp=9, global_batch=72, seq_len=4096)
    want = float(emu.evaluate(nvl72, model, p).step_time_s)
    monkeypatch.setattr(fast, "_MEM", {})
    for mode in ("eager", "auto"):
        monkeypatch.setenv("EMU_AOT", mode)
        a = fast.aot(evaluate, folder=tmp_path)
        got = a.lower(nvl72, model, p).compile()(nvl72, model, p)
        assert float(got.step_time_s) == want
    assert not list(tmp_path.iterdir())


def test_sweep_with_fewer_columns_finds_the_same_best(tmp_path, nvl72):
    model = emu.load_model("llama3_8b")
    problem = Problem("gb200_nvl72", "llama3_8b", 8, free=("tp", "pp", "microbatch"))
    full = sweep(nvl72, model, problem, tmp_path / "a")
    few = sweep(nvl72, model, problem, tmp_path / "b", columns=("mfu",))
    assert few.columns == ("objective", "feasible", "tokens_per_s", "power_w", "mfu")
    # another XLA fusion of the same formulas: equal to float32 rounding
    assert _close([r["objective"] for r in few.top], [r["objective"] for r in full.top])
    assert {k: few.best[k] for k in KNOBS} == {k: full.best[k] for k in KNOBS}
    assert _close(few.best["mfu"], full.best["mfu"]) and few.best["step_time_s"] is None
    assert len(few.pareto) == len(full.pareto)


def test_a_lean_sweep_fills_the_rows_it_reports(tmp_path, nvl72):
    """`sweep(columns=MERGE_COLUMNS, fill=True)` scans with the merge's columns alone and then
    evaluates its top and Pareto rows with every column: the best plan and the rows of a sweep
    of all columns, every column filled (to float32 rounding: another XLA program of the same
    formulas), the scanned columns as the scan stored them."""
    from emu.search._sweep import MERGE_COLUMNS

    model = emu.load_model("llama3_8b")
    problem = Problem("gb200_nvl72", "llama3_8b", 8, free=("tp", "pp", "microbatch"))
    full = sweep(nvl72, model, problem, tmp_path / "a")
    bare = sweep(nvl72, model, problem, tmp_path / "b", columns=MERGE_COLUMNS)
    lean = sweep(nvl72, model, problem, tmp_path / "c", columns=MERGE_COLUMNS, fill=True)
    assert lean.columns == MERGE_COLUMNS and bare.best["mfu"] is None
    assert {k: lean.best[k] for k in KNOBS} == {k: full.best[k] for k in KNOBS}
    plan = lambda r: tuple(r[k] for k in KNOBS)  # noqa: E731
    for got, want, scan in (
        (lean.top, full.top, bare.top),
        (lean.pareto, full.pareto, bare.pareto),
    ):
        assert len(got) == len(want) > 0
        # the scanned columns as the scan stored them; the others filled, as a full sweep
        # computes them for the same plan (float32 rounding; near ties may order differently)
        for col in MERGE_COLUMNS:
            assert [r[col] for r in got] == [r[col] for r in scan], col
        # and what a full sweep derives stays derived from the row's own columns
        for r in got:
            assert r["objective"] == r["tokens_per_joule"]
            tpj = np.float32(r["tokens_per_s"]) / np.float32(r["power_w"])
            assert np.float32(r["tokens_per_joule"]) == tpj
        same = {plan(r): r for r in want}
        assert sum(plan(r) in same for r in got) >= len(got) - 1
        for r in got:
            for col in ("step_time_s", "mfu", "memory_bytes", "tokens_per_joule"):
                assert r[col] is not None, col
                if plan(r) in same:
                    assert _close(r[col], same[plan(r)][col]), col


def test_a_lean_priced_sweep_keeps_its_objective_in_the_column_it_names(tmp_path):
    """With the cost per token as the objective, a filled row's usd_per_mtoken is its own
    objective (as in a sweep of every column), not the exact program's rounding of it."""
    from emu import costs_catalog as K
    from emu.search._sweep import MERGE_COLUMNS

    system, model = emu.load_system("dgx_h100"), emu.load_model("llama3_8b")
    price = (K.load_cost("dgx_h100"), K.load_region("us_average"))
    problem = Problem("dgx_h100", "llama3_8b", 8, objective="usd_per_mtoken", cost=price,
                      free=("tp", "pp", "microbatch"))  # fmt: skip
    lean = sweep(system, model, problem, tmp_path, columns=MERGE_COLUMNS, fill=True)
    assert lean.top and all(r["usd_per_mtoken"] == r["objective"] > 0 for r in lean.top)
    assert all(r["mfu"] is not None for r in lean.top + lean.pareto)


def test_emu_sweep_scans_a_large_space_lean(capsys, monkeypatch, tmp_path):
    """`emu sweep` without --out scans a space of FILL_MIN configurations or more with the
    merge's columns and reports its rows in full, and says so (JSON: a note); below it, every
    column."""
    from emu.search import _sweep
    from tests._cli import run_cli, run_json

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # its chunks, not the user's cache

    args = ("sweep", "--system", "gb200_nvl72", "--model", "llama3_8b", "--chips", "8",
            "--top", "3")  # fmt: skip
    code, out, _ = run_cli(capsys, *args)
    assert code == 0 and "evaluated in full" not in out
    every = run_json(capsys, *args)
    monkeypatch.setattr(_sweep, "FILL_MIN", 1)
    code, out, _ = run_cli(capsys, *args)
    assert code == 0 and "the rows shown evaluated in full" in out
    lean = run_json(capsys, *args)
    assert any("the rows shown evaluated in full" in n for n in lean["notes"])
    assert not any("evaluated in full" in n for n in every["notes"])
    plan = lambda r: tuple(r[k] for k in KNOBS)  # noqa: E731
    assert plan(lean["top"][0]) == plan(every["top"][0])
    want = {plan(r): r for r in every["top"]}
    for r in lean["top"]:
        assert r["mfu"] is not None and r["step_time_s"] is not None
        if plan(r) in want:  # the same plan: the same values, to float32 rounding
            for col in ("objective", "mfu", "step_time_s", "memory_bytes"):
                assert _close(r[col], want[plan(r)][col]), col


def test_host_derived_columns_are_exact_and_not_compiled(tmp_path, nvl72):
    """tokens/J and an objective that is a column are derived on the host from the columns
    computed anyway (one compiled program fewer each), to float32 rounding what the device
    computes; an objective that only shares a column's name, reads a column that is not the result's
    attribute, or needs more than the result, is still computed on the device."""
    import operator

    from emu.search import plan_of, register_objective
    from emu.search._evaluate import gather, host_columns, make_eval
    from emu.search._space import Space
    from emu.search._sweep import MERGE_COLUMNS

    model = emu.load_model("llama3_8b")
    problem = Problem("gb200_nvl72", "llama3_8b", 8, free=("tp", "pp", "microbatch"))
    assert set(host_columns(problem, MERGE_COLUMNS)) == {"objective"}  # 3 programs, not 4
    space = Space(nvl72, model, problem, None)
    n = 64 * -(-space.size // 64)
    idx = np.arange(n) % space.size
    cols = ("objective", "feasible", "tokens_per_s", "tokens_per_joule", "power_w")
    assert set(host_columns(problem, cols)) == {"objective", "tokens_per_joule"}
    host = gather(make_eval(nvl72, model, problem, space, n, columns=cols)(idx))
    on_device = gather(make_eval(nvl72, model, problem, space, n, columns=cols[3:4])(idx))
    # exactly tokens/s / watts of the columns reported beside it; what a program computing
    # tokens/J itself gives, to float32 rounding (another XLA fusion of the same formulas)
    assert np.array_equal(host[:, 3], host[:, 2] / host[:, 4])
    assert np.array_equal(host[:, 0], host[:, 3])
    assert _close(host[:, 3], on_device[:, 0])
    # and what a sweep reports is the model's own tokens/J of that plan (float32 rounding)
    r = sweep(nvl72, model, problem, tmp_path / "a")
    got = emu.evaluate(nvl72, model, plan_of(problem, r.best)).tokens_per_joule
    assert (
        _close(r.best["tokens_per_joule"], got)
        and r.best["objective"] == r.best["tokens_per_joule"]
    )
    by_tps = Problem("gb200_nvl72", "llama3_8b", 8, objective="tokens_per_s")
    assert host_columns(by_tps, MERGE_COLUMNS)["objective"][1] == ("tokens_per_s",)
    assert (
        host_columns(Problem("gb200_nvl72", "llama3_8b", 8, objective="mfu"), MERGE_COLUMNS) == {}
    )
    try:  # a replaced objective of the same name is not the column: computed on the device
        register_objective("tokens_per_s", lambda res: 2 * res.tokens_per_s, sign=1.0)
        assert host_columns(by_tps, MERGE_COLUMNS) == {}
        # the feasible column adds the problem's constraints to RunResult.feasible
        register_objective("feasible", operator.attrgetter("feasible"), sign=1.0)
        by_feasible = Problem("gb200_nvl72", "llama3_8b", 8, objective="feasible")
        assert host_columns(by_feasible, MERGE_COLUMNS) == {}
    finally:
        from emu.search._objectives import OBJECTIVES

        OBJECTIVES.pop("feasible", None)
        register_objective("tokens_per_s", operator.attrgetter("tokens_per_s"), sign=1.0,
                           help="tokens per second")  # fmt: skip
