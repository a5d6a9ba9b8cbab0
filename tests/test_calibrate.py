import json
import math
import re
import tomllib
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from emu.calibration import apply_parameters, cross_validate, fit, write_overlay
from emu.catalog import load_system
from emu.validation import TIME_METRICS, default_measurements, row_source

# Regression tests are pinned to the 141-row set they were written for (the shared file has
# grown since); the fidelity tests read the grown set.
SHARED = Path(__file__).resolve().parent / "data" / "measurements_141.jsonl"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def small_fit(tmp_path_factory):
    src = SHARED if SHARED.exists() else default_measurements()
    rows = [json.loads(line) for line in open(src) if line.strip()]
    keep = [r for r in rows if r["id"].startswith(("sc21_t1_", "korth_t5_"))]
    path = tmp_path_factory.mktemp("cal") / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in keep))
    return fit(path, steps=40), path


def test_fit_lowers_the_error_with_few_shared_parameters(small_fit):
    rep, _ = small_fit
    assert rep.rows == 18
    assert rep.parameters < rep.rows  # shared parameters only (32 for all 141 rows)
    assert rep.median_abs_pct_error <= rep.median_abs_pct_error_before
    for (sec, _key, field), v in rep.values.items():
        if "efficiency" in field or sec == "overlap":
            assert 0 < v < 1
        else:
            assert v > 0
        assert rep.uncertainty[(sec, _key, field)] >= 0


def test_overlay_is_valid_toml_with_provenance(small_fit, tmp_path):
    rep, _ = small_fit
    out = write_overlay(rep, tmp_path / "fitted.toml", command="emu calibrate test")
    data = tomllib.loads(out.read_text())
    assert data["provenance"]["rows"] == 18
    assert data["provenance"]["command"] == "emu calibrate test"
    assert 0 < data["chip_family"]["ampere"]["matmul_efficiency"] < 1


def test_cross_validation_reports_held_out_error(small_fit):
    rep, _ = small_fit
    cv = cross_validate(rep, by="source", steps=5)
    assert cv.groups == 2 and cv.median_abs_pct_error > 0


def test_refit_without_is_the_cross_validation_fold(small_fit):
    """`refit_without` gives the parameters of one leave-one-source-out fold and its held-out
    rows' errors, the same as `cross_validate`'s for that source."""
    import math

    from emu.calibration import refit_without

    rep, _ = small_fit
    sources = sorted({it.base["source"] for it in rep.problem.items})
    values, held = refit_without(rep, sources[0], steps=5)
    assert set(values) == set(rep.values) and all(v > 0 for v in values.values())
    cv = cross_validate(rep, by="source", steps=5)
    want = [r["predicted_cv"] / r["measured"] for r in cv.rows if r["source"] == sources[0]]
    assert len(held) == len(want) > 0
    assert [math.exp(float(x)) for x in held] == pytest.approx(want, rel=1e-5)
    assert values != rep.values  # refitted without those rows, from the priors
    with pytest.raises(ValueError, match="no fitted row has source 'nope'"):
        refit_without(rep, "nope")


def test_cross_validation_needs_two_sources_among_the_fitted_rows(tmp_path):
    """The CLI's early check reads the file: a second source whose rows are not modelled
    (an unknown system) passed it, and leave-one-source-out then held out the only
    fitted source against nothing. `cross_validate` now refuses in one line."""
    rows = [json.loads(line) for line in open(SHARED) if line.strip()]
    keep = [r for r in rows if r["id"].startswith("sc21_t1_")][:3]
    other = {**rows[-1], "id": "other_source_row", "system": "no_such_system"}
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [*keep, other]))
    rep = fit(path, steps=2)
    assert rep.rows == 3
    with pytest.raises(ValueError, match="at least two sources; they come from 1"):
        cross_validate(rep, by="source", steps=1)


def test_apply_parameters_targets_family_and_link_only():
    s = load_system("dgx_a100")
    vals = {
        ("chip_family", "ampere", "matmul_efficiency"): jnp.float32(0.5),
        ("chip_family", "hopper", "matmul_efficiency"): jnp.float32(0.1),
        ("link", "nvlink3", "efficiency"): jnp.float32(0.6),
        ("overlap", "", "tp"): jnp.float32(0.0),
    }
    t = apply_parameters(s, vals)
    assert float(t.chip.matmul_efficiency) == 0.5
    assert float(t.tiers[0].efficiency) == pytest.approx(0.6)
    assert float(t.tiers[1].efficiency) == float(s.tiers[1].efficiency)
    assert float(t.overlap.tp) == 0.0


def test_overlay_survives_quotes_and_backslashes_in_paths(small_fit, tmp_path):
    """A measurement file or command with `"` or `\\` must not break the overlay TOML (it
    did: the path was pasted between quotes)."""
    import dataclasses

    rep, _ = small_fit
    odd = dataclasses.replace(rep, source_file=str(tmp_path / 'a"b\\c\x01.jsonl'))
    command = 'emu calibrate "x y".jsonl --steps 40'
    out = write_overlay(odd, tmp_path / "fitted.toml", command=command)
    data = tomllib.loads(out.read_text())
    assert data["provenance"]["source_file"] == 'a"b\\c\x01.jsonl'
    assert data["provenance"]["command"] == command


