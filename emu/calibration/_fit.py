"""The fit: Adam from the priors (resumable from checksummed checkpoints), a Laplace
approximation of the uncertainty, and leave-one-group-out cross-validation."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import time
from collections import Counter
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from emu.calibration._problem import FitProblem, _from_u
from emu.catalog import calibration
from emu.storage import RecordError, StorageError, read_record, write_record
from emu.struct import content_digest
from emu.validation import (
    default_measurements,
    error_stats,
    item_group,
    prepare_rows,
    read_rows,
    row_source,
    row_weight,
    speed_sign,
    validate_rows,
)

#: optimiser steps between two checkpoints
CHECKPOINT_EVERY = 10

#: the correlation of two rows' errors from the same source (one stack, one measurement
#: convention), for `weights="source"`: n rows of one source carry the information of
#: n / (1 + (n - 1) rho) independent ones (Kish's design effect). The intra-class
#: correlation of the session-13 fit's leave-one-source-out log errors is 0.29 (one-way
#: ANOVA over the 33 sources of the 340 rows, errors clipped to +-1).
SOURCE_CORRELATION = 0.3
WEIGHTS = ("confidence", "source", "none")


def row_weights(items, weights: str = "confidence") -> np.ndarray:
    """The fit weight of every item: "confidence" the row's stated confidence
    (`validation.row_weight`), "none" 1, "source" the confidence divided by the design effect
    1 + (n - 1) SOURCE_CORRELATION of the row's source (n its rows), rescaled to the same
    total as "confidence", so that a source that published many rows does not outweigh the
    others in proportion to its count (and the prior keeps its weight against the data).
    Rows without a source count as one source, as leave-one-source-out groups them."""
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {', '.join(WEIGHTS)} (got {weights!r}).")
    if weights == "none":
        return np.ones(len(items), np.float32)
    conf = np.asarray([row_weight(it.row) for it in items], np.float64)
    if weights == "confidence":
        return conf.astype(np.float32)
    sources = [it.base["source"] for it in items]
    count = Counter(sources)
    w = conf / np.asarray([1.0 + (count[s] - 1) * SOURCE_CORRELATION for s in sources])
    return (w * conf.sum() / w.sum()).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class Calibration:
    """The result of `fit`. `values`, `priors` and `uncertainty` (1 sigma, Laplace) are keyed
    by (section, key, field), e.g. ("chip_family", "hopper", "matmul_efficiency"); errors are
    median/p90 |error| in percent over the fitted rows. `problem` and `u` (the optimum in
    transformed coordinates) let `cross_validate` refit warm."""

    source_file: str
    rows: int
    parameters: int
    steps: int
    loss: float
    values: dict
    priors: dict
    uncertainty: dict
    median_abs_pct_error_before: float
    median_abs_pct_error: float
    p90_abs_pct_error: float
    wall_s: float
    weights: str = "confidence"
    problem: FitProblem = dataclasses.field(repr=False, default=None)
    u: jnp.ndarray = dataclasses.field(repr=False, default=None)
    w: np.ndarray = dataclasses.field(repr=False, default=None)

    def to_json(self) -> dict:
        """JSON-ready dict: parameter keys joined with '.' (chip_family.hopper.matmul_...)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        del out["problem"], out["u"], out["w"]
        for key in ("values", "priors", "uncertainty"):
            out[key] = {".".join(x for x in k if x): v for k, v in out[key].items()}
        return out


