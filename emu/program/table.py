"""The op table: every costed thing an SPMD-partitioned HLO module does on one device per step.

Rows (host side, `Op`) become static numpy arrays (`OpTable`) that `emu.program.cost` turns
into seconds with emu's own compute, collective and power functions. One device's view:
the module is the per-device program after SPMD partitioning.

What a row is, and the conventions that make a CPU-compiled module speak for the target:

- **matmul**: a `dot` or `convolution` (bare or inside a fusion). FLOPs = 2 x output elements
  x contracted elements; (m, n, k) with batch dimensions as `count`; precision from the
  operands' logical element type (below).
- **kernel**: a fused kernel the user marked with `fused_kernel(name)` (a `jax.named_scope`
  `emu_kernel[name]` or `emu_kernel[name,causal]`): all its ops in one computation, costed as
  one launch whose FLOPs are those of its dots (x 1/2 for causal: a flash kernel skips the
  masked blocks) and whose HBM bytes are only the values crossing its boundary (the scores of
  an attention never reach HBM).
- **memory**: memory-bound work. With `fusion="ideal"` (default) each connected run of
  memory-bound ops between matmuls, collectives and kernels is one kernel reading its inputs
  and writing its outputs once (what a fusing GPU/TPU compiler emits; the CPU pipeline's own
  fusion boundaries are not the target's). With `fusion="as_compiled"` every top-level HLO
  fusion is one kernel with its own bytes in and out.
- **collective**: all-reduce, all-gather, reduce-scatter, all-to-all, collective-permute (and
  their async `-start`/`-done` pairs, marked overlappable with the ops scheduled in between).
  Bytes follow emu's convention: the full buffer (all-reduce operand, all-gather result,
  reduce-scatter operand), what each rank sends (all-to-all, collective-permute). The group is
  placed by (size, stride) in rank order (device ids = positions in the mesh); a non-uniform
  group gets the stride of its span, (max - min + 1) / size.
- **uncosted**: a custom call or op emu cannot cost; listed, never dropped.

Logical element types: XLA's CPU pipeline computes bf16 dots and elementwise ops in f32 and
brackets them with converts; GPU and TPU keep bf16. A value's logical type is the narrowest
type along its chain of converts (a dot's result takes the wider of its operands' logical
types), so bytes and precisions are those of the program, not of the CPU's float
normalisation. Pure-convert ops are free: the target fuses them into their neighbours.

An all-reduce whose every consumer reads only its own 1/g slice (a dynamic-slice) is the
reduce-scatter that the GPU and TPU pipelines emit (their ReduceScatterCreator pass; the CPU
pipeline leaves all-reduce + dynamic-slice) and is costed as one.

Loops multiply their body by the trip count (`known_trip_count` in the backend config, else
the bound of the condition's compare); conditionals charge each branch with weight 1/branches.

Where each rule lives (private modules, each with its formulas in its docstring):
`_optable` the rows and arrays; `_opcodes` op classification; `_dtypes` logical types;
`_values` constant-derived values and bytes read/written; `_matmul` dot, convolution, GEMM,
attention and fused-kernel FLOPs; `_collectives` collective bytes and replica-group
placement; `_loops` trip counts; `_grouping` memory-bound grouping; `_builder` the traversal.
"""

from __future__ import annotations

import re

from emu.program._builder import Builder
from emu.program._collectives import mesh_misfits, overlap_windows, unplaced_notes
from emu.program._optable import (
    COLLECTIVE_KINDS,
    KERNEL_MARK,
    ROLE_OF_AXIS,
    ROLES,
    MeshInfo,
    Op,
    OpTable,
    check_roles,
)
from emu.program.hlo import parse_module

__all__ = [
    "Op",
    "OpTable",
    "MeshInfo",
    "build_table",
    "fused_kernel",
    "KERNEL_MARK",
    "COLLECTIVE_KINDS",
    "ROLES",
    "ROLE_OF_AXIS",
]


def fused_kernel(name: str, *, causal: bool = False):
    """A `jax.named_scope` that marks the ops under it as one fused kernel (see module doc):

    >>> import jax, jax.numpy as jnp
    >>> def attention(q, k, v):
    ...     with fused_kernel("flash_attention", causal=True):
    ...         return jax.nn.softmax(q @ k.T) @ v
    """
    import jax

    if not re.fullmatch(r"[\w.\-]+", name):
        raise ValueError(f"fused_kernel: name must be letters, digits, _ . - (got {name!r}).")
    return jax.named_scope(f"{KERNEL_MARK}{name}{',causal' if causal else ''}]")


def build_table(
    hlo_text: str,
    mesh: MeshInfo,
    *,
    fusion: str = "ideal",
    axis_roles: dict[str, str] | None = None,
    check_mesh: bool = False,
) -> OpTable:
    """The op table of an optimised, SPMD-partitioned HLO module (`compiled.as_text()`).

    Args:
        hlo_text: the module's text, compiled for `mesh.size` devices.
        mesh: the mesh it was compiled for (device id = position in mesh order).
        fusion: "ideal" (memory-bound runs fused as a GPU/TPU compiler would) or
            "as_compiled" (every top-level HLO fusion is one kernel).
        axis_roles: overlap class (`ROLES`) of mesh axes whose names `ROLE_OF_AXIS` does
            not know.
        check_mesh: the mesh is the caller's word (HLO compiled elsewhere): note the
            replica groups that lie along no mesh axis or cover an axis only in part (a
            traced program's mesh is the one it ran on).

    Returns:
        The rows (per device, per execution; `count` executions per step) as static arrays.
    """
    module = parse_module(hlo_text)
    _check(module.num_partitions, mesh, axis_roles or {}, replicas=module.num_replicas)
    builder = Builder(module, mesh, fusion=fusion, axis_roles=axis_roles or {})
    table = builder.run()
    table.io_bytes = module.io_bytes()
    if check_mesh:
        table.notes.extend(mesh_misfits(builder.placement))
    if not table.ops:
        raise ValueError(
            "the program has nothing emu can price (no matmul, kernel, memory traffic or "
            "collective: zero-size arrays?); give it the arrays of a real step."
        )
    table.notes.extend(unplaced_notes(table))
    overlap_windows(table)
    return table


def _check(
    num_partitions: int, mesh: MeshInfo, axis_roles: dict[str, str], *, replicas: int = 1
) -> None:
    """One-line ValueErrors for a module compiled for another number of devices than the
    mesh has (num_partitions x replica_count of its header; 1 x 1 when the header states
    neither) and for bad axis roles."""
    devices = num_partitions * replicas
    if devices != mesh.size:
        ways = (
            f"partitioned {num_partitions} ways"
            if num_partitions > 1 and replicas == 1
            else f"compiled for {devices} device{'s' if devices > 1 else ''} "
            f"(num_partitions={num_partitions}, replica_count={replicas} in its header; "
            "1 where it states none)"
        )
        raise ValueError(
            f"the HLO module is {ways} but the mesh "
            f"{dict(zip(mesh.axis_names, mesh.shape, strict=True))} has {mesh.size} devices; "
            "pass the mesh the program was compiled for."
        )
    unknown = set(axis_roles) - set(mesh.axis_names)
    if unknown:
        raise ValueError(
            f"axis_roles names unknown mesh axes {sorted(unknown)}; the mesh has "
            f"{', '.join(mesh.axis_names)}."
        )
    check_roles(axis_roles)
