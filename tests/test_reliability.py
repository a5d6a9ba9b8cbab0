"""Reliability: no NaN/inf anywhere over random (also invalid) configurations, determinism,
and fuzzing of the CLI and the loaders (only success or a clean error may come out)."""

import argparse
import json
import math
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import emu
from emu.cli import main
from emu.objective import evaluate
from emu.parallelism import make_plan
from emu.struct import replace

N = 100_000


def _random_plans(n, seed, phase="train"):
    rng = np.random.default_rng(seed)
    base = make_plan(tp=1, pp=1, dp=1, global_batch=1, seq_len=1, phase=phase)
    base = jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, (n,)), base)
    f = lambda x: jnp.asarray(x, jnp.float32)
    p2 = lambda lo, hi: f(2.0 ** rng.integers(lo, hi, n))
    return replace(
        base,
        tp=p2(0, 7),
        pp=p2(0, 8),
        dp=f(rng.integers(1, 100_001, n)),
        cp=p2(0, 4),
        ep=p2(0, 9),
        etp=p2(0, 2),
        microbatch=p2(0, 9),
        global_batch=p2(0, 20),
        seq_len=p2(0, 21),
        context=p2(0, 21),
        vpp=p2(0, 3),
        zero=f(rng.integers(0, 4, n)),
        recompute=f(rng.integers(0, 3, n)),
        sp=f(rng.integers(0, 2, n)),
        lora=f(rng.integers(0, 2, n)),
        a2a_overlap=f(rng.integers(0, 2, n)),
        moe_imbalance=f(1 + rng.random(n)),
        mtp_accept=f(0.9 * rng.random(n)),
        cache_hit=f(0.9 * rng.random(n)),
    )


def _all_finite(tree):
    return all(bool(np.isfinite(np.asarray(x)).all()) for x in jax.tree_util.tree_leaves(tree))


def test_no_nan_or_inf_over_1e5_random_configurations():
    system = emu.load_system("cloudmatrix384")
    for model_name, phase, seed in (
        ("llama3_70b", "train", 0),
        ("deepseek_v3", "train", 1),
        ("deepseek_v3", "decode", 2),
        ("llama3_8b", "prefill", 3),
    ):
        model = emu.load_model(model_name)
        plans = _random_plans(N, seed, phase)
        out = jax.jit(jax.vmap(lambda p, m=model: evaluate(system, m, p)))(plans)
        assert _all_finite(out), (model_name, phase)
        assert float(jnp.min(out.step_time_s)) > 0


def test_gradients_finite_over_random_configurations():
    system, model = emu.load_system("gb200_nvl72"), emu.load_model("deepseek_v3")
    plans = _random_plans(2_000, 7)
    g = jax.jit(
        jax.vmap(
            jax.grad(lambda s, p: jnp.log(evaluate(s, model, p).tokens_per_joule)),
            in_axes=(None, 0),
        )
    )(system, plans)
    assert _all_finite(g)


def test_deterministic_across_jit_and_batch_sizes():
    system, model = emu.load_system("dgx_h100"), emu.load_model("llama3_8b")
    plans = _random_plans(7, 11)
    one = jax.tree_util.tree_map(lambda x: x[3], plans)
    eager = evaluate(system, model, one).tokens_per_joule
    jitted = jax.jit(evaluate)(system, model, one).tokens_per_joule
    batch = jax.jit(jax.vmap(lambda p: evaluate(system, model, p)))(plans).tokens_per_joule
    np.testing.assert_allclose(float(eager), float(jitted), rtol=1e-6)
    np.testing.assert_allclose(float(batch[3]), float(jitted), rtol=1e-6)
    np.testing.assert_array_equal(
        np.asarray(batch),
        np.asarray(jax.jit(jax.vmap(lambda p: evaluate(system, model, p)))(plans).tokens_per_joule),
    )


def _clean(capsys, args):
    code = main(args)
    out, err = capsys.readouterr()
    assert code in (0, 2), (args, code, err)
    if code == 2:
        assert err.startswith("emu: error:") and err.count("\n") == 1, err
        assert "Traceback" not in err
    return code