@dataclasses.dataclass(frozen=True)
class CrossValidation:
    """Held-out error of `cross_validate`: `groups` groups of rows split `by` source or
    system; median/p90 |error| in percent of each row when its group was left out.
    `rows`: every row's record (id, source, system, kind, metric, group, weight, measured,
    predicted in sample and held out, and r_in / r_cv = log(predicted / measured speed),
    `speed_sign` x the log ratio on the metric as published); `summary`: median/p90 in
    sample and held out, overall and by system, kind and source (`validation.error_stats`)."""

    by: str
    groups: int
    median_abs_pct_error: float
    p90_abs_pct_error: float
    rows: list = dataclasses.field(default_factory=list, repr=False)
    summary: dict = dataclasses.field(default_factory=dict, repr=False)
    #: records of the same form for rows of sources the fit never saw (`holdout_residuals`):
    #: r_in = r_cv, their error under the full fit; they join the interval calibration and
    #: residuals.jsonl, not the medians above
    holdout: list = dataclasses.field(default_factory=list, repr=False)


class _Checkpoint:
    """The optimiser state of one fit, saved every CHECKPOINT_EVERY steps as a storage record
    bound to the fit's signature. A corrupt checkpoint is reported and ignored; one that
    cannot be written is reported once and checkpointing stops (the fit goes on)."""

    def __init__(self, path: Path | None, signature: str, warn):
        self.path, self.signature, self.warn = path, signature, warn or (lambda m: None)

    def load(self, template):
        """(step, u, state) from a checkpoint of this same problem, or None."""
        if self.path is None:
            return None
        try:
            got = read_record(self.path, expect={"signature": self.signature})
        except RecordError:
            self.warn(f"calibration checkpoint {self.path} is corrupt or partial; starting over")
            return None
        if got is None:
            return None
        header, arrays = got
        tmpl = jax.tree_util.tree_leaves(template)
        leaves = [jnp.asarray(arrays[f"leaf{i}"], dtype=t.dtype) for i, t in enumerate(tmpl)]
        u, state = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(template), leaves)
        return int(header["step"]), u, state

    def save(self, step: int, u, state) -> None:
        if self.path is None:
            return
        leaves = [np.asarray(x) for x in jax.tree_util.tree_leaves((u, state))]
        try:
            write_record(
                self.path,
                {f"leaf{i}": x for i, x in enumerate(leaves)},
                {"signature": self.signature, "step": step},
            )
        except StorageError as e:
            self.warn(f"{e} Checkpointing is off for the rest of this fit.")
            self.path = None


def _adam(problem, u, w, steps, *, lr=0.05, progress=None, checkpoint=None, throttle_s=0.0):
    opt = optax.adam(lr)
    state = opt.init(u)
    start = 0
    got = checkpoint.load((u, state)) if checkpoint is not None else None
    if got is not None:
        start, u, state = got
    for k in range(start, steps):
        loss, g = problem.value_and_grad(u, w)
        # optax mixes its int32 step count with floats: allow it under strict promotion
        with jax.numpy_dtype_promotion("standard"):
            updates, state = opt.update(g, state, u)
            u = optax.apply_updates(u, updates)
        if checkpoint is not None and ((k + 1) % CHECKPOINT_EVERY == 0 or k + 1 == steps):
            checkpoint.save(k + 1, u, state)
        if throttle_s:
            time.sleep(throttle_s)
        if progress:
            progress(k + 1, steps, float(loss))
    return u, float(problem.loss(u, w))


def _code_digest(root: Path | None = None) -> str:
    """SHA-256 of the package's Python sources (every emu/**/*.py, by relative path): a
    checkpoint written by other model code, loss or optimiser is not resumed, whatever the
    version string says. "" when no source file is found (then nothing is checkpointed).
    The package's own digest is taken once, when this module is imported, so that a fit
    keys its checkpoints by the code it runs even if the files change while it runs."""
    if root is None:
        return _PACKAGE_DIGEST
    root = Path(root)
    files = sorted(root.rglob("*.py"))
    h = hashlib.sha256()
    for f in files:
        h.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest() if files else ""


_PACKAGE_DIGEST = _code_digest(Path(__file__).resolve().parents[1])


