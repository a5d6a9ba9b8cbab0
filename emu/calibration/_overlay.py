"""The calibration outputs, written atomically through emu.storage next to each other
(configs/calibration/ by default):

- fitted.toml: the fitted values as a TOML overlay, with provenance;
- residuals.jsonl: every row's in-sample and leave-one-source-out residual
  (`CrossValidation.rows`), then the holdout rows' (`CrossValidation.holdout`, sources the
  fit never saw, under the full fit), which `emu validate` reads for the coverage of the
  intervals;
- intervals.toml: the residual quantile table every prediction's interval comes from
  (`emu.analysis.interval`), its tail calibrated per kind by nested leave-one-source-out
  (`emu.validation.calibrate_tails`), with the out-of-sample coverage of the procedure.
"""

from __future__ import annotations

import datetime
import json
from collections import OrderedDict
from pathlib import Path

from emu.analysis import INTERVAL_LEVEL, MIN_ROWS, MIN_SOURCES
from emu.calibration._fit import Calibration, CrossValidation
from emu.catalog import calibration, config_dir
from emu.storage import atomic_write, check_output_path
from emu.validation import calibrate_tails, coverage, quantile_table, residual_records


def overlay_path() -> Path:
    """The overlay emu loads by default (configs/calibration/fitted.toml)."""
    return config_dir() / "calibration" / "fitted.toml"


def toml_string(s: str) -> str:
    """`s` as a TOML basic string: quotes, backslashes and control characters escaped (a
    path with `"` must not break the file); a lone surrogate (an undecodable byte of a
    path) cannot be written in TOML and becomes U+FFFD."""
    out = []
    for ch in s:
        o = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
        elif o < 0x20 or o == 0x7F:
            out.append(f"\\u{o:04x}")
        elif 0xD800 <= o <= 0xDFFF:
            out.append("\ufffd")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _fmt(x: float) -> str:
    return f"{x:.6g}" if "e" not in f"{x:.6g}" else f"{x:.4e}"


def overlay_files(path, cv: bool) -> list[Path]:
    """The files `write_overlay` writes for the overlay `path`: the overlay, and with
    leave-one-source-out cross-validation the held-out residuals and the interval tails
    beside it (residuals.jsonl, intervals.toml)."""
    path = Path(path)
    return [path] + (
        [path.parent / "residuals.jsonl", path.parent / "intervals.toml"] if cv else []
    )


def _tables(param):
    """[(table, field, shared)] where the overlay writes the fitted parameter (section, key,
    field): `link` fields without a key are one value shared by every link type."""
    sec, key, f = param
    if sec == "link" and not key:
        return [(f"link.{link}", f, True) for link in sorted(calibration(fitted=False)["link"])]
    return [(f"{sec}.{key}" if key else sec, f, False)]


def overlay_missing(params, path=None) -> list[str]:
    """The fields ("table.field") the overlay at `path` (default the shipped one) sets that a
    fit of `params` (the fit problem's keys) would not: writing it there returns them to
    their priors for every run. [] where no overlay exists."""
    import tomllib

    path = Path(path or overlay_path())
    try:
        old = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    have = set()

    def walk(table, prefix):
        for k, v in table.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")
            elif prefix:
                have.add(f"{prefix}{k}")

    walk({k: v for k, v in old.items() if k != "provenance"}, "")
    new = {f"{t}.{f}" for p in params for t, f, _ in _tables(p)}
    return sorted(have - new)


def write_overlay(
    report: Calibration,
    path: Path | None = None,
    *,
    command: str = "emu calibrate",
    cv: list[CrossValidation] | None = None,
) -> Path:
    """Write the fitted values as a TOML overlay (atomically; the folder is created if
    missing). Returns the path written."""
    path = check_output_path(path or overlay_path(), make_parents=True, what="overlay")
    lines = [
        "# Fitted by `emu calibrate`: shared parameters only (per chip family, per link",
        "# type, overlap). Do not edit by hand; rerun the command below to regenerate.",
        "",
        "[provenance]",
        f"command = {toml_string(command)}",
        f"source_file = {toml_string(Path(report.source_file).name)}",
        f"rows = {report.rows}",
        f"parameters = {report.parameters}",
        f"steps = {report.steps}",
        f"loss = {_fmt(report.loss)}",
        f"median_abs_pct_error_before = {_fmt(report.median_abs_pct_error_before)}",
        f"median_abs_pct_error = {_fmt(report.median_abs_pct_error)}",
        f"p90_abs_pct_error = {_fmt(report.p90_abs_pct_error)}",
        f'date = "{datetime.date.today().isoformat()}"',
    ]
    for c in cv or []:
        lines.append(f"cv_{c.by}_median_abs_pct_error = {_fmt(c.median_abs_pct_error)}")
        held = (c.summary.get("holdout") or {}).get("all") if c.by == "source" else None
        if held:  # rows of sources the fit never saw (`with_holdout`), under the full fit
            lines += [
                f"holdout_rows = {held['n']}",
                f"holdout_median_abs_pct_error = {_fmt(held['median_abs_pct_error'])}",
                f"holdout_p90_abs_pct_error = {_fmt(held['p90_abs_pct_error'])}",
            ]
    sections: dict = OrderedDict()
    for (sec, key, f), v in report.values.items():
        sd = report.uncertainty[(sec, key, f)]
        prior = report.priors[(sec, key, f)]
        text = f"{f} = {_fmt(v)}  # +- {_fmt(sd)} (1 sigma, Laplace); prior {_fmt(prior)}"
        for head, _, shared in _tables((sec, key, f)):
            sections.setdefault(f"[{head}]", []).append(text + ("; shared" if shared else ""))
    for head, body in sections.items():
        lines += ["", head, *body]
    # every file's text first, then the writes: a cross-validation that cannot give
    # intervals (no held-out residual) must not leave a new overlay beside old intervals
    files = [(path, "\n".join(lines) + "\n")]
    _, residuals, intervals = overlay_files(path, cv=True)
    for c in cv or []:
        if c.by == "source" and c.rows:
            files.append((residuals, _residuals_text(c)))
            body = "\n".join(_intervals_lines(c, command=command)) + "\n"
            files.append((intervals, body))
    for p, text in files:
        with atomic_write(check_output_path(p, make_parents=True, what=p.name), "w") as fh:
            fh.write(text)
    return path


