"""emu: a differentiable emulator of AI clusters.

Hardware, network, workload and plan are pytrees; `evaluate(system, model, plan)` returns
the step time, memory, power and tokens per joule of LLM training as a pytree, and is
pure JAX: jit, vmap and grad all work.

>>> import jax, emu
>>> system, model = emu.load_system("gb200_nvl72"), emu.load_model("llama3_8b")
>>> plan = emu.make_plan(tp=8, dp=9, global_batch=72, seq_len=4096)
>>> r = emu.evaluate(system, model, plan)
>>> g = jax.grad(lambda s: emu.evaluate(s, model, plan).tokens_per_joule)(system)
>>> bool(g.chip.hbm_bytes_per_s >= 0)
True
"""

from emu import (
    collectives,
    comm,
    compute,
    hardware,
    numerics,
    objective,
    parallelism,
    plan,
    power,
    serving,
    step,
    struct,
    topology,
    units,
    workload,
)
from emu import policy as _policy
from emu.catalog import list_models, list_systems, load_model, load_system
from emu.objective import RunResult
from emu.parallelism import Memory
from emu.plan import KNOBS, Plan, make_plan, plan_dict, validate_plan
from emu.step import StepBreakdown, inference_step, train_step
from emu.topology import System
from emu.workload import Model

__version__ = "0.1.0"


def evaluate(system: System, model: Model, plan: Plan) -> RunResult:
    """Step time, memory, power and efficiency of `model` on `system` under `plan`
    (`emu.objective.evaluate`: the formulas, units and sources are there).

    With concrete inputs the plan is first checked against the system and the model
    (`emu.policy.check_plan`): a degree that does not divide the heads, more chips than the
    system builds or a precision the chip lacks raises ValueError naming the knob. Under
    `jit`, `vmap` or `grad` the inputs are tracers and pass through unchecked (traced code
    never raises; validate plans on the host, or read `RunResult.feasible`).
    """
    return _policy.checked_evaluate(system, model, plan)


__all__ = [
    "load_system",
    "load_model",
    "list_systems",
    "list_models",
    "make_plan",
    "validate_plan",
    "plan_dict",
    "KNOBS",
    "evaluate",
    "train_step",
    "inference_step",
    "System",
    "Model",
    "Plan",
    "RunResult",
    "StepBreakdown",
    "Memory",
    "collectives",
    "comm",
    "compute",
    "hardware",
    "numerics",
    "objective",
    "parallelism",
    "plan",
    "power",
    "serving",
    "step",
    "struct",
    "topology",
    "units",
    "workload",
]
