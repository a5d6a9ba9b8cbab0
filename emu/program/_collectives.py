"""Collectives and replica-group placement (private): the rows of kind collective.

Bytes follow emu's convention (`emu.collectives`): the full buffer of an all-reduce (its
operand), an all-gather (its result) and a reduce-scatter (its operand = result x group
size); what each rank sends for an all-to-all and a collective-permute. Async starts return
(operands, results, ...): their bytes come from the operands (x group size for an
all-gather).

Placement: a group is placed on the system's tiers by (size, stride) in rank order (device
id = position in the mesh, `MeshInfo`): stride = the one difference between consecutive
sorted members, or for a non-uniform group the stride of its span, (max - min + 1) / size; a
module's stride is the largest over its groups. A collective-permute is a group of 2 with
stride = the largest |target - source|. The overlap class (`role`) comes from the mesh axes
the group spans: "dp" if any is a data axis, else the first axis's role.

An all-reduce whose every consumer reads only its own 1/g slice (a dynamic-slice) is the
reduce-scatter that the GPU and TPU pipelines emit (their ReduceScatterCreator pass; the CPU
pipeline leaves all-reduce + dynamic-slice) and is costed as one.
"""

from __future__ import annotations

import dataclasses

from emu.program._opcodes import COLLECTIVE_OPS, width
from emu.program._optable import MeshInfo, Op, OpTable
from emu.program._values import Values
from emu.program.hlo import Computation, Instruction, replica_groups, source_target_pairs

__all__ = ["Placement", "collective_op", "overlap_windows", "unplaced_notes"]


@dataclasses.dataclass
class Placement:
    """Where a module's replica groups sit: the mesh, the axis roles, the partition count."""

    mesh: MeshInfo
    roles: dict[str, str]
    n_devices: int

    def groups(self, ins: Instruction) -> list[list[int]]:
        """The replica groups of a collective (one group of all devices when absent)."""
        if "replica_groups" in ins.attrs:
            return replica_groups(ins.attrs["replica_groups"], self.n_devices)
        return [list(range(self.n_devices))]

    def place(self, groups: list[list[int]]) -> tuple[float, float, tuple[str, ...]]:
        """(group size, stride, mesh axes) of a collective's groups (see the module doc)."""
        g = groups[0] if groups else [0]
        size = len(g)
        stride, axes = 1.0, self.mesh.axes_of(g)
        for grp in groups:
            s = sorted(grp)
            if len(s) < 2:
                continue
            diffs = {b - a for a, b in zip(s, s[1:], strict=False)}
            st = float(diffs.pop()) if len(diffs) == 1 else (s[-1] - s[0] + 1) / len(s)
            stride = max(stride, st)
        return float(size), stride, axes

    def role(self, axes: tuple[str, ...]) -> str:
        """The overlap class of a collective over `axes`: dp if any axis is dp, else the
        first axis's role ("other" for none)."""
        roles = [self.roles.get(a, "other") for a in axes]
        if not roles:
            return "other"
        if "dp" in roles:
            return "dp"
        return roles[0]


def collective_op(
    values: Values, placement: Placement, comp: Computation, ins: Instruction, count: float
) -> Op | None:
    """The row of one collective (None for a group of one device: it moves nothing)."""
    kind, note = COLLECTIVE_OPS[ins.opcode], ""
    if kind == "collective-permute":
        nbytes, size, stride, axes = _permute_shape(values, placement, comp, ins)
    else:
        size, stride, axes = placement.place(placement.groups(ins))
        if size <= 1:
            # a collective over one device (a mesh axis of size 1) moves nothing
            return None
        nbytes = _group_bytes(values, comp, ins, kind, size)
        if kind == "all-reduce" and size > 1 and _only_sliced(values, comp, ins, size):
            kind, note = "reduce-scatter", "all-reduce + dynamic-slice (a reduce-scatter)"
    return Op.at(
        comp,
        ins,
        kind="collective",
        count=count,
        bytes=nbytes,
        collective=kind,
        group_size=size,
        stride=stride,
        axes=axes,
        role=placement.role(axes),
        note=note,
    )


def _group_bytes(
    values: Values, comp: Computation, ins: Instruction, kind: str, size: float
) -> float:
    """Bytes of a grouped collective in emu's convention (see the module doc)."""
    if ins.opcode.endswith("-start") or ins.shape.is_tuple and kind != "all-reduce":
        # async starts return (operands, results, ...): size from the operands
        el = width(values.types.ld(comp, ins.operands[0])) if ins.operands else 4.0
        elements = sum(comp.by_name[o].shape.size for o in ins.operands if o in comp.by_name)
        return elements * el * (size if kind == "all-gather" else 1.0)
    return values.value_bytes(comp, ins.name) * (size if kind == "reduce-scatter" else 1.0)


def _permute_shape(
    values: Values, placement: Placement, comp: Computation, ins: Instruction
) -> tuple[float, float, float, tuple[str, ...]]:
    """(bytes, group size, stride, axes) of a collective-permute: bytes = its operand, a
    pair (a group of one when every pair is a self-send) at the longest source-target hop."""
    pairs = source_target_pairs(ins.attrs.get("source_target_pairs", ""))
    nbytes = sum(values.value_bytes(comp, o) for o in ins.operands[:1])
    dist = max((abs(t - s) for s, t in pairs), default=0)
    axes = ()
    if pairs:
        axes = tuple(sorted({a for s, t in pairs for a in placement.mesh.axes_of([s, t])}))
    return nbytes, 2.0 if dist else 1.0, float(max(dist, 1)), axes


def _only_sliced(values: Values, comp: Computation, ins: Instruction, size: float) -> bool:
    """Every consumer of the (tuple) all-reduce reads only a 1/size slice of it."""
    if ins.shape.is_tuple:
        outputs = []
        for u in comp.users.get(ins.name, []):
            if u.opcode != "get-tuple-element":
                return False
            outputs.append(u.name)
    else:
        outputs = [ins.name]
    if not outputs:
        return False
    for v in outputs:
        uses = values.uses(comp, v)
        if not uses:
            return False
        full = values.value_bytes(comp, v)
        for user, pos in uses:
            if user.opcode in ("get-tuple-element", "tuple"):
                return False
            got = values.read_bytes(comp, user, pos, user.operands[pos])
            if got > full / size * 1.0001 or got <= 0:
                return False
    return True


def unplaced_notes(table: OpTable) -> list[str]:
    """A note for each collective over axes with no overlap class (charged fully exposed)."""
    return [
        f"collective {op.name} over axes {op.axes or '?'}: no overlap class "
        "(name the axis role with axis_roles=...); charged fully exposed"
        for op in table.ops
        if op.kind == "collective" and op.role == "other" and op.group_size > 1
    ]


def overlap_windows(table: OpTable) -> None:
    """Async collectives overlap the compute rows scheduled between their start and done."""
    for op in table.ops:
        if op.kind != "collective" or not op.is_async:
            continue
        op.window = tuple(
            j
            for j, o in enumerate(table.ops)
            if o.kind in ("matmul", "kernel", "memory")
            and o.computation == op.computation
            and op.first_index < o.first_index < op.last_index
        )
