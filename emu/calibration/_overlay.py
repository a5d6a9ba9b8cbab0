"""The calibration overlay: the fitted values as TOML (configs/calibration/fitted.toml by
default), with provenance, written atomically through emu.storage."""

from __future__ import annotations

import datetime
from collections import OrderedDict
from pathlib import Path

from emu.calibration._fit import Calibration, CrossValidation
from emu.catalog import config_dir
from emu.storage import atomic_write, check_output_path


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
    sections: dict = OrderedDict()
    for (sec, key, f), v in report.values.items():
        head = f"[{sec}.{key}]" if key else f"[{sec}]"
        sd = report.uncertainty[(sec, key, f)]
        prior = report.priors[(sec, key, f)]
        sections.setdefault(head, []).append(
            f"{f} = {_fmt(v)}  # +- {_fmt(sd)} (1 sigma, Laplace); prior {_fmt(prior)}"
        )
    for head, body in sections.items():
        lines += ["", head, *body]
    with atomic_write(path, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    return path
