import pytest
from _cli import run_cli, run_json


def test_list_and_fields(capsys):
    d = run_json(capsys, "list")
    assert {"cloudmatrix384", "gb200_nvl72", "dgx_h100"} <= set(d["systems"])
    assert "llama3_70b" in d["models"]
    fields = run_json(capsys, "list", "--fields", "gb200_nvl72")
    assert fields["chip.hbm_bytes_per_s"] == pytest.approx(7.7e12, rel=0.05) or fields[
        "chip.hbm_bytes_per_s"
    ] == pytest.approx(8e12, rel=0.01)
    assert "tiers.nvlink.bytes_per_s" in fields


def test_describe_contract(capsys):
    d = run_json(capsys, "describe", "cloudmatrix384")
    for key in ("n_chips", "peak_flops_per_s", "hbm_bytes", "hbm_bytes_per_s", "power_w"):
        assert key in d
    assert d["n_chips"] == 384


def test_run_contract_and_set(capsys):
    args = ["run", "--system", "gb200_nvl72", "--model", "llama3_8b", "--seq-len", "4096"]
    d = run_json(capsys, *args)
    for key in (
        "step_time_s",
        "tokens_per_s",
        "tokens_per_joule",
        "power_w",
        "mfu",
        "feasible",
        "breakdown",
        "memory",
        "plan",
    ):
        assert key in d
    assert d["plan"]["tp"] * d["plan"]["pp"] * d["plan"]["dp"] * d["plan"]["cp"] == 72
    slow = run_json(capsys, *args, "--set", "chip.peak_flops_per_s.bf16=1.25e15")
    assert slow["step_time_s"] > d["step_time_s"]
    longer = run_json(capsys, *args, "--set", "model.n_layers=64")
    assert longer["step_time_s"] > d["step_time_s"]


def test_compare_gives_both_systems_for_llama3_70b(capsys):
    d = run_json(capsys, "compare", "--model", "llama3_70b")
    systems = [r["system"] for r in d["results"]]
    assert systems == ["cloudmatrix384", "gb200_nvl72"]
    for r in d["results"]:
        assert r["breakdown"]["total_s"] == pytest.approx(r["step_time_s"])


def test_sensitivity_agrees_with_finite_differences_through_run_set(capsys):
    base = ["--system", "gb200_nvl72", "--model", "llama3_8b", "--seq-len", "4096"]
    s = run_json(capsys, "sensitivity", *base)
    assert set(s) >= {"tokens_per_joule", "tokens_per_s", "elasticities"}
    top = [k for k, v in s["elasticities"].items() if abs(v["tokens_per_joule"]) > 0.05][:3]
    assert top
    h = 0.01
    for path in top:
        x = s["elasticities"][path]["value"]
        up = run_json(capsys, "run", *base, "--set", f"{path}={x * (1 + h)}")
        dn = run_json(capsys, "run", *base, "--set", f"{path}={x * (1 - h)}")
        import math

        fd = (math.log(up["tokens_per_joule"]) - math.log(dn["tokens_per_joule"])) / (
            math.log(1 + h) - math.log(1 - h)
        )
        assert s["elasticities"][path]["tokens_per_joule"] == pytest.approx(fd, abs=0.02), path


