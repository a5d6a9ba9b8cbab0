"""Field values: the one check a number passes to enter a system, model or plan, and dotted
`PATH=VALUE` overrides built on it.

`check_value` is the single validation path for a float field, whether the value comes from
a TOML file (emu.catalog), `--set`, a `--grid` axis or the Python API: a finite number inside
float32's normal range (subnormals are flushed to zero by XLA and would silently change the
physics), within the field's bound. `apply_overrides` replaces leaves by dotted path through
it; `emu.catalog.override_system`/`override_model` add the cross-field checks.

>>> parse_override("chip.hbm_bytes_per_s=4e12")
('chip.hbm_bytes_per_s', 4000000000000.0)
>>> split_overrides({"chip.tdp_w": 1e3, "model.n_layers": 64, "plan.zero": 2})
({'chip.tdp_w': 1000.0}, {'n_layers': 64}, {'zero': 2})
"""

from __future__ import annotations

import math
from typing import Any

import jax.numpy as jnp
import numpy as np

from emu.parallelism import Plan
from emu.struct import float_leaves, set_path

__all__ = [
    "check_value",
    "bound_of",
    "parse_override",
    "split_overrides",
    "apply_overrides",
    "PLAN_BOUNDS",
]

# Bounds: ">0" strictly positive (default), ">=0", ">=1", "0..1" inclusive, "(0,1]".
_BOUNDS = {
    "idle_w": ">=0",
    "tdp_w": ">0",
    "matmul_half_dim": ">=0",
    "kernel_overhead_s": ">=0",
    "matmul_efficiency": "(0,1]",
    "hbm_efficiency": "(0,1]",
    "efficiency": "(0,1]",
    "matmul_power": "0..1",
    "memory_power": "0..1",
    "comm_power": "0..1",
    "latency_s": ">=0",
    "base_latency_s": ">=0",
    "oversubscription": ">=1",
    "allreduce_speedup": ">=1",
    "switch_w_per_chip": ">=0",
    "optics_per_chip": ">=0",
    "optic_w": ">=0",
    "nic_w_per_chip": ">=0",
    "cpus_per_chip": ">=0",
    "cpu_w": ">=0",
    "other_w_per_chip": ">=0",
    "psu_efficiency": "(0,1]",
    "pue": ">=1",
    "n_experts": ">=0",
    "top_k": ">=0",
    "d_ff_expert": ">=0",
    "n_shared_experts": ">=0",
    "n_dense_layers": ">=0",
    "q_lora_rank": ">=0",
    "kv_lora_rank": ">=0",
    "rope_head_dim": ">=0",
    "v_head_dim": ">=0",
    "mtp_layers": ">=0",
    "route_max_nodes": ">=0",
}
_BOUND_TEXT = {
    ">0": "must be > 0",
    ">=0": "must be >= 0",
    ">=1": "must be >= 1",
    "0..1": "must be between 0 and 1",
    "(0,1]": "must be in (0, 1]",
}
#: overlap fractions (system.overlap.*): all in [0, 1]
OVERLAP_BOUNDS = {k: "0..1" for k in ("tp", "dp", "pp", "cp", "ep", "ep_tbo", "pipelining")}
#: plan.<field> overrides: categorical fields may be 0; emu.policy.check_plan checks values
PLAN_BOUNDS = {
    "zero": ">=0",
    "recompute": ">=0",
    "sp": ">=0",
    "lora": ">=0",
    "a2a_overlap": ">=0",
    "moe_dedup": ">=0",
    "mtp_accept": ">=0",
    "cache_hit": ">=0",
}


_TINY = float(np.finfo(np.float32).tiny)


def _ok(bound: str, x: float) -> bool:
    return {
        ">0": x > 0,
        ">=0": x >= 0,
        ">=1": x >= 1,
        "0..1": 0 <= x <= 1,
        "(0,1]": 0 < x <= 1,
    }[bound]


def bound_of(path: str, bounds: dict | None = None) -> str:
    """The bound of the float field at dotted `path` (its last name decides, `bounds` first;
    peak FLOP/s may be 0 for an unsupported precision; overlap fractions lie in [0, 1])."""
    leaf = path.rsplit(".", 1)[-1]
    if ".peak_flops_per_s." in f".{path}":
        return ">=0"
    if path.startswith("overlap."):
        return OVERLAP_BOUNDS.get(leaf, "0..1")
    return (bounds or {}).get(leaf) or _BOUNDS.get(leaf, ">0")


def check_value(value: Any, where: str, bound: str = ">0") -> jnp.ndarray:
    """`value` as a float32 scalar, or ValueError naming `where`: it must be a real number
    (not a bool), representable in float32 without overflow or underflow to 0, and satisfy
    `bound` (see `bound_of`)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(
            f"{where} must be a number (got {type(value).__name__} {value!r}); "
            "write SI units as plain numbers, e.g. 9e11."
        )
    x = float(value)
    if math.isfinite(x) and abs(x) > 3.4e38:
        raise ValueError(f"{where} = {value!r} is outside the float32 range emu computes in.")
    # what is stored: catch float32 overflow, and underflow to 0 or to a subnormal (which
    # XLA flushes to 0 on CPU and GPU)
    y = float(jnp.float32(x)) if math.isfinite(x) else x
    if not math.isfinite(y) or (x != 0 and abs(y) < _TINY):
        raise ValueError(f"{where} = {value!r} is outside the float32 range emu computes in.")
    if not _ok(bound, y):
        raise ValueError(f"{where} {_BOUND_TEXT[bound]} (got {value!r}).")
    return jnp.float32(y)


def parse_override(text: str) -> tuple[str, float]:
    """'chip.hbm_bytes_per_s=4e12' -> ('chip.hbm_bytes_per_s', 4e12)."""
    path, sep, value = text.partition("=")
    if not sep or not path.strip():
        raise ValueError(f"expected PATH=VALUE (got '{text}'), e.g. chip.tdp_w=1000.")
    try:
        x = float(value)
    except ValueError:
        raise ValueError(f"{path.strip()}: value '{value}' is not a number.") from None
    if not math.isfinite(x):
        raise ValueError(f"{path.strip()}: value must be finite (got {value}).")
    return path.strip(), x


def split_overrides(overrides: dict) -> tuple[dict, dict, dict]:
    """(system, model, plan) overrides from one dict of dotted paths: `model.<field>` and
    `plan.<field>` go to the model and the plan (prefix dropped), the rest to the system."""
    sys_o, model_o, plan_o = {}, {}, {}
    for path, value in overrides.items():
        if path.startswith("model."):
            model_o[path[6:]] = value
        elif path.startswith("plan."):
            plan_o[path[5:]] = value
        else:
            sys_o[path] = value
    return sys_o, model_o, plan_o


def apply_overrides(tree, overrides: dict, *, bounds: dict | None = None):
    """`tree` with leaves replaced by dotted path, each value checked by `check_value`
    against its field's bound (`bounds`: extra bounds by field name; plans use PLAN_BOUNDS).
    Cross-field checks are the caller's (emu.catalog.override_system, override_model)."""
    if bounds is None and isinstance(tree, Plan):
        bounds = PLAN_BOUNDS
    leaves = float_leaves(tree)
    for path, value in overrides.items():
        if path not in leaves:
            tree = set_path(tree, path, value)  # raises the "unknown path" error
        tree = set_path(tree, path, check_value(value, path, bound_of(path, bounds)))
    return tree
