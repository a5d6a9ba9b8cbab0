"""`emu calibrate`: fit the shared physical parameters to published measurements.

Only parameters shared across rows are fitted, per chip family (the matmul efficiency
curve: asymptotic 16-bit and 8-bit efficiency, half-efficiency size), per link type
(achievable bandwidth fraction, fixed latency of a collective) and globally (overlap
fractions; the host's cost of issuing one kernel, which only training rows with host-bound
MoE micro-batches constrain). Each lives in a transformed coordinate (logit for fractions,
log for positive quantities) with a Gaussian prior around the default of
configs/calibration/defaults.toml:

    loss(u) = sum_i w_i huber(log pred_i(u) - log measured_i) / sum_i w_i
              + sum_j ((u_j - u0_j) / sigma)^2 / (2 sum_i w_i)

minimised with optax (Adam) through the differentiable emulator. Only parameters that some
row depends on are fitted (a chip family with no rows keeps its prior). Uncertainty: a
Laplace approximation, cov(u) = s^2 (N H)^-1 with H the Hessian of the mean loss and s^2 the
residual variance, mapped to natural units by the delta method. Cross-validation refits with
one source (or one system) left out and predicts its rows.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import os
import tempfile
import time
from collections import OrderedDict
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from emu.config import calibration, config_dir
from emu.struct import replace
from emu.validate import predict_items, prepare_rows, read_rows

__all__ = ["fit", "parameter_spec", "apply_parameters", "write_overlay", "cross_validate"]

PRIOR_SIGMA = 1.0  # in transformed units (logit or log)
HUBER_DELTA = 0.25  # in log error units (about 25%)
LOWP = ("fp8", "int8", "fp4")


def parameter_spec(items: list[dict]) -> OrderedDict[tuple, dict]:
    """The fitted parameters for these rows: (section, key, field) -> {transform, prior}."""
    cal = calibration(fitted=False)
    spec: OrderedDict = OrderedDict()
    fams, lowp, links = [], set(), []
    for it in items:
        sys = it["system"]
        if it["kind"] == "run":
            fam = sys.chip.family
            if fam not in fams:
                fams.append(fam)
            if it["plan"].precision in LOWP:
                lowp.add(fam)
        for t in sys.tiers:
            if t.link not in links:
                links.append(t.link)
    for fam in fams:
        fields = ["matmul_efficiency", "matmul_half_dim", "kernel_overhead_s"]
        if fam in lowp:
            fields.insert(1, "lowp_matmul_efficiency")
        for f in fields:
            kind = "logit" if "efficiency" in f else "log"
            spec[("chip_family", fam, f)] = {
                "transform": kind,
                "prior": float(cal["chip_family"][fam][f]),
            }
    for link in links:
        for f, kind in (("efficiency", "logit"), ("latency_s", "log"), ("base_latency_s", "log")):
            spec[("link", link, f)] = {"transform": kind, "prior": float(cal["link"][link][f])}
    for f in ("tp", "dp", "ep_tbo", "pipelining"):
        spec[("overlap", "", f)] = {"transform": "logit", "prior": float(cal["overlap"][f])}
    if any(it["kind"] == "run" and it["plan"].phase == "train" for it in items):
        f = "host_kernel_s"
        spec[("overlap", "", f)] = {"transform": "log", "prior": float(cal["overlap"][f])}
    return spec


def _to_u(x, kind):
    x = min(max(x, 1e-6), 1 - 1e-6) if kind == "logit" else max(x, 1e-12)
    return math.log(x / (1 - x)) if kind == "logit" else math.log(x)


def _from_u(u, kind):
    return jax.nn.sigmoid(u) if kind == "logit" else jnp.exp(u)


def apply_parameters(system, values: dict):
    """`system` with the chip-family, link and overlap fields of `values` substituted."""
    fam, chip = system.chip.family, {}
    for (sec, key, f), v in values.items():
        if sec == "chip_family" and key == fam:
            chip[f] = v
    tiers = []
    for t in system.tiers:
        ch = {f: v for (sec, key, f), v in values.items() if sec == "link" and key == t.link}
        tiers.append(replace(t, **ch) if ch else t)
    ov = {f: v for (sec, _, f), v in values.items() if sec == "overlap"}
    return replace(
        system,
        chip=replace(system.chip, **chip),
        tiers=tuple(tiers),
        overlap=replace(system.overlap, **ov),
    )


class _Problem:
    """Rows, parameter spec and the loss as a sum of per-group compiled blocks: each block
    (rows sharing one program structure, or one collective row kind) compiles once and its
    value and gradient are summed on the host, which keeps compile time and memory small."""

    def __init__(self, items):
        from emu.validate import run_groups

        self.items = items
        self.spec = parameter_spec(items)
        self.keys = list(self.spec)
        self.kinds = [self.spec[k]["transform"] for k in self.keys]
        self.u0 = jnp.asarray(
            [_to_u(self.spec[k]["prior"], self.spec[k]["transform"]) for k in self.keys],
            jnp.float32,
        )
        self.measured = np.asarray([it["base"]["measured"] for it in items], np.float32)
        blocks = [list(ix) for ix in run_groups(items).values()]
        for kind in ("allreduce", "moe_comm"):
            for name in sorted({it["system"].name for it in items if it["kind"] == kind}):
                blocks.append(
                    [
                        i
                        for i, it in enumerate(items)
                        if it["kind"] == kind and it["system"].name == name
                    ]
                )
        self.blocks = [b for b in blocks if b]
        self._residual_fns = [jax.jit(self._make_residuals(b)) for b in self.blocks]
        self._loss_fns = [
            jax.jit(jax.value_and_grad(self._make_block_loss(f))) for f in self._residual_fns
        ]

    def spec_priors(self):
        return [self.spec[k]["prior"] for k in self.keys]

    def values(self, u):
        return {
            k: _from_u(u[i], kind)
            for i, (k, kind) in enumerate(zip(self.keys, self.kinds, strict=True))
        }

    def _make_residuals(self, idxs):
        sub = [self.items[i] for i in idxs]
        meas = jnp.asarray(self.measured[idxs])
        system = sub[0]["system"]

        def residuals(u):
            vals = self.values(u)
            s = apply_parameters(system, vals)
            preds, _ = predict_items(sub, {system.name: s})
            pred = jnp.stack([jnp.asarray(p, jnp.float32) for p in preds])
            return jnp.log(jnp.maximum(pred, 1e-30)) - jnp.log(meas)

        return residuals

    @staticmethod
    def _make_block_loss(residuals):
        def block(u, w):
            return jnp.sum(w * optax.huber_loss(residuals(u), delta=HUBER_DELTA))

        return block

    def log_errors(self, u):
        out = np.zeros(len(self.items), np.float32)
        for idxs, f in zip(self.blocks, self._residual_fns, strict=True):
            out[idxs] = np.asarray(f(u))
        return out

    def value_and_grad(self, u, w):
        w = np.asarray(w, np.float32)
        total_w = float(w.sum())
        val, grad = 0.0, jnp.zeros_like(u)
        for idxs, f in zip(self.blocks, self._loss_fns, strict=True):
            wb = w[idxs]
            if not wb.any():
                continue
            v, g = f(u, jnp.asarray(wb))
            val, grad = val + float(v), grad + g
        d = u - self.u0
        val = val / total_w + 0.5 * float(jnp.sum((d / PRIOR_SIGMA) ** 2)) / total_w
        grad = grad / total_w + d / PRIOR_SIGMA**2 / total_w
        return val, grad

    def loss(self, u, w):
        return self.value_and_grad(u, w)[0]

    def hessian(self, u, w, h=1e-3):
        """Central differences of the analytic gradient (P gradient pairs)."""
        n = u.shape[0]
        cols = []
        for j in range(n):
            e = jnp.zeros_like(u).at[j].set(h)
            cols.append(
                (
                    np.asarray(self.value_and_grad(u + e, w)[1])
                    - np.asarray(self.value_and_grad(u - e, w)[1])
                )
                / (2 * h)
            )
        hmat = np.stack(cols, axis=1).astype(np.float64)
        return 0.5 * (hmat + hmat.T)


#: testing knob: seconds to pause after each step, so a test can kill a calibration mid-way
_THROTTLE_S = float(os.environ.get("EMU_CALIBRATE_THROTTLE_S", "0") or 0)
CHECKPOINT_EVERY = 10


def _save_checkpoint(path: Path, step: int, u, state, signature: str) -> None:
    leaves = [np.asarray(x) for x in jax.tree_util.tree_leaves((u, state))]
    digest = hashlib.sha256(b"".join(x.tobytes() for x in leaves)).hexdigest()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".ckpt-", suffix=".npz")
    with os.fdopen(fd, "wb") as fh:
        np.savez(
            fh,
            step=step,
            signature=signature,
            sha256=digest,
            **{f"leaf{i}": x for i, x in enumerate(leaves)},
        )
    os.replace(tmp, path)


def _load_checkpoint(path: Path, template, signature: str, warn=None):
    """(step, u, state) from a checkpoint of this same problem, or None. A corrupt or
    foreign checkpoint is reported and ignored, never used."""
    if not path.exists():
        return None
    try:
        with np.load(path) as z:
            if str(z["signature"]) != signature:
                return None
            n = len(jax.tree_util.tree_leaves(template))
            leaves = [z[f"leaf{i}"] for i in range(n)]
            ok = hashlib.sha256(b"".join(x.tobytes() for x in leaves)).hexdigest() == str(
                z["sha256"]
            )
            step = int(z["step"])
    except Exception:  # noqa: BLE001 - unreadable means corrupt
        ok = False
    if not ok:
        if warn:
            warn(f"calibration checkpoint {path} is corrupt or partial; starting over")
        return None
    treedef = jax.tree_util.tree_structure(template)
    tmpl = jax.tree_util.tree_leaves(template)
    leaves = [jnp.asarray(x, dtype=t.dtype) for x, t in zip(leaves, tmpl, strict=True)]
    u, state = jax.tree_util.tree_unflatten(treedef, leaves)
    return step, u, state


def _adam(problem, u, w, steps, lr=0.05, progress=None, checkpoint=None, signature="", warn=None):
    opt = optax.adam(lr)
    state = opt.init(u)
    start = 0
    if checkpoint is not None:
        got = _load_checkpoint(checkpoint, (u, state), signature, warn)
        if got is not None:
            start, u, state = got
    loss = None
    for k in range(start, steps):
        loss, g = problem.value_and_grad(u, w)
        # optax mixes its int32 step count with floats: allow it under strict promotion
        with jax.numpy_dtype_promotion("standard"):
            updates, state = opt.update(g, state, u)
            u = optax.apply_updates(u, updates)
        if checkpoint is not None and ((k + 1) % CHECKPOINT_EVERY == 0 or k + 1 == steps):
            _save_checkpoint(checkpoint, k + 1, u, state, signature)
        if _THROTTLE_S:
            time.sleep(_THROTTLE_S)
        if progress:
            progress(k + 1, steps, float(loss))
    return u, float(problem.loss(u, w))


def fit(path=None, *, steps: int = 300, progress=None, checkpoint_dir=None, warn=None) -> dict:
    """Fit the shared parameters to every modelled row of `path` (default: the shipped
    measurements), from the priors. Returns a report dict (values, uncertainty, errors).

    With `checkpoint_dir`, the optimiser state is saved every CHECKPOINT_EVERY steps
    (write-then-rename, checksummed, keyed by the rows, the parameters and the steps), and a
    run killed at any moment resumes from it with the same result as an uninterrupted run.
    """
    from emu.validate import default_measurements

    t0 = time.perf_counter()
    src = Path(path) if path else default_measurements()
    rows, _ = read_rows(src)
    items, _ = prepare_rows(rows, calibration=calibration(fitted=False))
    if not items:
        raise ValueError(f"no modelled rows in '{src}' to calibrate against.")
    problem = _Problem(items)
    w = jnp.ones(len(items), jnp.float32)
    before = np.abs(np.expm1(problem.log_errors(problem.u0)))
    ckpt, sig = None, ""
    if checkpoint_dir is not None:
        text = json.dumps([[it["base"]["id"], it["base"]["measured"]] for it in items])
        text += json.dumps([list(k) for k in problem.keys]) + f"{steps}"
        text += json.dumps(problem.spec_priors())
        from emu import __version__
        from emu.struct import content_digest

        for it in items:  # every value the fit depends on, and the release
            trees = [it["system"]] + ([it["model"], it["plan"]] if it["kind"] == "run" else [])
            text += json.dumps(it["row"], sort_keys=True, default=str)
            text += content_digest(*trees, salt=__version__)
        sig = hashlib.sha256(text.encode()).hexdigest()[:16]
        Path(checkpoint_dir).mkdir(parents=True, exist_ok=True)
        ckpt = Path(checkpoint_dir) / f"calibrate-{sig}.npz"
    u, loss = _adam(
        problem, problem.u0, w, steps, progress=progress, checkpoint=ckpt, signature=sig, warn=warn
    )
    r = problem.log_errors(u)
    after = np.abs(np.expm1(r))
    # Laplace approximation around the optimum
    hess = problem.hessian(u, w)
    s2 = float(np.mean(r**2))
    n = len(items)
    try:
        cov_u = s2 * np.linalg.inv(n * hess)
        std_u = np.sqrt(np.clip(np.diag(cov_u), 0.0, None))
    except np.linalg.LinAlgError:
        std_u = np.full(len(problem.keys), np.nan)
    values, uncertainty = {}, {}
    for i, (k, kind) in enumerate(zip(problem.keys, problem.kinds, strict=True)):
        x = float(_from_u(u[i], kind))
        dxdu = x * (1 - x) if kind == "logit" else x
        values[k] = x
        uncertainty[k] = float(abs(dxdu) * std_u[i])
    return {
        "source_file": str(src),
        "rows": n,
        "parameters": len(problem.keys),
        "steps": steps,
        "loss": loss,
        "values": values,
        "priors": {k: problem.spec[k]["prior"] for k in problem.keys},
        "uncertainty": uncertainty,
        "median_abs_pct_error_before": 100 * float(np.median(before)),
        "median_abs_pct_error": 100 * float(np.median(after)),
        "p90_abs_pct_error": 100 * float(np.percentile(after, 90)),
        "wall_s": time.perf_counter() - t0,
        "_problem": problem,
        "_u": u,
    }


def cross_validate(report: dict, *, by: str = "source", steps: int = 100) -> dict:
    """Leave-one-group-out errors (`by`: "source" or "system"): refit without each group,
    warm-started from the full fit, and predict the held-out rows."""
    problem, u_full = report["_problem"], report["_u"]
    labels = [it["base"][by] for it in problem.items]
    held = np.zeros(len(labels))
    for g in sorted(set(labels)):
        mask = np.array([lab == g for lab in labels])
        w = jnp.asarray(~mask, jnp.float32)
        if float(w.sum()) == 0:
            continue
        u, _ = _adam(problem, u_full, w, steps)
        r = problem.log_errors(u)
        held[mask] = np.abs(np.expm1(r[mask]))
    return {
        "by": by,
        "groups": len(set(labels)),
        "median_abs_pct_error": 100 * float(np.median(held)),
        "p90_abs_pct_error": 100 * float(np.percentile(held, 90)),
    }


def overlay_path() -> Path:
    return config_dir() / "calibration" / "fitted.toml"


def _fmt(x: float) -> str:
    return f"{x:.6g}" if "e" not in f"{x:.6g}" else f"{x:.4e}"


def write_overlay(
    report: dict,
    path: Path | None = None,
    *,
    command: str = "emu calibrate",
    cv: list | None = None,
) -> Path:
    """Write the fitted values as a TOML overlay (atomically: write, then rename)."""
    path = Path(path) if path else overlay_path()
    lines = [
        "# Fitted by `emu calibrate`: shared parameters only (per chip family, per link",
        "# type, overlap). Do not edit by hand; rerun the command below to regenerate.",
        "",
        "[provenance]",
        f'command = "{command}"',
        f'source_file = "{Path(report["source_file"]).name}"',
        f"rows = {report['rows']}",
        f"parameters = {report['parameters']}",
        f"steps = {report['steps']}",
        f"loss = {_fmt(report['loss'])}",
        f"median_abs_pct_error_before = {_fmt(report['median_abs_pct_error_before'])}",
        f"median_abs_pct_error = {_fmt(report['median_abs_pct_error'])}",
        f"p90_abs_pct_error = {_fmt(report['p90_abs_pct_error'])}",
        f'date = "{datetime.date.today().isoformat()}"',
    ]
    for c in cv or []:
        lines.append(f"cv_{c['by']}_median_abs_pct_error = {_fmt(c['median_abs_pct_error'])}")
    sections: dict = OrderedDict()
    for (sec, key, f), v in report["values"].items():
        head = f"[{sec}.{key}]" if key else f"[{sec}]"
        sd = report["uncertainty"][(sec, key, f)]
        prior = report["priors"][(sec, key, f)]
        sections.setdefault(head, []).append(
            f"{f} = {_fmt(v)}  # +- {_fmt(sd)} (1 sigma, Laplace); prior {_fmt(prior)}"
        )
    for head, body in sections.items():
        lines += ["", head, *body]
    text = "\n".join(lines) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".fitted-", suffix=".toml")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)
    return path