VALUES = st.one_of(
    st.integers(-3, 10**7).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.sampled_from(["", "x", "1e40", "-0", "nan", "bf16", "fp8", "int8", "8", "2"]),
)
FLAGS = [
    "--tp",
    "--pp",
    "--dp",
    "--cp",
    "--ep",
    "--chips",
    "--seq-len",
    "--global-batch",
    "--microbatch",
    "--precision",
    "--recompute",
    "--zero",
    "--phase",
    "--batch",
    "--context",
    "--mtp-accept",
    "--tpot-slo",
    "--moe-imbalance",
]
SETS = [
    "chip.hbm_bytes_per_s",
    "chip.tdp_w",
    "tiers.nvlink.bytes_per_s",
    "model.n_layers",
    "plan.zero",
    "facility.pue",
    "chip.peak_flops_per_s.bf16",
    "nonsense.path",
]


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    pairs=st.lists(st.tuples(st.sampled_from(FLAGS), VALUES), max_size=3),
    sets=st.lists(st.tuples(st.sampled_from(SETS), VALUES), max_size=2),
)
def test_fuzz_run_command(capsys, pairs, sets):
    args = ["run", "--model", "llama3_8b", "--seq-len", "2048"]
    for flag, value in pairs:
        args += [flag, value]
    for path, value in sets:
        args += ["--set", f"{path}={value}"]
    _clean(capsys, args)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_fuzz_mutated_system_toml(capsys, tmp_path_factory, data):
    from emu.catalog import config_dir

    lines = (config_dir() / "systems" / "gb200_nvl72.toml").read_text().splitlines()
    i = data.draw(st.integers(0, len(lines) - 1))
    op = data.draw(st.sampled_from(["delete", "replace_value", "garbage", "duplicate"]))
    if op == "delete":
        del lines[i]
    elif op == "replace_value" and "=" in lines[i]:
        key = lines[i].split("=")[0]
        lines[i] = (
            key
            + "= "
            + data.draw(
                st.sampled_from(
                    ["-1", "0", "1e400", '"text"', "[1, 2]", "true", "nan", "{a = 1}", "1e-45"]
                )
            )
        )
    elif op == "garbage":
        lines.insert(i, data.draw(st.text(max_size=20)))
    else:
        lines.insert(i, lines[i])
    path = tmp_path_factory.mktemp("fuzz") / "gb200_nvl72.toml"  # a file's name is its stem
    path.write_text("\n".join(lines), encoding="utf-8")
    _clean(capsys, ["describe", str(path)])


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    rows=st.lists(
        st.one_of(
            st.text(max_size=30),
            st.dictionaries(
                st.sampled_from(
                    [
                        "id",
                        "kind",
                        "system",
                        "n_chips",
                        "metric",
                        "value",
                        "model",
                        "parallel",
                        "precision",
                        "notes",
                    ]
                ),
                st.one_of(
                    st.none(),
                    st.integers(-5, 10**6),
                    st.floats(allow_nan=False),
                    st.sampled_from(
                        [
                            "train",
                            "decode",
                            "collective",
                            "dgx_h100",
                            "tokens_per_s_per_gpu",
                            "allreduce_busbw",
                        ]
                    ),
                    st.dictionaries(
                        st.sampled_from(["tp", "n_layers", "d_model"]),
                        st.integers(0, 64),
                        max_size=3,
                    ),
                ),
                max_size=10,
            ).map(json.dumps),
        ),
        min_size=1,
        max_size=4,
    )
)
def test_fuzz_measurement_files(capsys, tmp_path_factory, rows):
    path = tmp_path_factory.mktemp("fuzzv") / "rows.jsonl"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    _clean(capsys, ["validate", str(path), "--json"])


def test_no_nan_over_random_systems_and_plans():
    """Every float leaf of the system scaled by a random factor in [1/4, 4] (fractions kept
    in (0, 1]), with random plans, in one vmapped call; outputs and gradients finite."""
    from emu.struct import float_leaves, set_path

    base = emu.load_system("gb200_nvl72")
    model = emu.load_model("deepseek_v3")
    n = 20_000
    rng = np.random.default_rng(5)
    system = jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, (n,)), base)
    for path, value in float_leaves(base).items():
        scale = jnp.asarray(4.0 ** rng.uniform(-1, 1, n), jnp.float32)
        v = value * scale
        leaf = path.rsplit(".", 1)[-1]
        if (
            "efficiency" in leaf
            or leaf in ("tp", "dp", "pp", "cp", "ep", "ep_tbo", "pipelining")
            or leaf.endswith("_power")
        ):
            v = jnp.clip(v, 0.01, 1.0)
        if leaf in ("oversubscription", "allreduce_speedup", "pue"):
            v = jnp.maximum(v, 1.0)
        system = set_path(system, path, v)
    plans = _random_plans(n, 13)
    out = jax.jit(jax.vmap(lambda s, p: evaluate(s, model, p)))(system, plans)
    assert _all_finite(out)
    g = jax.jit(jax.vmap(jax.grad(lambda s, p: jnp.log(evaluate(s, model, p).tokens_per_joule))))(
        jax.tree_util.tree_map(lambda x: x[:2000], system),
        jax.tree_util.tree_map(lambda x: x[:2000], plans),
    )
    assert _all_finite(g)


# --- issue 16, class by class: each of these exited 0 with a wrong answer, or hung -------


def _one_line(capsys, args, needle):
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2 and needle in err and err.count("\n") == 1, (args, code, err)


def test_serve_refuses_a_negative_output_length(capsys):
    """It gave -46,921 requests/s, feasible."""
    _one_line(capsys, ["serve", "--output-len", "-5"], "--output-len: must be an integer in [1,")


def test_describe_refuses_a_pue_that_overflows(capsys):
    """It printed `inf W`, and its --json failed cryptically."""
    _one_line(capsys, ["describe", "gb200_nvl72", "--set", "facility.pue=3e38"],
              "facility.pue must be in [1, 4] (got 3e+38)")  # fmt: skip
    _one_line(capsys, ["describe", "gb200_nvl72", "--set", "facility.pue=3e38", "--json"],
              "facility.pue must be in [1, 4]")  # fmt: skip


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--phase", "decode", "--zero", "3"], "--zero applies to train plans only"),
        (["--phase", "decode", "--recompute", "full"], "--recompute applies to train plans"),
        (["--phase", "decode", "--global-batch", "64"], "a decode plan's batch is --batch"),
        (["--phase", "decode", "--microbatch", "4"], "a decode plan's batch is --batch"),
        (["--phase", "decode", "--ttft-slo", "1"], "--ttft-slo does not apply to decode"),
        (["--phase", "prefill", "--tpot-slo", "1"], "--tpot-slo does not apply to prefill"),
        (["--phase", "decode", "--cache-hit", "0.5"], "--cache-hit applies to prefill plans"),
        (["--phase", "prefill", "--mtp-accept", "0.5"], "--mtp-accept applies to decode plans"),
        (["--batch", "4"], "--batch is the serving batch per DP rank"),
        (["--tpot-slo", "0.05"], "--tpot-slo does not apply to train plans"),
    ],
)
def test_flags_a_phase_would_ignore_are_refused(capsys, args, needle):
    """Decode used to ignore --zero, --recompute, --global-batch, --microbatch, --ttft-slo
    and --cache-hit, training --batch, without a word."""
    _one_line(capsys, ["run", "--model", "llama3_8b", *args], needle)