def test_overlay_has_the_umask_mode_and_creates_its_folder(small_fit, tmp_path):
    import os
    import stat

    rep, _ = small_fit
    old = os.umask(0o022)
    try:
        out = write_overlay(rep, tmp_path / "new" / "fitted.toml")
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o644  # mkstemp gave 0600
    assert sorted(p.name for p in out.parent.iterdir()) == ["fitted.toml"]


@pytest.mark.parametrize(
    "make,needle",
    [
        (lambda d: d, "is a folder"),
        (lambda d: d / "file" / "fitted.toml", "Not a directory"),
        (lambda d: "/sys/fitted.toml", "cannot write --out '/sys/fitted.toml'"),
    ],
)
def test_calibrate_refuses_a_bad_out_before_fitting(tmp_path, capsys, monkeypatch, make, needle):
    import emu.calibration
    from emu.cli import main

    def no_fit(*a, **k):
        raise AssertionError("the fit started before the output path was checked")

    monkeypatch.setattr(emu.calibration, "fit", no_fit)
    (tmp_path / "file").write_text("")
    code = main(["calibrate", "--out", str(make(tmp_path)), "--steps", "1"])
    err = capsys.readouterr().err
    assert code == 2 and needle in err and err.count("\n") == 1


def test_an_uncreatable_checkpoint_folder_is_a_warning_not_a_failure(small_fit, tmp_path):
    _, rows = small_fit
    (tmp_path / "file").write_text("")
    warnings = []
    rep = fit(rows, steps=2, checkpoint_dir=tmp_path / "file" / "ckpt", warn=warnings.append)
    assert rep.steps == 2 and "fitting without checkpoints" in warnings[0]


def test_cross_validation_keeps_every_rows_held_out_residual(small_fit):
    rep, _ = small_fit
    cv = cross_validate(rep, by="source", steps=5)
    assert len(cv.rows) == rep.rows
    for x in cv.rows:
        assert x["group"] == "train/ampere" and x["r_cv"] is not None
        # r is log(predicted / measured speed): a time metric flips the sign
        sign = -1.0 if x["metric"] in ("iteration_time", "train_step_time") else 1.0
        assert x["r_cv"] == pytest.approx(sign * math.log(x["predicted_cv"] / x["measured"]))
    held = cv.summary["held_out"]
    assert held["all"]["n"] == rep.rows and set(held["by_source"]) == {r["source"] for r in cv.rows}
    assert cv.median_abs_pct_error == pytest.approx(held["all"]["median_abs_pct_error"])


def test_a_held_out_source_never_reaches_its_own_refit(small_fit, tmp_path):
    """Leave-one-source-out refits from the priors: scaling a source's measurements by 10
    leaves that source's held-out predictions unchanged (a warm start from the full fit,
    or its rows in the loss, would move them)."""
    rep, path = small_fit
    rows = [json.loads(line) for line in open(path)]
    src = rows[0]["source"]
    for r in rows:
        if r["source"] == src:
            r["value"] *= 10
    p2 = tmp_path / "scaled.jsonl"
    p2.write_text("".join(json.dumps(r) + "\n" for r in rows))
    a = {x["id"]: x for x in cross_validate(rep, steps=5).rows}
    b = {x["id"]: x for x in cross_validate(fit(p2, steps=rep.steps), steps=5).rows}
    moved = [k for k in a if a[k]["source"] == row_source(rows[0])]  # the document
    assert moved
    for k in moved:
        assert b[k]["predicted_cv"] == pytest.approx(a[k]["predicted_cv"], rel=1e-4)
        assert b[k]["predicted_in"] != pytest.approx(a[k]["predicted_in"], rel=1e-3)


def test_rows_are_weighted_by_their_stated_confidence(small_fit):
    rep, _ = small_fit
    assert rep.weights == "confidence" and rep.w.shape == (rep.rows,)
    assert all(0.25 <= w <= 1.0 for w in rep.w)
    with pytest.raises(ValueError, match="weights must be"):
        fit(small_fit[1], steps=1, weights="uniform")
    import numpy as np

    from emu.calibration._fit import row_weights

    src = fit(small_fit[1], steps=1, weights="source")  # the fit uses the option's weights
    assert src.weights == "source"
    assert np.allclose(src.w, row_weights(src.problem.items, "source"))
    assert not np.allclose(src.w, rep.w)


def test_source_weights_divide_by_the_design_effect_and_keep_the_total():
    """weights="source": a row of a source with n rows weighs its confidence over
    1 + (n - 1) rho, rescaled so that the total equals the confidence weights' total."""
    from types import SimpleNamespace

    from emu.calibration._fit import SOURCE_CORRELATION, row_weights

    def item(src, conf):
        return SimpleNamespace(row={"confidence": conf}, base={"source": src})

    items = [item("big", "exact") for _ in range(10)] + [
        item("lone", "exact"),
        item("pair", "exact"),
        item("pair", "read off a figure; parallel config: unknown"),
    ]
    conf = row_weights(items, "confidence")
    w = row_weights(items, "source")
    assert float(w.sum()) == pytest.approx(float(conf.sum()), rel=1e-6)
    rho = SOURCE_CORRELATION
    assert w[10] / w[0] == pytest.approx(1.0 + 9.0 * rho, rel=1e-6)  # lone vs one of ten
    assert w[10] / w[11] == pytest.approx(1.0 + rho, rel=1e-6)  # lone vs one of two
    assert w[12] / w[11] == pytest.approx(conf[12] / conf[11], rel=1e-6)  # confidence kept
    assert list(row_weights(items, "none")) == [1.0] * len(items)
    with pytest.raises(ValueError, match="weights must be one of confidence, source, none"):
        row_weights(items, "uniform")


