"""The command line as a new researcher meets it (issue 15): the flagship questions with
default flags, each system's own precision, infeasibility first, warnings, notes that say
what was chosen, units and spellings, a user's own hardware, and output that shows what
matters."""

from functools import partial
from pathlib import Path

import pytest
from _cli import run_cli
from _cli import run_json as _run_json
from _tables import read_table

ROOT = Path(__file__).resolve().parents[1]
TPU = str(ROOT / "examples" / "tpu_like.toml")
run_json = partial(_run_json, quiet=True)  # --json: nothing on stderr


@pytest.mark.parametrize("phase", ["decode", "prefill"])
def test_deepseek_r1_serving_compares_with_default_flags(capsys, phase):
    """`emu compare --model deepseek_r1 --phase decode|prefill` used to stop at "Ascend 910C
    has no fp8 support", then at "does not fit in HBM" / "misses the TTFT SLO"."""
    d = run_json(capsys, "compare", "--model", "deepseek-r1", "--phase", phase)
    by = {r["system"]: r for r in d["results"]}
    assert set(by) == {"cloudmatrix384", "gb200_nvl72"}
    assert by["cloudmatrix384"]["plan"]["precision"] == "int8"
    assert by["gb200_nvl72"]["plan"]["precision"] == "fp8"
    assert by["gb200_nvl72"]["plan"]["ep"] == 72  # every rank of the NVLink domain
    assert by["cloudmatrix384"]["plan"]["ep"] == 768  # every die (rank) of the supernode
    latency, slo = ("tpot_s", 0.05) if phase == "decode" else ("ttft_s", 2.0)
    for r in by.values():
        assert r["feasible"] and r["infeasible_reasons"] == []
        assert 0 < r[latency] <= slo and r["slo_s"] == slo
        assert r["tokens_per_s"] > 0 and 0 < r["mfu"] <= 1
        assert any(n.startswith(f"precision on {r['system']}: ") for n in r["notes"])


def test_mtp_default_is_said_and_can_be_turned_off(capsys):
    args = ["run", "--model", "deepseek_r1", "--phase", "decode", "--system", "gb200_nvl72"]
    on = run_json(capsys, *args)
    assert on["plan"]["mtp_accept"] == pytest.approx(0.7)
    assert any(n.startswith("MTP on: deepseek_r1") for n in on["notes"])
    off = run_json(capsys, *args, "--mtp-accept", "0")
    assert off["plan"]["mtp_accept"] == 0 and not any("MTP on" in n for n in off["notes"])
    assert off["tokens_per_s_per_chip"] < on["tokens_per_s_per_chip"]
    # speculation set through --set: the rule adds no MTP to it (not "both" an error)
    drafts = ["--set", "plan.draft_tokens=2", "--set", "plan.accept_len=2.4"]
    drafted = run_json(capsys, *args, *drafts)
    assert drafted["plan"]["mtp_accept"] == 0 and drafted["plan"]["draft_tokens"] == 2
    typed = run_json(capsys, *args, "--mtp-accept", "0.7")  # given: nothing to note
    assert typed["plan"]["mtp_accept"] == pytest.approx(0.7)
    assert not any("MTP on" in n for n in typed["notes"])
    # --set plan.mtp_accept derives accept_len as the flag does (it was "accept_len=1 needs
    # draft_tokens > 0")
    half = run_json(capsys, *args, "--set", "plan.mtp_accept=0.5")
    assert half["feasible"] and half["plan"]["accept_len"] == pytest.approx(1.5)
    code, out, _ = run_cli(capsys, *args, *drafts)
    assert code == 0 and "draft_tokens=2 accept_len=2.4" in out and "MTP on" not in out
    served = run_json(capsys, "serve", "--model", "deepseek_r1", "--system", "gb200_nvl72")
    assert served["decode"]["plan"]["mtp_accept"] == pytest.approx(0.7)
    assert any(n.startswith("MTP on: deepseek_r1") for n in served["notes"])


