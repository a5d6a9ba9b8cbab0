"""`emu validate --row ID` (`emu.validation.explain_row`): one row's modelled parts must give
the figure the full report predicts for it, by an independent path (one `analysis.run` per
instance against the report's stacked, vmapped evaluation)."""

import json

import pytest

from emu.validation import default_measurements, explain_row
from tests._cli import run_cli, run_json

# one worker: the comparison reads the session's `validate_reports`; the fixture runs once
pytestmark = pytest.mark.xdist_group("validate")

#: one row of each way a prediction is made: deployments of two instances (PD mixed; PD
#: separated with a first-wave ramp) and of decode alone, a training step read as MFU, an
#: MoE dispatch kernel, an all-reduce
ROWS = {
    "sglang_a3_qwen3_235b_mixed_8c_2k_2k": ["decode instance", "prefill instance"],
    "sglang_a3_dsr1_pdsep_32c_6k_1p6k_20ms": ["decode instance", "prefill instance"],
    "pangu_pro_moe_800ia2_decode_bs456": ["decode instance"],
    "mindspeed_mfu_llama2_7b": ["step"],
    "mindspeed_tps_llama2_7b_4k_1x8": ["step"],
    "deepep_v1_ll_dispatch_ep8": [],
    "oci_gb200_128gpu_2rack_allreduce_1048576": [],
}


@pytest.fixture(scope="module")
def explained():
    return {rid: explain_row(rid) for rid in ROWS}


def test_explanation_gives_the_reports_prediction(explained, validate_reports):
    report = {r["id"]: r for r in validate_reports["default"]["rows"]}
    for rid, roles in ROWS.items():
        e, r = explained[rid], report[rid]
        assert e.roles == roles
        assert e.result["predicted"] == pytest.approx(r["predicted"], rel=1e-4)
        assert e.result["interval"]["low"] == pytest.approx(r["interval"]["low"], rel=1e-4)
        assert e.result["inside"] == r["inside"]
        assert e.result.get("feasible") == r.get("feasible")
        if roles:
            assert e.derived == e.result["predicted"]
        else:
            assert e.derived is None and e.collective is not None


def test_deployment_composes_its_instances(explained):
    e = explained["sglang_a3_qwen3_235b_mixed_8c_2k_2k"]
    d = e.deployment
    dec, pre = e.runs
    assert dec["phase"] == "decode" and pre["phase"] == "prefill"
    assert d["decode_tokens_per_s"] == pytest.approx(dec["tokens_per_s"])
    # PD mixed: 1 / (1/D + (in/out)/P), over the row's cards
    ratio = d["prompt_len"] / d["output_len"]
    rate = 1.0 / (1.0 / dec["tokens_per_s"] + ratio / pre["tokens_per_s"])
    assert d["rate_tokens_per_s"] == pytest.approx(rate, rel=1e-5)
    assert d["per_unit"] == pytest.approx(rate / d["cards"], rel=1e-5)
    assert dec["model"] != "row"  # named by the row's model


def test_collective_setup_is_what_the_row_states(explained):
    c = explained["deepep_v1_ll_dispatch_ep8"].collective
    assert (c["op"], c["group"], c["convention"]) == ("dispatch", 8.0, "latency")
    a = explained["oci_gb200_128gpu_2rack_allreduce_1048576"].collective
    assert (a["op"], a["bytes"], a["ranks"]) == ("all-reduce", 1048576.0, 128.0)


def test_separated_deployment_pays_its_first_wave(explained):
    e = explained["sglang_a3_dsr1_pdsep_32c_6k_1p6k_20ms"]
    d = e.deployment
    dec, pre = (r["tokens_per_s"] for r in e.runs)
    steady = min(pre / d["prompt_len"], dec / d["output_len"]) * d["output_len"]
    fill = d["ramp"] * d["prompt_len"] / d["output_len"] / pre
    assert d["ramp"] > 0 and d["rate_tokens_per_s"] == pytest.approx(1 / (1 / steady + fill))
    assert d["context"] == d["prompt_len"] + d["output_len"] / 2