def test_overlay_with_cv_writes_residuals_and_a_calibrated_interval_table(small_fit, tmp_path):
    from emu.analysis import interval, interval_table
    from emu.validation import read_residuals

    rep, _ = small_fit
    cv = cross_validate(rep, by="source", steps=5)
    write_overlay(rep, tmp_path / "fitted.toml", command="t", cv=[cv])
    res = read_residuals(tmp_path / "residuals.jsonl")
    assert [x["id"] for x in res] == [x["id"] for x in cv.rows]
    table = interval_table(tmp_path / "intervals.toml")
    prov = table["provenance"]
    assert prov["level"] == 0.8 and prov["rows"] == rep.rows and 0 < prov["tail"] <= 0.2
    assert set(table["basis"]) == {"train/ampere", "train", "all"}
    iv = interval(100.0, "train/ampere", table=table)
    assert iv["low"] < iv["high"] and iv["level"] == 0.8


def test_an_overlay_whose_intervals_cannot_be_built_writes_nothing(small_fit, tmp_path):
    """A cross-validation without a held-out residual (one source: nothing to hold out
    against) wrote fitted.toml and residuals.jsonl, then failed on the intervals, leaving a
    new overlay beside the old intervals; now it fails before the first file is written."""
    import dataclasses

    rep, _ = small_fit
    cv = cross_validate(rep, by="source", steps=5)
    empty = dataclasses.replace(cv, rows=[{**x, "r_cv": None} for x in cv.rows])
    with pytest.raises(ValueError, match="no residuals to calibrate intervals on"):
        write_overlay(rep, tmp_path / "fitted.toml", command="t", cv=[empty])
    assert not list(tmp_path.iterdir())


def test_a_checkpoint_is_keyed_by_the_code_and_the_loss(small_fit, tmp_path, monkeypatch):
    """The checkpoint signature covers the model code and the loss constants, not only the
    rows and plans: after a model change `emu calibrate` refits instead of resuming a
    finished fit of the old code."""
    from emu.calibration import _fit, _problem
    from emu.calibration._problem import FitProblem
    from emu.validation import prepare_rows, read_rows

    rows, _ = read_rows(small_fit[1])
    problem = FitProblem(prepare_rows(rows)[0])
    sig = _fit._signature(problem, 40)
    assert _fit._signature(problem, 40) == sig  # deterministic
    monkeypatch.setattr(_problem, "HUBER_DELTA", _problem.HUBER_DELTA / 2)
    assert _fit._signature(problem, 40) != sig
    monkeypatch.undo()
    src = tmp_path / "pkg"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "step.py").write_text("EXPOSED = 1.0\n")
    before = _fit._code_digest(src)
    (src / "sub" / "step.py").write_text("EXPOSED = 0.7\n")
    assert _fit._code_digest(src) != before
    assert _fit._code_digest(tmp_path / "empty") == ""  # nothing to fingerprint
    # the package's own digest is the one taken when the fit's module was imported (the
    # code it runs), so a source edited during a fit cannot key its checkpoint
    pkg = Path(_fit.__file__).resolve().parents[1]
    assert _fit._PACKAGE_DIGEST == _fit._code_digest(pkg) != ""
    monkeypatch.setattr(_fit, "_PACKAGE_DIGEST", "taken-at-import")
    assert _fit._code_digest() == "taken-at-import"  # not the files hashed anew
    assert _fit._signature(problem, 40) != sig
    monkeypatch.undo()
    monkeypatch.setattr(_fit, "_code_digest", lambda root=None: before)
    assert _fit._signature(problem, 40) != sig  # the package's own digest is part of it
    monkeypatch.setattr(_fit, "_code_digest", lambda root=None: "")
    said = []
    assert _fit._checkpoint(problem, 40, tmp_path / "ck", said.append) is None
    assert "without checkpoints" in said[0]


def test_grouped_gemm_efficiency_is_fitted_only_for_families_with_moe_rows():
    """`grouped_matmul_efficiency` enters the fit for a chip family only when one of its
    rows runs an MoE model: a dense-only family does not get it (its rows could not
    constrain it)."""
    from emu.calibration._problem import parameter_spec
    from emu.validation import prepare_rows

    rows = [json.loads(line) for line in default_measurements().read_text().splitlines()]
    pick = {
        "mbridge_25.11_DGX-B200_Qwen3_235B_a22B_FP8-MX_64_pretrain",  # MoE on blackwell
        "sc21_t1_1.7B",  # dense on ampere
    }
    items, failed = prepare_rows([r for r in rows if r["id"] in pick])
    assert len(items) == 2 and not failed
    fams = {(k[1], k[2]) for k in parameter_spec(items) if k[0] == "chip_family"}
    assert ("blackwell", "grouped_matmul_efficiency") in fams
    assert ("ampere", "matmul_efficiency") in fams
    assert ("ampere", "grouped_matmul_efficiency") not in fams