def _signature(problem: FitProblem, steps: int, w=None) -> str:
    """Every value the fit depends on: rows, their weights, parameters, priors, steps, each
    item's system, model and plan, the loss constants, the code (`_code_digest`) and the
    release."""
    from emu import __version__
    from emu.calibration import _problem

    items = problem.items
    text = _code_digest() + f"{_problem.HUBER_DELTA}/{_problem.PRIOR_SIGMA}"
    text += json.dumps([[it.base["id"], it.base["measured"]] for it in items])
    text += json.dumps([list(k) for k in problem.keys]) + f"{steps}"
    text += json.dumps(problem.spec_priors())
    if w is not None:
        text += json.dumps([float(x) for x in w])
    for it in items:
        trees = [it.system] + ([it.model, it.plan] if it.kind == "run" else [])
        text += json.dumps(it.row, sort_keys=True, default=str)
        text += content_digest(*trees, salt=__version__)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _checkpoint(problem, steps, checkpoint_dir, warn, w=None) -> _Checkpoint | None:
    if checkpoint_dir is None:
        return None
    if not _code_digest():  # no sources to fingerprint (a zip or .pyc-only install)
        if warn:
            warn("cannot fingerprint emu's source files; fitting without checkpoints")
        return None
    sig = _signature(problem, steps, w)
    try:
        Path(checkpoint_dir).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        if warn:
            warn(f"cannot create checkpoint folder '{checkpoint_dir}' ({e.strerror}); "
                 "fitting without checkpoints")  # fmt: skip
        return _Checkpoint(None, sig, warn)
    return _Checkpoint(Path(checkpoint_dir) / f"calibrate-{sig}.npz", sig, warn)


def _uncertainty(problem: FitProblem, u, w, residuals) -> np.ndarray:
    """1-sigma uncertainty of each transformed coordinate: cov(u) = s^2 (N H)^-1 with H the
    Hessian of the mean loss and s^2 the residual variance (NaN if H is singular)."""
    hess = problem.hessian(u, w)
    s2 = float(np.mean(residuals**2))
    try:
        cov_u = s2 * np.linalg.inv(len(problem.items) * hess)
        return np.sqrt(np.clip(np.diag(cov_u), 0.0, None))
    except np.linalg.LinAlgError:
        return np.full(len(problem.keys), np.nan)