def test_text_shows_precision_serving_lengths_ep_and_overrides(capsys):
    args = ["run", "--system", "dgx_h100", "--model", "mixtral_8x7b", "--chips", "8"]
    code, out, _ = run_cli(
        capsys, *args, "--phase", "decode", "--context", "4096", "--batch", "8",
        "--set", "chip.hbm_bytes_per_s=4TB/s",
    )  # fmt: skip
    assert code == 0
    assert "context" in out and "4096" in out and " seq " not in out and "seq=" not in out
    assert "TPOT" in out and "SLO" in out and "precision" in out and "fp8" in out
    assert "ep=8" in out and "batch/rank=8" in out
    assert "note: --set applied: chip.hbm_bytes_per_s=4TB/s" in out
    assert "note: precision on dgx_h100: fp8" in out


def test_an_infeasible_result_leads_with_that_fact(capsys):
    """It used to exit 0 with "MFU 63%" as its headline and one "feasible NO" row."""
    args = ["run", "--tp", "2", "--dp", "36", "--microbatch", "4", "--zero", "3"]
    args += ["--recompute", "selective"]
    code, out, _ = run_cli(capsys, *args)
    assert code == 0
    first = out.splitlines()[0]
    assert first.startswith("INFEASIBLE on gb200_nvl72: out of memory: 407 GB of 196 GB per chip")
    d = run_json(capsys, *args)
    assert list(d)[:3] == ["feasible", "infeasible_reasons", "warnings"]
    assert d["feasible"] is False and d["infeasible_reasons"][0].startswith("out of memory")


def test_a_missed_slo_with_a_given_batch_is_infeasible(capsys):
    d = run_json(
        capsys, "run", "--model", "llama3_8b", "--phase", "decode", "--batch", "4000",
        "--tpot-slo", "5ms",
    )  # fmt: skip
    assert d["feasible"] is False
    assert any("misses the 0.005 s SLO" in r for r in d["infeasible_reasons"])


def test_a_long_pipeline_bubble_is_warned_about(capsys):
    """Llama 3 405B's published plan (PP16 over 126 layers: uneven stages) runs, and a
    poor default batch is flagged."""
    d = run_json(
        capsys, "run", "--model", "llama3_405b", "--chips", "8192", "--tp", "8", "--pp", "16",
    )  # fmt: skip
    assert d["feasible"] and d["plan"]["pp"] == 16
    assert any(w.startswith("the pipeline bubble is") and "--plan best" in w for w in d["warnings"])


def test_plan_best_is_a_quick_search_stated_as_such(capsys):
    args = ["run", "--system", "dgx_h100", "--model", "llama3_8b", "--chips", "16"]
    args += ["--seq-len", "4096"]
    rule = run_json(capsys, *args)
    best = run_json(capsys, *args, "--plan", "best")
    # a small space is searched exhaustively, as `emu search` would (session 42: the
    # gradient search took 4-7x longer and could stop short)
    assert any("the best for tokens/J of every one of" in n for n in best["notes"])
    assert best["tokens_per_joule"] >= rule["tokens_per_joule"] * 0.999
    search = run_json(capsys, "search", "--system", "dgx_h100", "--model", "llama3_8b",
                      "--chips", "16", "--seq-len", "4096")  # fmt: skip
    assert best["tokens_per_joule"] == pytest.approx(search["best"]["tokens_per_joule"])


def test_slo_flags_only_in_their_phase(capsys):
    for args, needle in (
        (["--phase", "decode", "--ttft-slo", "1"], "--ttft-slo does not apply to decode plans"),
        (["--phase", "prefill", "--tpot-slo", "0.1"], "--tpot-slo does not apply to prefill"),
        (["--tpot-slo", "0.05"], "--tpot-slo does not apply to train plans"),
        (["--phase", "decode", "--cache-hit", "0.5"], "--cache-hit applies to prefill plans"),
        (["--batch", "4"], "--batch is the serving batch per DP rank"),
    ):
        code, _, err = run_cli(capsys, "run", *args)
        assert code == 2 and needle in err and err.count("\n") == 1, (args, err)


