"""The traversal that turns a parsed HLO module into op rows (private; `build_table` is its
public entry in `emu.program.table`).

Each computation is visited with the number of times it runs per step: the entry once, a
loop body x its trip count (`_loops`), each of a conditional's n branches with weight 1/n.
Within a computation, every instruction is sorted into one bucket: free (skipped), control
flow (visited), collective (`_collectives`), marked kernel, matmul (`_matmul`), custom call,
memory-bound (`_grouping`) or uncosted; matmuls, kernels and memory groups become rows once
the whole computation is sorted.
"""

from __future__ import annotations

import dataclasses

from emu.program._collectives import Placement, collective_op
from emu.program._dtypes import LogicalTypes
from emu.program._grouping import absorb, memory_ops
from emu.program._loops import carried_constants, trip_count
from emu.program._matmul import attention_call_op, kernel_op, matmul_op
from emu.program._opcodes import (
    COLLECTIVE_OPS,
    DONE_OPS,
    FREE_TARGETS,
    MEMORY_OPS,
    ModuleView,
    is_scalar,
)
from emu.program._optable import ROLE_OF_AXIS, MeshInfo, Op, OpTable
from emu.program._values import ConstantFlags, Values, uncosted_op
from emu.program.hlo import Computation, Instruction, Module

__all__ = ["Builder"]

#: control flow: never skipped as constant-derived
_CONTROL = ("while", "call", "conditional")


@dataclasses.dataclass
class _Buckets:
    """What one computation's instructions become once all are sorted."""

    matmuls: list[Instruction] = dataclasses.field(default_factory=list)
    kernels: dict[str, list[Instruction]] = dataclasses.field(default_factory=dict)
    memory: list[Instruction] = dataclasses.field(default_factory=list)
    async_rows: dict[str, int] = dataclasses.field(default_factory=dict)