def test_no_prior_of_a_fitted_parameter_is_a_fit_to_the_rows():
    """Every leave-one-source-out refit starts from the priors of defaults.toml and is pulled
    towards them, so a prior fitted to the measurement rows hands a held-out source its own
    fit (until session 10 the network priors were such fits; tests/data/network_fit.toml
    keeps them). No fitted field's comment may call its value a fit, and no link prior may
    still hold a value that the old file marked as fitted ("fit", "the ... fit", "shared";
    the die-to-die section's four were the last, replaced in session 14)."""
    import re

    from emu.calibration import _problem
    from emu.catalog import config_dir

    fitted = set(_problem.FAMILY_FIELDS) | {"lowp_matmul_efficiency", "hbm_efficiency",
                                            "grouped_matmul_efficiency"}  # fmt: skip
    fitted |= {f for f, _ in _problem.LINK_FIELDS + _problem.SHARED_LINK_FIELDS}

    def entries(text):
        section = ""
        for line in text.splitlines():
            if line.startswith("["):
                section = line.split("]")[0].strip("[")
            key, eq, rest = line.partition("=")
            if eq and key.strip() in fitted and section.startswith(("link.", "chip_family.")):
                value, _, comment = rest.partition("#")
                yield section, key.strip(), float(value), comment.strip().lower()

    new = list(entries((config_dir() / "calibration" / "defaults.toml").read_text()))
    old_text = (Path(__file__).parent / "data" / "network_fit.toml").read_text()
    old_fits = {
        (sec.removeprefix("link."), key): value
        for sec, key, value, comment in entries(old_text)
        if re.search(r"\bfit\b", comment) or comment == "shared"
    }
    links = {sec for sec, *_ in new if sec.startswith("link.")}
    assert len(links) == 8 and len(new) == 125, (sorted(links), len(new))  # all seen
    bad = []
    for sec, key, value, comment in new:
        name = sec.removeprefix("link.")
        if comment.startswith("fit") or "standalone fit" in comment:
            bad.append(f"[{sec}] {key}: comment '{comment[:40]}'")
        if (name, key) in old_fits and value == old_fits[(name, key)]:
            bad.append(f"[{sec}] {key} = {value}: the old fitted value")
    assert len(old_fits) > 40  # the old file's fits were found, so the value check bites
    assert not bad, "priors fitted to the rows:\n" + "\n".join(bad)


def test_rows_left_out_of_a_fit_are_said(tmp_path):
    """A row with a negative value (or a duplicated id, an unknown system) was dropped from
    the fit without a word: `fit to 4 rows` of a file of 5."""
    src = SHARED if SHARED.exists() else default_measurements()
    rows = [json.loads(line) for line in open(src)][:5]
    rows[1]["value"] = -5
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    warnings = []
    rep = fit(path, steps=1, warn=warnings.append)
    assert rep.rows == 4
    assert warnings == [
        f"1 of 5 rows of '{path}' not fitted (line 2: value must be a positive number in "
        f"[1e-06, 1e+12] in the metric's unit (got -5)); `emu validate {path}` gives each reason"
    ]


@pytest.mark.parametrize(
    "extra,needle",
    [
        (["--out", ""], "--out is empty; give a .toml file name"),  # it wrote the shipped one
        (["--out", "x.toml", "--dry-run"], "--dry-run writes nothing; drop --out or --dry-run."),
        (["--out", "x.txt"], "use a .toml file name"),
        (["--out", "taken.toml"], "'taken.toml' exists; give another path, or --overwrite"),
        (["--out", "new.toml", "--cv"], "'residuals.jsonl' exists"),  # written beside it
        # the interval table would replace the overlay it is written beside
        (["--out", "intervals.toml", "--cv"], "the overlay needs another name"),
        (["--overwrite", "--dry-run"], "--overwrite replaces files at --out; give --out"),
    ],
)
def test_calibrate_writes_only_where_asked(tmp_path, capsys, monkeypatch, extra, needle):
    import emu.calibration
    from emu.cli import main

    def no_fit(*a, **k):
        raise AssertionError("the fit started before the output path was checked")

    monkeypatch.setattr(emu.calibration, "fit", no_fit)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "taken.toml").write_text("# an earlier fit\n")
    (tmp_path / "residuals.jsonl").write_text("precious\n")
    code = main(["calibrate", *extra, "--steps", "1"])
    err = capsys.readouterr().err
    assert code == 2 and needle in err and err.count("\n") == 1, err
    assert (tmp_path / "residuals.jsonl").read_text() == "precious\n"


