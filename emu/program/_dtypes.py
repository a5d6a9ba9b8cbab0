"""Logical element types (private): the types of the program, not of the CPU's float
normalisation.

XLA's CPU pipeline computes bf16 dots and elementwise ops in f32 and brackets them with
converts; GPU and TPU keep bf16. A value's logical type is the narrowest type along its chain
of converts (a dot's result takes the wider of its operands' logical types; a loop's carried
value the wider of what enters and what the body writes back; a collective's result the type
every consumer converts it to), so bytes and precisions are those of the program.
"""

from __future__ import annotations

from emu.program._opcodes import (
    ALIAS_OPS,
    COLLECTIVE_OPS,
    DONE_OPS,
    ModuleView,
    is_gemm_call,
    leaf_dtypes,
    narrower,
    wider,
)
from emu.program.hlo import Computation, Instruction

__all__ = ["LogicalTypes"]

#: layout-only ops a consumer may read a value through before converting it
_LAYOUT = {"copy", "transpose", "bitcast", "reshape"}


class LogicalTypes:
    """Logical element types of every value, per computation (`compute` fills them in)."""

    def __init__(self, view: ModuleView):
        self.view = view
        self.ldtype: dict[tuple, list[str]] = {}

    def ld(self, comp: Computation, name: str, index: int = 0) -> str:
        """Logical type of element `index` of value `name` (its declared type if unknown)."""
        got = self.ldtype.get((comp.name, name))
        if got is None:
            ins = comp.by_name.get(name)
            return ins.shape.dtype if ins is not None and not ins.shape.is_tuple else "f32"
        return got[index] if index < len(got) else got[-1]

    def args(self, comp: Computation, ins: Instruction) -> list[str]:
        """Logical types of an instruction's operands (a called computation's parameters)."""
        return [self.ld(comp, o) for o in ins.operands]

    def compute(self, comp: Computation, param_ld: list | None = None) -> None:
        """Fill in the logical types of `comp`, its parameters typed as `param_ld`."""
        for ins in comp.instructions:
            out = self._of(comp, ins, leaf_dtypes(ins), param_ld)
            if ins.opcode in COLLECTIVE_OPS and not ins.shape.is_tuple:
                # the CPU pipeline moves the bf16 rounding past collectives it upcast: the
                # type every consumer converts the result to is the program's
                seen = self.consumed_as(comp, ins.name)
                if seen is not None:
                    out = [narrower(out[0], seen)]
            self.ldtype[(comp.name, ins.name)] = out

    def _of(self, comp, ins: Instruction, declared: list[str], param_ld) -> list[str]:
        """Logical types of one instruction's result, by opcode."""
        op = ins.opcode
        out = list(declared)
        if op == "parameter" and param_ld is not None:
            out = _parameter(ins, declared, param_ld) or out
        elif op == "while" and ins.operands:
            out = self.loop(comp, ins)
        elif op == "get-tuple-element" and ins.operands:
            src = comp.by_name.get(ins.operands[0])
            idx = int(ins.attrs.get("index", "0"))
            if src is not None and (comp.name, src.name) in self.ldtype:
                got = self.ldtype[(comp.name, src.name)]
                if idx < len(got) and got[idx] != "tuple":
                    out = [narrower(declared[0], got[idx])]
        elif op == "tuple":
            out = [self.ld(comp, o) for o in ins.operands]
        elif op in ALIAS_OPS:
            if ins.operands and not ins.shape.is_tuple:
                out = [narrower(declared[0], self.ld(comp, ins.operands[0]))]
        elif self.view.is_pure_convert(ins):
            out = self.fusion_out(comp, ins, declared)
        elif self.view.is_matmul(ins) and not ins.shape.is_tuple:
            a, b = self.matmul_operands(comp, ins)
            out = [narrower(declared[0], wider(a, b))]
        elif op in COLLECTIVE_OPS or op in DONE_OPS:
            if ins.operands and op not in ("async-done",):
                lds = [self.ld(comp, o) for o in ins.operands]
                if ins.shape.is_tuple and len(lds) == len(declared):
                    out = [narrower(d, x) for d, x in zip(declared, lds, strict=True)]
                elif not ins.shape.is_tuple:
                    out = [narrower(declared[0], lds[0])]
        elif op == "fusion":
            out = self.fusion_out(comp, ins, declared)
        return out

    def loop(self, comp: Computation, ins: Instruction) -> list[str]:
        """Logical types of a loop's carried values: what enters the loop, widened by what
        the body writes back (the CPU pipeline hoists bf16 -> f32 converts out of loops)."""
        key = (comp.name, ins.name, "loop")
        if key in self.ldtype:
            return self.ldtype[key]
        declared = leaf_dtypes(ins)
        init = list(self.ldtype.get((comp.name, ins.operands[0]), declared))
        body = self.view.comp(ins.attrs["body"])
        lds = [narrower(d, x) for d, x in zip(declared, init + declared[len(init) :], strict=True)]
        for _ in range(3):
            self.compute(body, [lds])
            back = self.ldtype.get((body.name, body.root.name), declared)
            new = [
                narrower(d, wider(a, b))
                for d, a, b in zip(declared, lds, back + declared[len(back) :], strict=True)
            ]
            if new == lds:
                break
            lds = new
        self.ldtype[key] = lds
        return lds

    def consumed_as(self, comp: Computation, name: str) -> str | None:
        """The widest type the consumers of `name` convert it to before computing with it
        (through layout-only ops), or None when some consumer uses it as it is."""
        found: list[str] = []

        def inner(body: Computation, v: str, depth: int) -> bool:
            for u in body.users.get(v, []):
                if u.opcode == "convert":
                    found.append(u.shape.dtype)
                elif u.opcode in _LAYOUT and depth < 8:
                    if not inner(body, u.name, depth + 1):
                        return False
                else:
                    return False
            return bool(body.users.get(v))

        for u in comp.users.get(name, []):
            if u.opcode == "convert" or (self.view.is_pure_convert(u) and u.opcode != "bitcast"):
                found.append(u.shape.dtype)
                continue
            body = self.view.fused(u)
            if body is None and u.opcode in _LAYOUT:
                if self.consumed_as(comp, u.name) is None:
                    return None
                found.append(self.consumed_as(comp, u.name))
                continue
            if body is None:
                return None
            params = body.parameters()
            for pos, o in enumerate(u.operands):
                if o == name and (pos >= len(params) or not inner(body, params[pos].name, 0)):
                    return None
        if not found:
            return None
        widest = found[0]
        for t in found[1:]:
            widest = wider(widest, t)
        return widest

    def matmul_operands(self, comp: Computation, ins: Instruction) -> tuple[str, str]:
        """Logical types of a matmul's two operands (inside its fusion, traced back)."""
        if ins.opcode in ("dot", "convolution") or is_gemm_call(ins):
            return self.ld(comp, ins.operands[0]), self.ld(comp, ins.operands[1])
        body = self.view.fused(ins)
        outer = [self.ld(comp, o) for o in ins.operands]
        dot = next(i for i in body.instructions if i.opcode in ("dot", "convolution"))
        return tuple(_trace_inner(body, o, outer) for o in dot.operands[:2])

    def fusion_out(self, comp: Computation, ins: Instruction, declared: list[str]) -> list[str]:
        """Logical types of a fusion's results: its roots traced back through converts."""
        body = self.view.fused(ins)
        if body is None:
            return declared
        outer = [self.ld(comp, o) for o in ins.operands]
        root = body.root
        if root.opcode == "tuple":
            return [
                narrower(d, _trace_inner(body, o, outer))
                for d, o in zip(declared, root.operands, strict=False)
            ]
        if ins.shape.is_tuple:
            return declared
        return [narrower(declared[0], _trace_inner(body, root.name, outer))]