@pytest.mark.parametrize(
    "args,needle",
    [
        (["describe", "gb200_nvl73"], "unknown system 'gb200_nvl73'. Did you mean"),
        (["run", "--chips", "72", "--tp", "8", "--pp", "1", "--dp", "8"], "the chip count 72"),
        (["run", "--model", "llama3_8b", "--tp", "3", "--chips", "72"], "must divide"),
        (["run", "--set", "chip.hbm_bytes=-1"], "must be in [1e+08, 1e+14] bytes (got -1)"),
        (["run", "--set", "chip.hbm_byte=1"], "Did you mean"),
        (["run", "--system", "cloudmatrix384", "--precision", "fp8"], "no fp8 support"),
        (["run", "--chips", "0"], "positive integer"),
        (["validate", "/nonexistent.jsonl"], "not found"),
        (["frobnicate"], "invalid choice"),
        (["run", "--pp", "16"], "must divide chips/(tp*cp)"),
        (["run", "--set", "plan.global_batch=1e30"], "up to 16,777,216"),  # as the flag
        (["run", "--tp", "0"], "positive integer"),
        (["run", "--seq-len", "0"], "must be an integer in [1, 1e+07]"),
        (["run", "--chips", "100000000000"], "exceeds the largest cluster"),
        (["run", "--set", "chip.hbm_bytes_per_s=1e-50"], "float32 range"),
        (["run", "--set", "chip.tdp_w=1e39"], "float32 range"),
        (["run", "--set", "chip.idle_w=5000"], "exceeds chip.tdp_w"),
        (["run", "--set", "plan.lora=0.5"], "must be 0 or 1"),
        (["run", "--set", "model.n_experts=8"], "top_k=0 must be between 1"),
        (
            ["run", "--seq-len", "10000000000000000000", "--global-batch", "9"],
            "must be an integer in [1, 1e+07]",
        ),  # (the bound; test_analysis: not finite)
        (["describe", "gb200_nvl72", "--set", "plan.zero=2"], "only system fields"),
        (["describe", "gb200_nvl72", "--set", "chip.hbm_bytes=186"], "[1e+08, 1e+14] bytes"),
        (["describe", "gb200_nvl72", "--set", "tiers.nvlink.latency_s=1"], "in [0, 0.01] s"),
    ],
)
def test_bad_input_is_one_line_exit_2(capsys, args, needle):
    code, out, err = run_cli(capsys, *args)
    assert code == 2
    assert needle in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_malformed_and_unknown_key_toml(capsys, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("name = 'x'\nn_chips = [\n")
    code, _, err = run_cli(capsys, "describe", str(bad))
    assert code == 2 and "not valid TOML" in err
    from emu.catalog import config_dir

    text = (config_dir() / "systems" / "gb200_nvl72.toml").read_text()
    typo = tmp_path / "gb200_nvl72.toml"  # a file's name is its stem
    typo.write_text(text.replace("hbm_bytes_per_s", "hbm_bytes_per_sec", 1))
    code, _, err = run_cli(capsys, "describe", str(typo))
    assert code == 2 and "unknown key 'hbm_bytes_per_sec'" in err and "Did you mean" in err


def _emu(*args, **kw):
    import subprocess
    import sys

    return subprocess.Popen([sys.executable, "-m", "emu", *args], **kw)


def test_a_closed_pipe_ends_quietly():
    """`emu ... | head`: the reader goes away before emu writes. It used to end in
    "internal error" with status 1 (BrokenPipeError was caught after `except Exception`)."""
    import subprocess

    p = _emu("list", "--fields", "gb200_nvl72", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()  # long before emu has imported JAX and written anything
    err = p.stderr.read().decode()
    p.wait(timeout=120)
    assert p.returncode == 0 and err == ""


def test_a_full_stdout_is_one_line_and_status_1():
    import subprocess

    with open("/dev/full", "w") as full:
        p = _emu("list", "--fields", "gb200_nvl72", stdout=full, stderr=subprocess.PIPE)
        err = p.communicate(timeout=120)[1].decode()
    assert p.returncode == 1
    assert err == "emu: error: cannot write the output: No space left on device.\n"


def test_a_fifo_as_system_is_refused_not_waited_on(tmp_path, capsys):
    import os

    fifo = tmp_path / "system.toml"
    os.mkfifo(fifo)
    code, _, err = run_cli(capsys, "describe", str(fifo))
    assert code == 2 and "is not a regular file" in err


def test_validate_checks_the_plot_path_before_predicting(tmp_path, capsys, monkeypatch):
    import emu.validation

    def no_validation(*a, **k):
        raise AssertionError("validation ran before the plot path was checked")

    monkeypatch.setattr(emu.validation, "validate_file", no_validation)
    (tmp_path / "file").write_text("")
    code, _, err = run_cli(capsys, "validate", "--plot", str(tmp_path / "file" / "v.png"))
    assert code == 2 and "Not a directory" in err


@pytest.mark.parametrize(
    "args,needle",
    [
        (["run", "--set", "chip.tdp_w"], "--set expected PATH=VALUE"),
        (["run", "--set", "chip.tdp_w=abc"], "--set chip.tdp_w: value 'abc' is not a number"),
        (["validate", "--kind", "banana"], "invalid choice: 'banana'"),
        (["run", "--set", "tiers.nvlink.latency_s=1e-39"], "float32 range"),
        (["search", "--starts", "1000000"], "--starts: must be an integer in [1, 1024]"),
        (["sweep", "--num-processes", "2"], "need --coordinator"),
        (["sweep", "--coordinator", "foo:1"], "--coordinator joins a sweep of several"),
        # process 0 too: jax's coordinator server crashed (segmentation fault) on such ports
        *[
            (
                ["sweep", "--num-processes", "2", "--process-id", "0", "--coordinator", c],
                "expects HOST:PORT with a port in 1-65535",
            )
            for c in (
                "localhost:abc",
                "localhost:-5",
                "localhost:99999",
                "localhost:",
                ":1234",
                "local host:1",
            )
        ],
        (["run", "--microbatch", "1e30"], "up to 16,777,216 (got '1e30')"),
        (["sweep", "--model", "llama3_8b", "--ep", "8"], "--ep 8 needs an MoE model"),
        (["search", "--model", "llama3_8b", "--ep", "4"], "--ep 4 needs an MoE model"),
        (["sweep", "--out", ""], "--out is empty; give a file name"),
        (["search", "--out", " "], "--out is empty; give a file name"),
        (["sweep", "--chips", "8,,16"], "--chips has an empty entry"),
        (["search", "--chips", ",8"], "--chips has an empty entry"),
        # a name longer than the file system allows is an unknown model, not a write error
        (["run", "--model", "x" * 300], "unknown model 'xxxx"),
        (["serve", "--model", "x" * 300], "unknown model 'xxxx"),
        (["run", "--model", "a" * 5000 + ".json"], "cannot read model file 'aaaa"),
        (["list", "--region", "us_average"], "run, compare, serve, search, sweep and sensitivity"),
    ],
)
def test_flag_errors_name_the_flag(capsys, args, needle):
    code, _, err = run_cli(capsys, *args)
    assert code == 2 and needle in err and err.count("\n") == 1


def test_a_dead_coordinator_is_one_line_after_the_timeout(capsys):
    """It used to wait 5 minutes, then abort with a C++ stack trace."""
    import socket
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nobody listens there
    t = time.perf_counter()
    code, _, err = run_cli(
        capsys, "sweep", "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2",
        "--process-id", "1", "--coordinator-timeout", "2",
    )  # fmt: skip
    assert code == 2 and "cannot reach the coordinator" in err and err.count("\n") == 1
    assert 2 <= time.perf_counter() - t < 30


def test_chips_take_a_trailing_comma_but_no_empty_entry():
    import argparse

    from emu.cli._parser import CliError
    from emu.cli._search_commands import _chips

    assert _chips(argparse.Namespace(chips="64, 128,"), None) == (64, 128)
    assert _chips(argparse.Namespace(chips="8"), None) == 8
    for bad in ("8,,16", ",8", "8,,"):
        with pytest.raises(CliError, match="--chips has an empty entry"):
            _chips(argparse.Namespace(chips=bad), None)
