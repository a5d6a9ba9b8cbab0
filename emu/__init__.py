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

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the names of the signature below, for type checkers and the docs
    from emu.objective import RunResult
    from emu.plan import Plan
    from emu.topology import System
    from emu.workload import Model

#: submodules, loaded on first use (PEP 562): `import emu` costs nothing until a name is
#: used, and `emu.cli` or `emu.storage` do not pay for what they do not touch
_MODULES = (
    "collectives", "comm", "compute", "hardware", "numerics", "objective", "parallelism",
    "plan", "power", "serving", "step", "struct", "topology", "units", "workload", "fast",
    "cost", "costs_catalog", "catalog", "overrides", "storage", "advice", "policy",
    "analysis", "validation", "calibration", "search", "program", "examples",
)  # fmt: skip
#: public names -> the module that defines them
_NAMES = {
    "list_models": "catalog", "list_systems": "catalog", "load_model": "catalog",
    "load_system": "catalog", "RunResult": "objective", "Memory": "parallelism",
    "KNOBS": "plan", "Plan": "plan", "make_plan": "plan", "plan_dict": "plan",
    "validate_plan": "plan", "StepBreakdown": "step", "inference_step": "step",
    "train_step": "step", "System": "topology", "Model": "workload",
}  # fmt: skip


def __getattr__(name: str):
    if name in _MODULES:
        return importlib.import_module(f"emu.{name}")
    if name in _NAMES:
        value = getattr(importlib.import_module(f"emu.{_NAMES[name]}"), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'emu' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__) | set(_MODULES))


__version__ = "0.1.0"


def evaluate(system: System, model: Model, plan: Plan) -> RunResult:
    """Step time, memory, power and efficiency of `model` on `system` under `plan`
    (`emu.objective.evaluate`: the formulas, units and sources are there).

    With concrete inputs, the system's and model's values are first checked against their
    bounds and the plan against the system and the model (`emu.policy.check_inputs`): zero
    HBM bandwidth, a degree that does not divide the heads, more chips than the system
    builds or a precision the chip lacks raises ValueError naming the field; the result is
    then checked physically possible. A one-axis batch passed without `vmap` is checked
    element by element. Under `jit`, `vmap` or `grad` the inputs are tracers and pass
    through unchecked (traced code never raises; `RunResult.feasible` says only whether the
    plan fits in HBM, so validate traced plans on the host, `emu.plan.validate_plan`).
    """
    from emu import policy

    return policy.checked_evaluate(system, model, plan)


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
    "fast",
]
