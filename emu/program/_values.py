"""Values and their bytes (private): constant-derived values, aliases, users, and the HBM
bytes an instruction or a group of instructions reads and writes.

Bytes of a value = elements x bytes per element of its logical type (`_dtypes`). A reader
of a slice (dynamic-slice, slice, gather) reads only the slice; an in-place update
(dynamic-update-slice, scatter) reads nothing of its buffer and writes only the update; a
fusion whose every path from a parameter ends in a slice reads only the slices. A group of
instructions run as one kernel reads each value entering it once and writes each value
leaving it once (`boundary`); values computed from constants alone are generated in the
kernels that use them and cost nothing.
"""

from __future__ import annotations

from emu.program._dtypes import LogicalTypes
from emu.program._opcodes import (
    ALIAS_OPS,
    COLLECTIVE_OPS,
    DONE_OPS,
    ELEMENTWISE,
    IN_PLACE,
    SLICING,
    ModuleView,
    width,
)
from emu.program._optable import Op
from emu.program.hlo import Computation, Instruction

__all__ = ["ConstantFlags", "Values", "uncosted_op"]

#: ops whose results are never constant-derived (they communicate, call or draw randomness)
_NEVER_CONST = ("while", "call", "conditional", "custom-call", "async-start")


class ConstantFlags:
    """Values computed from constants and iotas alone (masks, position tables): the target
    generates them inside the kernels that use them, so they cost nothing."""

    def __init__(self):
        self.flags: dict[str, dict[str, list[bool]]] = {}

    def compute(self, comp: Computation, param_const: list[bool] | None) -> None:
        """Flag every value of `comp`, its parameters flagged as `param_const`."""
        flags: dict[str, list[bool]] = {}
        for ins in comp.instructions:
            flags[ins.name] = _const_flags(ins, flags, param_const)
        self.flags[comp.name] = flags

    def of(self, comp: Computation, name: str) -> list[bool]:
        """Per-element flags of a value ([] if unknown)."""
        return self.flags.get(comp.name, {}).get(name, [])

    def is_const(self, comp: Computation, name: str) -> bool:
        """Every element of the value is constant-derived."""
        return all(self.flags.get(comp.name, {}).get(name, [False]))


def _const_flags(ins: Instruction, flags: dict, param_const: list[bool] | None) -> list[bool]:
    op = ins.opcode
    n = len(ins.shape.elements) if ins.shape.is_tuple else 1
    if op in ("constant", "iota"):
        return [True]
    if op == "parameter":
        i = int(ins.literal or 0)
        pc = param_const or []
        if ins.shape.is_tuple and pc:
            return list(pc) + [False] * (n - len(pc))
        return [bool(pc[i]) if i < len(pc) else False]
    if op == "get-tuple-element":
        src = flags.get(ins.operands[0], [])
        idx = int(ins.attrs.get("index", "0"))
        return [bool(src[idx]) if idx < len(src) else False]
    if op == "tuple":
        return [all(flags.get(o, [False])) for o in ins.operands]
    if (
        op in COLLECTIVE_OPS
        or op in DONE_OPS
        or op in _NEVER_CONST
        or op.startswith("rng")
        or op in ("partition-id", "replica-id")
    ):
        return [False] * n
    ok = all(all(flags.get(o, [False])) for o in ins.operands)
    return [ok] * n


