import json
from pathlib import Path

import pytest

from emu.validation import default_measurements, validate_file

# Regression tests are pinned to the 141-row set they were written for (the shared file has
# grown since); the fidelity tests read the grown set.
SHARED = Path(__file__).resolve().parent / "data" / "measurements_141.jsonl"


# every test here that reads the session's `validate_reports` runs on one pytest-xdist worker
# (`--dist loadgroup`), which computes them once
VALIDATE = pytest.mark.xdist_group("validate")


def _file():
    return SHARED if SHARED.exists() else default_measurements()


@pytest.fixture(scope="module")
def report(validate_reports):
    return validate_reports["141"]


@VALIDATE
def test_every_row_is_predicted_or_has_a_reason(report):
    n_lines = sum(1 for line in open(_file()) if line.strip())
    assert len(report["rows"]) == n_lines
    for r in report["rows"]:
        assert r["status"] in ("ok", "skipped", "error")
        if r["status"] != "ok":
            assert r["reason"]


@VALIDATE
def test_dense_train_rows_median_error_within_20_percent(report):
    train = report["summary"]["by_kind"]["train"]
    assert train["n"] >= 70  # every dense train row, pre-training and fine-tuning
    assert train["median_abs_pct_error"] <= 20.0


@VALIDATE
def test_moe_prefill_decode_collective_rows_median_within_20_percent(report):
    rows = {json.loads(line)["id"]: json.loads(line) for line in open(_file()) if line.strip()}
    errs = [
        r["abs_pct_error"]
        for r in report["rows"]
        if r["status"] == "ok"
        and (r["kind"] != "train" or (rows[r["id"]].get("model") or {}).get("moe"))
    ]
    assert len(errs) >= 55
    errs.sort()
    assert errs[len(errs) // 2] <= 20.0


@VALIDATE
def test_every_kind_is_covered(report):
    kinds = {r["kind"] for r in report["rows"] if r["status"] == "ok"}
    assert kinds == {"train", "prefill", "decode", "collective"}


@VALIDATE
def test_json_contract(report):
    row = next(r for r in report["rows"] if r["status"] == "ok")
    for key in ("id", "predicted", "measured", "abs_pct_error", "status", "reason"):
        assert key in row
    json.dumps(report, allow_nan=False)


def test_bad_lines_are_reported_with_line_numbers_and_rest_processed(tmp_path):
    good = [line for line in open(_file()) if '"kind": "train"' in line][:2]
    p = tmp_path / "m.jsonl"
    p.write_text(good[0] + "{not json\n" + json.dumps({"id": "x"}) + "\n" + good[1])
    rep = validate_file(p)
    errors = [r for r in rep["rows"] if r["status"] == "error"]
    assert any("line 2" in r["reason"] for r in errors)
    assert any("line 3" in r["reason"] and "missing" in r["reason"] for r in errors)
    assert sum(r["status"] == "ok" for r in rep["rows"]) == 2


def test_empty_file_is_a_clear_error(tmp_path):
    p = tmp_path / "empty.jsonl"
    p.write_text("")
    with pytest.raises(ValueError, match="empty"):
        validate_file(p)


def test_ep_serving_rows_default_to_two_micro_batch_overlap():
    """An expert-parallel serving row that does not mention overlap gets the documented
    default (two-micro-batch overlap); one that says it runs without it does not."""
    from emu.validation import row_model, row_plan

    rows = [json.loads(line) for line in open(_file()) if line.strip()]
    row = next(r for r in rows if r["id"] == "sglang_h100_prefill_4096_perfectEPLB")
    model = row_model(row)
    plan, _ = row_plan(row, model)
    assert float(plan.a2a_overlap) == 1.0
    off = {**row, "notes": row["notes"] + " Run without two-batch overlap."}
    plan_off, _ = row_plan(off, model)
    assert float(plan_off.a2a_overlap) == 0.0


@VALIDATE
def test_memory_check_counts_the_measured_runs_emu_puts_over_hbm(validate_reports):
    """Every modelled train/prefill/decode row ran on its hardware, so `summary.memory`
    counts the rows whose plan emu's memory model puts over the usable HBM, and the text
    report says how many. On the shipped set: 22 of the runs (33 before FP8 training kept
    one byte per linear-input element and the pipeline peak became the larger of the first
    and last stage, not their sum; 23 before serving rows without a stated EP spread their
    experts over every rank); a change that over-counts more runs fails here."""
    from emu.validation import format_report

    rep = validate_reports["default"]
    runs = [r for r in rep["rows"] if r["status"] == "ok" and r["kind"] != "collective"]
    over = [r["id"] for r in runs if not r["feasible"]]
    mem = rep["summary"]["memory"]
    assert (mem["runs"], mem["over_hbm"], mem["ids"]) == (len(runs), len(over), over)
    assert mem["runs"] >= 200
    assert mem["over_hbm"] <= 22
    assert f"memory model: {mem['over_hbm']} of {mem['runs']} measured runs" in format_report(rep)


@VALIDATE
def test_coverage_line_says_whose_tails_it_used(validate_reports, tmp_path):
    """The coverage line's nested figure reads the bands at tails calibrated on the file's
    own residuals: on the shipped set those are the shipped tails, and the line says so; on
    a subset they are not (one row alone calibrates a wider tail), and the line said
    "shipped tails" there too."""
    from emu.validation import default_measurements, format_report, read_residuals, validate_file
    from emu.validation._report import coverage_of_file

    # the shipped tails are calibrated on every shipped residual: the 340 rows' and the
    # holdout rows' (emu calibrate --cv --holdout); the shipped set alone calibrates its own
    shipped = read_residuals()
    every = coverage_of_file(
        [{"id": x["id"], "measured": x["measured"], "status": "ok"} for x in shipped], shipped
    )
    assert every["tails_are_shipped"]
    rep = validate_reports["default"]
    held = any(x.get("holdout") for x in shipped)
    assert rep["coverage"]["tails_are_shipped"] is not held
    assert ("nested at the shipped tails (" in format_report(rep)) is not held
    rows = default_measurements().read_text(encoding="utf-8").splitlines()
    path = tmp_path / "one.jsonl"
    path.write_text(next(r for r in rows if '"kind": "decode"' in r) + "\n", encoding="utf-8")
    one = validate_file(path)
    assert not one["coverage"]["tails_are_shipped"]
    assert "nested at the tails these rows calibrate (" in format_report(one)
