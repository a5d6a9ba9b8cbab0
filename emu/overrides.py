"""Dotted `PATH=VALUE` overrides of a system, model or plan, through the one validation
path of `emu.struct`: each value is checked against the bounds declared beside its field
(`struct.info_at` + `struct.check_value`: a number, a normal float32, in bounds), then the
whole tree against every field and the cross-field rules of its classes (`struct.check`).
TOML files (emu.catalog), `--set`, `--grid` axes (emu.search) and the Python API all go
through it.

>>> parse_override("chip.hbm_bytes_per_s=4e12")
('chip.hbm_bytes_per_s', 4000000000000.0)
>>> split_overrides({"chip.tdp_w": 1e3, "model.n_layers": 64, "plan.zero": 2})
({'chip.tdp_w': 1000.0}, {'n_layers': 64}, {'zero': 2})
"""

from __future__ import annotations

import math

import jax.numpy as jnp

from emu.struct import check, check_value, float_leaves, info_at, set_path

__all__ = ["parse_override", "split_overrides", "apply_overrides"]


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


def apply_overrides(tree, overrides: dict, where: str = ""):
    """`tree` with leaves replaced by dotted path, each value checked against its field's
    declared bounds, then the result checked whole (`struct.check`: cross-field rules such
    as idle_w <= tdp_w). ValueError names the path (and `where`, for the whole-tree rules).
    """
    leaves = float_leaves(tree)
    for path, value in overrides.items():
        if path not in leaves:
            set_path(tree, path, value)  # raises the "unknown field path" error
        x = check_value(value, info_at(tree, path), path)
        tree = set_path(tree, path, jnp.float32(x))
    return check(tree, where) if overrides else tree
