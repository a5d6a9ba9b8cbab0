"""Op classification (private): which HLO opcodes are free, aliases, memory-bound, collectives,
matmuls or marked fused kernels, and `ModuleView`, the questions asked of one parsed module.

Classes of opcodes (XLA's opcode names, `xla/hlo/ir/hlo_opcode.h`):
- free: bookkeeping that moves no data (parameters, tuples, partition ids);
- aliases: ops that only reinterpret or retype a buffer (bitcast, reshape, convert); converts
  are free because the target fuses them into their neighbours;
- memory-bound: elementwise, data movement, reductions, gathers and scatters;
- collectives and their async starts (`COLLECTIVE_OPS`, mapped to the canonical kind) and
  dones (`DONE_OPS`);
- matmuls: dot, convolution, a fusion containing one, a cuBLAS GEMM custom call.
"""

from __future__ import annotations

import re

from emu.program._optable import KERNEL_MARK
from emu.program.hlo import ELEMENT_BYTES, Computation, Instruction, Module, called_name

__all__ = [
    "COLLECTIVE_OPS",
    "DONE_OPS",
    "FREE_OPS",
    "ALIAS_OPS",
    "MEMORY_OPS",
    "SLICING",
    "ELEMENTWISE",
    "IN_PLACE",
    "FREE_TARGETS",
    "GEMM_TARGETS",
    "PRECISION_OF",
    "ModuleView",
    "is_gemm_call",
    "is_scalar",
    "width",
    "narrower",
    "wider",
    "leaf_dtypes",
    "int_literal",
]

#: collective opcode (and async start) -> canonical kind (`COLLECTIVE_KINDS`)
COLLECTIVE_OPS = {
    "all-reduce": "all-reduce",
    "all-reduce-start": "all-reduce",
    "all-gather": "all-gather",
    "all-gather-start": "all-gather",
    "reduce-scatter": "reduce-scatter",
    "all-to-all": "all-to-all",
    "ragged-all-to-all": "all-to-all",
    "collective-permute": "collective-permute",
    "collective-permute-start": "collective-permute",
    "collective-broadcast": "all-gather",
}
#: ends of async pairs (the start carries the cost)
DONE_OPS = {
    "all-reduce-done",
    "all-gather-done",
    "collective-permute-done",
    "async-done",
    "async-update",
}
#: bookkeeping that moves no data
FREE_OPS = {
    "parameter",
    "constant",
    "get-tuple-element",
    "tuple",
    "after-all",
    "partition-id",
    "replica-id",
    "opt-barrier",
    "add-dependency",
    "domain",
    "get-dimension-size",
    "set-dimension-size",
}
#: ops that only reinterpret or retype a buffer: aliases of their operand (converts fuse into
#: their neighbours on the target)
ALIAS_OPS = {"bitcast", "reshape", "convert", "bitcast-convert"}
#: memory-bound ops: costed by the bytes they read and write
MEMORY_OPS = set(
    """add subtract multiply divide maximum minimum power remainder and or xor not negate abs
    exponential exponential-minus-one log log-plus-one sqrt rsqrt cbrt tanh logistic sine cosine
    tan atan2 erf floor ceil round-nearest-afz round-nearest-even sign is-finite compare select
    clamp reduce-precision shift-left shift-right-arithmetic shift-right-logical popcnt clz real
    imag complex broadcast transpose copy slice dynamic-slice dynamic-update-slice concatenate
    pad reverse iota reduce reduce-window select-and-scatter gather scatter sort map rng
    rng-bit-generator stochastic-convert copy-start copy-done""".split()
)
#: ops that read only part of their first operand (the result's size)
SLICING = {"dynamic-slice", "slice", "gather"}
#: ops whose result element depends only on the same element of each operand
ELEMENTWISE = set(
    """add subtract multiply divide maximum minimum power remainder and or xor not negate abs
    exponential exponential-minus-one log log-plus-one sqrt rsqrt cbrt tanh logistic sine cosine
    tan atan2 erf floor ceil round-nearest-afz round-nearest-even sign is-finite compare select
    clamp convert reduce-precision""".split()
)
#: ops that update their first operand in place (read 0 bytes of it, write the update)
IN_PLACE = {"dynamic-update-slice", "scatter"}
#: custom-call targets that move no data on the target
FREE_TARGETS = (
    "Sharding",
    "SPMDFullToShardShape",
    "SPMDShardToFullShape",
    "LayoutConstraint",
    "AllocateBuffer",
    "annotate_device_placement",
    "xla.sdy.",
    "X64Combine",
    "X64SplitLow",
    "X64SplitHigh",
)
#: GEMM custom calls of GPU-compiled modules (`emu program --hlo` of a GPU compile)
GEMM_TARGETS = ("__cublas$gemm", "__cublas$lt$matmul", "__cublas$lt$matmul$f8")
#: HLO element type of a matmul's operands -> emu's precision name (`emu.hardware.peak_flops`)
PRECISION_OF = {
    "bf16": "bf16",
    "f16": "fp16",
    "f32": "tf32",
    "s8": "int8",
    "u8": "int8",
    "f4e2m1fn": "fp4",
}


