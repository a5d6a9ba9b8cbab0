"""Dotted `PATH=VALUE` overrides of a system, model or plan, through the one validation
path of `emu.struct`: each value is checked against the bounds declared beside its field
(`struct.info_at` + `struct.check_value`: a number, a normal float32, in bounds), then the
whole tree against every field and the cross-field rules of its classes (`struct.check`).
TOML files (emu.catalog), `--set`, `--grid` axes (emu.search) and the Python API all go
through it.

Values may carry a unit suffix (`16TB/s`, `80GB`, `141GiB`, `2us`, `1.2kW`, `989TFLOPS`); it
must match the unit declared beside the field (bytes, bytes/s, s, W, FLOP/s), else the
override is refused with the suffixes the field takes.

>>> parse_override("chip.hbm_bytes_per_s=4e12")
('chip.hbm_bytes_per_s', 4000000000000.0)
>>> parse_override("chip.hbm_bytes_per_s=16TB/s")
('chip.hbm_bytes_per_s', 16000000000000.0)
>>> parse_value("1.2 kW"), parse_value("400Gb/s"), parse_value("2us")
(1200.0, 50000000000.0, 2e-06)
>>> split_overrides({"chip.tdp_w": 1e3, "model.n_layers": 64, "plan.zero": 2})
({'chip.tdp_w': 1000.0}, {'n_layers': 64}, {'zero': 2})
"""

from __future__ import annotations

import math
import re

import numpy as np

from emu._backend import jnp
from emu.struct import _unknown_path_message, check, check_value, float_leaves, info_at, set_path

__all__ = ["parse_override", "parse_value", "split_overrides", "apply_overrides", "UNITS"]


def _scaled(base: str, factors: dict[str, float]) -> dict[str, float]:
    return {p + base: f for p, f in factors.items()}


_DEC = {"": 1.0, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15}
_BIN = {"Ki": 2.0**10, "Mi": 2.0**20, "Gi": 2.0**30, "Ti": 2.0**40}
_BITS = {p: f / 8 for p, f in _DEC.items() if p}
#: unit suffix -> SI factor, per dimension (the `unit` declared beside a field)
UNITS: dict[str, dict[str, float]] = {
    "bytes": {**_scaled("B", _DEC | _BIN), "bytes": 1.0},
    "bytes/s": {
        **_scaled("B/s", _DEC | _BIN),
        **_scaled("Bps", _DEC),
        **_scaled("b/s", _BITS),
        **_scaled("bps", _BITS),
    },
    "s": {"ns": 1e-9, "us": 1e-6, "\u00b5s": 1e-6, "ms": 1e-3, "s": 1.0},
    "W": {"W": 1.0, "kW": 1e3, "MW": 1e6},
    "FLOP/s": {
        **_scaled("FLOPS", _DEC),
        **_scaled("FLOP/s", _DEC),
        **_scaled("OPS", _DEC),
    },
}
_NUMBER = re.compile(
    r"^\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?:inf|nan))\s*(.*?)\s*$"
)


class Quantity(float):
    """A parsed value that carried a unit suffix: the SI number, and the dimension of its
    unit (checked against the field's declared unit by `apply_overrides`)."""

    dim: str = ""
    text: str = ""

    def __new__(cls, x: float, dim: str, text: str):
        q = super().__new__(cls, x)
        q.dim, q.text = dim, text
        return q


def parse_value(text: str) -> float:
    """A number, optionally with a unit suffix (UNITS), in SI: '16TB/s' -> 1.6e13 (a
    Quantity that remembers its dimension); ValueError for an unknown suffix."""
    m = _NUMBER.match(str(text))
    if not m:
        raise ValueError(f"value '{text}' is not a number (e.g. 9e11 or 900GB/s).")
    x = float(m.group(1))
    if not math.isfinite(x):
        raise ValueError(f"value must be finite (got {text}).")
    suffix = m.group(2)
    if not suffix:
        return x
    for dim, table in UNITS.items():
        if suffix in table:
            return Quantity(x * table[suffix], dim, text.strip())
    near = [u for table in UNITS.values() for u in table if u.lower() == suffix.lower()]
    if near:  # units are case-sensitive: "kw" is not "kW", "mb/s" not "MB/s" or "Mb/s"
        raise ValueError(
            f"unknown unit '{suffix}' in '{text.strip()}' (units are case-sensitive); did you "
            f"mean {' or '.join(repr(u) for u in near)}?"
        )
    known = "; ".join(_examples(d) for d in UNITS)
    raise ValueError(f"unknown unit '{suffix}' in '{text.strip()}'; known units: {known}.")


def _examples(dim: str) -> str:
    return {"bytes": "GB, GiB, TB", "bytes/s": "GB/s, TB/s, Gb/s", "s": "ns, us, ms, s",
            "W": "W, kW, MW", "FLOP/s": "TFLOPS, PFLOPS"}[dim]  # fmt: skip


def parse_override(text: str) -> tuple[str, float]:
    """'chip.hbm_bytes_per_s=4e12' -> ('chip.hbm_bytes_per_s', 4e12); a unit suffix
    ('=4TB/s') is converted to SI and checked against the field in `apply_overrides`."""
    path, sep, value = text.partition("=")
    if not sep or not path.strip():
        raise ValueError(f"expected PATH=VALUE (got '{text}'), e.g. chip.tdp_w=1000.")
    try:
        return path.strip(), parse_value(value)
    except ValueError as e:
        raise ValueError(f"{path.strip()}: {e}") from None


def check_unit(value, info, path: str) -> None:
    """ValueError when `value` carried a unit suffix that is not the field's unit."""
    dim = getattr(value, "dim", "")
    if not dim:
        return
    want = info.unit if info is not None else ""
    if want != dim:
        takes = f"takes {want}" if want in UNITS else "takes a plain number"
        hint = f" ({_examples(want)})" if want in UNITS else ""
        raise ValueError(f"{path}: '{value.text}' is in {dim}, but {path} {takes}{hint}.")


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


def apply_overrides(tree, overrides: dict, where: str = "", *, prefix: str = ""):
    """`tree` with leaves replaced by dotted path, each value checked against its field's
    declared bounds, then the result checked whole (`struct.check`: cross-field rules such
    as idle_w <= tdp_w). ValueError names the path (and `where`, for the whole-tree rules);
    an unknown or static path is spelled with `prefix` (`plan.`, as `--set` takes it).
    """
    if not isinstance(overrides, dict):
        raise ValueError(
            f"overrides must be a dict of dotted path -> value, e.g. {{'chip.tdp_w': 1000}} "
            f"(got {type(overrides).__name__})."
        )
    leaves = float_leaves(tree)
    for path, value in overrides.items():
        if not isinstance(path, str):
            raise ValueError(
                f"override paths are dotted strings such as 'chip.tdp_w' (got {path!r})."
            )
        if path not in leaves:
            raise ValueError(_unknown_path_message(path, leaves, tree, prefix))
        info = info_at(tree, path)
        if isinstance(value, str):  # a unit suffix, as on the command line ("16TB/s")
            try:
                value = parse_value(value)
            except ValueError as e:
                raise ValueError(f"{path}: {e}") from None
        if isinstance(value, bool) or not isinstance(value, int | float) and np.ndim(value) != 0:
            raise ValueError(f"{path}: the value must be one number (got {value!r}).")
        check_unit(value, info, path)
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{path}: the value must be one number (got {value!r}).") from None
        x = check_value(number, info, path)
        tree = set_path(tree, path, jnp.float32(x))
    return check(tree, where) if overrides else tree