class Values:
    """Aliases, users and bytes of the values of a module (logical types from `types`)."""

    def __init__(self, view: ModuleView, types: LogicalTypes, consts: ConstantFlags):
        self.view = view
        self.types = types
        self.consts = consts

    def resolve(self, comp: Computation, name: str) -> str:
        """The value behind aliases (bitcast, reshape, pure converts)."""
        for _ in range(256):
            ins = comp.by_name.get(name)
            if ins is None or not ins.operands:
                return name
            if ins.opcode in ALIAS_OPS or self.view.is_pure_convert(ins):
                name = ins.operands[0]
                continue
            return name
        return name

    def uses(self, comp: Computation, name: str) -> list[tuple[Instruction, int]]:
        """(user, operand position) of a value, looking through aliases."""
        out, todo, seen = [], [name], set()
        while todo:
            v = todo.pop()
            if v in seen:
                continue
            seen.add(v)
            for u in comp.users.get(v, []):
                if u.opcode in ALIAS_OPS or self.view.is_pure_convert(u):
                    todo.append(u.name)
                else:
                    out += [(u, i) for i, o in enumerate(u.operands) if o == v]
        return out

    def value_bytes(self, comp: Computation, name: str) -> float:
        """Bytes of a value: elements x logical element bytes (summed over a tuple)."""
        ins = comp.by_name[name]
        if ins.shape.is_tuple:
            lds = self.types.ldtype.get((comp.name, name), [])
            return sum(
                e.size * width(lds[i] if i < len(lds) else e.dtype)
                for i, e in enumerate(ins.shape.elements)
                if not e.is_tuple
            )
        return ins.shape.size * width(self.types.ld(comp, name))

    def read_bytes(self, comp: Computation, user: Instruction, pos: int, value: str) -> float:
        """Bytes `user` reads of operand `pos` (the value `value`)."""
        full = self.value_bytes(comp, value)
        el = width(self.types.ld(comp, value))
        if user.opcode in SLICING and pos == 0:
            return min(full, user.shape.size * el)
        if user.opcode in IN_PLACE and pos == 0:
            return 0.0
        body = self.view.fused(user)
        if body is None:
            return full
        params = body.parameters()
        if pos >= len(params):
            return full
        sliced = _sliced_read(body, params[pos].name, el)
        return min(full, sliced) if sliced is not None else full

    def written_bytes(self, comp: Computation, ins: Instruction) -> float:
        """Bytes `ins` writes: in-place updates write only the update."""
        if ins.opcode in IN_PLACE and len(ins.operands) > 1:
            upd = ins.operands[1] if ins.opcode == "dynamic-update-slice" else ins.operands[-1]
            return self.value_bytes(comp, upd) if upd in comp.by_name else 0.0
        body = self.view.fused(ins)
        if body is None:
            return self.value_bytes(comp, ins.name)
        roots = [body.root]
        if body.root.opcode == "tuple":
            roots = [body.by_name[o] for o in body.root.operands if o in body.by_name]
        lds = self.types.ldtype.get((comp.name, ins.name), [])
        total = 0.0
        for i, r in enumerate(roots):
            while r.opcode in ALIAS_OPS and r.operands and r.operands[0] in body.by_name:
                r = body.by_name[r.operands[0]]
            ld = lds[i] if i < len(lds) else r.shape.dtype
            if r.opcode in IN_PLACE and len(r.operands) > 1:
                upd = body.by_name.get(r.operands[1 if r.opcode != "scatter" else -1])
                total += (upd.shape.size if upd is not None else 0) * width(ld)
            elif not r.shape.is_tuple:
                total += r.shape.size * width(ld)
        return total

    def boundary(self, comp: Computation, members: list[Instruction]) -> float:
        """HBM bytes of a group of instructions run as one kernel: values entering the
        group are read once (slices and in-place buffers as such), values leaving it are
        written once."""
        inside = {m.name for m in members}
        reads: dict[str, float] = {}
        total = 0.0
        for m in members:
            for pos, o in enumerate(m.operands):
                src = self.resolve(comp, o)
                if src in inside or src not in comp.by_name:
                    continue
                if self.consts.is_const(comp, src):
                    continue
                got = self.read_bytes(comp, m, pos, o)
                reads[src] = max(reads.get(src, 0.0), got)
        total += sum(reads.values())
        for m in members:
            uses = self.uses(comp, m.name)
            escapes = m.is_root or not uses or any(u.name not in inside for u, _ in uses)
            if escapes:
                total += self.written_bytes(comp, m)
        return total


def _sliced_read(body: Computation, param: str, el: float) -> float | None:
    """Bytes a fused kernel reads of parameter `param` when every path from it (through
    aliases and same-shape elementwise ops) ends in a slice or an in-place update; None when
    some path reads it whole."""
    total = 0.0
    todo, seen = [param], set()
    while todo:
        v = todo.pop()
        if v in seen:
            continue
        seen.add(v)
        dims = body.by_name[v].shape.dims
        if body.by_name[v].is_root or not body.users.get(v):
            return None
        for u in body.users.get(v, []):
            if u.opcode in ALIAS_OPS:
                todo.append(u.name)
            elif u.opcode in SLICING and u.operands[0] == v:
                total += u.shape.size * el
            elif u.opcode in IN_PLACE and u.operands[0] == v:
                continue
            elif u.opcode in ELEMENTWISE and u.shape.dims == dims:
                todo.append(u.name)
            else:
                return None
    return total


def uncosted_op(
    values: Values, comp: Computation, ins: Instruction, count: float, reason: str, flops=0.0
) -> Op:
    """The row of an op emu cannot cost: listed with its bytes in and out and the reason."""
    nbytes = sum(values.value_bytes(comp, o) for o in ins.operands if o in comp.by_name)
    nbytes += values.value_bytes(comp, ins.name)
    return Op.at(comp, ins, kind="uncosted", count=count, bytes=nbytes, flops=flops, note=reason)
