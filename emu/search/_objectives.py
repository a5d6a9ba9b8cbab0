"""The objective registry: what a search can optimise.

An objective is one function of the `RunResult` (a traceable scalar) plus its direction;
adding one is one `register_objective` call (optax/diffrax style: values, not a string
ladder). The CLI's `--objective` choices, the sign a search applies and the phase check all
read `OBJECTIVES`. A plain Python function of the RunResult may also be passed wherever an
objective name is accepted; it is maximised as is.

An objective that needs more than the RunResult declares the Problem fields it reads in
`needs` and is called `fn(result, system=..., problem=...)` (`Objective.value` does the
dispatch): `usd_per_mtoken` needs `Problem.cost` = (emu.cost.Cost, emu.cost.Region) and the
system evaluated (its full-load power sizes the facility).

>>> get_objective("power_w").sign
-1.0
>>> sorted(o.name for o in OBJECTIVES.values() if o.phases == ("decode",))
['tpot_s']
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Callable

import numpy as np

from emu import cost as C
from emu.parallelism import PHASES

__all__ = ["Objective", "OBJECTIVES", "register_objective", "get_objective"]


@dataclasses.dataclass(frozen=True)
class Objective:
    """`fn(result) -> scalar`, maximised (`sign` +1) or minimised (-1). `phases`: the
    phases where it is defined (elsewhere it is 0). `log_space`: the gradient search ascends
    sign x log(value) (positive quantities spanning orders of magnitude) rather than the
    value itself."""

    name: str
    fn: Callable
    sign: float = 1.0
    phases: tuple[str, ...] = PHASES
    log_space: bool = True
    help: str = ""
    needs: tuple[str, ...] = ()

    def value(self, result, *, system=None, problem=None):
        """The objective of one evaluation: `fn(result)`, or with the context it `needs`;
        ValueError when it is not one number (a vector ended in a reshape error)."""
        if self.needs:
            v = self.fn(result, system=system, problem=problem)
        else:
            v = self.fn(result)
        if np.ndim(v) != 0:  # static under jit and vmap: checked while tracing
            raise ValueError(
                f"objective '{self.name}' must return one number per evaluation (got shape "
                f"{tuple(np.shape(v))}); reduce it, e.g. with jnp.sum or jnp.mean."
            )
        return v


#: the registered objectives by name
OBJECTIVES: dict[str, Objective] = {}


def register_objective(
    name: str,
    fn: Callable,
    *,
    sign: float,
    phases: tuple[str, ...] = PHASES,
    log_space: bool = True,
    help: str = "",
    needs: tuple[str, ...] = (),
) -> Objective:
    """Add (or replace) the objective `name`; returns it. `needs`: Problem fields the
    objective reads (then `fn(result, system=, problem=)`; the problem check requires them)."""
    if sign not in (1.0, -1.0):
        raise ValueError(f"objective {name!r}: sign must be +1 (maximise) or -1 (got {sign}).")
    bad = [p for p in phases if p not in PHASES]
    if bad or not phases:
        raise ValueError(f"objective {name!r}: phases must be among {', '.join(PHASES)}.")
    obj = Objective(name, fn, float(sign), tuple(phases), log_space, help, tuple(needs))
    OBJECTIVES[name] = obj
    return obj


def get_objective(objective: str | Callable) -> Objective:
    """The registered objective of that name, or a user function wrapped as a maximised
    objective named by its qualified name; ValueError lists the known names."""
    if callable(objective) and not isinstance(objective, str):
        name = getattr(objective, "__qualname__", "user_objective")
        return Objective(name, objective, 1.0, PHASES, log_space=False)
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective '{objective}'; known: {', '.join(OBJECTIVES)}.")
    return OBJECTIVES[objective]


for _name, _sign, _help in (
    ("tokens_per_joule", 1.0, "tokens per joule of IT energy"),
    ("tokens_per_s", 1.0, "tokens per second"),
    ("tokens_per_s_per_chip", 1.0, "tokens per second per chip"),
    ("mfu", 1.0, "model FLOP utilisation"),
    ("step_time_s", -1.0, "step time"),
    ("power_w", -1.0, "IT power"),
    ("facility_power_w", -1.0, "facility power (PUE included)"),
    ("energy_per_step_j", -1.0, "IT energy per step"),
):
    register_objective(_name, operator.attrgetter(_name), sign=_sign, help=_help)
register_objective(
    "ttft_s", operator.attrgetter("ttft_s"), sign=-1.0, phases=("prefill",),
    help="time to first token",
)  # fmt: skip
register_objective(
    "tpot_s", operator.attrgetter("tpot_s"), sign=-1.0, phases=("decode",),
    help="time per output token",
)  # fmt: skip


def usd_per_mtoken(result, *, system, problem):
    """USD per million tokens of an evaluation (emu.cost.from_result with the facility sized
    on the full-load power of `system`'s chips), priced by `problem.cost` = (Cost, Region)."""
    cost, region = problem.cost
    return C.from_result(cost, region, result, system=system).usd_per_mtoken


register_objective(
    "usd_per_mtoken", usd_per_mtoken, sign=-1.0, needs=("cost",),
    help="USD per million tokens (needs a cost and region)",
)  # fmt: skip