def _parameter(ins: Instruction, declared: list[str], param_ld: list) -> list[str] | None:
    """A parameter's types: the narrower of its declared type and its argument's logical
    type (None when the argument's type does not apply)."""
    i = int(ins.literal or 0)
    got = param_ld[i] if i < len(param_ld) else None
    if isinstance(got, list) and ins.shape.is_tuple:
        return [
            narrower(d, g) if d != "tuple" else d
            for d, g in zip(declared, got + declared[len(got) :], strict=True)
        ]
    if isinstance(got, str) and not ins.shape.is_tuple:
        return [narrower(declared[0], got)]
    return None


def _trace_inner(body: Computation, name: str, outer: list[str]) -> str:
    """Logical dtype of an inner value of a fusion: follow converts back to a parameter."""
    seen = 0
    ins = body.by_name.get(name)
    best = ins.shape.dtype if ins is not None else "f32"
    while ins is not None and seen < 64:
        seen += 1
        if ins.opcode == "parameter":
            i = int(ins.literal or 0)
            return narrower(best, outer[i]) if i < len(outer) else best
        if ins.opcode in ALIAS_OPS | {"copy", "transpose", "broadcast"} and ins.operands:
            best = narrower(best, ins.shape.dtype)
            ins = body.by_name.get(ins.operands[0])
            continue
        return best
    return best
