"""The op table's data (private; public through `emu.program.table`): the rows (`Op`), their
static arrays (`OpTable`), the program's mesh (`MeshInfo`) and the vocabularies they use.

Units: `flops` per execution (dot/convolution FLOPs, 2 per multiply-add), `bytes` per
execution (HBM bytes for compute rows, emu's collective convention for collectives, see
`emu.program.table`), `count` executions per step on one device.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from emu.program.hlo import Computation, Instruction

__all__ = [
    "Op",
    "OpTable",
    "MeshInfo",
    "COLLECTIVE_KINDS",
    "ROLES",
    "ROLE_OF_AXIS",
    "KERNEL_MARK",
    "check_roles",
]

#: canonical collective kinds (HLO opcode names)
COLLECTIVE_KINDS = (
    "all-reduce",
    "all-gather",
    "reduce-scatter",
    "all-to-all",
    "collective-permute",
)
#: emu's overlap classes (system.overlap fields) and "other" (never hidden)
ROLES = ("tp", "dp", "cp", "pp", "ep", "other")
#: mesh axis name -> role, for the usual names (override with `axis_roles=`)
ROLE_OF_AXIS = {
    **dict.fromkeys(("data", "dp", "batch", "replica", "fsdp", "zero", "ddp"), "dp"),
    **dict.fromkeys(("model", "tp", "tensor", "mp", "tensor_parallel", "mlp", "heads"), "tp"),
    **dict.fromkeys(("context", "cp", "seq", "sequence", "sp"), "cp"),
    **dict.fromkeys(("pipe", "pipeline", "pp", "stage"), "pp"),
    **dict.fromkeys(("expert", "experts", "ep"), "ep"),
}


def check_roles(axis_roles: dict[str, str] | None) -> None:
    """ValueError (one line) for an overlap class that is not one of `ROLES`: checked
    before a program is traced, which takes seconds."""
    bad = {a: r for a, r in (axis_roles or {}).items() if r not in ROLES}
    if bad:
        axis, role = next(iter(bad.items()))
        raise ValueError(
            f"unknown role {role!r} for mesh axis {axis!r}; known: {', '.join(ROLES)}."
        )


#: prefix of the `jax.named_scope` that marks a fused kernel (`emu.program.fused_kernel`)
KERNEL_MARK = "emu_kernel["


@dataclasses.dataclass
class MeshInfo:
    """The program's mesh: axis names and sizes (rank r = position r in mesh order)."""

    axis_names: tuple[str, ...]
    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        """Devices in the mesh: the product of the axis sizes."""
        return math.prod(self.shape)

    def axes_of(self, group: Sequence[int]) -> tuple[str, ...]:
        """Mesh axes along which the members of `group` differ."""
        if len(group) < 2 or math.prod(self.shape) <= max(group):
            return ()
        coords = np.array(np.unravel_index(np.asarray(group), self.shape))
        return tuple(n for n, c in zip(self.axis_names, coords, strict=True) if len(set(c)) > 1)


@dataclasses.dataclass
class Op:
    """One costed row. Per-execution quantities; `count` executions per step."""

    kind: str  # matmul | kernel | memory | collective | uncosted
    name: str
    computation: str
    count: float = 1.0
    op_name: str = ""
    source: str = ""
    flops: float = 0.0
    bytes: float = 0.0
    m: float = 1.0
    n: float = 1.0
    k: float = 1.0
    batch: float = 1.0
    precision: str = "bf16"
    flop_share: float = 1.0
    kernels: float = 1.0
    collective: str = ""
    group_size: float = 1.0
    stride: float = 1.0
    axes: tuple[str, ...] = ()
    role: str = ""
    is_async: bool = False
    window: tuple[int, ...] = ()
    note: str = ""
    members: int = 1
    first_index: int = 0
    last_index: int = 0

    @classmethod
    def at(cls, comp: Computation, ins: Instruction, **fields) -> Op:
        """The row of one instruction: its name, computation, metadata and schedule slot."""
        return cls(
            name=ins.name,
            computation=comp.name,
            op_name=ins.op_name,
            source=ins.source,
            first_index=ins.index,
            last_index=ins.index,
            **fields,
        )


@dataclasses.dataclass
class OpTable:
    """Static arrays of the op rows (host numpy), plus the rows themselves for reports."""

    ops: list[Op]
    mesh: MeshInfo
    n_devices: int
    fusion: str
    notes: list[str]
    #: the entry's parameters and outputs on one device (`emu.program.hlo.Module.io_bytes`)
    io_bytes: float = 0.0

    def __post_init__(self):
        f = lambda attr: np.array([float(getattr(o, attr)) for o in self.ops], np.float32)  # noqa: E731
        self.count = f("count")
        self.flops = f("flops")
        self.bytes = f("bytes")
        self.m, self.n, self.k, self.batch = f("m"), f("n"), f("k"), f("batch")
        self.flop_share = f("flop_share")
        self.kernels = f("kernels")
        self.group_size, self.stride = f("group_size"), f("stride")
        self.kind = np.array([o.kind for o in self.ops])
        self.precisions = tuple(sorted({o.precision for o in self.ops if o.kind == "matmul"}))
        self.kernel_precisions = tuple(
            sorted({o.precision for o in self.ops if o.kind == "kernel"})
        )

    def index(self, kind: str, *, precision: str | None = None, collective: str | None = None):
        """Row indices (int32) of one kind, optionally of one precision or collective kind."""
        return np.array(
            [
                i
                for i, o in enumerate(self.ops)
                if o.kind == kind
                and (precision is None or o.precision == precision)
                and (collective is None or o.collective == collective)
            ],
            np.int32,
        )

    @property
    def flops_per_step(self) -> float:
        """Dot/convolution FLOPs per device per step, as written (causal masks included)."""
        return float(sum(o.flops * o.count for o in self.ops if o.kind in ("matmul", "kernel")))

    @property
    def uncosted(self) -> list[Op]:
        """The rows emu cannot cost (listed in reports, never dropped)."""
        return [o for o in self.ops if o.kind == "uncosted"]

    def collective_bytes(self) -> dict[str, float]:
        """Bytes per step by collective kind (emu's convention, see `emu.program.table`)."""
        out = dict.fromkeys(COLLECTIVE_KINDS, 0.0)
        for o in self.ops:
            if o.kind == "collective":
                out[o.collective] += o.bytes * o.count
        return out