class Builder:
    """Visits a module's computations and appends one row per costed thing."""

    def __init__(self, module: Module, mesh: MeshInfo, *, fusion: str, axis_roles: dict):
        if fusion not in ("ideal", "as_compiled"):
            raise ValueError(f"fusion must be 'ideal' or 'as_compiled' (got {fusion!r}).")
        self.module = module
        self.mesh = mesh
        self.fusion = fusion
        self.view = ModuleView(module)
        self.types = LogicalTypes(self.view)
        self.consts = ConstantFlags()
        self.values = Values(self.view, self.types, self.consts)
        roles = {**ROLE_OF_AXIS, **(axis_roles or {})}
        self.placement = Placement(mesh, roles, module.num_partitions or mesh.size)
        self.ops: list[Op] = []
        self.notes: list[str] = []

    def run(self) -> OpTable:
        """The op table of the whole module (entry computation, once per step)."""
        self.visit(self.module.entry, 1.0, None)
        return OpTable(self.ops, self.mesh, self.mesh.size, self.fusion, self.notes)

    def _add(self, op: Op | None) -> int:
        """Append a row; its index (-1 for None)."""
        if op is None:
            return -1
        self.ops.append(op)
        return len(self.ops) - 1

    def visit(
        self,
        comp: Computation,
        count: float,
        param_ld: list | None,
        param_const: list[bool] | None = None,
    ) -> None:
        """Rows of `comp` run `count` times per step, its parameters typed as `param_ld`
        and flagged constant-derived as `param_const`."""
        self.types.compute(comp, param_ld)
        self.consts.compute(comp, param_const)
        b = _Buckets()
        for ins in comp.instructions:
            if self.view.is_free(ins):
                continue
            if self.consts.is_const(comp, ins.name) and ins.opcode not in _CONTROL:
                continue
            self._sort(comp, ins, count, b)
        if b.kernels:
            absorb(self.values, comp, b.kernels, b.matmuls, b.memory)
        for ins in b.matmuls:
            self._add(matmul_op(self.values, comp, ins, count))
        for key, members in b.kernels.items():
            self._add(kernel_op(self.values, comp, key, members, count))
        for op in memory_ops(self.values, comp, b.memory, count, self.fusion):
            self._add(op)

    def _sort(self, comp: Computation, ins: Instruction, count: float, b: _Buckets) -> None:
        """Cost or bucket one instruction (control flow and collectives at once)."""
        op = ins.opcode
        if op in DONE_OPS:
            self._close_async(comp, ins, b.async_rows)
        elif op == "while":
            self._while(comp, ins, count)
        elif op == "call":
            self.visit(self.view.comp(ins.attrs["to_apply"]), count, self.types.args(comp, ins))
        elif op == "conditional":
            self._conditional(ins, count)
        elif op == "async-start":
            row = self._async_start(comp, ins, count)
            if row is not None:
                b.async_rows[ins.name] = row
        elif op in COLLECTIVE_OPS:
            row = self._add(collective_op(self.values, self.placement, comp, ins, count))
            if row >= 0 and op.endswith("-start"):
                self.ops[row].is_async = True
                b.async_rows[ins.name] = row
        elif (key := self.view.kernel_key(ins)) is not None:
            b.kernels.setdefault(key, []).append(ins)
        elif self.view.is_matmul(ins):
            b.matmuls.append(ins)
        elif op == "custom-call":
            self._custom_call(comp, ins, count)
        elif op in MEMORY_OPS or op == "fusion":
            if not is_scalar(ins):
                b.memory.append(ins)
        else:
            reason = f"opcode '{op}' has no cost model in emu"
            self._add(uncosted_op(self.values, comp, ins, count, reason))

    # ------------------------------------------------------------------ control flow
    def _while(self, comp: Computation, ins: Instruction, count: float) -> None:
        """Body x trip count, condition x (trip count + 1); an unknown count is charged once."""
        trips = trip_count(self.view, comp, ins)
        if trips is None:
            trips = 1.0
            self.notes.append(
                f"while loop {ins.name}: trip count unknown (no known_trip_count and no constant "
                "bound in its condition); its body is charged once"
            )
        body = self.view.comp(ins.attrs["body"])
        passed = carried_constants(self.consts, comp, ins, body)
        lds = [self.types.loop(comp, ins)]
        self.visit(body, count * trips, lds, passed)
        self.visit(self.view.comp(ins.attrs["condition"]), count * (trips + 1), lds, passed)

    def _conditional(self, ins: Instruction, count: float) -> None:
        """Each of n branches with weight 1/n."""
        branches = ins.called()
        for name in branches:
            self.visit(self.view.comp(name), count / max(len(branches), 1), None)
        if len(branches) > 1:
            self.notes.append(
                f"conditional {ins.name}: each of its {len(branches)} branches is "
                f"charged with weight 1/{len(branches)}"
            )

    def _async_start(self, comp: Computation, ins: Instruction, count: float) -> int | None:
        """An async-start wrapping a collective: its row, overlappable, at the start's slot;
        one wrapping other work is visited as a call."""
        inner = self.view.comp(ins.attrs["calls"]) if "calls" in ins.attrs else None
        if inner is None:
            reason = "async-start without a called computation"
            return self._add(uncosted_op(self.values, comp, ins, count, reason))
        coll = next((i for i in inner.instructions if i.opcode in COLLECTIVE_OPS), None)
        if coll is None:
            self.visit(inner, count, self.types.args(comp, ins))
            return None
        self.types.compute(inner, self.types.args(comp, ins))
        row = self._add(collective_op(self.values, self.placement, inner, coll, count))
        if row < 0:
            return None
        self.ops[row].is_async = True
        self.ops[row].computation = comp.name
        self.ops[row].first_index = ins.index
        self.ops[row].last_index = ins.index
        return row

    def _close_async(self, comp: Computation, ins: Instruction, async_rows: dict) -> None:
        """A done (through get-tuple-elements and other dones) ends its start's window."""
        todo, seen = list(ins.operands), set()
        while todo:
            v = todo.pop()
            if v in seen:
                continue
            seen.add(v)
            if v in async_rows:
                self.ops[async_rows[v]].last_index = ins.index
                return
            src = comp.by_name.get(v)
            if src is not None and src.opcode in DONE_OPS | {"get-tuple-element"}:
                todo += list(src.operands)

    def _custom_call(self, comp: Computation, ins: Instruction, count: float) -> None:
        """Free targets cost nothing, attention calls are kernels, the rest is uncosted."""
        target = ins.attrs.get("custom_call_target", "").strip('"')
        if any(target.startswith(t) for t in FREE_TARGETS):
            return
        if "fmha" in target.lower() or "flash" in target.lower():
            self._add(attention_call_op(self.values, comp, ins, count, target))
            return
        reason = f"custom call '{target}' has no cost model in emu"
        self._add(uncosted_op(self.values, comp, ins, count, reason))