@pytest.mark.parametrize("command", ["search", "sweep"])
def test_search_refuses_flags_its_phase_would_ignore(capsys, command):
    _one_line(capsys, [command, "--phase", "decode", "--ttft-slo", "1"], "--ttft-slo does not")
    _one_line(capsys, [command, "--phase", "decode", "--cache-hit", "0.2"], "--cache-hit applies")


def test_validate_refuses_an_unknown_kind(capsys):
    """`validate --kind banana` filtered to nothing without a word."""
    _one_line(capsys, ["validate", "--kind", "banana"], "invalid choice: 'banana'")


def test_api_refuses_impossible_results():
    """emu.evaluate returned negative tokens/J or MFU 33.9 marked feasible, results for a
    precision the chip lacks or more chips than the system has: now the plan is checked
    against the system, and a concrete result must be physically possible."""
    system, model = emu.load_system("cloudmatrix384"), emu.load_model("llama3_8b")
    with pytest.raises(ValueError, match="no fp8 support"):
        emu.evaluate(system, model, make_plan(tp=8, dp=48, global_batch=48, precision="fp8"))
    with pytest.raises(ValueError, match="exceeds the largest cluster"):
        emu.evaluate(system, model, make_plan(tp=8, dp=10**6, global_batch=10**6))


def test_process_0_waits_for_its_peers_a_bounded_time():
    """Process 0 of a multi-process sweep waited on absent peers, then jax aborted it with a
    C++ stack trace; now one line after --coordinator-timeout."""
    import socket
    import subprocess
    import sys
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t = time.perf_counter()
    p = subprocess.run(
        [sys.executable, "-m", "emu", "sweep", "--system", "dgx_h100", "--model", "llama3_8b",
         "--chips", "8", "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2",
         "--process-id", "0", "--coordinator-timeout", "3"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert p.returncode == 2, p.stderr[-2000:]
    assert p.stderr.startswith("emu: error: process 0 of 2: the other processes did not connect")
    assert p.stderr.count("\n") == 1 and "Check failure" not in p.stderr
    assert time.perf_counter() - t < 60


def test_process_0_refuses_a_coordinator_port_it_cannot_serve(capsys):
    """Process 0 segfaulted in jax's gRPC server on a port it could not bind (taken, or
    spelled in non-ASCII digits); now one line before jax starts."""
    import socket

    with socket.socket() as held:
        held.bind(("", 0))
        held.listen()
        port = held.getsockname()[1]
        for coord, said in (
            (f"localhost:{port}", f"process 0 cannot serve the coordinator on port {port}"),
            ("localhost:\uff11\uff12\uff13\uff14", "expects HOST:PORT with a port in 1-65535"),
        ):
            code = main(["sweep", "--num-processes", "2", "--process-id", "0",
                         "--coordinator", coord])  # fmt: skip
            _, err = capsys.readouterr()
            assert code == 2 and said in err and err.count("\n") == 1, err


def test_progress_is_quiet_when_piped_or_json(capsys):
    code = main(["describe", "gb200_nvl72", "--json"])
    out, err = capsys.readouterr()
    assert code == 0 and err == "" and json.loads(out)["n_chips"] == 72


@pytest.mark.parametrize(
    "kw,needle",
    [
        (dict(neighbours=0), r"neighbours must be an integer in \[1, 1000\] \(got 0\)"),
        (dict(starts=10**6), r"starts must be an integer in \[1, 1024\]"),
        (dict(steps=0), r"steps must be an integer in \[1, 10000\]"),
        (dict(top=0), r"top must be an integer"),
        (dict(polish=-1), r"polish must be an integer"),
        (dict(learning_rate=float("nan")), "learning_rate must be a positive number"),
    ],
)
def test_search_budgets_are_bounded(kw, needle):
    """gradient_search(neighbours=0) crashed with "max() arg is an empty sequence";
    starts=1e6 ran unbounded. Every budget argument is checked before any work."""
    from emu.search import Problem, gradient_search, sweep

    system, model = emu.load_system("dgx_h100"), emu.load_model("llama3_8b")
    problem = Problem("dgx_h100", "llama3_8b", 8, seq_len=4096, free=("pp",))
    with pytest.raises(ValueError, match=needle):
        gradient_search(system, model, problem, **kw)
    with pytest.raises(ValueError, match=r"chunk must be an integer in \[1, 16777216\]"):
        sweep(system, model, problem, "/nonexistent-never-written", chunk=0)


def test_validate_json_of_a_file_whose_rows_all_extrapolate(capsys, tmp_path):
    """One shipped row alone: held out, its source leaves no residual to build a band from,
    so the coverage's median width is unbounded. The JSON says null (it has no infinity),
    where the strict encoder refused the whole report ('Out of range float values are not
    JSON compliant: inf', exit 2); the text says "unbounded"."""
    from emu.validation import default_measurements

    rows = default_measurements().read_text(encoding="utf-8").splitlines()
    one = next(r for r in rows if '"azure_gb200_trtllm_llama_3_70b_tp4_1024_1024"' in r)
    path = tmp_path / "one.jsonl"
    path.write_text(one + "\n", encoding="utf-8")
    code = main(["validate", str(path), "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    report = json.loads(out)
    assert report["coverage"]["extrapolated"] == 1
    assert report["coverage"]["median_width"] is None
    code = main(["validate", str(path)])
    out, err = capsys.readouterr()
    assert code == 0 and "median width unbounded (no band)" in out, err


_H100_8B = ["--system", "dgx_h100", "--model", "llama3_8b"]
_PROG = ["program", "x.py:build", "--devices", "2"]


@pytest.mark.parametrize(
    "args, needle",
    [
        ([*_PROG, "--timeout", "inf"], "--timeout must be"),
        ([*_PROG, "--timeout", "0"], "--timeout must be"),
        ([*_PROG, "--tokens-per-step", "1e39"], "--tokens-per-step must be"),
        (["program", "x.py:build", "--devices", "100000"], "--devices must be in [1, 16384]"),
        (["search", *_H100_8B, "--free", ""], "--free is empty"),
        (["sweep", *_H100_8B, "--free", "tp", "--tp", "8"], "--free tp varies the knob"),
        (["run", *_H100_8B, "--set", "plan.tp=2", "--tp", "4"], "--set plan.tp and --tp both"),
        (["run", *_H100_8B, "--region", "us_iowa", "--hourly-price", "0"], "(0, 1000]"),
        (["list", "--region", "us_iowa"], "emu list prints the catalog as shipped; --region"),
        (["list", "--fields", "plan", "--region", "us_iowa"], "changes no knob here: drop it"),
        (["list", "--fields", "llama3_8b", "--set", "chip.hbm_bytes=1"], "a model's fields;"),
        (["list", "--fields", "dgx_h100", "--set", "plan.tp=8"], "a system's fields; --set"),
        (["compare", "--systems", "dgx_h100,DGX-H100"], "--systems lists 'DGX-H100' twice"),
        (["sweep", *_H100_8B, "--grid", "nosuch=1"], "--grid: unknown field path 'nosuch'"),
        (["serve", "--mtp-accept", "1"], "argument --mtp-accept: must be an acceptance rate"),
        (["run", "--seq-len", "1e30"], "argument --seq-len: must be an integer in [1, 1e+07]"),
        (["search", *_H100_8B, "--seed", "-1"], "argument --seed: must be an integer in [0, "),
    ],
)
def test_contradictory_or_out_of_range_flags_are_one_line(capsys, args, needle):
    """Each of these was taken and answered wrongly or not at all (session 20's red team):
    an infinite --timeout crashed (OverflowError); --tokens-per-step 1e39 overflowed float32
    into infinite tokens/s; --devices 100000 waited out the timeout; an empty --free swept
    one arbitrary plan and reported no feasible one; --free tp beside --tp 8 and --set
    plan.tp beside --tp silently dropped one; --hourly-price 0 silently became the built-up
    cost; `list` took and ignored the cost flags."""
    _one_line(capsys, args, needle)


@pytest.mark.parametrize(
    ("argv", "flags"),
    [
        (["run", "--moe-imbalance", "5", "--a2a-overlap", "--no-moe-dedup"],
         "--moe-imbalance, --a2a-overlap, --no-moe-dedup apply"),
        (["serve", "--moe-imbalance", "5"], "--moe-imbalance applies"),
        (["serve", "--a2a-overlap"], "--a2a-overlap applies"),
        (["search", "--a2a-overlap"], "--a2a-overlap applies"),
    ],
)  # fmt: skip
def test_expert_only_flags_on_a_dense_model_are_refused(capsys, argv, flags):
    """They were accepted and changed nothing (`--ep` was already refused)."""
    argv = [*argv, "--system", "dgx_h100", "--model", "llama3_8b"]
    _one_line(capsys, argv, f"{flags} to MoE models' experts (llama3_8b is dense)")


def test_exhaustive_search_refuses_the_gradient_search_flags(capsys):
    """`--method exhaustive --starts 2` said method exhaustive and ignored --starts."""
    argv = ["search", "--system", "dgx_h100", "--model", "llama3_8b", "--method", "exhaustive"]
    _one_line(capsys, [*argv, "--starts", "2"], "--starts sets the gradient search")


def test_an_unknown_emu_aot_mode_is_refused(capsys, monkeypatch):
    """EMU_AOT=bogus fell back to auto silently (EMU_BACKEND=torch was refused)."""
    monkeypatch.setenv("EMU_AOT", "bogus")
    _one_line(capsys, ["list"], "EMU_AOT='bogus' is not a mode; use one of auto, eager, sync, off")


def test_a_hugging_face_folder_in_the_working_directory_is_a_model(capsys, monkeypatch, tmp_path):
    """`--model hf` (a folder holding config.json) was looked up in the catalog only."""
    from pathlib import Path

    (tmp_path / "hf").mkdir()
    config = Path(__file__).parent / "data" / "hf" / "llama3_70b_config.json"
    (tmp_path / "hf" / "config.json").write_text(config.read_text())
    monkeypatch.chdir(tmp_path)
    argv = ["run", "--system", "dgx_h100", "--model", "hf", "--chips", "64", "--json"]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["model"] == "hf"  # named after its folder


def test_a_prefill_computes_at_least_one_token_per_prompt(capsys):
    """cache_hit 0.999999 priced 0.008 tokens per 8,192-token prompt: 41 Mtok/s on 8 H100."""
    _one_line(
        capsys,
        ["run", "--system", "dgx_h100", "--model", "llama3_8b", "--phase", "prefill",
         "--cache-hit", "0.999999"],
        "cache_hit <= 1 - 1/seq_len (at most 0.99987793)",
    )  # fmt: skip
    args = ["run", "--system", "dgx_h100", "--model", "llama3_8b", "--phase", "prefill"]
    assert main([*args, "--cache-hit", str(1 - 1 / 8192)]) == 0  # exactly one token computed
    capsys.readouterr()
    # the limit the message prints is admitted where float32 cannot hold 1 - 1/seq exactly
    for seq in (32000, 250000, 5000000):
        with pytest.raises(ValueError, match=r"at most (0\.\d+)\)") as e:
            make_plan(phase="prefill", seq_len=seq, cache_hit=1 - 0.3 / seq)
        top = float(re.search(r"at most (0\.\d+)\)", str(e.value)).group(1))
        make_plan(phase="prefill", seq_len=seq, cache_hit=top)
        make_plan(phase="prefill", seq_len=seq, cache_hit=1 - 1 / seq)


def test_a_file_whose_name_is_not_its_stem_is_refused(capsys, tmp_path):
    """A copy of dgx_h100.toml that still said name = "gb200_nvl72" was labelled, and
    priced with the cost file of, the GB200 rack (configs/README.md: name = file stem)."""
    from emu.catalog import config_dir

    text = (config_dir() / "systems" / "dgx_h100.toml").read_text()
    f = tmp_path / "my_h100.toml"
    f.write_text(text.replace('name = "dgx_h100"', 'name = "gb200_nvl72"', 1))
    _one_line(
        capsys, ["run", "--system", str(f), "--model", "llama3_8b"],
        'says name = "gb200_nvl72", but a system\'s name must equal its file stem: set name = '
        '"my_h100"',
    )  # fmt: skip
    link = tmp_path / "h100.toml"  # a link to a catalog file keeps the catalog's name
    link.symlink_to(config_dir() / "systems" / "dgx_h100.toml")
    assert emu.load_system(link).name == "dgx_h100"
    m = tmp_path / "mine.toml"
    m.write_text((config_dir() / "models" / "llama3_8b.toml").read_text())
    _one_line(
        capsys, ["run", "--system", "dgx_h100", "--model", str(m)],
        'says name = "llama3_8b", but a model\'s name must equal its file stem',
    )  # fmt: skip


def test_compare_numbers_the_columns_of_two_systems_that_share_a_name(capsys, tmp_path):
    """Two TOML files that both say name = "dgx_h100" printed two identical headers."""
    from emu.catalog import config_dir

    text = (config_dir() / "systems" / "dgx_h100.toml").read_text()
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    a, b = tmp_path / "a" / "dgx_h100.toml", tmp_path / "b" / "dgx_h100.toml"
    a.write_text(text)
    b.write_text(text)
    assert main(["compare", "--systems", f"{a},{b}", "--model", "llama3_8b"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["dgx_h100", "#1", "dgx_h100", "#2"]
    assert "plan (dgx_h100 #1)" in out and "plan (dgx_h100 #2)" in out
    assert "step breakdown           dgx_h100 #1  dgx_h100 #2" in out


def test_calibrate_cv_on_one_source_is_refused_before_the_fit(capsys, tmp_path):
    """It fitted for minutes, then said 'no residuals to calibrate intervals on'."""
    path = tmp_path / "one_source.jsonl"
    path.write_text("\n".join(_rows_of("sc21_t1_1.7B", "sc21_t1_3.6B")) + "\n")
    _one_line(
        capsys, ["calibrate", str(path), "--cv", "--dry-run"],
        "--cv holds out one of the rows' sources at a time and needs at least two; the file has 1",
    )  # fmt: skip


def test_calibrate_help_does_not_offer_the_set_it_refuses(capsys):
    """`emu calibrate --help` listed --set, which calibrate refuses: the flag is hidden there
    and still refused in its own words."""
    from emu.cli import build_parser

    sub = build_parser()._subparsers._group_actions[0].choices
    assert "--set" not in sub["calibrate"].format_help()
    assert "--set PATH=VALUE" in sub["validate"].format_help()
    _one_line(capsys, ["calibrate", "--set", "a=1"], "calibrate takes no --set")


def test_calibrate_cv_on_one_system_says_nothing_was_held_out(capsys, tmp_path):
    """Two sources on one system: leave-one-source-out works, leave-one-system-out has
    nothing to hold out. It printed 'median nan%, p90 nan%'."""
    path = tmp_path / "one_system.jsonl"
    path.write_text("\n".join(_rows_of("sc21_t1_1.7B", "korth_t5_22B_full")) + "\n")
    code = main(["calibrate", str(path), "--cv", "--steps", "2", "--dry-run"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "leave-one-system-out (1 group): nothing held out (one system in the file)" in out
    assert "nan%" not in out


def _rows_of(*ids: str) -> list[str]:
    from emu.validation import default_measurements

    lines = default_measurements().read_text(encoding="utf-8").splitlines()
    return [next(r for r in lines if f'"id": "{i}"' in r) for i in ids]


def test_validate_keeps_the_good_rows_when_one_row_is_malformed(capsys, tmp_path):
    """A row whose id is null crashed the whole run ('internal error (TypeError)'), and a
    collective row with n_chips 1 aborted it ('a collective needs n_chips >= 2', no line),
    after the good rows had been predicted: both are now that row's error."""
    good, coll = _rows_of("sc21_t1_1.7B", "nccl_h100_roce_2node_nvls")
    no_id = json.loads(good) | {"id": None}
    one_chip = json.loads(coll) | {"n_chips": 1}
    flat = json.loads(good) | {"id": "flat", "parallel": "tp8"}
    path = tmp_path / "rows.jsonl"
    rows = [good, json.dumps(no_id), json.dumps(one_chip), json.dumps(flat)]
    path.write_text("\n".join(rows) + "\n")
    code = main(["validate", str(path), "--json"])
    out, err = capsys.readouterr()
    assert code == 0 and err == ""  # the report counts them (summary.errors)
    rows = json.loads(out)["rows"]
    assert [r["status"] for r in rows].count("ok") == 1
    reasons = " | ".join(r.get("reason") or "" for r in rows)
    assert "line 2: id must be a non-empty string (got None)" in reasons
    assert "line 3: a collective row needs n_chips >= 2 (got 1)" in reasons
    assert "line 4: parallel must be a JSON object or null (got 'tp8')" in reasons


def test_a_row_with_no_experts_but_a_top_k_is_refused(capsys, tmp_path):
    """model.moe with n_experts 0 and top_k 8 ran as some other, dense model (25% -> 0.25%
    off, silently); it is now that row's error."""
    (row,) = _rows_of("mindspeed_tps_mixtral_8x7b_32k_8x8")
    row = json.loads(row)
    row["model"]["moe"]["n_experts"] = 0
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(row) + "\n")
    code = main(["validate", str(path), "--row", row["id"]])
    _, err = capsys.readouterr()
    assert code == 2 and "model.moe has n_experts 0 but top_k 2" in err, err


def test_files_nested_too_deeply_or_with_huge_integers_are_one_line(capsys, tmp_path):
    """JSON or TOML nested past Python's recursion limit gave 'internal error
    (RecursionError)', and an integer of over 4,300 digits a message naming no file: each
    now names the file (a measurement row: its line, and the good rows are kept)."""
    (good,) = _rows_of("sc21_t1_1.7B")
    deep, digits = "[" * 100_000 + "]" * 100_000, "9" * 5_000
    rows = tmp_path / "rows.jsonl"
    rows.write_text("\n".join([good, deep, good.replace('"value": 137', f'"value": {digits}')]))
    code = main(["validate", str(rows), "--json"])
    out, err = capsys.readouterr()
    reasons = [r.get("reason") or "" for r in json.loads(out)["rows"]]
    assert code == 0 and [r["status"] for r in json.loads(out)["rows"]].count("ok") == 1
    assert "line 2: invalid JSON (its values are nested too deeply to read)" in reasons
    assert "line 3: invalid JSON (it holds an integer of over 4,300 digits)" in reasons
    (tmp_path / "deep.json").write_text(deep)
    (tmp_path / "deep.toml").write_text("x = " + "[" * 50_000 + "]" * 50_000 + "\n")
    (tmp_path / "big.json").write_text('{"hidden_size": ' + digits + "}")
    # a path that merely says "digits" keeps its own error (a FIFO is not a regular file)
    (tmp_path / "digits").mkdir()
    os.mkfifo(tmp_path / "digits" / "m.toml")
    for flag, name, said in (
        ("--model", "digits/m.toml", "is not a regular file"),
        ("--model", "deep.json", "nested too deeply"),
        ("--model", "deep.toml", "nested too deeply"),
        ("--system", "deep.toml", "nested too deeply"),
        ("--model", "big.json", "over 4,300 digits"),
    ):
        code = main(["run", flag, str(tmp_path / name)])
        _, err = capsys.readouterr()
        assert code == 2 and said in err and name in err and err.count("\n") == 1, err
        assert "internal error" not in err


def test_validate_refuses_a_denormal_value_and_a_duplicate_id_on_their_lines(capsys, tmp_path):
    """A measured value of 5e-324 was taken: its error overflowed to 'inf%' and the
    summary's p90 became NaN; a row repeated under the same id was counted twice in every
    summary. Each is now that line's error, and the summary counts the good row once."""
    (good,) = _rows_of("sc21_t1_1.7B")
    tiny = json.loads(good) | {"id": "tiny", "value": 5e-324}
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join([good, json.dumps(tiny), good]) + "\n")
    code = main(["validate", str(path), "--json", "--strict"])
    out, err = capsys.readouterr()
    assert code == 1 and "emu: 2 rows could not be read" in err  # the report still printed
    rep = json.loads(out)
    reasons = " | ".join(r.get("reason") or "" for r in rep["rows"])
    assert "line 2: value must be a positive number in [1e-06, 1e+12]" in reasons
    assert "line 3: duplicate id 'sc21_t1_1.7B' (first on line 1)" in reasons
    s = rep["summary"]
    assert s["modelled"] == 1 and s["errors"] == 2
    assert s["all"]["n"] == 1 and math.isfinite(s["all"]["p90_abs_pct_error"])


def test_validate_refuses_files_and_flags_that_model_nothing(capsys, tmp_path):
    """No row modelled (invalid JSON), --kind matching no row, and a --set that no system
    takes were reports of zero rows or hundreds of identical row errors, exit 0; each is now
    one line and exit 2. A byte-order mark is read as one, not as invalid JSON."""
    (good,) = _rows_of("sc21_t1_1.7B")
    garbage = tmp_path / "garbage.jsonl"
    garbage.write_text("not json\n")
    _one_line(capsys, ["validate", str(garbage)], "could be modelled (1 rows: line 1: invalid JSON")
    one = tmp_path / "one.jsonl"
    one.write_text(good + "\n")
    _one_line(capsys, ["validate", str(one), "--kind", "decode"], "no decode rows in")
    _one_line(capsys, ["validate", str(one), "--set", "nosuch=1"], "--set: unknown field path")
    bom = tmp_path / "bom.jsonl"
    bom.write_text("\ufeff" + good + "\n", encoding="utf-8")
    assert main(["validate", str(bom)]) == 0
    assert "modelled 1" in capsys.readouterr().out


def test_sensitivity_says_when_its_plan_cannot_run(capsys):
    """`sensitivity` printed elasticities of a plan 15x over the HBM without a word."""
    args = ["sensitivity", "--system", "dgx_h100", "--model", "llama3_70b", "--tp", "1",
            "--pp", "1", "--zero", "0"]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    assert out.startswith("INFEASIBLE on dgx_h100: out of memory")
    assert main([*args, "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["feasible"] is False and d["infeasible_reasons"]


def test_set_plan_seq_len_alone_is_not_a_conflict_with_the_flag_default(capsys):
    """--seq-len has a default (8192), so `--set plan.seq_len=4096` alone must not read as
    two settings of one knob (a first version of the conflict check refused it)."""
    args = ["run", "--system", "dgx_h100", "--model", "llama3_8b", "--set", "plan.seq_len=4096"]
    assert main([*args, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["plan"]["seq_len"] == 4096


def test_integer_flags_take_an_integer_spelled_as_a_float_and_refuse_a_fraction(capsys):
    """`--microbatch 1e3` (a plan knob) was taken while `--chips 1e3` was refused as "not a
    positive integer": the integer flags now take an integral float spelling as the knobs
    do, and still refuse a fraction, inf and values below their bound, in one line."""
    from emu.cli._parser import _bounded_int, nonnegative_int, positive_int

    assert positive_int("1e3") == 1000 and positive_int("1024.0") == 1024
    assert positive_int("64") == 64 and nonnegative_int("0.0") == 0
    assert _bounded_int(0, 2**31)("1e2") == 100  # --seed and the other ranged flags alike
    for bad in ("1.5", "inf", "nan", "0", "-8", "1e400", "x"):
        with pytest.raises(argparse.ArgumentTypeError, match="positive integer"):
            positive_int(bad)
    with pytest.raises(argparse.ArgumentTypeError, match="non-negative integer"):
        nonnegative_int("-1.0")
    # one cap for every spelling, said as such (not "not an integer")
    for big in ("1e16", str(2**53 + 1)):
        with pytest.raises(argparse.ArgumentTypeError, match=r"up to 2\^53"):
            positive_int(big)
    assert positive_int(str(2**53)) == 2**53
    code = main(["run", "--system", "dgx_a100", "--model", "gpt3_175b", "--chips", "1e3",
                 "--json"])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    assert json.loads(out)["n_chips"] == 1000
    code = main(["run", "--system", "dgx_a100", "--model", "gpt3_175b", "--chips", "2.5"])
    _, err = capsys.readouterr()
    assert code == 2 and err.count("\n") == 1 and "--chips: must be a positive integer" in err
    # search's --chips list reads its counts the same way
    from types import SimpleNamespace

    from emu.cli._search_commands import _chips

    assert _chips(SimpleNamespace(chips="7.2e1, 144"), None) == (72, 144)
    code = main(["search", "--system", "gb200_nvl72", "--model", "llama3_70b", "--chips",
                 "7.2e1,72.5"])  # fmt: skip
    _, err = capsys.readouterr()
    assert code == 2 and "--chips expects integers" in err and "72.5" in err


@pytest.mark.parametrize(
    ("script", "args", "said"),
    [
        ("bench_eval.py", ["--max", "nan"], "--max: must be a positive integer"),
        ("bench_sweep.py", ["--sizes", "abc"], "--sizes: must be a positive integer"),
        ("bench_search.py", ["--only", "bogus"], "--only: unknown problem 'bogus'"),
        ("bench_first_answer.py", ["--cases", "bogus"], "--cases: unknown case 'bogus'"),
        ("program_speed.py", ["--devices", "12"], "--devices must be a multiple of 8"),
        ("stress_no_parallel.py", ["/no/such.jsonl"], "'/no/such.jsonl' not found"),
        ("study_cost.py", ["--out", "README.md"], "--out 'README.md' is a file"),
        ("compare_fits.py", ["/no/such.json", "README.md"], "'/no/such.json' not found"),
        ("compare_fits.py", ["README.md", "README.md"], "'README.md' is not JSON"),
        ("compare_fits.py", ["pyproject.toml", "x", "--top", "0"], "--top: must be a positive"),
    ],
)
def test_experiment_scripts_refuse_bad_arguments_in_one_line(
    script, args, said, capsys, monkeypatch
):
    """`bench_eval --max nan`, `bench_search --only bogus`, `program_speed --devices 0` (and
    12, not a multiple of its TP 8) and a missing file for `stress_no_parallel` ended in
    tracebacks; each now exits 2 with argparse's line, before any work."""
    import runpy
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(root)
    monkeypatch.setattr(sys, "argv", [script, *args])
    with pytest.raises(SystemExit) as e:
        runpy.run_path(str(root / "experiments" / script), run_name="__main__")
    err = capsys.readouterr().err
    assert e.value.code == 2 and said in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        # the power followed the grid's PUE and the cost the region's, in silence
        (["--grid", "facility.pue=1.1,1.5", "--region", "us_iowa", "--free", "tp"],
         "a --grid of facility.pue would price every point at the region's"),
        # the grid replaced the --set value in silence
        (["--set", "chip.tdp_w=500", "--grid", "chip.tdp_w=700", "--free", "tp"],
         "--set chip.tdp_w and --grid chip.tdp_w both give it"),
        (["--grid", "tiers.nvlink.domain_chips=8", "--grid", "domain=4,8", "--free", "tp"],
         "both set the scale-up domain"),
        # a knob the model or the phase does not have: 1 configuration, then "no feasible"
        (["--free", "ep"], "--free ep needs an MoE model (llama3_8b is dense)"),
        (["--phase", "decode", "--free", "pp"], "--free pp varies a knob decode plans do not have"),
        # the one fixed knob that leaves no plan, with its rule (one generic message before)
        (["--microbatch", "3"], "microbatch = 3 admits none (it must divide global batch / dp)"),
        (["--phase", "decode", "--batch", "3"], "the batch per DP rank = 3 admits none"),
        # accepted and ignored
        (["--free", "tp", "--overwrite"], "--overwrite replaces the file at --out; give --out"),
        (["--free", "tp", "--coordinator-timeout", "5"], "--coordinator-timeout bounds the wait"),
    ],
)  # fmt: skip
def test_sweep_refuses_what_it_would_ignore(capsys, args, needle):
    """Session 42's red team: each ran, some with a wrong answer."""
    _one_line(capsys, ["sweep", "--system", "dgx_h100", "--model", "llama3_8b", *args], needle)


def test_an_interrupted_sweep_says_its_chunks_are_kept_and_how_to_resume(capsys, monkeypatch):
    import emu.cli as cli
    import emu.search

    def interrupted(*a, **k):
        raise cli._Terminated()

    monkeypatch.setattr(emu.search, "sweep", interrupted)
    code = main(["sweep", "--system", "dgx_h100", "--model", "llama3_8b", "--free", "tp"])
    err = capsys.readouterr().err
    assert code == 143 and err.startswith("emu: terminated: the finished chunks are kept")
    assert "the same command resumes" in err and err.count("\n") == 1


def test_compare_shows_a_system_that_misses_the_slo_beside_the_others(capsys):
    """It stopped at the first system no batch of which meets the SLO, and the others'
    results were never shown (red team, session 42)."""
    args = ["compare", "--systems", "gb200_nvl72,dgx_a100", "--model", "llama3_405b",
            "--chips", "8", "--phase", "decode", "--json"]  # fmt: skip
    assert main(args) == 0
    res = json.loads(capsys.readouterr().out)["results"]
    assert [r["feasible"] for r in res] == [True, False]
    assert any("no batch meets the SLO" in n and "batch 1" in n for n in res[1]["notes"])
    _one_line(capsys, args[:2] + ["dgx_a100"] + args[3:-1], "no batch meets the TPOT SLO")


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["search", "--gpus", "64"], "unrecognized arguments: --gpus 64; did you mean --chips?"),
        (["run", "--tpot_slo", "1"], "did you mean --tpot-slo?"),
        (["run", "--objective", "x"], "--objective is a flag of emu search and emu sweep"),
        (["--json", "list"], "--json is a flag of emu list: give it after the command"),
        (["run", "--tpot", "0.05"], "did you mean --tpot-slo?"),
        (["run", "--tensor-parallel-size", "8"], "did you mean --tp?"),
    ],
)
def test_an_unknown_flag_names_the_flag_meant(capsys, args, needle):
    """A flag guessed from other tools got "unrecognized arguments" alone (a newcomer's
    walk through the README, session 42)."""
    _one_line(capsys, args, needle)


def test_compare_gives_the_ratio_to_the_first_system_with_its_band(capsys):
    """The study's question (which system gives more tokens per joule, with error bars) had
    to be worked out by hand from two intervals (session 42's newcomer)."""
    assert main(["compare", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    a, b = d["results"]
    for r in (a, b):
        iv = r["interval"]["tokens_per_joule"]
        assert iv["low"] < r["tokens_per_joule"] < iv["high"]
    (ratio,) = d["ratios"]
    tpj = ratio["tokens_per_joule"]
    assert ratio["system"] == b["system"] and ratio["to"] == a["system"]
    assert tpj["value"] == pytest.approx(b["tokens_per_joule"] / a["tokens_per_joule"])
    ia, ib = a["interval"]["tokens_per_joule"], b["interval"]["tokens_per_joule"]
    assert tpj["low"] == pytest.approx(ib["low"] / ia["high"])
    assert tpj["high"] == pytest.approx(ib["high"] / ia["low"])
    assert main(["compare"]) == 0
    text = capsys.readouterr().out  # CloudMatrix training extrapolates: so does the ratio
    assert "tokens/J [band]" in text and "3.13x ~[" in text and tpj["extrapolation"]


def test_capital_fields_under_an_all_in_price_are_said_to_price_nothing(capsys):
    """`--set cost.chip_usd=1e6` with `--hourly-price` was noted as applied while the cost
    per token did not move (red team, session 42)."""
    args = ["run", "--region", "us_iowa", "--hourly-price", "2", "--json"]
    assert main([*args, "--set", "cost.chip_usd=1e6"]) == 0
    with_set = json.loads(capsys.readouterr().out)
    assert main(args) == 0
    plain = json.loads(capsys.readouterr().out)
    assert with_set["usd_per_mtoken"] == plain["usd_per_mtoken"]
    assert any("cost.chip_usd: the all-in hourly price (--hourly-price) sets" in n
               for n in with_set["notes"])  # fmt: skip


def test_a_hint_names_only_a_visible_flag_of_the_command_given(capsys):
    """The first hints came from every command's flags, hidden ones too: `run --throttle`
    was told --throttle-s (a test flag), `run --seq` --set (the review)."""
    for args in (["run", "--throttle", "1"], ["run", "--zzz", "1"]):
        assert main(args) == 2
        err = capsys.readouterr().err
        assert "did you mean" not in err and err.count("\n") == 1, err


def test_a_ratio_with_an_infeasible_system_says_so(capsys):
    args = ["compare", "--systems", "gb200_nvl72,dgx_h100,cloudmatrix384", "--json"]
    assert main(args) == 0
    ratios = json.loads(capsys.readouterr().out)["ratios"]
    assert [r["system"] for r in ratios] == ["dgx_h100", "cloudmatrix384"]
    assert ratios[0]["infeasible"] and ratios[0]["tokens_per_joule"]["value"] is None
    assert not ratios[1]["infeasible"] and ratios[1]["tokens_per_joule"]["value"] > 0


def test_run_with_a_region_gives_the_usd_band(capsys):
    assert main(["run", "--region", "us_iowa", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    iv, tps = r["interval"]["usd_per_mtoken"], r["interval"]["tokens_per_s"]
    assert iv["low"] < r["usd_per_mtoken"] < iv["high"]  # cost goes as 1 / throughput
    assert iv["low"] == pytest.approx(r["usd_per_mtoken"] * r["tokens_per_s"] / tps["high"])