def _residuals_text(cv: CrossValidation) -> str:
    return "".join(json.dumps(x, allow_nan=False) + "\n" for x in [*cv.rows, *cv.holdout])


def write_residuals(cv: CrossValidation, path: Path) -> Path:
    """Every row's residual record (`CrossValidation.rows`) as JSON Lines, atomically."""
    text = _residuals_text(cv)
    path = check_output_path(path, make_parents=True, what="residuals")
    with atomic_write(path, "w") as fh:
        fh.write(text)
    return path


def interval_records(cv: CrossValidation) -> list[dict]:
    """The held-out residuals of `cv` in the form `emu.validation.coverage` reads: the
    leave-one-source-out rows', then the holdout rows' (`CrossValidation.holdout`)."""
    return residual_records([*cv.rows, *cv.holdout])


def write_intervals(
    cv: CrossValidation, path: Path, *, command: str = "emu calibrate --cv", level=INTERVAL_LEVEL
) -> Path:
    """The interval table of the leave-one-source-out residuals of `cv` as TOML: the tail of
    each kind calibrated so that nested leave-one-source-out coverage of its rows reaches
    `level`, the quantiles of every basis at its kind's tail, and the out-of-sample coverage
    of the procedure (all rows and by kind)."""
    lines = _intervals_lines(cv, command=command, level=level)
    path = check_output_path(path, make_parents=True, what="intervals")
    with atomic_write(path, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    return path


def _intervals_lines(cv: CrossValidation, *, command: str, level=INTERVAL_LEVEL) -> list[str]:
    """The text of `write_intervals` (ValueError when `cv` has no held-out residual)."""
    if cv.by != "source":
        raise ValueError("intervals come from leave-one-source-out residuals (by='source').")
    recs = interval_records(cv)
    tails = calibrate_tails(recs, level)
    table = quantile_table(recs, tails)
    cov = coverage(recs, level)
    lines = [
        "# 80% prediction intervals from held-out residuals (emu calibrate --cv [--holdout]).",
        "# r = log(predicted / measured speed); a rate y lies in [y exp(-q_hi), y exp(-q_lo)],",
        "# a time t in [t exp(q_lo), t exp(q_hi)]. Do not edit by hand.",
        "",
        "[provenance]",
        f"command = {toml_string(command)}",
        f"level = {level:g}",
        f"tail = {tails['all']:g}  # per side, of the 'all' basis (extrapolations' widening)",
        "tails = {"
        + ", ".join(f"{k} = {v:g}" for k, v in sorted(tails.items()) if k != "all")
        + "}  # per side and kind, calibrated by nested leave-one-source-out",
        'residual = "log(predicted / measured speed), leave-one-source-out; holdout rows'
        ' under the full fit"',
        f"min_rows = {MIN_ROWS}",
        f"min_sources = {MIN_SOURCES}",
        f"rows = {len(recs)}",
        f"holdout_rows = {sum(x['r_cv'] is not None for x in cv.holdout)}  # of them, rows of"
        " sources the fit never saw (emu calibrate --holdout), scored by the full fit",
        f"coverage_out_of_sample = {_fmt(cov['out_of_sample'])}  # level chosen without the row's"
        " source",
        f"coverage_nested = {_fmt(cov['nested'])}  # at the shipped tails",
        f"median_width = {_fmt(cov['median_width'])}  # high / low",
        "coverage_by_kind = {"
        + ", ".join(f"{k} = {_fmt(v['coverage'])}" for k, v in cov["by_kind"].items())
        + "}  # out of sample",
        "coverage_by_origin = {"
        + ", ".join(f"{k} = {_fmt(v['coverage'])}" for k, v in cov["by_origin"].items())
        + "}  # out of sample: leave-one-source-out rows (fitted), holdout rows",
        "coverage_holdout_by_kind = {"
        + ", ".join(f"{k} = {_fmt(v['coverage'])}" for k, v in cov["holdout_by_kind"].items())
        + "}  # out of sample, the holdout rows alone: what the tails are calibrated on",
        f'date = "{datetime.date.today().isoformat()}"',
    ]
    for name, b in table.items():
        lines += [
            "",
            f"[basis.{toml_string(name)}]",
            f"rows = {b['rows']}",
            f"sources = {b['sources']}",
            f"tail = {b['tail']:g}",
            f"q_lo = {_fmt(b['q_lo'])}",
            f"q_hi = {_fmt(b['q_hi'])}",
            f"usable = {'true' if b['usable'] else 'false'}",
        ]
    return lines
