"""Loops and their trip counts (private).

A `while` loop's body costs trip count x body, its condition (trip count + 1) x condition.
The trip count is XLA's `known_trip_count` in the loop's backend config (set by its
WhileLoopTripCountAnnotator), else read off the condition `counter <dir> bound` and the
counter's constant initial value:

    LT: bound - init      LE: bound - init + 1      GT: init - bound      GE: init - bound + 1

(clamped at 0); None when neither is readable (the caller charges the body once and says so).
"""

from __future__ import annotations

from emu.program._opcodes import ModuleView, int_literal
from emu.program._values import ConstantFlags
from emu.program.hlo import Computation, Instruction

__all__ = ["trip_count", "carried_constants"]


def trip_count(view: ModuleView, comp: Computation, ins: Instruction) -> float | None:
    """known_trip_count, else bound - init of the condition's `counter < bound`."""
    n = ins.backend_config().get("known_trip_count", {}).get("n")
    if n is not None:
        return float(n)
    cond = view.comp(ins.attrs["condition"])
    root, where = cond.root, cond
    body = view.fused(root)
    if body is not None:
        root, where = body.root, body
    if root.opcode != "compare":
        return None
    bound, index = _bound_and_counter(cond, where, root)
    if bound is None or index is None:
        return None
    init = _tuple_constant(comp, ins, index)
    if init is None:
        return None
    direction = root.attrs.get("direction", "LT")
    trips = bound - init + (1 if direction in ("LE", "GE") else 0)
    if direction in ("GT", "GE"):
        trips = init - bound + (1 if direction == "GE" else 0)
    return float(max(trips, 0))


def _bound_and_counter(
    cond: Computation, where: Computation, compare: Instruction
) -> tuple[int | None, int | None]:
    """(constant bound, tuple index of the counter) of the condition's compare, which sits
    in `cond` or in a fusion `where` that `cond` calls."""

    def outer(name: str) -> Instruction | None:
        # an operand of the compare, seen from the condition computation
        src = where.by_name.get(name)
        if src is not None and src.opcode == "parameter" and where is not cond:
            i = int(src.literal or 0)
            ops = cond.root.operands
            return cond.by_name.get(ops[i]) if i < len(ops) else None
        return src

    bound, index = None, None
    for o in compare.operands:
        src = _through_copies(cond, outer(o))
        if src is None:
            continue
        if src.opcode == "constant":
            bound = int_literal(src.literal)
        elif src.opcode == "get-tuple-element":
            index = int(src.attrs.get("index", "0"))
    return bound, index


def _through_copies(comp: Computation, src: Instruction | None) -> Instruction | None:
    """The instruction behind copies and converts."""
    while src is not None and src.opcode in ("copy", "convert") and src.operands:
        src = comp.by_name.get(src.operands[0])
    return src


def _tuple_constant(comp: Computation, ins: Instruction, index: int) -> int | None:
    """The constant that element `index` of the loop's initial tuple starts from."""
    tup = comp.by_name.get(ins.operands[0]) if ins.operands else None
    if tup is None or tup.opcode != "tuple" or index >= len(tup.operands):
        return None
    src = _through_copies(comp, comp.by_name.get(tup.operands[index]))
    if src is not None and src.opcode == "constant":
        return int_literal(src.literal)
    return None


def carried_constants(
    consts: ConstantFlags, comp: Computation, ins: Instruction, body: Computation
) -> list[bool]:
    """Which loop-carried values stay constant-derived: constant on entry and passed through
    the body unchanged (root element i = get-tuple-element i of the body's parameter)."""
    init = consts.of(comp, ins.operands[0]) if ins.operands else []
    passed = []
    root = body.root
    params = body.parameters()
    for i, flag in enumerate(init):
        out = root.operands[i] if root.opcode == "tuple" and i < len(root.operands) else ""
        src = body.by_name.get(out)
        same = (
            src is not None
            and src.opcode == "get-tuple-element"
            and int(src.attrs.get("index", "-1")) == i
            and params
            and src.operands[0] == params[0].name
        )
        passed.append(bool(flag and same))
    return passed
