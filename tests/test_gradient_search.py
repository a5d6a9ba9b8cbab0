import json
import math
import subprocess
import sys
from dataclasses import replace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _tables import read_table

import emu
from emu.power import full_load_power
from emu.search import (
    COLUMNS,
    KNOBS,
    Problem,
    enumerate_plans,
    gradient_search,
    plan_of,
    sweep,
    system_of,
    write_table,
)
from emu.topology import reshape

SMALL = Problem("dgx_h100", "llama3_8b", 16, seq_len=4096)
GRID = {"scaleup_bw": [0.5, 1.0, 2.0], "scaleout_bw": [0.5, 1.0, 2.0]}


@pytest.fixture(scope="module")
def small():
    return emu.load_system("dgx_h100"), emu.load_model("llama3_8b")


@pytest.fixture(scope="module")
def both(small, tmp_path_factory):
    system, model = small
    ex = sweep(system, model, SMALL, tmp_path_factory.mktemp("ex"), grid=GRID, chunk=4096)
    gs = gradient_search(system, model, SMALL, grid=GRID, starts=4, steps=20)
    return ex, gs


def test_gradient_search_result_is_a_valid_plan_evaluated_exactly(small, both):
    system, model = small
    _, gs = both
    best = gs.best
    valid = enumerate_plans(system, model, SMALL)
    assert (valid == np.asarray([best[k] for k in KNOBS], np.float32)).all(axis=1).any()
    assert best["scaleup_bw"] in GRID["scaleup_bw"] and best["scaleout_bw"] in GRID["scaleout_bw"]
    r = emu.evaluate(system_of(system, best, list(GRID)), model, plan_of(SMALL, best))
    assert np.isclose(best["tokens_per_joule"], float(r.tokens_per_joule), rtol=1e-5)
    assert best["objective"] == best["tokens_per_joule"] and best["feasible"]
    assert gs.evaluations == gs.gradient_evaluations + gs.exact_evaluations


def test_gradient_search_matches_the_exhaustive_optimum_with_fewer_evaluations(both):
    ex, gs = both
    assert gs.space_size == ex.evaluations
    assert gs.best["objective"] >= 0.99 * ex.best["objective"]
    assert gs.best["objective"] <= ex.best["objective"] * (1 + 1e-6)  # never above it
    assert gs.evaluations < ex.evaluations


def test_search_table_lists_every_exact_evaluation(both, tmp_path):
    _, gs = both
    path = write_table(gs, tmp_path / "gs.csv")
    header = path.read_text().splitlines()[0].split(",")
    unpriced = [c for c in COLUMNS if c != "usd_per_mtoken"]  # no cost: no price column
    assert header == [*GRID, *KNOBS, "global_batch", "chips", *unpriced]
    assert len(read_table(path)["tp"]) == gs.exact_evaluations


def test_decode_plans_meet_the_tpot_slo_and_power_cap(tmp_path):
    system, model = emu.load_system("gb200_nvl72"), emu.load_model("llama3_70b")
    problem = Problem(
        "gb200_nvl72",
        "llama3_70b",
        (16, 32, 72),
        seq_len=2048,
        phase="decode",
        precision="fp8",
        objective="tokens_per_s",
        tpot_slo=0.03,
        power_cap=40e3,
    )
    plans = enumerate_plans(system, model, problem)
    col = {k: plans[:, i] for i, k in enumerate(KNOBS)}
    assert set(np.unique(col["tp"] * col["dp"]).tolist()) == {16.0, 32.0, 72.0}
    assert np.all(col["pp"] == 1) and np.all(col["zero"] == 0)
    res = sweep(system, model, problem, tmp_path, chunk=1024)
    c = read_table(write_table(res, tmp_path / "d.csv"))
    assert "usd_per_mtoken" not in c  # no cost: no price column
    assert set(c["chips"].tolist()) == {16.0, 32.0, 72.0} and np.all(np.isnan(c["ttft_s"]))
    ok = c["feasible"] > 0.5
    assert ok.any() and (~ok).any()  # the constraints bind somewhere
    assert np.all(c["tpot_s"][ok] <= 0.03 * (1 + 1e-6))
    assert np.all(c["power_w"][ok] <= 40e3 * (1 + 1e-6))
    assert res.best["tokens_per_s"] == pytest.approx(c["tokens_per_s"][ok].max(), rel=1e-6)


