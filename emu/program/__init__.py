"""Emulate the researcher's own JAX program: read its optimised, SPMD-partitioned HLO and cost
every matmul, fused kernel, memory-bound op and collective on any emu System.

    from emu import program
    prog = program.trace_program("emu/examples/llama.py:train", devices=64,
                                 kwargs={"size": "8b", "seq_len": 4096, "batch": 8})
    gb, cm = emu.load_system("gb200_nvl72"), emu.load_system("cloudmatrix384")
    for r in prog.estimate([gb, cm], tokens_per_step=8 * 4096):
        print(r.system, r.step_time_s, r.tokens_per_joule)
    # a pure JAX function of the system: jit, vmap, grad
    g = jax.grad(lambda s: prog.cost(s, tokens_per_step=32768).tokens_per_joule)(gb)
    g.tiers[0].bytes_per_s      # d tokens/J / d scale-up bandwidth

Pieces (each a module): `hlo` parses HLO text; `table` turns it into static op rows
(conventions in its docstring: logical bf16 types, ideal fusion of memory-bound ops,
fused kernels marked with `fused_kernel`, collectives placed by (size, stride) in mesh
order); `cost` is the pure JAX cost; `tracing` compiles programs for N CPU devices (in a
subprocess when needed); `report` holds the typed results; `cli` the `emu program` command.
"""

from typing import TYPE_CHECKING

from emu._lazy import lazy_dir, lazy_getattr

#: public name -> the submodule that defines it; imported on first use (PEP 562), so that
#: the CLI's flags (`emu.program.cli`) do not import the HLO costing, and JAX with it
_NAMES = {
    "ProgramBreakdown": "emu.program.cost",
    "ProgramCost": "emu.program.cost",
    "program_cost": "emu.program.cost",
    "Program": "emu.program.estimate",
    "from_hlo": "emu.program.estimate",
    "trace": "emu.program.estimate",
    "trace_program": "emu.program.estimate",
    "CollectiveSummary": "emu.program.report",
    "ProgramResult": "emu.program.report",
    "TopOp": "emu.program.report",
    "text_report": "emu.program.report",
    "MeshInfo": "emu.program.table",
    "OpTable": "emu.program.table",
    "build_table": "emu.program.table",
    "fused_kernel": "emu.program.table",
}


if TYPE_CHECKING:  # the same names for type checkers and the docs (griffe)
    from emu.program.cost import ProgramBreakdown, ProgramCost, program_cost
    from emu.program.estimate import Program, from_hlo, trace, trace_program
    from emu.program.report import CollectiveSummary, ProgramResult, TopOp, text_report
    from emu.program.table import MeshInfo, OpTable, build_table, fused_kernel


__getattr__ = lazy_getattr(__name__, _NAMES, globals())
__dir__ = lazy_dir(globals())


__all__ = [
    "trace",
    "trace_program",
    "from_hlo",
    "Program",
    "ProgramResult",
    "ProgramCost",
    "ProgramBreakdown",
    "CollectiveSummary",
    "TopOp",
    "MeshInfo",
    "OpTable",
    "build_table",
    "program_cost",
    "fused_kernel",
    "text_report",
]
