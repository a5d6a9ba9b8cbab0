"""Typed results of `Program.estimate` (host side): JSON and a readable table.

JSON (`ProgramResult.to_json()`), one object per system, SI units:

    {"system", "n_devices", "step_time_s", "flops" (per device, per step),
     "breakdown": {"matmul_s", "attention_s", "memory_s", "compute_s", "all_reduce_s", ...,
                   "exposed_comm_s", "total_s"},
     "power_w", "facility_power_w", "energy_per_step_j", "tokens_per_step", "tokens_per_s",
     "tokens_per_joule" (the three null without tokens per step),
     "io_bytes" (parameters + outputs per device), "usable_hbm_bytes", "fits_hbm",
     "collectives": [{"kind", "axes", "group_size", "stride", "tiers", "count",
                      "bytes", "bytes_per_call", "time_s"}],
     "top_ops": [{"name", "kind", "time_s", "share", "count", "flops", "bytes",
                  "op_name", "source"}],
     "uncosted": [{"name", "reason", "count", "bytes"}], "notes": [...]}
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

__all__ = ["ProgramResult", "CollectiveSummary", "TopOp", "text_report"]


@dataclasses.dataclass
class CollectiveSummary:
    """Collectives of one kind over one group shape, per step. `bytes` is the total per step
    in emu's convention (full buffer; see emu.program.table); `tiers` the network tiers the
    group spans on this system, with the participants at each."""

    kind: str
    axes: list[str]
    group_size: int
    stride: float
    tiers: str
    count: float
    bytes: float
    bytes_per_call: float
    time_s: float


@dataclasses.dataclass
class TopOp:
    """One of the most expensive rows: its time per step (raw, before overlap), its share of
    the summed row times, and where it comes from (op_name, source location)."""

    name: str
    kind: str
    time_s: float
    share: float
    count: float
    flops: float
    bytes: float
    op_name: str
    source: str


@dataclasses.dataclass
class ProgramResult:
    """The program on one system: what `emu program` prints (SI units, per step). `flops`
    are the dot FLOPs one device executes per step; `mfu` = flops / (step time x one device's
    dense bf16 peak: a rank's, a die's on CloudMatrix 384). The token rates are None when
    no tokens per step were given. `io_bytes` are the entry's parameters and outputs on one
    device (donated buffers once), a lower bound of its memory: `fits_hbm` is False (and a
    note says so) when they exceed one device's usable HBM (`emu.hardware.usable_hbm_bytes`)."""

    system: str
    program: str
    n_devices: int
    step_time_s: float
    flops: float
    breakdown: dict[str, float]
    power_w: float
    facility_power_w: float
    energy_per_step_j: float
    tokens_per_step: float | None
    tokens_per_s: float | None
    tokens_per_joule: float | None
    mfu: float
    collectives: list[CollectiveSummary]
    top_ops: list[TopOp]
    uncosted: list[dict[str, Any]]
    notes: list[str]
    io_bytes: float = 0.0
    usable_hbm_bytes: float = math.inf
    fits_hbm: bool = True

    def to_json(self) -> dict[str, Any]:
        """The result as JSON-ready dicts (non-finite numbers as null)."""
        out = dataclasses.asdict(self)
        return _finite(out)