def test_fixed_knobs_stay_fixed_and_unknown_knobs_are_named(small):
    system, model = small
    p = Problem("dgx_h100", "llama3_8b", 16, free=("pp", "microbatch"), fixed=(("tp", 4),))
    plans = enumerate_plans(system, model, p)
    assert np.all(plans[:, KNOBS.index("tp")] == 4) and np.all(plans[:, KNOBS.index("zero")] == 1)
    assert np.unique(plans[:, KNOBS.index("pp")]).size > 1
    with pytest.raises(ValueError, match="unknown knob"):
        enumerate_plans(system, model, Problem("dgx_h100", "llama3_8b", 16, free=("tpp",)))
    with pytest.raises(ValueError, match="unknown objective"):
        enumerate_plans(system, model, Problem("dgx_h100", "llama3_8b", 16, objective="speed"))


def test_topology_knobs_trade_power_for_bandwidth_and_respect_copper_reach():
    system = emu.load_system("gb200_nvl72")
    w0 = float(full_load_power(system).it_w)
    more, bad = reshape(system, scaleup_bw=2.0)
    assert float(more.tiers[0].bytes_per_s) == pytest.approx(2 * 900e9, rel=1e-6)
    assert float(full_load_power(more).it_w) > w0 and float(bad) == 0.0
    _, bad = reshape(system, domain=144.0)  # copper cannot reach two racks
    assert float(bad) > 0
    optical, bad = reshape(system, domain=144.0, optics_share=1.0)
    assert float(bad) == 0.0 and float(full_load_power(optical).it_w) > w0
    with pytest.raises(ValueError, match="unknown topology knob"):
        reshape(system, links=2.0)


def test_tokens_per_joule_is_differentiable_in_the_topology_knobs():
    system, model = emu.load_system("cloudmatrix384"), emu.load_model("llama3_70b")
    from emu.policy import auto_plan

    plan = auto_plan(system, model, 384, seq_len=4096)

    def f(x):
        s, _ = reshape(system, scaleup_bw=x[0], scaleout_bw=x[1], oversubscription=x[2])
        return jnp.log(emu.evaluate(s, model, plan).tokens_per_joule)

    x = jnp.asarray([1.0, 1.0, 2.0])
    g = np.asarray(jax.grad(f)(x))
    assert np.all(np.isfinite(g))
    for i in range(3):  # central differences agree with the gradient
        e = np.zeros(3, np.float32)
        e[i] = 1e-2
        fd = (float(f(x + e)) - float(f(x - e))) / 2e-2
        assert g[i] == pytest.approx(fd, rel=0.05, abs=1e-4)


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "emu", *args], capture_output=True, text=True, timeout=300
    )