def _holdout_file(path: Path, fitted: Path) -> list[dict]:
    """Two fitted rows again under new ids and a source the fit does not know, and one row
    of a chip family the fit has no row of; written to `path`."""
    rows = [json.loads(line) for line in open(fitted) if line.strip()]
    src = SHARED if SHARED.exists() else default_measurements()
    other = next(json.loads(line) for line in open(src) if json.loads(line)["system"] == "dgx_h100")
    time = next(r for r in rows if r["metric"] in TIME_METRICS)  # the other speed sign
    twins = [rows[0], rows[1], time]
    copies = [{**r, "id": f"again_{r['id']}", "source": "Holdout test source"} for r in twins]
    out = [*copies, {**other, "id": "holdout_h100", "source": "Another holdout source"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in out))
    return twins


def test_holdout_rows_are_scored_by_the_full_fit_and_join_the_intervals(small_fit, tmp_path):
    """`emu calibrate --cv --holdout FILE`: rows of sources the fit never saw are predicted
    with the fitted parameters (a fitted row copied under a new source gets that row's
    in-sample residual; a family the fit has no row of keeps its priors), and their residuals
    join residuals.jsonl and the interval table, not the fit's medians."""
    from emu.analysis import interval_table
    from emu.calibration import holdout_residuals, read_holdout, with_holdout
    from emu.cli._render import calibrate_text
    from emu.validation import read_residuals

    rep, fitted = small_fit
    twins = _holdout_file(tmp_path / "holdout.jsonl", fitted)
    rows = read_holdout(tmp_path / "holdout.jsonl", fitted)
    recs = holdout_residuals(rep, rows)
    cv = cross_validate(rep, by="source", steps=5)
    by_id = {x["id"]: x for x in cv.rows}
    assert [x["id"] for x in recs] == [f"again_{r['id']}" for r in twins] + ["holdout_h100"]
    assert all(x["holdout"] is True for x in recs)
    for x, r in zip(recs, twins, strict=False):
        assert x["r_cv"] == x["r_in"] == pytest.approx(by_id[r["id"]]["r_in"], abs=1e-4)
    assert math.isfinite(recs[3]["r_cv"]) and recs[3]["group"].startswith("train/hopper")
    both = with_holdout(cv, recs)
    # the out-of-sample accuracy: their |error| under the full fit; the folds' medians stay
    errors = sorted(100 * abs(x["predicted_cv"] / x["measured"] - 1) for x in recs)
    held = both.summary["holdout"]
    assert held["all"]["n"] == 4 and set(held["by_source"]) == {
        "Holdout test source",
        "Another holdout source",
    }
    assert held["all"]["median_abs_pct_error"] == pytest.approx((errors[1] + errors[2]) / 2)
    assert both.median_abs_pct_error == cv.median_abs_pct_error and both.rows == cv.rows
    assert both.summary["held_out"] == cv.summary["held_out"] and "holdout" not in cv.summary
    assert with_holdout(cv, []).summary == cv.summary  # nothing scored: nothing reported
    assert with_holdout(both, []).summary == cv.summary  # nor a stale figure kept
    from emu.validation import error_stats, stats_line

    assert stats_line(error_stats([], lambda x: 0.0)) == "no rows"
    out = tmp_path / "out" / "fitted.toml"
    write_overlay(rep, out, command="t", cv=[both])
    res = read_residuals(tmp_path / "out" / "residuals.jsonl")
    assert [x["id"] for x in res] == [x["id"] for x in cv.rows] + [x["id"] for x in recs]
    prov = interval_table(tmp_path / "out" / "intervals.toml")["provenance"]
    assert prov["rows"] == rep.rows + 4 and prov["holdout_rows"] == 4
    assert set(prov["coverage_by_origin"]) == {"fitted", "holdout"}
    fitted_prov = tomllib.loads(out.read_text())["provenance"]
    assert fitted_prov["holdout_rows"] == 4
    assert fitted_prov["holdout_median_abs_pct_error"] == pytest.approx(
        held["all"]["median_abs_pct_error"], rel=1e-4
    )
    report = {**rep.to_json(), "cross_validation": [vars(both)]}
    line = next(x for x in calibrate_text(report, None).splitlines() if "never saw" in x)
    median = f"median {held['all']['median_abs_pct_error']:.1f}%"
    assert line.startswith("sources the fit never saw (--holdout): 4 rows of 2 sources: ")
    assert median in line and "train " in line, line
    plain = {**rep.to_json(), "cross_validation": [vars(cv)]}
    assert "never saw" not in calibrate_text(plain, None)


def test_fitted_calibration_is_what_the_written_overlay_loads(small_fit, tmp_path):
    """The overlay `holdout_residuals` predicts with is the defaults with the fitted values
    in place, as emu loads them once `write_overlay` has written the overlay (shared link
    fields in every link type)."""
    from emu.calibration import fitted_calibration
    from emu.catalog import _merge, calibration

    rep, _ = small_fit
    out = write_overlay(rep, tmp_path / "fitted.toml", command="t")
    loaded = calibration(fitted=False)
    written = tomllib.loads(out.read_text())
    written.pop("provenance")
    _merge(loaded, written)
    got = fitted_calibration(rep)

    def leaves(d, path=()):
        for k, v in d.items():
            if isinstance(v, dict):
                yield from leaves(v, (*path, k))
            else:
                yield (*path, k), v

    want = dict(leaves(loaded))
    assert set(dict(leaves(got))) == set(want)
    for k, v in leaves(got):  # the overlay writes 5-6 significant digits (`_fmt`)
        assert v == pytest.approx(want[k], rel=1e-4), k


