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

import numpy as np

from emu.program._opcodes import COLLECTIVE_OPS, width
from emu.program._optable import MeshInfo, Op, OpTable
from emu.program._values import Values
from emu.program.hlo import (
    Computation,
    Instruction,
    malformed,
    replica_groups,
    source_target_pairs,
)

__all__ = [
    "Placement",
    "collective_op",
    "mesh_fit",
    "mesh_misfits",
    "overlap_windows",
    "unplaced_notes",
]


@dataclasses.dataclass
class Placement:
    """Where a module's replica groups sit: the mesh, the axis roles, the partition count;
    `spellings`: each distinct `replica_groups` text with the first collective that has it
    and its groups (what `mesh_misfits` checks against a mesh given with the module)."""

    mesh: MeshInfo
    roles: dict[str, str]
    n_devices: int
    spellings: dict[str, tuple] = dataclasses.field(default_factory=dict, repr=False)

    def groups(self, ins: Instruction) -> list[list[int]]:
        """The replica groups of a collective (one group of all devices when absent);
        ValueError for device ids the module does not have or a device in two groups."""
        if "replica_groups" in ins.attrs:
            try:
                groups = replica_groups(ins.attrs["replica_groups"], self.n_devices)
            except ValueError as e:
                what = str(e).removeprefix("HLO: ").rstrip(".")
                raise malformed(ins.line, f"{ins.opcode} %{ins.name}", what) from None
        else:
            groups = [list(range(self.n_devices))]
        key = ins.attrs.get("replica_groups", "")
        if key not in self.spellings:  # once per spelling: a module repeats a few of them
            _check_ids(ins, [d for g in groups for d in g], self.mesh.size, "replica_groups")
            self.spellings[key] = (ins, groups)
        return groups

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


def _check_ids(ins: Instruction, ids: list[int], n: int, attr: str, *, once: bool = True):
    """ValueError (malformed HLO) for a device id outside the module's `n` devices, or
    (`once`) named twice."""
    bad = next((d for d in ids if d >= n), None)
    if bad is not None:
        what = (
            f"its {attr} name device {bad} but the module runs on {n} device"
            f"{'s' if n > 1 else ''} (ids 0 to {n - 1})"
        )
        raise malformed(ins.line, f"{ins.opcode} %{ins.name}", what)
    if once and len(set(ids)) != len(ids):
        seen: set[int] = set()
        twice = next(d for d in ids if d in seen or seen.add(d))
        what = f"its {attr} name device {twice} twice (each device is in one group)"
        raise malformed(ins.line, f"{ins.opcode} %{ins.name}", what)


def mesh_fit(mesh: MeshInfo, groups: list[list[int]]) -> tuple[str, tuple[str, ...]]:
    """How a collective's replica groups (device ids = positions in mesh order) lie on the
    mesh: "axes" when each is the devices along whole mesh axes (the other coordinates
    fixed), "sub-axes" when along parts of axes (XLA's sub-axes: some digits of an axis's
    coordinate free, e.g. {0,1,2,3} on data=8 is data's inner 4; GSPMD makes such groups
    after a reshape), "" when some group is along neither (no mesh of these axes gives
    it); and the axes covered only in part.

    >>> mesh_fit(MeshInfo(("data", "model"), (2, 4)), [[0, 1, 2, 3], [4, 5, 6, 7]])
    ('axes', ())
    >>> mesh_fit(MeshInfo(("data",), (8,)), [[0, 1, 2, 3], [4, 5, 6, 7]])
    ('sub-axes', ('data',))
    >>> mesh_fit(MeshInfo(("data",), (8,)), [[0, 3, 5]])
    ('', ())
    """
    by_size: dict[int, list[list[int]]] = {}
    for g in groups:
        by_size.setdefault(len(g), []).append(g)
    split: set[str] = set()
    for size, same in by_size.items():
        if size < 2:
            continue
        coords = np.unravel_index(np.asarray(same), mesh.shape)  # per axis: (groups, size)
        combos = np.ones(len(same), np.int64)
        for name, n, c in zip(mesh.axis_names, mesh.shape, coords, strict=True):
            c = np.sort(c, axis=1)
            distinct = 1 + (np.diff(c, axis=1) != 0).sum(axis=1)
            combos *= distinct
            part = (distinct > 1) & (distinct < n)
            if not part.any():
                continue
            for row in np.unique(c[part], axis=0):
                if not _sub_axes(sorted(set(row.tolist())), n):
                    return "", ()
            split.add(name)
        if (combos != size).any():  # not every combination of the coordinates: no product
            return "", ()
    names = tuple(a for a in mesh.axis_names if a in split)
    return ("sub-axes" if names else "axes"), names


