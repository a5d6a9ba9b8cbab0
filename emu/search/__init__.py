"""Design-space exploration: exhaustive sweeps and gradient search, over plans and topology.

A `Problem` names a workload (system, model, chips, phase, sequence, SLO, power cap), what is
optimised (an objective of the registry `OBJECTIVES`, or a function of the RunResult; with
`cost=(emu.cost.Cost, emu.cost.Region)` every configuration is priced, and `usd_per_mtoken`
can be minimised) and
its discrete design space: every valid parallel plan (`enumerate_plans`) times an optional
`grid` of system values: dotted field paths (`chip.hbm_bytes_per_s`) or the topology knobs
of `emu.topology.reshape` (`domain`, `scaleup_bw`, `scaleout_bw`, `oversubscription`,
`optics_share`). A plan is feasible when it fits in HBM, meets the phase's latency SLO,
stays under the power cap and its scale-up domain is reachable.

- `sweep` evaluates the whole space (resumable, sharded, multi-process) -> `SweepResult`.
- `gradient_search` relaxes the space, optimises with optax, rounds and polishes, and
  re-evaluates every reported result exactly -> `SearchResult`.
- `write_table` writes every evaluated configuration as CSV or Parquet; `plan_of` and
  `system_of` turn a result row back into the Plan and System it stands for.

Parts: `_objectives` (the registry), `_problem` (Problem, KNOBS, COLUMNS), `_space`
(enumeration and grids), `_evaluate` (one configuration, compiled batches), `_sweep`,
`_gradient`, `_local` (exact cache and discrete polish), `_results`.
"""

from typing import TYPE_CHECKING

from emu._lazy import lazy_dir, lazy_getattr

#: public name -> the submodule that defines it; imported on first use (PEP 562), so that
#: `from emu.search._x import y` (the CLI's flags) does not import every part, and JAX with them
_NAMES = {
    "CATEGORICAL": "emu.search._gradient",
    "RELAXED": "emu.search._gradient",
    "gradient_search": "emu.search._gradient",
    "OBJECTIVES": "emu.search._objectives",
    "Objective": "emu.search._objectives",
    "get_objective": "emu.search._objectives",
    "register_objective": "emu.search._objectives",
    "BUDGET": "emu.search._problem",
    "COLUMNS": "emu.search._problem",
    "DEFAULTS": "emu.search._problem",
    "KNOBS": "emu.search._problem",
    "Problem": "emu.search._problem",
    "check_budget": "emu.search._problem",
    "check_problem": "emu.search._problem",
    "SearchResult": "emu.search._results",
    "SweepResult": "emu.search._results",
    "write_table": "emu.search._results",
    "TOPOLOGY_RANGES": "emu.search._space",
    "Space": "emu.search._space",
    "apply_grid": "emu.search._space",
    "check_grid": "emu.search._space",
    "enumerate_plans": "emu.search._space",
    "plan_of": "emu.search._space",
    "system_of": "emu.search._space",
    "CHUNK": "emu.search._sweep",
    "EXHAUSTIVE_MAX": "emu.search._sweep",
    "MERGE_COLUMNS": "emu.search._sweep",
    "pareto_front": "emu.search._sweep",
    "sweep": "emu.search._sweep",
}


if TYPE_CHECKING:  # the same names for type checkers and the docs (griffe)
    from emu.search._gradient import CATEGORICAL, RELAXED, gradient_search
    from emu.search._objectives import OBJECTIVES, Objective, get_objective, register_objective
    from emu.search._problem import (
        BUDGET,
        COLUMNS,
        DEFAULTS,
        KNOBS,
        Problem,
        check_budget,
        check_problem,
    )
    from emu.search._results import SearchResult, SweepResult, write_table
    from emu.search._space import (
        TOPOLOGY_RANGES,
        Space,
        apply_grid,
        check_grid,
        enumerate_plans,
        plan_of,
        system_of,
    )
    from emu.search._sweep import CHUNK, EXHAUSTIVE_MAX, MERGE_COLUMNS, pareto_front, sweep


__getattr__ = lazy_getattr(__name__, _NAMES, globals())
__dir__ = lazy_dir(globals())


__all__ = [
    "Problem",
    "sweep",
    "gradient_search",
    "SweepResult",
    "SearchResult",
    "write_table",
    "enumerate_plans",
    "plan_of",
    "system_of",
    "apply_grid",
    "check_grid",
    "check_problem",
    "check_budget",
    "BUDGET",
    "pareto_front",
    "Space",
    "Objective",
    "OBJECTIVES",
    "register_objective",
    "get_objective",
    "KNOBS",
    "COLUMNS",
    "DEFAULTS",
    "RELAXED",
    "CATEGORICAL",
    "CHUNK",
    "EXHAUSTIVE_MAX",
    "MERGE_COLUMNS",
    "TOPOLOGY_RANGES",
]