def fit(
    path=None,
    *,
    steps: int = 300,
    progress=None,
    checkpoint_dir=None,
    warn=None,
    throttle_s: float = 0.0,
    weights: str = "confidence",
    min_sources: int = 0,
    check=None,
) -> Calibration:
    """Fit the shared parameters to every modelled row of `path` (default: the shipped
    measurements), from the priors. `weights`: "confidence" weighs each row by its stated
    confidence (`validation.row_weight`, MEASUREMENTS.md), "source" also divides it by its
    source's design effect (`row_weights`), "none" weighs all rows alike.

    With `checkpoint_dir`, the optimiser state is saved every CHECKPOINT_EVERY steps
    (emu.storage records, keyed by the rows, the parameters and the steps), and a run killed
    at any moment resumes from it with the same result as an uninterrupted run.
    `throttle_s` pauses after each step (tests kill a fit mid-way with it). `min_sources`:
    refuse, before the fit, modelled rows from fewer sources (`cross_validate` by source
    needs two). `check(problem)`, if given, runs on the fit problem before the first step
    (the CLI refuses there what it would refuse to write).
    """
    t0 = time.perf_counter()
    src = Path(path) if path else default_measurements()
    rows, problems = read_rows(src)
    items, failures = prepare_rows(rows, calibration=calibration(fitted=False))
    dropped = [p["reason"] for p in problems]  # "line N: ..."
    dropped += [f"{f.get('id')}: {f.get('reason')}" for f in failures]
    problem = FitProblem(items) if items else None
    r0 = problem.log_errors(problem.u0) if items else np.zeros(0)
    if not np.isfinite(r0).all():  # rows `emu validate` refuses are not fitted either
        bad = ~np.isfinite(r0)
        dropped += [
            f"{it.base['id']}: line {it.row.get('_line')}: prediction is not finite (an input "
            "is zero where a size is needed, or outside the float32 range)"
            for it, b in zip(items, bad, strict=True)
            if b
        ]
        items = [it for it, b in zip(items, bad, strict=True) if not b]
        problem = FitProblem(items) if items else None
        r0 = r0[~bad]
    if not items:
        why = f" ({len(dropped)} rows not modelled; {dropped[0]})" if dropped else ""
        raise ValueError(f"no modelled rows in '{src}' to calibrate against{why}.")
    if dropped and warn is not None:  # a fit of the rest, said (it was silent)
        warn(
            f"{len(dropped)} of {len(rows) + len(problems)} rows of '{src}' not fitted "
            f"({dropped[0]}); `emu validate {src}` gives each reason"
        )
    n_sources = len({it.base["source"] for it in items})
    if n_sources < min_sources:  # before a fit of minutes, not after it
        raise ValueError(
            f"leave-one-source-out needs the modelled rows to come from at least {min_sources} "
            f"sources; they come from {n_sources} (`emu validate {src}` says why the others' "
            "rows are not modelled). Leave out --cv to fit without cross-validation."
        )
    if check is not None:
        check(problem)
    w = row_weights(items, weights)
    before = np.abs(np.expm1(r0))
    ckpt = _checkpoint(problem, steps, checkpoint_dir, warn, w)
    u, loss = _adam(
        problem, problem.u0, w, steps, progress=progress, checkpoint=ckpt, throttle_s=throttle_s
    )
    r = problem.log_errors(u)
    if not (np.isfinite(loss) and np.isfinite(np.asarray(u)).all() and np.isfinite(r).all()):
        raise ValueError(
            f"the fit to '{src}' did not converge (a parameter or a row's error is not finite "
            "after the last step); nothing was written. `emu validate` on the file shows the "
            "rows far off; fewer --steps, or a file without them, may fit."
        )
    after = np.abs(np.expm1(r))
    std_u = _uncertainty(problem, u, w, r)
    values, uncertainty = {}, {}
    for i, (k, kind) in enumerate(zip(problem.keys, problem.kinds, strict=True)):
        x = float(_from_u(u[i], kind))
        dxdu = x * (1 - x) if kind == "logit" else x
        values[k] = x
        uncertainty[k] = float(abs(dxdu) * std_u[i])
    return Calibration(
        source_file=str(src),
        rows=len(items),
        parameters=len(problem.keys),
        steps=steps,
        loss=loss,
        values=values,
        priors={k: problem.spec[k]["prior"] for k in problem.keys},
        uncertainty=uncertainty,
        median_abs_pct_error_before=100 * float(np.median(before)),
        median_abs_pct_error=100 * float(np.median(after)),
        p90_abs_pct_error=100 * float(np.percentile(after, 90)),
        wall_s=time.perf_counter() - t0,
        weights=weights,
        problem=problem,
        u=u,
        w=w,
    )


def _record(it, w: float, r_in: float, r_cv: float | None) -> dict:
    """The residual record of one row (see CrossValidation.rows)."""
    sign = speed_sign(it.base["metric"])
    m = it.base["measured"]
    return {
        "id": it.base["id"],
        "source": it.base["source"],
        "system": it.base["system"],
        "kind": it.base["kind"],
        "metric": it.base["metric"],
        "group": item_group(it),
        "weight": float(w),
        "measured": m,
        "predicted_in": float(m * np.exp(r_in)),
        "predicted_cv": None if r_cv is None else float(m * np.exp(r_cv)),
        "r_in": float(sign * r_in),
        "r_cv": None if r_cv is None else float(sign * r_cv),
    }


def _summary(records: list[dict]) -> dict:
    """Median/p90 |error| (%) on the metric as published, in sample and held out, overall
    and by system, kind, source."""
    out = {}
    for label, key in (("in_sample", "predicted_in"), ("held_out", "predicted_cv")):
        recs = [x for x in records if x[key] is not None]
        out[label] = error_stats(recs, lambda x, key=key: 100 * abs(x[key] / x["measured"] - 1))
    return out