def test_mfu_row_names_the_peak_it_is_normalised_by(explained):
    (note,) = explained["mindspeed_mfu_llama2_7b"].notes
    assert "313 TFLOP/s" in note and "source's stated peak" in note


def test_training_metric_says_how_it_is_computed(explained):
    e = explained["mindspeed_tps_llama2_7b_4k_1x8"]
    (r,) = e.runs
    (note,) = e.notes
    assert "global batch 256 x seq 4096 tokens" in note and "/ 8 chips" in note
    assert e.derived == pytest.approx(256 * 4096 / r["step_time_s"] / 8, rel=1e-5)


def test_unknown_id_names_the_closest():
    with pytest.raises(ValueError, match="close: mindspeed_mfu_llama2_7b"):
        explain_row("mindspeed_mfu_llama2_7")
    with pytest.raises(ValueError, match="needs a row id"):
        explain_row(" ")


def _shipped_row(rid):
    with open(default_measurements()) as f:
        return next(r for r in map(json.loads, f) if r["id"] == rid)


def test_duplicate_id_explains_the_row_the_report_models(tmp_path):
    row = _shipped_row("mindspeed_mfu_llama2_7b")
    f = tmp_path / "rows.jsonl"
    f.write_text(json.dumps(row) + "\n" + json.dumps({**row, "value": 1.0}) + "\n")
    e = explain_row("mindspeed_mfu_llama2_7b", f)
    assert e.result["status"] == "ok" and e.result["measured"] == row["value"]


def test_row_not_modelled_says_why(tmp_path, capsys):
    row = _shipped_row("mindspeed_mfu_llama2_7b")
    odd = {**row, "id": "odd", "metric": "joules_per_token"}  # a metric emu does not model
    bad = {k: v for k, v in row.items() if k != "value"} | {"id": "bad"}  # refused by the reader
    f = tmp_path / "rows.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in (odd, bad)) + "\n")
    for rid, status, why in (("odd", "skipped", "joules_per_token"), ("bad", "error", "value")):
        e = explain_row(rid, f)
        assert e.result["status"] == status and why in e.result["reason"]
        assert e.runs == [] and e.derived is None
        # not success: one line on stderr, or with --json the record; exit 2 for a row it
        # could not read, 1 for one it skips
        want = 2 if status == "error" else 1
        code, out, err = run_cli(capsys, "validate", str(f), "--row", rid)
        assert code == want and f"row {rid}: not modelled ({status})" in err, (code, err)
        assert out == "" and err.count("\n") == 1
        code, out, err = run_cli(capsys, "validate", str(f), "--row", rid, "--json")
        assert code == want and json.loads(out)["result"]["status"] == status, (code, out)


def test_cli_row_text_json_and_refusals(capsys):
    code, out, err = run_cli(capsys, "validate", "--row", "deepep_v1_ll_dispatch_ep8")
    assert code == 0, err
    assert "MoE dispatch: 128 tokens per rank" in out and "predicted below measured" in out
    d = run_json(capsys, "validate", "--row", "oci_gb200_128gpu_2rack_allreduce_1048576")
    assert d["collective"]["op"] == "all-reduce" and d["runs"] == []
    code, out, err = run_cli(capsys, "validate", "--row", "x", "--kind", "train")
    assert code == 2 and "drop --kind" in err and "Traceback" not in err
    code, out, err = run_cli(capsys, "validate", "--row", "no_such_row")
    assert code == 2 and "no row 'no_such_row'" in err
    assert str(default_measurements()) in err
    # a bad system override is the command's error, not the row's
    code, out, err = run_cli(
        capsys, "validate", "--row", "mindspeed_mfu_llama2_7b", "--set", "chip.no_such=1"
    )
    assert code == 2 and "--set: unknown field path" in err
