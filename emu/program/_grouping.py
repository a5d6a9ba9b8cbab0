"""Memory-bound grouping (private): which instructions run as one kernel on the target.

- `fusion="ideal"`: each connected run (through aliases) of memory-bound ops at the same
  depth of heavy ops (matmuls, kernels, collectives, calls) is one kernel that reads its
  inputs and writes its outputs once (`Values.boundary`): what a fusing GPU/TPU compiler
  emits. Groups of layout-only ops (copies, transposes, retypes, slices, in-place updates)
  cost nothing: the target reads and writes them in place.
- `fusion="as_compiled"`: every top-level HLO fusion or op is one kernel.
- `absorb`: ops XLA stripped of their metadata join the marked kernel they feed or read.
"""

from __future__ import annotations

from emu.program._opcodes import ModuleView
from emu.program._optable import Op
from emu.program._values import Values
from emu.program.hlo import Computation, Instruction

__all__ = ["memory_ops", "absorb"]

#: opcodes that only move or retype data in place on the target
_LAYOUT = {
    "copy",
    "transpose",
    "bitcast",
    "reshape",
    "convert",
    "parameter",
    "constant",
    "slice",
    "dynamic-slice",
    "dynamic-update-slice",
}


def memory_ops(
    values: Values, comp: Computation, members: list[Instruction], count: float, fusion: str
) -> list[Op]:
    """The memory rows of a computation's memory-bound instructions, one per group; bytes =
    the group's boundary bytes (HBM reads of values entering + writes of values leaving)."""
    if not members:
        return []
    if fusion == "as_compiled":
        groups = [[m] for m in members]
    else:
        groups = _chains(values, comp, members)
    out = []
    for group in groups:
        if fusion == "ideal" and all(_layout_only(values.view, i) for i in group):
            # copies, transposes, retypes, slices and in-place updates between matmuls and
            # collectives: the target reads and writes them in place (layout assignment,
            # GEMMs on strided operands, XLA GPU's dynamic-slice fusion of GEMMs)
            continue
        nbytes = values.boundary(comp, group)
        lead = max(group, key=lambda i: values.value_bytes(comp, i.name))
        out.append(
            Op(
                kind="memory",
                name=lead.name if len(group) == 1 else f"{lead.name} (+{len(group) - 1})",
                computation=comp.name,
                count=count,
                op_name=lead.op_name or next((g.op_name for g in group if g.op_name), ""),
                source=lead.source or next((g.source for g in group if g.source), ""),
                bytes=nbytes,
                members=len(group),
                first_index=min(i.index for i in group),
                last_index=max(i.index for i in group),
            )
        )
    return out


def _layout_only(view: ModuleView, ins: Instruction) -> bool:
    """A layout-only op, or a fusion of them (scalar ops inside are index arithmetic, such
    as a reversed loop counter)."""
    if ins.opcode in _LAYOUT:
        return True
    body = view.fused(ins)
    return body is not None and all(
        i.opcode in _LAYOUT or (not i.shape.is_tuple and i.shape.size <= 1)
        for i in body.instructions
    )


def _heavy_depth(values: Values, comp: Computation, names: set[str]) -> dict[str, int]:
    """For every instruction, the number of heavy ops (not a member, not free) on its
    longest path of operands."""
    depth: dict[str, int] = {}
    for ins in comp.instructions:
        d = 0
        for o in ins.operands:
            src = comp.by_name.get(o)
            if src is None:
                continue
            heavy = src.name not in names and not values.view.is_free(src)
            d = max(d, depth.get(o, 0) + (1 if heavy else 0))
        depth[ins.name] = d
    return depth


def _chains(
    values: Values, comp: Computation, members: list[Instruction]
) -> list[list[Instruction]]:
    """Memory-bound ops that one kernel can run: connected (through aliases) and at the
    same depth of heavy ops (matmuls, kernels, collectives, calls), so that no member
    waits on a heavy op that waits on another member."""
    names = {m.name: m for m in members}
    depth = _heavy_depth(values, comp, set(names))
    parent = {n: n for n in names}

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for m in members:
        for o in m.operands:
            src = values.resolve(comp, o)
            if src in names and depth[src] == depth[m.name]:
                parent[find(src)] = find(m.name)
    groups: dict[str, list[Instruction]] = {}
    for m in members:
        groups.setdefault(find(m.name), []).append(m)
    return list(groups.values())


def absorb(
    values: Values,
    comp: Computation,
    kernels: dict[str, list[Instruction]],
    matmuls: list[Instruction],
    memory: list[Instruction],
) -> None:
    """XLA drops the metadata of some ops it rewrites (a batched dot turned 2-D): an op
    without an op_name joins a marked kernel when all its users are in that kernel, or
    when it consumes the kernel's values and no other kernel's. Moves them (in place) from
    `matmuls` and `memory` into `kernels`."""
    owner = {m.name: key for key, ms in kernels.items() for m in ms}

    def unnamed(ins):
        body = values.view.fused(ins)
        names = [ins.op_name] + ([i.op_name for i in body.instructions] if body else [])
        return not any(names)

    candidates = [i for i in matmuls + memory if unnamed(i)]
    changed = True
    while changed:
        changed = False
        for ins in candidates:
            if ins.name in owner:
                continue
            users = {u.name for u, _ in values.uses(comp, ins.name)}
            user_keys = {owner.get(u) for u in users}
            src_keys = {owner.get(values.resolve(comp, o)) for o in ins.operands} - {None}
            key = None
            if users and len(user_keys) == 1 and None not in user_keys:
                key = user_keys.pop()
            elif len(src_keys) == 1:
                key = src_keys.pop()
            if key is not None:
                owner[ins.name] = key
                kernels[key].append(ins)
                changed = True
    matmuls[:] = [i for i in matmuls if i.name not in owner]
    memory[:] = [i for i in memory if i.name not in owner]