def _refit(report: Calibration, mask: np.ndarray, steps: int):
    """Parameters (transformed coordinates) fitted from the priors with the fit's weights,
    the rows in `mask` weighted 0; None when no row would be left."""
    w_all = report.w if report.w is not None else np.ones(len(mask), np.float32)
    w = np.where(mask, 0.0, w_all).astype(np.float32)
    if float(w.sum()) == 0:
        return None
    u, _ = _adam(report.problem, report.problem.u0, w, steps)
    return u


def refit_without(report: Calibration, group: str, *, by: str = "source", steps=None):
    """(values, held): the shared parameters fitted from the priors without the rows of one
    source (or system, `by`), natural units keyed as `Calibration.values`, and the held-out
    rows' log errors (log predicted - log measured) under them. The one fold of
    `cross_validate` that explains a group's held-out error: the parameters only its rows
    inform return to their priors (experiments/loso_parameters.py)."""
    if by not in ("source", "system"):
        raise ValueError(f"by must be 'source' or 'system' (got {by!r}).")
    problem = report.problem
    mask = np.array([it.base[by] == group for it in problem.items])
    if not mask.any():
        known = sorted({it.base[by] for it in problem.items})
        raise ValueError(f"no fitted row has {by} {group!r}; the fit's {by}s: {known}.")
    u = _refit(report, mask, report.steps if steps is None else steps)
    if u is None:
        raise ValueError(f"every fitted row has {by} {group!r}: nothing is left to refit on.")
    values = {k: float(v) for k, v in problem.values(u).items()}
    return values, problem.log_errors(u)[mask]


def cross_validate(report: Calibration, *, by: str = "source", steps: int | None = None):
    """Leave-one-group-out errors (`by`: "source" or "system"): refit without each group,
    from the priors with the fit's own steps and weights (`steps` to change them), and
    predict the held-out rows. Nothing of the held-out group reaches its refit: neither its
    rows nor a warm start from the full fit."""
    if by not in ("source", "system"):
        raise ValueError(f"by must be 'source' or 'system' (got {by!r}).")
    problem, u_full = report.problem, report.u
    w_all = report.w if report.w is not None else np.ones(len(problem.items), np.float32)
    steps = report.steps if steps is None else steps
    labels = [it.base[by] for it in problem.items]
    if by == "source" and len(set(labels)) < 2:  # the file may name more; these were fitted
        raise ValueError(
            f"leave-one-source-out needs the modelled rows to come from at least two sources; "
            f"they come from {len(set(labels))} (`emu validate` says why the others' rows are "
            "not modelled)."
        )
    held = np.full(len(labels), np.nan)
    for g in sorted(set(labels)):
        mask = np.array([lab == g for lab in labels])
        u = _refit(report, mask, steps)
        if u is not None:
            held[mask] = problem.log_errors(u)[mask]
    r_in = problem.log_errors(u_full)
    records = [
        _record(it, w_all[i], float(r_in[i]), None if np.isnan(held[i]) else float(held[i]))
        for i, it in enumerate(problem.items)
    ]
    err = np.abs(np.expm1(held[~np.isnan(held)]))
    return CrossValidation(
        by=by,
        groups=len(set(labels)),
        median_abs_pct_error=100 * float(np.median(err)) if err.size else float("nan"),
        p90_abs_pct_error=100 * float(np.percentile(err, 90)) if err.size else float("nan"),
        rows=records,
        summary=_summary(records),
    )