def test_a_holdout_row_of_a_fitted_source_is_refused_before_the_fit(small_fit, tmp_path):
    from emu.calibration import read_holdout

    _, fitted = small_fit
    row = json.loads(next(line for line in open(fitted) if line.strip()))
    path = tmp_path / "h.jsonl"
    path.write_text(json.dumps({**row, "id": "new_id"}) + "\n")
    with pytest.raises(ValueError, match="has the source of a fitted row; a holdout row must"):
        read_holdout(path, fitted)
    path.write_text(json.dumps({**row, "source": "Elsewhere"}) + "\n")
    with pytest.raises(ValueError, match="has the id of a fitted row"):
        read_holdout(path, fitted)


@pytest.mark.parametrize(
    "extra,needle",
    [
        ([], "--holdout calibrates the intervals with --cv's residuals; add --cv"),
        (["--cv"], "--holdout: measurement file"),  # a file that is not there
    ],
)
def test_a_bad_holdout_is_one_line_before_the_fit(tmp_path, capsys, monkeypatch, extra, needle):
    import emu.calibration
    from emu.cli import main

    def no_fit(*a, **k):
        raise AssertionError("the fit started before --holdout was checked")

    monkeypatch.setattr(emu.calibration, "fit", no_fit)
    code = main(["calibrate", "--dry-run", *extra, "--holdout", str(tmp_path / "h.jsonl")])
    err = capsys.readouterr().err
    assert code == 2 and needle in err and err.count("\n") == 1, err


def test_compare_fits_reports_the_held_out_change(small_fit, tmp_path):
    """experiments/compare_fits.py compares two `emu calibrate --cv --json` outputs: the
    held-out medians as `emu calibrate` reports them, the rows that moved, the parameters
    that moved, and the holdout rows when either run has them."""
    import dataclasses
    import runpy
    import statistics

    from emu.struct import json_safe

    ns = runpy.run_path(str(ROOT / "experiments" / "compare_fits.py"))
    rep, _ = small_fit
    cv = cross_validate(rep, by="source", steps=5)

    def output(name, c, values):
        doc = {**rep.to_json(), "values": values, "cross_validation": [vars(c)]}
        path = tmp_path / name
        path.write_text(json.dumps(json_safe(doc)))
        return ns["_load"](str(path))

    def err(x):
        return 100 * abs(x["predicted_cv"] / x["measured"] - 1)

    base_values = rep.to_json()["values"]
    key = next(iter(base_values))
    worse = [dict(x) for x in cv.rows]
    best = min(range(len(worse)), key=lambda i: err(worse[i]))  # below the median
    worse[best]["predicted_cv"] = worse[best]["measured"] * 3.0  # now 200% off held out
    new_cv = dataclasses.replace(cv, rows=worse, holdout=[dict(cv.rows[1], holdout=True)])
    lines = ns["compare"](
        output("base.json", cv, base_values),
        output("new.json", new_cv, {**base_values, key: base_values[key] * 2.0}),
        5,
    )
    held0 = statistics.median(err(x) for x in cv.rows)
    held1 = statistics.median(err(x) for x in worse)
    assert held1 > held0 and cv.median_abs_pct_error == pytest.approx(held0, rel=1e-6)
    loso = next(x for x in lines if x.strip().startswith("leave-one-source-out "))
    assert loso.split("->")[0].split()[1] == f"{held0:.2f}%", loso
    assert loso.split("->")[1].split()[0] == f"{held1:.2f}%", loso
    far = sum(err(x) > 25 for x in cv.rows)
    assert f"rows more than 25% off held out: {far} -> {far + 1}" in [x.strip() for x in lines]
    hold = next(x for x in lines if x.strip().startswith("holdout rows"))
    assert hold.split("->")[0].split()[2:] == ["-", "/", "-"], hold
    assert f"{err(cv.rows[1]):.2f}%" in hold.split("->")[1], hold
    worse_part = lines[lines.index(next(x for x in lines if "moved most (worse" in x)) + 1]
    assert worse[best]["id"][:40] in worse_part and "+200.0%" in worse_part, worse_part
    moved = lines[lines.index("fitted parameters that moved most") + 1]
    assert moved.split()[0] == key, moved
    # a system only the new run has is listed; a row only one run holds out is said
    other = [dict(x) for x in cv.rows[1:]]
    other[0]["system"] = "a_new_system"
    lines = ns["compare"](
        output("base.json", cv, base_values),
        output("other.json", dataclasses.replace(cv, rows=other), base_values),
        5,
    )
    assert any(x.split()[:3] == ["a_new_system", "-", "->"] for x in lines), lines
    assert f"rows held out in one run only: 1 ({cv.rows[0]['id']})" in lines
    assert lines[-1] == "fitted parameters that moved most"  # the same values: none listed