def width(dtype: str) -> float:
    """Bytes per element of an HLO element type (4 for types emu does not know)."""
    return ELEMENT_BYTES.get(dtype, 4.0)


def narrower(a: str, b: str) -> str:
    """The narrower of two element types (`a` on a tie)."""
    return b if width(b) < width(a) else a


def wider(a: str, b: str) -> str:
    """The wider of two element types (`a` on a tie)."""
    return b if width(b) > width(a) else a


def leaf_dtypes(ins: Instruction) -> list[str]:
    """Declared element types of an instruction's result ("tuple" for nested tuples)."""
    if ins.shape.is_tuple:
        return [e.dtype if not e.is_tuple else "tuple" for e in ins.shape.elements]
    return [ins.shape.dtype]


def is_gemm_call(ins: Instruction) -> bool:
    """A cuBLAS GEMM custom call (`GEMM_TARGETS`) with its two operands."""
    return (
        ins.opcode == "custom-call"
        and ins.attrs.get("custom_call_target", "").strip('"') in GEMM_TARGETS
        and len(ins.operands) >= 2
    )


def is_scalar(ins: Instruction) -> bool:
    """Loop counters and other scalar bookkeeping: the target keeps them in registers."""
    return not ins.shape.is_tuple and ins.shape.size <= 1


class ModuleView:
    """Classification questions about the instructions of one parsed HLO module."""

    def __init__(self, module: Module):
        self.module = module
        self._inner_cache: dict[str, dict] = {}

    def comp(self, name: str) -> Computation:
        """The computation a `calls=`/`body=`/... attribute names; ValueError if undefined."""
        name = called_name(name)
        if name not in self.module.computations:
            raise ValueError(f"HLO: computation '{name}' is called but not defined.")
        return self.module.computations[name]

    def fused(self, ins: Instruction) -> Computation | None:
        """The body of a fusion instruction (None for any other instruction)."""
        if ins.opcode == "fusion" and "calls" in ins.attrs:
            return self.comp(ins.attrs["calls"])
        return None

    def inner_ops(self, comp: Computation) -> set[str]:
        """Opcodes in a computation and, recursively, in the fusions it contains."""
        key = comp.name
        if key not in self._inner_cache:
            ops = set()
            for i in comp.instructions:
                ops.add(i.opcode)
                if i.opcode == "fusion" and "calls" in i.attrs:
                    ops |= self.inner_ops(self.comp(i.attrs["calls"]))
            self._inner_cache[key] = {"ops": ops}
        return self._inner_cache[key]["ops"]

    def is_pure_convert(self, ins: Instruction) -> bool:
        """An alias op, or a one-input fusion of converts, bitcasts and reshapes."""
        if ins.opcode in ALIAS_OPS:
            return True
        body = self.fused(ins)
        if body is None:
            return False
        ops = {i.opcode for i in body.instructions}
        params = [i for i in body.instructions if i.opcode == "parameter"]
        return len(params) == 1 and ops <= {"parameter", "convert", "bitcast", "reshape"}

    def is_matmul(self, ins: Instruction) -> bool:
        """A dot, a convolution, a GEMM custom call, or a fusion that contains a dot/conv."""
        if ins.opcode in ("dot", "convolution") or is_gemm_call(ins):
            return True
        body = self.fused(ins)
        return body is not None and bool(self.inner_ops(body) & {"dot", "convolution"})

    def is_free(self, ins: Instruction) -> bool:
        """Moves no data on the target: bookkeeping, an alias, or a pure convert."""
        return ins.opcode in FREE_OPS or ins.opcode in ALIAS_OPS or self.is_pure_convert(ins)

    def kernel_key(self, ins: Instruction) -> str | None:
        """`...emu_kernel[name(,causal)]` of the first op_name (its own, then its fusion's
        instructions') under a `fused_kernel` scope; None when it is not marked."""
        names = [ins.op_name]
        body = self.fused(ins)
        if body is not None:
            names += [i.op_name for i in body.instructions]
        for name in names:
            at = name.find(KERNEL_MARK)
            if at >= 0:
                end = name.find("]", at)
                return name[: end + 1] if end > 0 else None
        return None


def int_literal(text: str) -> int | None:
    """The first integer in a constant's literal text ('s32[] 5' -> 5), None if none."""
    m = re.search(r"-?\d+", text or "")
    return int(m.group(0)) if m else None