def test_version_and_list(capsys):
    from emu import __version__

    code, out, _ = run_cli(capsys, "--version")
    assert code == 0 and out.strip() == f"emu {__version__}"
    d = run_json(capsys, "list")
    nvl = d["systems"]["gb200_nvl72"]
    assert nvl["chips"] == 72 and nvl["peak_bf16_flops_per_s"] == pytest.approx(180e15)
    assert nvl["hbm_bytes_per_chip"] == pytest.approx(189471 * 2**20)  # driver MiB
    r1 = d["models"]["deepseek_r1"]
    assert (
        r1["layers"] == 61 and r1["experts"] == 256 and r1["params"] == pytest.approx(671e9, 0.01)
    )
    code, out, _ = run_cli(capsys, "list")
    lines = out.splitlines()
    assert sum(line.startswith("gb200_nvl72 ") for line in lines) == 1
    assert sum(line.startswith("llama3_70b ") for line in lines) == 1
    plan = run_json(capsys, "list", "--fields", "plan")
    assert plan["tp"]["flag"] == "--tp" and plan["context"]["phases"] == ["decode"]
    assert plan["zero"]["set"] == "plan.zero"


def test_spelled_names_say_which_one_was_used(capsys):
    code, out, _ = run_cli(capsys, "describe", "GB200-NVL72")
    assert code == 0 and out.startswith("gb200_nvl72")
    code, _, err = run_cli(capsys, "list", "--fields", "Llama-3-70B")
    assert code == 0 and "emu: note: model 'Llama-3-70B' is the catalog's 'llama3_70b'" in err


def test_a_hugging_face_config_runs_like_the_catalog_model(capsys):
    hf = ROOT / "tests" / "data" / "hf" / "llama3_70b_config.json"
    args = ["--system", "dgx_h100", "--seq-len", "4096", "--chips", "64"]
    got = run_json(capsys, "run", "--model", str(hf), *args)
    ref = run_json(capsys, "run", "--model", "llama3_70b", *args)
    assert got["tokens_per_s"] == pytest.approx(ref["tokens_per_s"], rel=1e-6)


def test_a_new_chip_family_runs_through_run_describe_and_sensitivity(capsys):
    """A TPU-like chip on an ICI-like tier: marked uncalibrated in every command."""
    d = run_json(capsys, "describe", TPU)
    assert d["calibrated"] is False and "chip family 'tpu'" in d["notes"][0]
    r = run_json(capsys, "run", "--system", TPU, "--model", "llama3_8b", "--chips", "64")
    assert r["feasible"] and any(
        n.startswith("uncalibrated: chip family 'tpu'") for n in r["notes"]
    )
    s = run_json(capsys, "sensitivity", "--system", TPU, "--model", "llama3_8b", "--chips", "64")
    assert "tiers.ici.efficiency" in s["elasticities"]
    assert any(n.startswith("uncalibrated:") for n in s["notes"])


