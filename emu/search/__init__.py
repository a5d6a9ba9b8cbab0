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