def read_holdout(path, fit_path=None, *, warn=None) -> list[dict]:
    """The rows of `path`, for `holdout_residuals`: rows of sources the fit does not see.
    ValueError (one line, before any fit) when the file cannot be read, has no modelled row,
    or shares a source or a row id with the fitted file `fit_path` (default: the shipped
    measurements): such a row would be scored in sample. `warn` is told how many rows will
    not be scored and the first reason."""
    src = Path(path)
    try:
        rows, problems = read_rows(src)
    except ValueError as e:
        raise ValueError(f"--holdout: {e}") from None
    items, failures = prepare_rows(rows, calibration=calibration(fitted=False))
    if not items:
        raise ValueError(f"--holdout: no modelled rows in '{src}' (`emu validate {src}` says why).")
    fitted, _ = read_rows(Path(fit_path) if fit_path else default_measurements())
    sources = {row_source(r) for r in fitted}
    ids = {str(r.get("id")) for r in fitted}
    for it in items:
        if it.base["source"] in sources or str(it.base["id"]) in ids:
            what = "source" if it.base["source"] in sources else "id"
            raise ValueError(
                f"--holdout: row '{it.base['id']}' of '{src}' has the {what} of a fitted row; "
                "a holdout row must come from a source the fit does not see."
            )
    dropped = [p["reason"] for p in problems]
    dropped += [f"{f.get('id')}: {f.get('reason')}" for f in failures]
    if dropped and warn is not None:  # after the refusals: a refused file says one line
        warn(
            f"{len(dropped)} of {len(rows) + len(problems)} rows of '{src}' will not be scored "
            f"({dropped[0]}); `emu validate {src}` gives each reason"
        )
    return rows


def fitted_calibration(report: Calibration) -> dict:
    """The calibration overlay (`emu.catalog.calibration`'s form) of the priors with the
    fitted values of `report` in place: what emu loads once `write_overlay` has written it."""
    cal = copy.deepcopy(calibration(fitted=False))
    for (sec, key, f), v in report.values.items():
        if sec == "link" and not key:  # shared: every link type, as write_overlay writes it
            for fields in cal["link"].values():
                fields[f] = v
        else:
            (cal[sec][key] if key else cal[sec])[f] = v
    return cal


def with_holdout(cv: CrossValidation, records: list[dict]) -> CrossValidation:
    """`cv` (the leave-one-source-out pass) with the residual records of rows from sources
    the fit never saw (`holdout_residuals`): they join its `holdout`, which the intervals
    are calibrated on and residuals.jsonl holds, and its `summary` as "holdout", their
    |error| (%) under the full fit overall and by system, kind and source, the out-of-sample
    accuracy `emu calibrate --cv --holdout` reports. Its medians stay those of the folds."""
    summary = {k: v for k, v in cv.summary.items() if k != "holdout"}
    if records:
        summary["holdout"] = _summary(records)["held_out"]
    return dataclasses.replace(cv, holdout=list(records), summary=summary)


def holdout_residuals(report: Calibration, rows: list[dict]) -> list[dict]:
    """Residual records (`CrossValidation.rows`' form) of rows from sources the fit never
    saw (`read_holdout`), predicted as `emu validate` predicts them with the fitted
    parameters in place (`fitted_calibration`; a parameter no fitted row informs keeps its
    prior): out of sample for the fit as the leave-one-source-out residuals are, so they can
    calibrate the intervals with them (`write_overlay`; each record has `holdout` true).
    Rows not modelled are left out; a row's weight is its stated confidence's."""
    by_id = {str(x.get("id")): x for x in rows}
    out = []
    for res in validate_rows(rows, calibration=fitted_calibration(report), table={}):
        if res["status"] != "ok":
            continue
        r = speed_sign(res["metric"]) * math.log(res["predicted"] / res["measured"])
        row = by_id[str(res["id"])]
        out.append(
            {
                **{k: res[k] for k in ("id", "source", "system", "kind", "metric", "group")},
                "weight": float(row_weight(row)),
                "measured": res["measured"],
                "predicted_in": res["predicted"],
                "predicted_cv": res["predicted"],
                "r_in": r,
                "r_cv": r,
                "holdout": True,
            }
        )
    return out