def test_cli_search_json_contract_and_outputs(tmp_path):
    out = tmp_path / "s.parquet"
    r = _cli(
        "search", "--system", "dgx_h100", "--model", "llama3_8b", "--chips", "16",
        "--seq-len", "4096", "--grid", "scaleup_bw=0.5,1,2", "--starts", "4",
        "--steps", "10", "--top", "3", "--out", str(out), "--json",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["evaluations"] > 0 and d["wall_s"] > 0 and len(d["top"]) == 3
    best = d["best"]
    assert best["plan"]["tp"] * best["plan"]["pp"] * best["plan"]["dp"] == 16
    assert best["grid"]["scaleup_bw"] in (0.5, 1.0, 2.0)
    assert best["objective"]["name"] == "tokens_per_joule"
    assert math.isclose(best["tokens_per_joule"], d["top"][0]["tokens_per_joule"], rel_tol=1e-5)
    pq = pytest.importorskip("pyarrow.parquet")
    assert pq.read_table(out).num_rows == d["exact_evaluations"]


@pytest.mark.parametrize(
    "args,msg",
    [
        (["--free", "tp,foo"], "--free: unknown knob 'foo'"),
        (["--dp", "4"], "derives dp from --chips"),
        (["--objective", "speed"], "invalid choice: 'speed'"),
        (["--grid", "domain=0.5"], "--grid domain"),
        (["--chips", "16,x"], "--chips expects integers"),
        (["--out", "x.txt"], ".csv or .parquet"),
        (["--phase", "decode", "--pp", "2"], "drop --pp"),
        (["--power-cap", "-5"], "power cap must be a positive"),
        (["--objective", "tpot_s"], "exists only in the decode phase"),
        (["--phase", "decode", "--zero", "3"], "drop --zero"),
        (["--batch", "4"], "in training use --microbatch"),
        (["--grid", "scaleup_bw=1", "--grid", "scaleup_bw=2"], "given twice"),
        (["--grid", "domain=7.5"], "whole number of chips"),
        (["--expert-ranks", "8"], "drop --expert-ranks"),
        (["--lora"], "drop --lora"),
    ],
)
def test_cli_search_bad_input_is_one_line(args, msg, capsys):
    """In-process (`emu.cli.main` is what `python -m emu` runs; a process start costs seconds
    each); the test below runs one case through a real `python -m emu` process."""
    from emu.cli import main

    chips = [] if "--chips" in args else ["--chips", "16"]  # a flag given twice is refused
    code = main(["search", "--system", "dgx_h100", "--model", "llama3_8b", *chips, *args])
    err = capsys.readouterr().err
    assert code == 2 and msg in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_cli_search_bad_input_is_one_line_in_a_process():
    r = _cli("search", "--system", "dgx_h100", "--model", "llama3_8b", "--chips", "16",
             "--free", "tp,foo")  # fmt: skip
    assert r.returncode == 2 and "--free: unknown knob 'foo'" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_user_objective_and_any_optax_transform(small, tmp_path):
    import optax

    system, model = small

    def per_kw(r):  # a user function of the outputs: tokens/s per kW of IT power, squared
        return (r.tokens_per_s / (r.power_w / 1e3)) ** 2

    problem = Problem("dgx_h100", "llama3_8b", 16, seq_len=4096, objective=per_kw)
    ex = sweep(system, model, problem, tmp_path, chunk=1024)
    gs = gradient_search(system, model, problem, starts=4, steps=10, optimizer=optax.sgd(0.05))
    want = (ex.best["tokens_per_joule"] * 1e3) ** 2
    assert ex.best["objective"] == pytest.approx(want, rel=1e-4)
    assert gs.best["objective"] <= ex.best["objective"] * (1 + 1e-6)
    assert gs.best["objective"] >= 0.9 * ex.best["objective"]
    assert gs.objective == ex.objective and "per_kw" in gs.objective


def test_a_changed_user_objective_never_resumes_old_results(small, tmp_path):
    system, model = small

    def scaled(w):
        return lambda r: w * r.step_time_s

    one = Problem("dgx_h100", "llama3_8b", 16, seq_len=4096, free=("pp",), objective=scaled(1.0))
    a = sweep(system, model, one, tmp_path, chunk=64)
    b = sweep(system, model, replace(one, objective=scaled(-1.0)), tmp_path, chunk=64)
    assert b.resumed == 0  # same code, other closure value: recomputed, not reused
    assert b.best["objective"] < 0 < a.best["objective"]


def test_copper_reach_applies_to_the_domain_field_too(tmp_path):
    system, model = emu.load_system("gb200_nvl72"), emu.load_model("llama3_8b")
    p = Problem("gb200_nvl72", "llama3_8b", 8, seq_len=4096, free=("pp",))
    for name in ("domain", "tiers.nvlink.domain_chips"):
        res = sweep(system, model, p, tmp_path / name, grid={name: [72, 576]}, chunk=64)
        t = read_table(write_table(res, tmp_path / f"{name}.csv"))
        feasible, domain = t["feasible"] > 0.5, t[name]
        assert np.all(feasible[domain == 72]) and not np.any(feasible[domain == 576])


@pytest.mark.parametrize("name", emu.list_systems())
def test_every_catalog_system_is_within_copper_reach(name):
    assert float(reshape(emu.load_system(name))[1]) == 0.0


def test_cli_fixed_zero_and_microbatch_stay_fixed(tmp_path):
    r = _cli(
        "sweep", "--system", "dgx_h100", "--model", "llama3_8b", "--chips", "16",
        "--seq-len", "4096", "--zero", "3", "--microbatch", "2", "--json",
        "--out", str(tmp_path / "z.csv"),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert all(row["zero"] == 3 and row["microbatch"] == 2 for row in d["top"])
    assert d["best"]["plan"]["zero"] == 3


def test_search_help_lists_only_the_knobs_it_takes(capsys):
    """Knobs a search refuses (dp, derived from --chips; those its Problem has no place for)
    are parsed, so they get the one-line refusal above, but `--help` does not offer them."""
    from emu.cli import main
    from emu.cli._parser import PROBLEM_KNOBS
    from emu.plan import KNOBS

    for command in ("search", "sweep"):
        try:
            code = main([command, "--help"])
        except SystemExit as e:  # argparse's own exit, if main lets it through
            code = e.code
        assert code in (0, None)
        out = capsys.readouterr().out
        for k in KNOBS:
            offered = k.searchable and k.name != "dp" or k.name in PROBLEM_KNOBS
            assert (f"{k.flag} " in out or f"{k.flag}\n" in out) == offered, (command, k.flag)


def test_forward_mode_gradient_of_the_relaxed_score_is_the_reverse_mode_gradient(small):
    """The gradient phase takes d score / d x by forward mode (faster to compile); it must be
    the reverse-mode gradient, finite, at random points of the relaxed space, and fall back to
    reverse mode above FORWARD_MAX coordinates."""
    from emu.search import _gradient as g
    from emu.search._space import Space

    system, model = small
    relax = g._Relaxation(system, model, SMALL, Space(system, model, SMALL, GRID))
    f = lambda x, c: -relax.score(x, c)  # noqa: E731
    fwd = jax.jit(g.value_and_grad_x(f, relax.dim))
    rev = jax.jit(jax.value_and_grad(f))
    rng = np.random.default_rng(1)
    c = jnp.stack([ch[-1] for ch in relax.choices])
    for _ in range(3):
        u = rng.uniform(0, 1, relax.dim)
        x = jnp.asarray(relax.lo + u * (relax.hi - relax.lo), jnp.float32)
        (v1, g1), (v2, g2) = fwd(x, c), rev(x, c)
        assert g1.shape == (relax.dim,) and np.all(np.isfinite(g1))
        assert float(v1) == pytest.approx(float(v2), rel=1e-6)
        np.testing.assert_allclose(g1, g2, rtol=1e-4, atol=1e-5 * float(jnp.max(jnp.abs(g2))))
    n = g.FORWARD_MAX + 1  # reverse mode
    x = jnp.arange(n, dtype=jnp.float32)
    v, gx = g.value_and_grad_x(lambda x, c: jnp.sum(x**2) + jnp.sum(c), n)(x, c)
    np.testing.assert_allclose(gx, 2 * x)
    v0, g0 = g.value_and_grad_x(lambda x, c: jnp.sum(c), 0)(jnp.zeros((0,)), c)
    assert g0.shape == (0,) and float(v0) == float(jnp.sum(c))


def test_fast_compile_drops_an_option_the_installed_xla_does_not_know(monkeypatch):
    """The search's few-evaluation programs compile with FAST_COMPILE; an option this jaxlib
    lacks is dropped (the program compiles, only slower), any other error still raises."""
    from emu.search import _evaluate

    monkeypatch.setattr(
        _evaluate, "FAST_COMPILE", {**_evaluate.FAST_COMPILE, "xla_no_such_option_emu": True}
    )
    lowered = jax.jit(lambda x: x * 2.0 + 1.0).lower(jnp.ones(3))
    assert np.allclose(_evaluate.compile_fast(lowered)(jnp.ones(3)), 3.0)
    monkeypatch.setattr(_evaluate, "FAST_COMPILE", {"xla_backend_optimization_level": "x"})
    with pytest.raises(Exception):  # noqa: B017, PT011  (a bad value is not "unknown")
        _evaluate.compile_fast(lowered)