def _sub_axes(vals: list[int], size: int) -> bool:
    """`vals` (sorted, distinct, in [0, size)) are an axis's coordinates along some of its
    sub-axes: written in a mixed radix whose radices multiply to `size`, some digits take
    every value and the others are fixed. The lowest free digit has place k (the first
    gap) and m values (a run of `vals` from the smallest), its block k m divides `size`;
    the rest is the same question for the digits above the block."""
    if len(vals) < 2:
        return True
    v0, k = vals[0], vals[1] - vals[0]
    run = 1
    while run < len(vals) and vals[run] == v0 + run * k:
        run += 1
    for m in range(run, 1, -1):
        block = k * m
        if size % block or (v0 // k) % m:
            continue
        base = [c for c in vals if c % block == v0 % block]
        if sorted(c + j * k for c in base for j in range(m)) != vals:
            continue
        if _sub_axes([c // block for c in base], size // block):
            return True
    return False


def _permute_shape(
    values: Values, placement: Placement, comp: Computation, ins: Instruction
) -> tuple[float, float, float, tuple[str, ...]]:
    """(bytes, group size, stride, axes) of a collective-permute: bytes = its operand, a
    pair (a group of one when every pair is a self-send) at the longest source-target hop."""
    pairs = source_target_pairs(ins.attrs.get("source_target_pairs", ""))
    ids = [d for p in pairs for d in p]
    _check_ids(ins, ids, placement.mesh.size, "source_target_pairs", once=False)
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


def mesh_misfits(placement: Placement) -> list[str]:
    """For a mesh given with the module (the caller's word, not the traced program's):
    notes for the collectives whose groups lie along no mesh axis or product of axes (the
    mesh is likely not the module's; GSPMD can still make such groups after a reshape on a
    mesh whose axes are not powers of two, so they are priced by their size and span, not
    refused) and for those whose groups cover mesh axes only in part (labelled with those
    axes)."""
    mesh = placement.mesh
    shape = ", ".join(f"{n}={s}" for n, s in zip(mesh.axis_names, mesh.shape, strict=True))
    spelled = placement.spellings.values()
    found = ", ".join(str(s) for s in sorted({max(map(len, g), default=1) for _, g in spelled}))
    notes: dict[tuple, str] = {}
    for ins, groups in spelled:
        fit, split = mesh_fit(mesh, groups)
        if fit == "axes":
            continue
        bad = next((g for g in groups if mesh_fit(mesh, [g])[0] == fit), groups[0])
        key = (tuple(sorted(bad)), split)
        if key in notes:
            continue
        example = "{" + ",".join(map(str, bad[:8])) + (",..." if len(bad) > 8 else "") + "}"
        notes[key] = (
            f"the mesh ({shape}) does not give the replica groups of {ins.opcode} "
            f"%{ins.name} (line {ins.line}): a group of {len(bad)} devices {example} lies "
            f"along no mesh axis or product of axes (the module's group sizes: {found}); "
            "it is priced by its size and span, unlabelled; if the module was compiled "
            "for another mesh, pass that one, its axes in order (device id = position)"
            if fit == ""
            else f"collective {ins.name}: its groups of {len(bad)} devices (e.g. {example}) "
            f"cover mesh axis {', '.join(split)} only in part and are labelled with it; "
            "if the module was compiled for another mesh, pass that one"
        )
    return list(notes.values())


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