def test_compare_fits_judges_a_fit_on_more_rows(small_fit, tmp_path):
    """`--common` computes every figure on the rows both runs fit, and the rows one run
    holds out (--holdout) and the other fits are compared on a line of their own: never
    seen -> held out, in sample."""
    import runpy
    import statistics

    from emu.struct import json_safe

    ns = runpy.run_path(str(ROOT / "experiments" / "compare_fits.py"))
    rep, _ = small_fit
    cv = cross_validate(rep, by="source", steps=5)
    by_system = cross_validate(rep, by="system", steps=5)
    rows = [dict(x) for x in cv.rows]
    extra = [dict(x, id=f"{x['id']}_more") for x in rows if x["predicted_cv"] is not None][:3]

    def err(x, key="predicted_cv"):
        return 100 * abs(x[key] / x["measured"] - 1)

    def median(recs):
        return statistics.median(err(x) for x in recs if x["predicted_cv"] is not None)

    # base holds the extra rows out; new fits them, 5x off held out and 3x in sample
    held = [dict(x, predicted_cv=x["measured"] * 1.5, holdout=True) for x in extra]
    fitted = [dict(x, predicted_cv=x["measured"] * 5.0, predicted_in=x["measured"] * 3.0)
              for x in extra]  # fmt: skip

    def output(name, src, system, holdout):
        cvs = [{**vars(cv), "rows": src, "holdout": holdout},
               {**vars(by_system), "rows": system}]  # fmt: skip
        doc = {**rep.to_json(), "cross_validation": cvs}
        path = tmp_path / name
        path.write_text(json.dumps(json_safe(doc)))
        return ns["_load"](str(path))

    # leave-one-system-out: 20% off on every row (the small fit has one system)
    system_rows = [dict(x, predicted_cv=x["measured"] * 1.2) for x in rows]
    base = output("base.json", rows, system_rows, held)
    new = output("new.json", rows + fitted, system_rows + fitted, [])
    plain = ns["compare"](base, new, 5)
    common = ns["compare"](base, new, 5, common=True)
    loso = [next(x for x in ls if x.strip().startswith("leave-one-source-out "))
            for ls in (plain, common)]  # fmt: skip
    alone, more = median(rows), median(rows + fitted)
    assert more > alone  # the fitted extra rows raise the median of all new rows
    assert loso[0].split("->")[1].split()[0] == f"{more:.2f}%", loso[0]
    assert loso[1].split("->")[1].split()[0] == f"{alone:.2f}%", loso[1]
    system = next(x for x in common if x.strip().startswith("leave-one-system-out"))
    assert system.split("->")[1].split()[0:3] == ["20.00%", "/", "20.00%"], system
    said = f"--common: the {len(rows)} rows both runs fit (0 of base's and 3 of new's left out)"
    assert said in [x.strip() for x in common]
    for lines in (plain, common):
        i = lines.index("rows base held out (--holdout) that new fits: 3, median / p90 |error|")
        line = lines[i + 1]
        assert line.split()[:3] == ["base,", "never", "seen"], line
        words = line.split()
        assert words[3] == "50.00%" and words[words.index("held") + 2] == "400.00%", line
        assert words[words.index("sample") + 1] == "200.00%", line
    # a row the new run's fold predicted nothing for leaves both runs' held-out figures
    blind = [dict(x) for x in rows + fitted]
    first = next(i for i, x in enumerate(blind) if x["predicted_cv"] is not None)
    blind[first]["predicted_cv"] = None
    lines = ns["compare"](base, dict(new, rows=blind), 5, common=True)
    both = [x for x in rows if x["predicted_cv"] is not None and x["id"] != blind[first]["id"]]
    said = f"--common: held out on the {len(both)} of them both runs predicted"
    assert said in [x.strip() for x in lines], lines
    loso = next(x for x in lines if x.strip().startswith("leave-one-source-out "))
    assert loso.split()[1] == f"{statistics.median(err(x) for x in both):.2f}%", loso
    with pytest.raises(SystemExit):  # no row in common: refused, not an empty report
        ns["compare"](base, dict(new, rows=fitted), 5, common=True)


def test_compare_fits_refuses_a_malformed_file_in_one_line(small_fit, tmp_path, capsys):
    import runpy
    import sys

    from emu.struct import json_safe

    rep, _ = small_fit
    cv = cross_validate(rep, by="source", steps=5)
    rows = [dict(x) for x in cv.rows]
    rows[2]["measured"] = 0
    doc = {**rep.to_json(), "cross_validation": [{**vars(cv), "rows": rows}]}
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(json_safe(doc)))
    twice = tmp_path / "twice.json"
    twice.write_text(json.dumps(json_safe({**doc, "cross_validation": [
        {**vars(cv), "rows": [*cv.rows, cv.rows[0]]}]})))  # fmt: skip
    for path, said in ((bad, "is not a residual record"), (twice, "twice")):
        argv = ["compare_fits.py", str(path), str(path)]
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(sys, "argv", argv)
            with pytest.raises(SystemExit) as e:
                runpy.run_path(str(ROOT / "experiments" / "compare_fits.py"), run_name="__main__")
        err = capsys.readouterr().err
        assert e.value.code == 2 and said in err and err.count("\n") == 1, err


