"""`emu calibrate`: fit the shared physical parameters to published measurements.

Three parts: the problem (`parameter_spec`, `apply_parameters`, `FitProblem`: which
parameters, in which coordinates, and the loss), the fit (`fit`, `cross_validate`: the
optimiser, checkpoints, uncertainty) and the outputs (`write_overlay`: the TOML emu loads,
with the residuals and the interval table beside it).

Only parameters shared across rows are fitted, per chip family (the matmul efficiency
curve: asymptotic 16-bit and 8-bit efficiency, half-efficiency size; the fixed cost of one
kernel; the grouped expert GEMMs' share of a dense GEMM's rate, only with MoE rows), per
link type (ring efficiency and per-hop latency; the MoE dispatch/combine kernels'
bandwidth fraction, peer penalty and fixed costs) and globally (the base cost of a
collective call, the ring channels entering a domain, the in-switch all-reduce latency;
overlap fractions; the host's cost of issuing one kernel, which only training rows with
host-bound MoE micro-batches constrain). No per-row or per-source factor. Each lives in a
transformed coordinate (logit for fractions, log for positive quantities) with a Gaussian
prior around the default of configs/calibration/defaults.toml:

    loss(u) = sum_i w_i huber(log pred_i(u) - log measured_i) / sum_i w_i
              + sum_j ((u_j - u0_j) / sigma)^2 / (2 sum_i w_i)

minimised with optax (Adam) through the differentiable emulator, with w_i the row's stated
confidence (`emu.validation.row_weight`: exact 1.0, derived 0.7, read off a figure 0.5,
LOW 0.3, times 0.8 / 0.5 for a medium / low parallel config; `weights="source"` also
divides it by its source's design effect, `row_weights`). Only parameters that some row
depends on are fitted (a chip family with no rows keeps its prior). Uncertainty: a Laplace
approximation, cov(u) = s^2 (N H)^-1 with H the Hessian of the mean loss and s^2 the
residual variance, mapped to natural units by the delta method. Cross-validation refits
from the priors with one source (or one system) left out and predicts its rows; with
`by="source"` its per-row residuals are the headline accuracy and the basis of every
prediction's 80% interval (written beside the overlay: residuals.jsonl, intervals.toml).
"""

from emu.calibration._fit import (
    CHECKPOINT_EVERY,
    Calibration,
    CrossValidation,
    cross_validate,
    fit,
    fitted_calibration,
    holdout_residuals,
    read_holdout,
    refit_without,
    with_holdout,
)
from emu.calibration._overlay import (
    interval_records,
    overlay_files,
    overlay_missing,
    overlay_path,
    toml_string,
    write_intervals,
    write_overlay,
    write_residuals,
)
from emu.calibration._problem import FitProblem, apply_parameters, parameter_spec

__all__ = [
    "fit",
    "cross_validate",
    "refit_without",
    "read_holdout",
    "fitted_calibration",
    "holdout_residuals",
    "with_holdout",
    "write_overlay",
    "write_residuals",
    "write_intervals",
    "interval_records",
    "overlay_path",
    "overlay_files",
    "overlay_missing",
    "parameter_spec",
    "apply_parameters",
    "toml_string",
    "Calibration",
    "CrossValidation",
    "FitProblem",
    "CHECKPOINT_EVERY",
]
