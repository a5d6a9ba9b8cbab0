"""`emu calibrate`: fit the shared physical parameters to published measurements.

Three parts: the problem (`parameter_spec`, `apply_parameters`, `FitProblem`: which
parameters, in which coordinates, and the loss), the fit (`fit`, `cross_validate`: the
optimiser, checkpoints, uncertainty) and the overlay (`write_overlay`: the TOML emu loads).

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

from emu.calibration._fit import CHECKPOINT_EVERY, Calibration, CrossValidation, cross_validate, fit
from emu.calibration._overlay import overlay_path, toml_string, write_overlay
from emu.calibration._problem import FitProblem, apply_parameters, parameter_spec

__all__ = [
    "fit",
    "cross_validate",
    "write_overlay",
    "overlay_path",
    "parameter_spec",
    "apply_parameters",
    "toml_string",
    "Calibration",
    "CrossValidation",
    "FitProblem",
    "CHECKPOINT_EVERY",
]