def test_calibrate_cli_reports_the_holdout_rows(small_fit, tmp_path, capsys):
    """`emu calibrate --cv --holdout FILE --json` carries the holdout rows' |error| under the
    full fit in its leave-one-source-out summary (the text line: `calibrate_text`, tested
    above)."""
    from emu.cli import main

    _, fitted = small_fit
    _holdout_file(tmp_path / "holdout.jsonl", fitted)
    args = ["calibrate", str(fitted), "--steps", "3", "--cv", "--dry-run"]
    args += ["--holdout", str(tmp_path / "holdout.jsonl")]
    assert main([*args, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    src = next(c for c in out["cross_validation"] if c["by"] == "source")
    held = src["summary"]["holdout"]["all"]
    errors = sorted(100 * abs(x["predicted_cv"] / x["measured"] - 1) for x in src["holdout"])
    assert held["n"] == len(errors) == 4
    assert held["median_abs_pct_error"] == pytest.approx((errors[1] + errors[2]) / 2)
    assert set(held) >= {"p90_abs_pct_error"} and src["median_abs_pct_error"] > 0


def test_rows_validate_refuses_as_not_finite_are_not_fitted(tmp_path):
    """Session 42's red team: a row whose prediction is not finite (a message size of 10^45
    bytes) reached the fit, which wrote `efficiency = nan` into the overlay (exit 0), and
    every later command failed on it."""
    src = SHARED if SHARED.exists() else default_measurements()
    ok = next(json.loads(line) for line in open(src) if '"nccl_h100_roce_2node_nvls"' in line)
    bad = {**ok, "id": "ar_inf", "notes": "busbw at size " + "9" * 45 + " B"}
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(bad) + "\n" + json.dumps(ok) + "\n")
    warnings = []
    rep = fit(path, steps=3, warn=warnings.append)
    assert rep.rows == 1 and "ar_inf" in warnings[0] and "not finite" in warnings[0]
    assert all(np.isfinite(v) for v in rep.values.values())
    out = write_overlay(rep, tmp_path / "fitted.toml")
    assert not re.search(r"=\s*-?nan", out.read_text())


def test_a_fit_that_reaches_fewer_fields_does_not_replace_the_shipped_overlay(
    small_fit, tmp_path, capsys, monkeypatch
):
    """The default overlay is replaced whole: a fit of a few rows would return every chip
    family and link type they do not reach to its priors, for every run (red team, session
    42). It is refused before the first step; --out writes it elsewhere."""
    import shutil

    import emu.calibration
    import emu.calibration._overlay as overlay
    from emu.cli import main

    shipped = tmp_path / "calibration" / "fitted.toml"
    shipped.parent.mkdir()
    shutil.copy(overlay.overlay_path(), shipped)
    before = shipped.read_text()
    monkeypatch.setattr(overlay, "overlay_path", lambda: shipped)
    monkeypatch.setattr(emu.calibration, "overlay_path", lambda: shipped)
    _, rows = small_fit
    code = main(["calibrate", str(rows), "--steps", "2"])
    err = capsys.readouterr().err
    assert code == 2 and "fields the shipped overlay fits" in err and "--out" in err, err
    assert shipped.read_text() == before
    # naming the shipped file with --out is the same write (the review)
    code = main(["calibrate", str(rows), "--steps", "2", "--out", str(shipped), "--overwrite"])
    assert code == 2 and "fields the shipped overlay fits" in capsys.readouterr().err
    assert shipped.read_text() == before
    missing = emu.calibration.overlay_missing(small_fit[0].problem.keys, shipped)
    assert missing and all("." in m for m in missing)
    assert emu.calibration.overlay_missing(small_fit[0].problem.keys, tmp_path / "no.toml") == []


def test_cv_on_rows_of_one_modelled_source_is_refused_before_the_fit(tmp_path, capsys):
    """The file names two sources, but only one's rows are modelled: the fit ran for
    minutes, then cross-validation said so (red team, session 42)."""
    from emu.cli import main

    src = SHARED if SHARED.exists() else default_measurements()
    rows = [json.loads(line) for line in open(src) if '"sc21_t1_' in line]
    other = {**rows[0], "id": "elsewhere", "source": "another paper", "metric": "not_a_metric"}
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [*rows, other]))
    code = main(["calibrate", str(path), "--cv", "--dry-run", "--steps", "10000"])
    err = capsys.readouterr().err
    assert code == 2 and "at least 2 sources; they come from 1" in err, err


def test_an_interrupted_fit_says_it_resumes(tmp_path, capsys, monkeypatch):
    import emu.calibration
    from emu.cli import main

    def interrupted(*a, check=None, **k):
        check(None)  # the rows are read; the first step is next
        raise KeyboardInterrupt

    def early(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(emu.calibration, "fit", interrupted)
    assert main(["calibrate", "--dry-run", "--steps", "5"]) == 130
    err = capsys.readouterr().err
    assert "checkpointed" in err and "the same command resumes it" in err and err.count("\n") == 1
    monkeypatch.setattr(emu.calibration, "fit", early)  # while the rows are read
    assert main(["calibrate", "--dry-run", "--steps", "5"]) == 130
    err = capsys.readouterr().err
    assert "before the fit's first step; nothing was written" in err and "checkpoint" not in err