def _finite(x):
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_finite(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _si(x: float, unit: str) -> str:
    if x == 0 or not math.isfinite(x):
        return f"{x:g} {unit}"
    for factor, prefix in (
        (1e18, "E"),
        (1e15, "P"),
        (1e12, "T"),
        (1e9, "G"),
        (1e6, "M"),
        (1e3, "k"),
        (1, ""),
        (1e-3, "m"),
        (1e-6, "u"),
        (1e-9, "n"),
    ):
        if abs(x) >= factor:
            return f"{x / factor:.3g} {prefix}{unit}"
    return f"{x:.3g} {unit}"


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def fmt(r):
        return "  ".join(
            str(c).ljust(w) if i == 0 else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ).rstrip()

    return "\n".join([fmt(header), fmt(["-" * w for w in widths]), *[fmt(r) for r in rows]])


_BREAKDOWN = [
    ("matmul_s", "matmuls"),
    ("attention_s", "attention + fused kernels"),
    ("memory_s", "memory-bound ops"),
    ("compute_s", "= compute"),
    ("all_reduce_s", "all-reduce (raw)"),
    ("all_gather_s", "all-gather (raw)"),
    ("reduce_scatter_s", "reduce-scatter (raw)"),
    ("all_to_all_s", "all-to-all (raw)"),
    ("collective_permute_s", "collective-permute (raw)"),
    ("exposed_comm_s", "exposed comm"),
    ("total_s", "= step time"),
]


def _short(op_name: str, width: int = 48) -> str:
    """The last scopes of an op_name, marked 'bwd' inside a transpose (the backward pass)."""
    parts = [p for p in op_name.split("/") if p and not p.startswith("jit(")]
    text = "/".join(parts[-3:])
    if "transpose(" in op_name:
        text = "bwd " + text
    return text if len(text) <= width else "..." + text[-(width - 3) :]


def _where(source: str, width: int = 40) -> str:
    if not source:
        return "-"
    path, _, line = source.rpartition(":")
    parts = path.split("/")
    text = "/".join(parts[-2:]) + f":{line}"
    return text if len(text) <= width else "..." + text[-(width - 3) :]


def text_report(results: list[ProgramResult], *, top: int = 10) -> str:
    """Side-by-side summary and breakdown, then each system's top ops and collectives."""
    if not results:
        return "(no systems)"
    head = ["", *[r.system for r in results]]
    rows = [
        ["program", *[r.program for r in results]],
        ["devices", *[str(r.n_devices) for r in results]],
        ["step time", *[_si(r.step_time_s, "s") for r in results]],
        ["FLOPs / device / step", *[_si(r.flops, "FLOP") for r in results]],
        ["MFU", *[f"{100 * r.mfu:.1f}%" for r in results]],
        ["power (IT)", *[_si(r.power_w, "W") for r in results]],
        ["energy / step", *[_si(r.energy_per_step_j, "J") for r in results]],
    ]
    if any(r.tokens_per_step for r in results):
        rows += [
            ["tokens/s", *[_si(r.tokens_per_s, "tok/s") for r in results]],
            ["tokens/J (IT)", *[f"{r.tokens_per_joule:.3g}" for r in results]],
        ]
    out = [_table(rows, head), ""]
    rows = [[label, *[_si(r.breakdown[k], "s") for r in results]] for k, label in _BREAKDOWN]
    out += [_table(rows, ["step breakdown", *[r.system for r in results]]), ""]
    for r in results:
        rows = [
            [
                str(i + 1),
                o.kind,
                _si(o.time_s, "s"),
                f"{100 * o.share:.1f}%",
                f"{o.count:g}",
                _short(o.op_name) or o.name,
                _where(o.source),
            ]
            for i, o in enumerate(r.top_ops[:top])
        ]
        out.append(f"top ops on {r.system} (raw times: overlap hides part of the collectives)")
        out += [_table(rows, ["#", "kind", "time", "share", "x", "op", "source"]), ""]
        rows = [
            [
                c.kind,
                ",".join(c.axes) or "-",
                str(c.group_size),
                c.tiers,
                f"{c.count:g}",
                _si(c.bytes, "B"),
                _si(c.time_s, "s"),
            ]
            for c in r.collectives
        ]
        if rows:
            out.append(f"collectives on {r.system} (per step)")
            out += [_table(rows, ["kind", "axes", "group", "tiers", "calls", "bytes", "time"]), ""]
    first = results[0]
    for u in first.uncosted:
        out.append(f"uncosted: {u['name']} x{u['count']:g} ({u['reason']})")
    notes: list[str] = []  # the program's once; a system's own (uncalibrated, memory) named
    for r in results:
        for n in r.notes:
            own = len(results) > 1 and not all(n in x.notes for x in results)
            line = f"note: {r.system}: {n}" if own else f"note: {n}"
            if line not in notes:
                notes.append(line)
    out += notes
    return "\n".join(out).rstrip()