def test_plot_without_matplotlib_says_exactly_how(capsys, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_matplotlib(name, *a, **k):
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    code, _, err = run_cli(capsys, "validate", "--plot", "v.png")
    assert code == 2
    assert err == "emu: error: --plot needs matplotlib: pip install 'cluster-emu[plot]'\n"


def test_search_table_shows_chips_and_the_slo(capsys, tmp_path):
    import numpy as np

    out = tmp_path / "s.csv"
    code, text, err = run_cli(
        capsys, "sweep", "--system", "gb200_nvl72", "--model", "llama3_8b", "--phase",
        "decode", "--chips", "8,16", "--tpot-slo", "20ms", "--out", str(out),
    )  # fmt: skip
    assert code == 0, err
    head = text.splitlines()[1]
    assert "chips" in head and "TPOT (SLO 20 ms)" in head and "tp/dp/ep" in head
    # every evaluated configuration, feasible ones first and ranked (it used to start with an
    # infeasible plan)
    t = read_table(out)
    feasible = t["feasible"] > 0.5
    assert feasible[0] and (~feasible).any()
    assert not np.any(feasible[np.argmin(feasible) :])  # no feasible row after the first not
    obj = t["objective"][feasible]
    assert np.all(np.diff(obj) <= 0)
    assert set(t["chips"].tolist()) == {8.0, 16.0}  # the table's chips column, in the file too


def test_grid_values_take_units_too(capsys):
    import argparse

    import emu
    from emu.cli._search_commands import _grid

    system = emu.load_system("gb200_nvl72")
    args = argparse.Namespace(grid=["chip.hbm_bytes_per_s=4TB/s,8TB/s", "scaleup_bw=0.5,1"])
    assert _grid(args, system) == {"chip.hbm_bytes_per_s": [4e12, 8e12], "scaleup_bw": [0.5, 1]}
    code, _, err = run_cli(capsys, "search", "--grid", "chip.tdp_w=1kW,16TB/s")
    assert code == 2 and "--grid chip.tdp_w: '16TB/s' is in bytes/s, but" in err


def _readme_commands() -> list[str]:
    """The `emu ...` commands of the README's bash blocks (continuations joined)."""
    import re

    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    lines = [ln.split("#")[0].strip() for b in blocks for ln in b.replace("\\\n", " ").splitlines()]
    return [
        ln.split("&&")[-1].strip() for ln in lines if ln.split("&&")[-1].strip().startswith("emu ")
    ]


def test_readme_commands_parse():
    """Every `emu ...` line of the README's code blocks parses with today's flags."""
    import shlex

    from emu.cli._parser import build_parser

    commands = _readme_commands()
    assert len(commands) >= 4
    for cmd in commands:
        if "..." not in cmd:  # `emu sweep ...` is elided
            build_parser().parse_args(shlex.split(cmd)[1:])


def test_readme_commands_need_no_shared_folder():
    """A fresh clone has no ../shared: `emu validate` uses the shipped measurement set."""
    assert not [c for c in _readme_commands() if "../shared" in c]


def test_exhaustive_search_table_counts_chips_not_dies(capsys):
    """The exhaustive path computes only the table's columns; the chips column used to read
    a column it had not computed (TypeError) and, before that, counted ranks (dies)."""
    args = ["search", "--system", "cloudmatrix384", "--model", "llama3_8b", "--chips", "4"]
    code, out, err = run_cli(capsys, *args, "--phase", "decode")
    assert code == 0, err
    assert out.startswith("exhaustive search: every one of")
    first = next(line for line in out.splitlines() if line.startswith("1 "))
    assert first.split()[1] == "4"  # 4 chips = 8 dies


def test_a_recomputed_share_of_layers_is_full_recompute_and_says_so(capsys):
    """--recompute-fraction (Megatron's block method: N of a stage chunk's layers) implies
    recompute=full, shows in the plan line, costs less than recomputing every layer and
    keeps more activations; with another recompute it is refused in one line."""
    args = ("run", "--system", "gb200_nvl72", "--model", "llama3_70b", "--chips", "64")
    part = run_json(capsys, *args, "--recompute-fraction", "0.25")
    full = run_json(capsys, *args, "--recompute", "full")
    assert part["plan"]["recompute"] == "full" and part["plan"]["recompute_fraction"] == 0.25
    assert part["step_time_s"] < full["step_time_s"]
    assert part["memory"]["activations_bytes"] > full["memory"]["activations_bytes"]
    code, out, err = run_cli(capsys, *args, "--recompute-fraction", "0.25")
    assert code == 0 and "recompute=full recompute_fraction=0.25" in out
    code, out, err = run_cli(
        capsys, *args, "--recompute", "selective", "--recompute-fraction", "0.5"
    )
    assert code == 2 and "needs recompute=full" in err and len(err.strip().splitlines()) == 1
    # --set plan.recompute_fraction is the flag's knob: it implies full recomputation too
    via_set = run_json(capsys, *args, "--set", "plan.recompute_fraction=0.25")
    assert via_set["plan"]["recompute"] == "full"
    assert via_set["step_time_s"] == pytest.approx(part["step_time_s"], rel=1e-6)
    # out of memory with a share recomputed: raising the share is offered
    oom = ("--tp", "8", "--pp", "2", "--zero", "3", "--microbatch", "8")
    code, out, err = run_cli(capsys, *args[:-1], "16", *oom, "--recompute-fraction", "0.1")
    assert "out of memory" in out and "raise --recompute-fraction" in out
    act = run_json(capsys, *args, "--recompute-activation")
    assert act["plan"]["recompute_activation"] is True
    plain = run_json(capsys, *args)
    assert act["memory"]["activations_bytes"] < plain["memory"]["activations_bytes"]
    code, out, err = run_cli(capsys, *args, "--recompute-activation")
    assert code == 0 and "recompute=selective recompute_activation" in out
    code, out, err = run_cli(capsys, *args[:-1], "16", *oom, "--recompute", "selective")
    assert "out of memory" in out and "--recompute full, --recompute-activation" in out


def test_a_serving_batch_set_through_set_is_refused_in_one_line(capsys):
    """A serving plan's batch is --batch (the SLO rule sizes it, with the global batch);
    --set plan.microbatch used to end in "global_batch=64 must be a multiple of
    dp*microbatch", naming a batch the user never set."""
    args = ("run", "--system", "gb200_nvl72", "--model", "llama3_70b", "--chips", "64")
    for phase in ("decode", "prefill"):
        for path in ("microbatch", "global_batch"):
            code, out, err = run_cli(capsys, *args, "--phase", phase, "--set", f"plan.{path}=64")
            assert code == 2 and len(err.strip().splitlines()) == 1
            assert "--batch" in err and f"plan.{path}" in err
    res = run_json(capsys, *args, "--phase", "decode", "--batch", "16")
    assert res["plan"]["microbatch"] == 16


def test_a_global_batch_no_rule_plan_divides_is_one_line_naming_batches_that_work(capsys):
    """`--global-batch 1000` on one NVL72 used to end in "must be a multiple of
    dp*microbatch=9", a dp the rule had chosen, not the user; now the rule looks for a plan
    that divides it and, finding none, names the batches its plans take."""
    args = ("run", "--system", "gb200_nvl72", "--model", "llama3_70b")
    code, out, err = run_cli(capsys, *args, "--global-batch", "1000")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "nearest: 999" in err and "dp x micro-batch" in err
    assert run_json(capsys, *args, "--global-batch", "999")["plan"]["global_batch"] == 999


def test_a_degree_set_through_set_is_planned_as_its_flag(capsys):
    """`--set plan.tp=4` used to be applied after the rule had planned the other degrees for
    TP 2: one NVL72 then ran 144 GPUs (tp 4 x pp 4 x dp 9) without a word; the rule now takes
    a degree, length or batch given through --set as it takes the flag, and a plan --set
    still changes afterwards is checked against the chips asked for (the system's when
    --chips is left out)."""
    base = ("run", "--system", "gb200_nvl72", "--model", "llama3_70b")
    for flag, path in (("--tp", "tp=4"), ("--pp", "pp=3"), ("--seq-len", "seq_len=4096")):
        by_flag = run_json(capsys, *base, flag, path.split("=")[1])
        by_set = run_json(capsys, *base, "--set", f"plan.{path}")
        assert by_set["n_chips"] == by_flag["n_chips"] == 72, path
        assert by_set["plan"] == by_flag["plan"], path
        assert by_set["step_time_s"] == pytest.approx(by_flag["step_time_s"]), path
    serve = run_json(capsys, *base, "--phase", "decode", "--set", "plan.tp=2")
    p = serve["plan"]
    assert p["tp"] * p["dp"] == 72 and serve["n_chips"] == 72


def test_plan_errors_name_what_the_user_gave(capsys):
    """Review findings: a given dp that only another TP takes, with a batch that TP's dp
    does not divide, is a batch error (it said "adjust dp"); the TPs listed as tried exclude
    the rule's own (a long sequence's CP candidates repeated it); a --set knob the rule does
    not plan for, refused on the plan the rule chose, says so; --plan best takes a degree
    given through --set as the flag, fixed in its search (it searched 20 s, then refused)."""
    nvl = ("run", "--system", "gb200_nvl72", "--model", "llama3_70b")
    code, _, err = run_cli(capsys, *nvl, "--dp", "8", "--global-batch", "12")
    assert code == 2 and "global_batch=12" in err and "nearest: 8" in err and "adjust dp" not in err
    h100 = ("run", "--system", "dgx_h100", "--chips", "64", "--model", "llama3_70b")
    code, _, err = run_cli(capsys, *h100, "--seq-len", "65536", "--dp", "3")
    assert code == 2 and "at the rule's TP 8, and no other TP it tries (1, 2, 4) " in err, err
    code, _, err = run_cli(capsys, *nvl, "--phase", "decode", "--set", "plan.etp=2")
    assert code == 2 and "after --set plan.etp on the plan the rule chose" in err
    assert len(err.strip().splitlines()) == 1
    small = ("run", "--system", "dgx_h100", "--chips", "8", "--model", "llama3_8b")
    code, _, err = run_cli(capsys, *small, "--plan", "best", "--set", "plan.tp=16")
    assert code == 2 and "no valid plan" in err


def test_serve_says_which_instance_cannot_fit_and_names_its_own_flags(capsys):
    """`emu serve` used to advise "raise ep or tp" (serve has no --tp or --ep) without
    saying whether the prefill or the decode instance was short."""
    base = ["serve", "--system", "dgx_h100", "--model", "llama3_405b", "--precision", "bf16"]
    code, _, err = run_cli(capsys, *base, "--prefill-chips", "2", "--decode-chips", "8")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "the prefill instance: even batch 1 does not fit in HBM" in err
    assert "more --prefill-chips (now 2)" in err and "an 8-bit --precision" in err
    assert "--tp" not in err and "--ep" not in err and "raise" not in err
    assert "prompt-len" not in err  # the weights alone overflow: a shorter prompt cannot help
    code, _, err = run_cli(capsys, *base[:-2], "--decode-chips", "8", "--tpot-slo", "1ms")
    assert code == 2
    assert "the decode instance: no batch meets the TPOT SLO of 0.001 s" in err
    assert "a looser --tpot-slo (now 0.001 s), more --decode-chips (now 8)" in err


def test_run_serving_errors_name_run_flags_and_only_open_moves(capsys):
    args = ["run", "--system", "dgx_h100", "--phase", "decode"]
    # R1 at fp8 on 8 H100: ep already spans all 8 ranks, so only --tp can still grow
    code, _, err = run_cli(capsys, *args, "--model", "deepseek_r1", "--chips", "8", "--tp", "1")
    assert code == 2 and "try a higher --tp or more --chips (now 8)." in err
    assert "--ep" not in err
    # a dense model's long context on one chip: no degree to raise, the KV cache to shrink
    long = ["--model", "llama3_8b", "--chips", "1", "--context", "1000000"]
    code, _, err = run_cli(capsys, *args, *long)
    assert (
        code == 2 and "try --kv-precision fp8, more --chips (now 1) or a shorter --context" in err
    )


def test_training_out_of_memory_advice_offers_only_moves_the_plan_has(capsys):
    """On one chip "raise tp or pp" and "raise --zero" cannot help (nothing to shard over);
    a dense model has no EP to raise; long sequences can take context parallelism."""
    args = ["run", "--system", "dgx_h100", "--tp", "1", "--pp", "1"]
    one = run_json(capsys, *args, "--model", "llama3_70b", "--chips", "1")
    assert one["infeasible_reasons"] == ["out of memory: 1287 GB of 83 GB per chip; add chips."]
    long = run_json(capsys, *args, "--model", "llama3_70b", "--chips", "8", "--seq-len", "32768")
    assert "raise tp, pp or cp, raise --zero or add chips." in long["infeasible_reasons"][0]
    moe = run_json(capsys, *args, "--model", "deepseek_v3", "--chips", "64", "--ep", "1")
    assert "raise tp, pp or ep, raise --zero" in moe["infeasible_reasons"][0]


def test_inputs_without_effect_are_said_or_refused(capsys):
    """`--tpot-slo 50` is 50 s; `--no-sp` at tp 1 and `--algorithm` with no all-reduce
    change nothing; `--set model.top_k` on a dense model was accepted and ignored."""
    d = run_json(capsys, "serve", "--system", "dgx_h100", "--model", "llama3_8b",
                 "--tpot-slo", "50")  # fmt: skip
    assert "--tpot-slo 50 is in seconds (50 s); for 50 ms give 50ms or 0.05" in d["notes"]
    assert not any("in seconds" in n for n in run_json(capsys, "run", "--tp", "2")["notes"])
    typed = run_json(capsys, "serve", "--system", "dgx_h100", "--model", "llama3_8b",
                     "--tpot-slo", "2s")  # fmt: skip
    assert not any("in seconds" in n for n in typed["notes"])  # the unit was written
    args = ["run", "--system", "dgx_h100", "--model", "llama3_8b", "--chips", "8", "--tp", "1"]
    d = run_json(capsys, *args, "--no-sp")
    assert any(n.startswith("--no-sp has no effect at tp=1") for n in d["notes"])
    d = run_json(capsys, *args[:-4], "--chips", "1", "--phase", "decode", "--algorithm", "ring")
    assert "--algorithm has no effect: a tp=1 serving plan runs no all-reduce" in d["notes"]
    d = run_json(capsys, *args[:-4], "--chips", "1", "--phase", "decode")  # not given: no note
    assert not any(n.startswith("--algorithm") for n in d["notes"])
    d = run_json(capsys, *args, "--algorithm", "ring")  # dp 8 reduces its gradients
    assert not any(n.startswith("--algorithm") for n in d["notes"])
    for cmd in (["run"], ["serve"]):
        code, _, err = run_cli(capsys, *cmd, "--model", "llama3_70b", "--set", "model.top_k=2")
        assert code == 2 and "--set model.top_k applies to MoE models' experts" in err
    moe = [
        "--set",
        "model.n_experts=8",
        "--set",
        "model.top_k=2",
        "--set",
        "model.d_ff_expert=2048",
    ]
    code, _, err = run_cli(capsys, "run", "--model", "llama3_8b", *moe)
    assert code == 0, err


def test_serving_text_prints_whole_numbers_and_no_loss(capsys):
    args = ["run", "--system", "dgx_h100", "--model", "llama3_8b", "--phase", "decode"]
    code, out, _ = run_cli(capsys, *args, "--context", "1000000", "--kv-precision", "fp8")
    assert code == 0 and "context=1000000" in out and "e+06" not in out
    assert "output head " in out and "(+ loss)" not in out


def test_sensitivity_says_the_plan_it_differentiated_at(capsys):
    """The text gave the elasticities but not the plan they are of (only the JSON had the
    system and model); an elasticity that rounds to zero read "-0.0000" (session 42's
    newcomer)."""
    code, out, _ = run_cli(capsys, "sensitivity")
    assert code == 0 and out.splitlines()[1].startswith("plan: tp=")
    assert "-0.0000" not in out
    d = run_json(capsys, "sensitivity")
    assert d["plan"]["tp"] >= 1
