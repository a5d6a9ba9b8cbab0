"""`Program`: a traced JAX program as an op table, costed on any System without re-tracing.

>>> import jax, jax.numpy as jnp
>>> import emu
>>> from emu import program
>>> f = jax.jit(lambda a, b: a @ b)
>>> args = (jax.ShapeDtypeStruct((512, 1024), jnp.bfloat16),
...         jax.ShapeDtypeStruct((1024, 256), jnp.bfloat16))
>>> prog = program.trace(f, args)
>>> prog.flops                          # 2 m n k
268435456.0
>>> r = prog.estimate(emu.load_system("gb200_nvl72"))[0]
>>> r.top_ops[0].kind
'matmul'
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from emu.collectives import _algorithm
from emu.hardware import usable_hbm_bytes
from emu.program._optable import check_roles
from emu.program.cost import ProgramCost, program_cost
from emu.program.report import CollectiveSummary, ProgramResult, TopOp
from emu.program.table import MeshInfo, OpTable, build_table
from emu.program.tracing import Traced, compile_hlo, trace_builder
from emu.struct import check
from emu.topology import System, participants, rank_system

__all__ = ["Program", "trace", "trace_program", "from_hlo"]


class Program:
    """A traced program: its op table (static arrays) and the pure cost functions over it.

    `cost(system)` is a pure JAX function of the System pytree (jit, vmap, grad);
    `cost_fn` is it jitted (one compile per system structure, then milliseconds per system);
    `batch_cost(stacked)` is the vmapped, jitted form for `emu.struct.stack`ed systems;
    `estimate(systems)` returns typed, host-side results for reports.
    """

    def __init__(self, traced: Traced, *, fusion: str = "ideal", axis_roles=None, check_mesh=False):
        self.traced = traced
        self.table: OpTable = build_table(
            traced.hlo, traced.mesh, fusion=fusion, axis_roles=axis_roles, check_mesh=check_mesh
        )
        self._jit: dict[tuple, Any] = {}

    # ------------------------------------------------------------------ facts
    @property
    def name(self) -> str:
        """The builder's or function's name ("program" if none)."""
        return self.traced.name or "program"

    @property
    def mesh(self) -> MeshInfo:
        """The mesh the program was compiled for."""
        return self.traced.mesh

    @property
    def n_devices(self) -> int:
        """Devices the program was compiled for."""
        return self.table.n_devices

    @property
    def flops(self) -> float:
        """Dot FLOPs per device per step, as written in the program."""
        return self.table.flops_per_step

    def collective_bytes(self) -> dict[str, float]:
        """Bytes per device per step by collective kind (emu's convention)."""
        return self.table.collective_bytes()

    @property
    def uncosted(self) -> list[dict[str, Any]]:
        """The ops emu cannot cost: name, reason, count and bytes per step."""
        return [
            {"name": o.name, "reason": o.note, "count": o.count, "bytes": o.bytes * o.count}
            for o in self.table.uncosted
        ]

    # ------------------------------------------------------------------ cost
    def cost(
        self, system: System, *, tokens_per_step: float = 0.0, algorithm: str = "hierarchical"
    ) -> ProgramCost:
        """Pure JAX cost of one step on `system` (see emu.program.cost)."""
        return program_cost(
            system, self.table, tokens_per_step=tokens_per_step, algorithm=algorithm
        )

    def cost_fn(self, *, tokens_per_step: float = 0.0, algorithm: str = "hierarchical"):
        """`cost` jitted for these settings (cached): system -> ProgramCost. Names are
        stripped before the call, so systems with the same number of tiers share one
        compiled function."""
        key = ("one", float(tokens_per_step), algorithm)
        if key not in self._jit:
            jitted = jax.jit(
                functools.partial(self.cost, tokens_per_step=tokens_per_step, algorithm=algorithm)
            )
            self._jit[key] = lambda system: jitted(anonymous(system))
        return self._jit[key]

    def batch_cost(
        self, systems: System, *, tokens_per_step: float = 0.0, algorithm: str = "hierarchical"
    ) -> ProgramCost:
        """ProgramCost of a batch of systems stacked on a leading axis: one compiled call."""
        key = ("batch", float(tokens_per_step), algorithm)
        if key not in self._jit:
            self._jit[key] = jax.jit(
                jax.vmap(
                    functools.partial(
                        self.cost, tokens_per_step=tokens_per_step, algorithm=algorithm
                    )
                )
            )
        return self._jit[key](anonymous(systems))

    # ------------------------------------------------------------------ reports
    def estimate(
        self,
        systems: System | Sequence[System],
        *,
        tokens_per_step: float | None = None,
        algorithm: str = "hierarchical",
        top: int = 10,
    ) -> list[ProgramResult]:
        """Typed results, one per system (host side)."""
        if isinstance(systems, System):
            systems = [systems]
        if isinstance(systems, str | bytes) or not isinstance(systems, Iterable):
            systems = [systems]  # one thing that is not a System: named below
        systems = list(systems)
        for system in systems:
            if not isinstance(system, System):
                raise ValueError(
                    f"estimate takes Systems (emu.load_system(NAME)), got "
                    f"{type(system).__name__} {system!r:.60}."
                )
        tokens = float(tokens_per_step or 0.0)
        if not 0 <= tokens < math.inf:
            raise ValueError(
                f"tokens_per_step must be a finite number >= 0 (got {tokens_per_step})."
            )
        for system in systems:  # built with emu.struct.replace: the loaders' checks skipped
            check(system, system.name)
        if isinstance(top, bool) or not isinstance(top, int) or top < 1:
            raise ValueError(f"top must be a positive integer of ops listed (got {top!r}).")
        _algorithm(algorithm)  # refused here too where the program runs no collective
        out = []
        for system in systems:
            cost = self.cost_fn(tokens_per_step=tokens, algorithm=algorithm)(system)
            out.append(self._result(system, jax.device_get(cost), tokens, top))
        return out

    def _result(self, system: System, cost: ProgramCost, tokens: float, top: int):
        t = np.asarray(cost.op_time_s, np.float64)
        step = float(cost.step_time_s)
        ops = self.table.ops
        order = [i for i in np.argsort(-t) if t[i] > 0][:top]
        top_ops = [
            TopOp(
                name=ops[i].name,
                kind=ops[i].collective if ops[i].kind == "collective" else ops[i].kind,
                time_s=float(t[i]),
                share=float(t[i] / step) if step > 0 else 0.0,
                count=float(ops[i].count),
                flops=float(ops[i].flops * ops[i].count),
                bytes=float(ops[i].bytes * ops[i].count),
                op_name=ops[i].op_name,
                source=ops[i].source,
            )
            for i in order
        ]
        groups: dict[tuple, CollectiveSummary] = {}
        for i, o in enumerate(ops):
            if o.kind != "collective":
                continue
            key = (o.collective, o.axes, o.group_size, o.stride)
            if key not in groups:
                groups[key] = CollectiveSummary(
                    kind=o.collective,
                    axes=list(o.axes),
                    group_size=int(o.group_size),
                    stride=float(o.stride),
                    tiers=_tiers(system, o.group_size, o.stride),
                    count=0.0,
                    bytes=0.0,
                    bytes_per_call=0.0,
                    time_s=0.0,
                )
            g = groups[key]
            g.count += o.count
            g.bytes += o.bytes * o.count
            g.time_s += float(t[i])
        for g in groups.values():
            g.bytes_per_call = g.bytes / g.count if g.count else 0.0
        bd = {k: float(v) for k, v in vars(cost.breakdown).items()}
        chip = rank_system(system).chip  # a device is a rank (a die on a CloudMatrix 384)
        peak = float(chip.peak_flops_per_s["bf16"])
        usable = float(usable_hbm_bytes(chip))
        need = self.table.io_bytes
        notes = list(dict.fromkeys(self.table.notes))
        if need > usable:
            notes.append(
                f"out of memory: the program's parameters and outputs take {need / 1e9:.4g} GB "
                f"per device, more than the {usable / 1e9:.4g} GB of usable HBM of one "
                f"{system.chip.name} device; the step cannot run as compiled (shard it over "
                "more devices)"
            )
        given = tokens > 0
        return ProgramResult(
            system=system.name,
            program=self.name,
            n_devices=self.n_devices,
            step_time_s=step,
            flops=self.flops,
            breakdown=bd,
            power_w=float(cost.power_w),
            facility_power_w=float(cost.facility_power_w),
            energy_per_step_j=float(cost.energy_per_step_j),
            tokens_per_step=tokens if given else None,
            tokens_per_s=float(cost.tokens_per_s) if given else None,
            tokens_per_joule=float(cost.tokens_per_joule) if given else None,
            mfu=self.flops / (step * peak) if step > 0 and peak > 0 else 0.0,
            collectives=sorted(groups.values(), key=lambda g: -g.time_s),
            top_ops=top_ops,
            uncosted=self.uncosted,
            notes=notes,
            io_bytes=need,
            usable_hbm_bytes=usable,
            fits_hbm=need <= usable,
        )


def anonymous(system: System) -> System:
    """`system` with its names (static fields that the cost never reads) blanked, so that
    one compiled cost function serves every system of the same shape."""
    chip = dataclasses.replace(system.chip, name="", family="")
    tiers = tuple(dataclasses.replace(t, name=f"t{i}", link="") for i, t in enumerate(system.tiers))
    return dataclasses.replace(system, name="", chip=chip, tiers=tiers)


def _tiers(system: System, size: float, stride: float) -> str:
    """The tiers a (size, stride) group spans on `system`, with participants at each."""
    tiers = rank_system(system).tiers  # devices are ranks (dies on a CloudMatrix 384)
    n = participants(tiers, jnp.float32(size), jnp.float32(stride))
    parts = [f"{t.name}x{float(k):g}" for t, k in zip(tiers, n, strict=True) if k > 1.0]
    return ",".join(parts) or "-"


def trace(
    fn: Any,
    args: Sequence[Any],
    *,
    mesh: Any = None,
    fusion: str = "ideal",
    axis_roles: dict[str, str] | None = None,
    name: str = "",
) -> Program:
    """Trace and compile `fn(*args)` in this process (which must have the mesh's devices)
    and read its HLO into a Program. `mesh` (a jax Mesh or {axis: size}) defaults to the
    arguments' NamedSharding mesh; `axis_roles` maps mesh axes to emu's overlap classes
    ('tp', 'dp', 'cp', 'pp', 'ep') where the names are not the usual ones."""
    return Program(
        compile_hlo(fn, tuple(args), mesh=mesh, name=name), fusion=fusion, axis_roles=axis_roles
    )


def trace_program(
    builder: str,
    *,
    devices: int,
    kwargs: dict | None = None,
    fusion: str = "ideal",
    axis_roles: dict[str, str] | None = None,
    timeout_s: float = 600.0,
) -> Program:
    """Call `builder` ('path/file.py:name' or 'package.module:name', returning `(fn, args)`)
    in a process with `devices` CPU devices (a subprocess unless this one has exactly that
    many), compile, and read the HLO into a Program."""
    check_roles(axis_roles)  # before the seconds of tracing
    traced = trace_builder(builder, devices=devices, kwargs=kwargs, timeout_s=timeout_s)
    return Program(traced, fusion=fusion, axis_roles=axis_roles)


def from_hlo(
    hlo: str,
    mesh: Any,
    *,
    fusion: str = "ideal",
    axis_roles: dict[str, str] | None = None,
    name: str = "hlo",
) -> Program:
    """A Program from HLO text compiled elsewhere (`compiled.as_text()`, e.g. on a GPU) and
    the mesh ({axis: size} in mesh order) it was partitioned over. Replica groups that lie
    along no mesh axis, or cover an axis only in part, are noted
    (`build_table(check_mesh=True)`)."""
    from emu.program.tracing import _as_mesh

    if isinstance(hlo, bytes | bytearray):  # a file read in binary mode
        try:
            hlo = bytes(hlo).decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError("from_hlo: the bytes given are not UTF-8 HLO text.") from None
    if not isinstance(hlo, str):
        raise ValueError(
            f"from_hlo: hlo must be the module's text, a str such as `compiled.as_text()` "
            f"(got {type(hlo).__name__})."
        )
    traced = Traced(hlo, _as_mesh(mesh), name)
    return Program(traced, fusion=fusion, axis_roles=axis_roles, check_mesh=True)
