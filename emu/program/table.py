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
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence

import numpy as np

from emu.program.hlo import (
    ELEMENT_BYTES,
    Computation,
    Instruction,
    Module,
    called_name,
    parse_module,
    replica_groups,
    source_target_pairs,
)

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

#: canonical collective kinds (HLO opcode names)
COLLECTIVE_KINDS = (
    "all-reduce",
    "all-gather",
    "reduce-scatter",
    "all-to-all",
    "collective-permute",
)
#: emu's overlap classes (system.overlap fields) and "other" (never hidden)
ROLES = ("tp", "dp", "cp", "pp", "ep", "other")
#: mesh axis name -> role, for the usual names (override with `axis_roles=`)
ROLE_OF_AXIS = {
    **dict.fromkeys(("data", "dp", "batch", "replica", "fsdp", "zero", "ddp"), "dp"),
    **dict.fromkeys(("model", "tp", "tensor", "mp", "tensor_parallel", "mlp", "heads"), "tp"),
    **dict.fromkeys(("context", "cp", "seq", "sequence", "sp"), "cp"),
    **dict.fromkeys(("pipe", "pipeline", "pp", "stage"), "pp"),
    **dict.fromkeys(("expert", "experts", "ep"), "ep"),
}
KERNEL_MARK = "emu_kernel["

_COLLECTIVE_OPS = {
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
_DONE_OPS = {
    "all-reduce-done",
    "all-gather-done",
    "collective-permute-done",
    "async-done",
    "async-update",
}
_FREE_OPS = {
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
_ALIAS_OPS = {"bitcast", "reshape", "convert", "bitcast-convert"}
_MEMORY_OPS = set(
    """add subtract multiply divide maximum minimum power remainder and or xor not negate abs
    exponential exponential-minus-one log log-plus-one sqrt rsqrt cbrt tanh logistic sine cosine
    tan atan2 erf floor ceil round-nearest-afz round-nearest-even sign is-finite compare select
    clamp reduce-precision shift-left shift-right-arithmetic shift-right-logical popcnt clz real
    imag complex broadcast transpose copy slice dynamic-slice dynamic-update-slice concatenate
    pad reverse iota reduce reduce-window select-and-scatter gather scatter sort map rng
    rng-bit-generator stochastic-convert copy-start copy-done""".split()
)
_SLICING = {"dynamic-slice", "slice", "gather"}
_ELEMENTWISE = set(
    """add subtract multiply divide maximum minimum power remainder and or xor not negate abs
    exponential exponential-minus-one log log-plus-one sqrt rsqrt cbrt tanh logistic sine cosine
    tan atan2 erf floor ceil round-nearest-afz round-nearest-even sign is-finite compare select
    clamp convert reduce-precision""".split()
)
_IN_PLACE = {"dynamic-update-slice", "scatter"}
#: custom-call targets that move no data on the target
_FREE_TARGETS = (
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
_PRECISION_OF = {
    "bf16": "bf16",
    "f16": "fp16",
    "f32": "tf32",
    "s8": "int8",
    "u8": "int8",
    "f4e2m1fn": "fp4",
}


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


@dataclasses.dataclass
class MeshInfo:
    """The program's mesh: axis names and sizes (rank r = position r in mesh order)."""

    axis_names: tuple[str, ...]
    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def axes_of(self, group: Sequence[int]) -> tuple[str, ...]:
        """Mesh axes along which the members of `group` differ."""
        if len(group) < 2 or math.prod(self.shape) <= max(group):
            return ()
        coords = np.array(np.unravel_index(np.asarray(group), self.shape))
        return tuple(n for n, c in zip(self.axis_names, coords, strict=True) if len(set(c)) > 1)


@dataclasses.dataclass
class Op:
    """One costed row. Per-execution quantities; `count` executions per step."""

    kind: str  # matmul | kernel | memory | collective | uncosted
    name: str
    computation: str
    count: float = 1.0
    op_name: str = ""
    source: str = ""
    flops: float = 0.0
    bytes: float = 0.0
    m: float = 1.0
    n: float = 1.0
    k: float = 1.0
    batch: float = 1.0
    precision: str = "bf16"
    flop_share: float = 1.0
    kernels: float = 1.0
    collective: str = ""
    group_size: float = 1.0
    stride: float = 1.0
    axes: tuple[str, ...] = ()
    role: str = ""
    is_async: bool = False
    window: tuple[int, ...] = ()
    note: str = ""
    members: int = 1
    first_index: int = 0
    last_index: int = 0


@dataclasses.dataclass
class OpTable:
    """Static arrays of the op rows (host numpy), plus the rows themselves for reports."""

    ops: list[Op]
    mesh: MeshInfo
    n_devices: int
    fusion: str
    notes: list[str]

    def __post_init__(self):
        f = lambda attr: np.array([float(getattr(o, attr)) for o in self.ops], np.float32)  # noqa: E731
        self.count = f("count")
        self.flops = f("flops")
        self.bytes = f("bytes")
        self.m, self.n, self.k, self.batch = f("m"), f("n"), f("k"), f("batch")
        self.flop_share = f("flop_share")
        self.kernels = f("kernels")
        self.group_size, self.stride = f("group_size"), f("stride")
        self.kind = np.array([o.kind for o in self.ops])
        self.precisions = tuple(sorted({o.precision for o in self.ops if o.kind == "matmul"}))
        self.kernel_precisions = tuple(
            sorted({o.precision for o in self.ops if o.kind == "kernel"})
        )

    def index(self, kind: str, *, precision: str | None = None, collective: str | None = None):
        return np.array(
            [
                i
                for i, o in enumerate(self.ops)
                if o.kind == kind
                and (precision is None or o.precision == precision)
                and (collective is None or o.collective == collective)
            ],
            np.int32,
        )

    @property
    def flops_per_step(self) -> float:
        """Dot/convolution FLOPs per device per step, as written (causal masks included)."""
        return float(sum(o.flops * o.count for o in self.ops if o.kind in ("matmul", "kernel")))

    @property
    def uncosted(self) -> list[Op]:
        return [o for o in self.ops if o.kind == "uncosted"]

    def collective_bytes(self) -> dict[str, float]:
        """Bytes per step by collective kind (emu's convention, see the module doc)."""
        out = dict.fromkeys(COLLECTIVE_KINDS, 0.0)
        for o in self.ops:
            if o.kind == "collective":
                out[o.collective] += o.bytes * o.count
        return out


# ----------------------------------------------------------------------------- builder


def _width(dtype: str) -> float:
    return ELEMENT_BYTES.get(dtype, 4.0)


def _narrower(a: str, b: str) -> str:
    return b if _width(b) < _width(a) else a


def _wider(a: str, b: str) -> str:
    return b if _width(b) > _width(a) else a


def _leaf_dtypes(ins: Instruction) -> list[str]:
    if ins.shape.is_tuple:
        return [e.dtype if not e.is_tuple else "tuple" for e in ins.shape.elements]
    return [ins.shape.dtype]


class _Builder:
    def __init__(self, module: Module, mesh: MeshInfo, *, fusion: str, axis_roles: dict):
        if fusion not in ("ideal", "as_compiled"):
            raise ValueError(f"fusion must be 'ideal' or 'as_compiled' (got {fusion!r}).")
        self.module = module
        self.mesh = mesh
        self.fusion = fusion
        self.roles = {**ROLE_OF_AXIS, **(axis_roles or {})}
        self.ops: list[Op] = []
        self.notes: list[str] = []
        self.ldtype: dict[tuple[str, str], list[str]] = {}
        self._inner_cache: dict[str, dict] = {}
        self.const: dict[str, dict[str, list[bool]]] = {}

    # ------------------------------------------------------------------ helpers
    def comp(self, name: str) -> Computation:
        name = called_name(name)
        if name not in self.module.computations:
            raise ValueError(f"HLO: computation '{name}' is called but not defined.")
        return self.module.computations[name]

    def fused(self, ins: Instruction) -> Computation | None:
        if ins.opcode == "fusion" and "calls" in ins.attrs:
            return self.comp(ins.attrs["calls"])
        return None

    def inner_ops(self, comp: Computation) -> set[str]:
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
        if ins.opcode in _ALIAS_OPS:
            return True
        body = self.fused(ins)
        if body is None:
            return False
        ops = {i.opcode for i in body.instructions}
        params = [i for i in body.instructions if i.opcode == "parameter"]
        return len(params) == 1 and ops <= {"parameter", "convert", "bitcast", "reshape"}

    def is_matmul(self, ins: Instruction) -> bool:
        if ins.opcode in ("dot", "convolution") or _is_gemm_call(ins):
            return True
        body = self.fused(ins)
        return body is not None and bool(self.inner_ops(body) & {"dot", "convolution"})

    def kernel_key(self, ins: Instruction) -> str | None:
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

    # ------------------------------------------------------------------ logical dtypes
    def ld(self, comp: Computation, name: str, index: int = 0) -> str:
        got = self.ldtype.get((comp.name, name))
        if got is None:
            ins = comp.by_name.get(name)
            return ins.shape.dtype if ins is not None and not ins.shape.is_tuple else "f32"
        return got[index] if index < len(got) else got[-1]

    def compute_consts(self, comp: Computation, param_const: list[bool] | None) -> None:
        """Values computed from constants and iotas alone (masks, position tables): the
        target generates them inside the kernels that use them, so they cost nothing."""
        flags: dict[str, list[bool]] = {}
        for ins in comp.instructions:
            op = ins.opcode
            n = len(ins.shape.elements) if ins.shape.is_tuple else 1
            if op in ("constant", "iota"):
                out = [True]
            elif op == "parameter":
                i = int(ins.literal or 0)
                pc = param_const or []
                if ins.shape.is_tuple and pc:
                    out = list(pc) + [False] * (n - len(pc))
                else:
                    out = [bool(pc[i]) if i < len(pc) else False]
            elif op == "get-tuple-element":
                src = flags.get(ins.operands[0], [])
                idx = int(ins.attrs.get("index", "0"))
                out = [bool(src[idx]) if idx < len(src) else False]
            elif op == "tuple":
                out = [all(flags.get(o, [False])) for o in ins.operands]
            elif (
                op in _COLLECTIVE_OPS
                or op in _DONE_OPS
                or op in ("while", "call", "conditional", "custom-call", "async-start")
                or op.startswith("rng")
                or op in ("partition-id", "replica-id")
            ):
                out = [False] * n
            else:
                ok = all(all(flags.get(o, [False])) for o in ins.operands)
                out = [ok] * n
            flags[ins.name] = out
        self.const[comp.name] = flags

    def is_const(self, comp: Computation, name: str) -> bool:
        return all(self.const.get(comp.name, {}).get(name, [False]))

    def compute_ldtypes(self, comp: Computation, param_ld: list[str] | None = None) -> None:
        for ins in comp.instructions:
            declared = _leaf_dtypes(ins)
            out = list(declared)
            op = ins.opcode
            if op == "parameter" and param_ld is not None:
                i = int(ins.literal or 0)
                got = param_ld[i] if i < len(param_ld) else None
                if isinstance(got, list) and ins.shape.is_tuple:
                    out = [
                        _narrower(d, g) if d != "tuple" else d
                        for d, g in zip(declared, got + declared[len(got) :], strict=True)
                    ]
                elif isinstance(got, str) and not ins.shape.is_tuple:
                    out = [_narrower(declared[0], got)]
            elif op == "while" and ins.operands:
                out = self.loop_ldtypes(comp, ins)
            elif op == "get-tuple-element" and ins.operands:
                src = comp.by_name.get(ins.operands[0])
                idx = int(ins.attrs.get("index", "0"))
                if src is not None and (comp.name, src.name) in self.ldtype:
                    got = self.ldtype[(comp.name, src.name)]
                    if idx < len(got) and got[idx] != "tuple":
                        out = [_narrower(declared[0], got[idx])]
            elif op == "tuple":
                out = [self.ld(comp, o) for o in ins.operands]
            elif op in _ALIAS_OPS:
                if ins.operands and not ins.shape.is_tuple:
                    out = [_narrower(declared[0], self.ld(comp, ins.operands[0]))]
            elif self.is_pure_convert(ins):
                out = self.fusion_out_ldtypes(comp, ins, declared)
            elif self.is_matmul(ins) and not ins.shape.is_tuple:
                a, b = self.matmul_operand_ldtypes(comp, ins)
                out = [_narrower(declared[0], _wider(a, b))]
            elif op in _COLLECTIVE_OPS or op in _DONE_OPS:
                if ins.operands and op not in ("async-done",):
                    lds = [self.ld(comp, o) for o in ins.operands]
                    if ins.shape.is_tuple and len(lds) == len(declared):
                        out = [_narrower(d, x) for d, x in zip(declared, lds, strict=True)]
                    elif not ins.shape.is_tuple:
                        out = [_narrower(declared[0], lds[0])]
            elif op == "fusion":
                out = self.fusion_out_ldtypes(comp, ins, declared)
            if op in _COLLECTIVE_OPS and not ins.shape.is_tuple:
                # the CPU pipeline moves the bf16 rounding past collectives it upcast: the
                # type every consumer converts the result to is the program's
                seen = self.consumed_as(comp, ins.name)
                if seen is not None:
                    out = [_narrower(out[0], seen)]
            self.ldtype[(comp.name, ins.name)] = out

    def loop_ldtypes(self, comp: Computation, ins: Instruction) -> list[str]:
        """Logical types of a loop's carried values: what enters the loop, widened by what
        the body writes back (the CPU pipeline hoists bf16 -> f32 converts out of loops)."""
        key = (comp.name, ins.name, "loop")
        if key in self.ldtype:
            return self.ldtype[key]
        declared = _leaf_dtypes(ins)
        init = list(self.ldtype.get((comp.name, ins.operands[0]), declared))
        body = self.comp(ins.attrs["body"])
        lds = [_narrower(d, x) for d, x in zip(declared, init + declared[len(init) :], strict=True)]
        for _ in range(3):
            self.compute_ldtypes(body, [lds])
            back = self.ldtype.get((body.name, body.root.name), declared)
            new = [
                _narrower(d, _wider(a, b))
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
        layout = {"copy", "transpose", "bitcast", "reshape"}
        found: list[str] = []

        def inner(body: Computation, v: str, depth: int) -> bool:
            for u in body.users.get(v, []):
                if u.opcode == "convert":
                    found.append(u.shape.dtype)
                elif u.opcode in layout and depth < 8:
                    if not inner(body, u.name, depth + 1):
                        return False
                else:
                    return False
            return bool(body.users.get(v))

        for u in comp.users.get(name, []):
            if u.opcode == "convert" or (self.is_pure_convert(u) and u.opcode != "bitcast"):
                found.append(u.shape.dtype)
                continue
            body = self.fused(u)
            if body is None and u.opcode in layout:
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
            widest = _wider(widest, t)
        return widest

    def matmul_operand_ldtypes(self, comp: Computation, ins: Instruction) -> tuple[str, str]:
        if ins.opcode in ("dot", "convolution") or _is_gemm_call(ins):
            return self.ld(comp, ins.operands[0]), self.ld(comp, ins.operands[1])
        body = self.fused(ins)
        outer = [self.ld(comp, o) for o in ins.operands]
        dot = next(i for i in body.instructions if i.opcode in ("dot", "convolution"))
        return tuple(self._trace_inner(body, o, outer) for o in dot.operands[:2])

    def _trace_inner(self, body: Computation, name: str, outer: list[str]) -> str:
        """Logical dtype of an inner value of a fusion: follow converts back to a parameter."""
        seen = 0
        ins = body.by_name.get(name)
        best = ins.shape.dtype if ins is not None else "f32"
        while ins is not None and seen < 64:
            seen += 1
            if ins.opcode == "parameter":
                i = int(ins.literal or 0)
                return _narrower(best, outer[i]) if i < len(outer) else best
            if ins.opcode in _ALIAS_OPS | {"copy", "transpose", "broadcast"} and ins.operands:
                best = _narrower(best, ins.shape.dtype)
                ins = body.by_name.get(ins.operands[0])
                continue
            return best
        return best

    def fusion_out_ldtypes(self, comp, ins, declared) -> list[str]:
        body = self.fused(ins)
        if body is None:
            return declared
        outer = [self.ld(comp, o) for o in ins.operands]
        root = body.root
        if root.opcode == "tuple":
            return [
                _narrower(d, self._trace_inner(body, o, outer))
                for d, o in zip(declared, root.operands, strict=False)
            ]
        if ins.shape.is_tuple:
            return declared
        return [_narrower(declared[0], self._trace_inner(body, root.name, outer))]

    # ------------------------------------------------------------------ value plumbing
    def resolve(self, comp: Computation, name: str) -> str:
        """The value behind aliases (bitcast, reshape, pure converts)."""
        for _ in range(256):
            ins = comp.by_name.get(name)
            if ins is None or not ins.operands:
                return name
            if ins.opcode in _ALIAS_OPS or self.is_pure_convert(ins):
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
                if u.opcode in _ALIAS_OPS or self.is_pure_convert(u):
                    todo.append(u.name)
                else:
                    out += [(u, i) for i, o in enumerate(u.operands) if o == v]
        return out

    def value_bytes(self, comp: Computation, name: str) -> float:
        ins = comp.by_name[name]
        if ins.shape.is_tuple:
            lds = self.ldtype.get((comp.name, name), [])
            return sum(
                e.size * _width(lds[i] if i < len(lds) else e.dtype)
                for i, e in enumerate(ins.shape.elements)
                if not e.is_tuple
            )
        return ins.shape.size * _width(self.ld(comp, name))

    def read_bytes(self, comp: Computation, user: Instruction, pos: int, value: str) -> float:
        """Bytes `user` reads of operand `pos` (the value `value`)."""
        full = self.value_bytes(comp, value)
        el = _width(self.ld(comp, value))
        if user.opcode in _SLICING and pos == 0:
            return min(full, user.shape.size * el)
        if user.opcode in _IN_PLACE and pos == 0:
            return 0.0
        body = self.fused(user)
        if body is None:
            return full
        params = body.parameters()
        if pos >= len(params):
            return full
        # follow the parameter through aliases and same-shape elementwise ops: when every
        # path ends in a slice, the fused kernel reads only the slices
        total, partial = 0.0, True
        todo, seen = [params[pos].name], set()
        while todo and partial:
            v = todo.pop()
            if v in seen:
                continue
            seen.add(v)
            dims = body.by_name[v].shape.dims
            if body.by_name[v].is_root or not body.users.get(v):
                partial = False
            for u in body.users.get(v, []):
                if u.opcode in _ALIAS_OPS:
                    todo.append(u.name)
                elif u.opcode in _SLICING and u.operands[0] == v:
                    total += u.shape.size * el
                elif u.opcode in _IN_PLACE and u.operands[0] == v:
                    continue
                elif u.opcode in _ELEMENTWISE and u.shape.dims == dims:
                    todo.append(u.name)
                else:
                    partial = False
        return min(full, total) if partial else full

    def written_bytes(self, comp: Computation, ins: Instruction) -> float:
        """Bytes `ins` writes: in-place updates write only the update."""
        if ins.opcode in _IN_PLACE and len(ins.operands) > 1:
            upd = ins.operands[1] if ins.opcode == "dynamic-update-slice" else ins.operands[-1]
            return self.value_bytes(comp, upd) if upd in comp.by_name else 0.0
        body = self.fused(ins)
        if body is not None:
            roots = [body.root]
            if body.root.opcode == "tuple":
                roots = [body.by_name[o] for o in body.root.operands if o in body.by_name]
            lds = self.ldtype.get((comp.name, ins.name), [])
            total = 0.0
            for i, r in enumerate(roots):
                while r.opcode in _ALIAS_OPS and r.operands and r.operands[0] in body.by_name:
                    r = body.by_name[r.operands[0]]
                ld = lds[i] if i < len(lds) else r.shape.dtype
                if r.opcode in _IN_PLACE and len(r.operands) > 1:
                    upd = body.by_name.get(r.operands[1 if r.opcode != "scatter" else -1])
                    total += (upd.shape.size if upd is not None else 0) * _width(ld)
                elif not r.shape.is_tuple:
                    total += r.shape.size * _width(ld)
            return total
        return self.value_bytes(comp, ins.name)

    # ------------------------------------------------------------------ traversal
    def run(self) -> OpTable:
        self.visit(self.module.entry, 1.0, None)
        return OpTable(self.ops, self.mesh, self.mesh.size, self.fusion, self.notes)

    def visit(
        self,
        comp: Computation,
        count: float,
        param_ld: list[str] | None,
        param_const: list[bool] | None = None,
    ) -> None:
        self.compute_ldtypes(comp, param_ld)
        self.compute_consts(comp, param_const)
        matmuls: list[Instruction] = []
        kernels: dict[str, list[Instruction]] = {}
        memory: list[Instruction] = []
        async_rows: dict[str, int] = {}
        for ins in comp.instructions:
            op = ins.opcode
            if op in _FREE_OPS or op in _ALIAS_OPS or self.is_pure_convert(ins):
                continue
            if self.is_const(comp, ins.name) and op not in ("while", "call", "conditional"):
                continue
            if op in _DONE_OPS:
                self._close_async(comp, ins, async_rows)
                continue
            if op == "while":
                self._while(comp, ins, count)
                continue
            if op == "call":
                self.visit(self.comp(ins.attrs["to_apply"]), count, self._args_ld(comp, ins))
                continue
            if op == "conditional":
                branches = ins.called()
                for b in branches:
                    self.visit(self.comp(b), count / max(len(branches), 1), None)
                if len(branches) > 1:
                    self.notes.append(
                        f"conditional {ins.name}: each of its {len(branches)} branches is "
                        f"charged with weight 1/{len(branches)}"
                    )
                continue
            if op == "async-start":
                row = self._async_start(comp, ins, count)
                if row is not None:
                    async_rows[ins.name] = row
                continue
            if op in _COLLECTIVE_OPS:
                row = self._collective(comp, ins, count)
                if row >= 0 and op.endswith("-start"):
                    self.ops[row].is_async = True
                    async_rows[ins.name] = row
                continue
            key = self.kernel_key(ins)
            if key is not None:
                kernels.setdefault(key, []).append(ins)
                continue
            if self.is_matmul(ins):
                matmuls.append(ins)
                continue
            if op == "custom-call":
                self._custom_call(comp, ins, count)
                continue
            if op in _MEMORY_OPS or op == "fusion":
                if self._is_scalar(ins):
                    continue
                memory.append(ins)
                continue
            self._uncosted(comp, ins, count, f"opcode '{op}' has no cost model in emu")
        if kernels:
            self._absorb(comp, kernels, matmuls, memory)
        for ins in matmuls:
            self._matmul(comp, ins, count)
        for key, members in kernels.items():
            self._kernel(comp, key, members, count)
        self._memory(comp, memory, count)

    def _absorb(self, comp, kernels: dict, matmuls: list, memory: list) -> None:
        """XLA drops the metadata of some ops it rewrites (a batched dot turned 2-D): an op
        without an op_name joins a marked kernel when all its users are in that kernel, or
        when it consumes the kernel's values and no other kernel's."""
        owner = {m.name: key for key, ms in kernels.items() for m in ms}

        def unnamed(ins):
            body = self.fused(ins)
            names = [ins.op_name] + ([i.op_name for i in body.instructions] if body else [])
            return not any(names)

        candidates = [i for i in matmuls + memory if unnamed(i)]
        changed = True
        while changed:
            changed = False
            for ins in candidates:
                if ins.name in owner:
                    continue
                users = {u.name for u, _ in self.uses(comp, ins.name)}
                user_keys = {owner.get(u) for u in users}
                src_keys = {owner.get(self.resolve(comp, o)) for o in ins.operands} - {None}
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

    def _args_ld(self, comp: Computation, ins: Instruction) -> list[str]:
        return [self.ld(comp, o) for o in ins.operands]

    @staticmethod
    def _is_scalar(ins: Instruction) -> bool:
        # loop counters and other scalar bookkeeping: the target keeps them in registers
        return not ins.shape.is_tuple and ins.shape.size <= 1

    def _row(self, comp: Computation, ins: Instruction, **kw) -> int:
        self.ops.append(
            Op(
                name=ins.name,
                computation=comp.name,
                op_name=ins.op_name,
                source=ins.source,
                first_index=ins.index,
                last_index=ins.index,
                **kw,
            )
        )
        return len(self.ops) - 1

    # ------------------------------------------------------------------ loops
    def _while(self, comp: Computation, ins: Instruction, count: float) -> None:
        trips = self._trip_count(comp, ins)
        if trips is None:
            trips = 1.0
            self.notes.append(
                f"while loop {ins.name}: trip count unknown (no known_trip_count and no constant "
                "bound in its condition); its body is charged once"
            )
        body = self.comp(ins.attrs["body"])
        init = self.const.get(comp.name, {}).get(ins.operands[0], []) if ins.operands else []
        # a loop-carried value stays constant-derived when the body passes it through
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
        lds = [self.loop_ldtypes(comp, ins)]
        self.visit(body, count * trips, lds, passed)
        self.visit(self.comp(ins.attrs["condition"]), count * (trips + 1), lds, passed)

    def _trip_count(self, comp: Computation, ins: Instruction) -> float | None:
        """known_trip_count, else bound - init of the condition's `counter < bound`."""
        n = ins.backend_config().get("known_trip_count", {}).get("n")
        if n is not None:
            return float(n)
        cond = self.comp(ins.attrs["condition"])
        root, where = cond.root, cond
        body = self.fused(root)
        if body is not None:
            root, where = body.root, body
        if root.opcode != "compare":
            return None

        def outer(name: str) -> Instruction | None:
            # an operand of the compare, seen from the condition computation
            src = where.by_name.get(name)
            if src is not None and src.opcode == "parameter" and where is not cond:
                i = int(src.literal or 0)
                ops = cond.root.operands
                return cond.by_name.get(ops[i]) if i < len(ops) else None
            return src

        bound, index = None, None
        for o in root.operands:
            src = outer(o)
            while src is not None and src.opcode in ("copy", "convert") and src.operands:
                src = cond.by_name.get(src.operands[0])
            if src is None:
                continue
            if src.opcode == "constant":
                bound = _int_literal(src.literal)
            elif src.opcode == "get-tuple-element":
                index = int(src.attrs.get("index", "0"))
        if bound is None or index is None:
            return None
        init = self._tuple_constant(comp, ins, index)
        if init is None:
            return None
        direction = root.attrs.get("direction", "LT")
        trips = bound - init + (1 if direction in ("LE", "GE") else 0)
        if direction in ("GT", "GE"):
            trips = init - bound + (1 if direction == "GE" else 0)
        return float(max(trips, 0))

    def _tuple_constant(self, comp: Computation, ins: Instruction, index: int) -> int | None:
        tup = comp.by_name.get(ins.operands[0]) if ins.operands else None
        if tup is None or tup.opcode != "tuple" or index >= len(tup.operands):
            return None
        src = comp.by_name.get(tup.operands[index])
        while src is not None and src.opcode in ("copy", "convert") and src.operands:
            src = comp.by_name.get(src.operands[0])
        if src is not None and src.opcode == "constant":
            return _int_literal(src.literal)
        return None

    # ------------------------------------------------------------------ matmuls
    def _dot_dims(self, lhs, rhs, out, attrs_of) -> tuple[float, float, float, float, float]:
        """(flops, m, n, k, batch) of a dot from the operand/result shapes."""
        lc, rc = attrs_of("lhs_contracting_dims"), attrs_of("rhs_contracting_dims")
        lb, rb = attrs_of("lhs_batch_dims"), attrs_of("rhs_batch_dims")
        ld, rd = lhs.shape.dims, rhs.shape.dims
        k = math.prod(ld[i] for i in lc) if lc else 1
        batch = math.prod(ld[i] for i in lb) if lb else 1
        m = math.prod(d for i, d in enumerate(ld) if i not in lc and i not in lb)
        n = math.prod(d for i, d in enumerate(rd) if i not in rc and i not in rb)
        flops = 2.0 * out.shape.size * k
        return flops, float(m), float(n), float(k), float(batch)

    def _conv_dims(self, lhs, rhs, out, ins) -> tuple[float, float, float, float, float]:
        labels = ins.attrs.get("dim_labels", "")
        parts = re.split(r"_|->", labels)
        rhs_labels = parts[1] if len(parts) > 1 else ""
        o_at = rhs_labels.find("o")
        rd = rhs.shape.dims
        out_feat = rd[o_at] if 0 <= o_at < len(rd) else 1
        macs_per_out = math.prod(rd) / max(out_feat, 1)
        flops = 2.0 * out.shape.size * macs_per_out
        m = out.shape.size / max(out_feat, 1)
        return flops, float(m), float(out_feat), float(macs_per_out), 1.0

    def _matmul_shape(self, comp: Computation, ins: Instruction):
        if _is_gemm_call(ins):
            return self._gemm_call_shape(comp, ins)
        if ins.opcode in ("dot", "convolution"):
            where, dots = comp, [ins]
        else:
            where = self.fused(ins)
            dots = [i for i in where.instructions if i.opcode in ("dot", "convolution")]
        total, best = 0.0, None
        for d in dots:
            lhs, rhs = where.by_name[d.operands[0]], where.by_name[d.operands[1]]
            if d.opcode == "dot":
                dims = self._dot_dims(lhs, rhs, d, d.int_list)
            else:
                dims = self._conv_dims(lhs, rhs, d, d)
            total += dims[0]
            if best is None or dims[0] > best[0]:
                best = dims
        return total, best

    def _gemm_call_shape(self, comp: Computation, ins: Instruction):
        """A cuBLAS GEMM custom call of a GPU-compiled module: dimension numbers from its
        backend config, result = the first element of a (result, workspace) tuple."""
        cfg = ins.backend_config()
        dims = cfg.get("gemm_backend_config", cfg).get("dot_dimension_numbers", {})
        lhs, rhs = comp.by_name[ins.operands[0]], comp.by_name[ins.operands[1]]
        out = ins.shape.elements[0] if ins.shape.is_tuple else ins.shape

        def get(key):
            return [int(x) for x in dims.get(key, [])]

        lc, rc = get("lhs_contracting_dimensions"), get("rhs_contracting_dimensions")
        lb, rb = get("lhs_batch_dimensions"), get("rhs_batch_dimensions")
        ld, rd = lhs.shape.dims, rhs.shape.dims
        k = math.prod(ld[i] for i in lc) if lc else 1
        m = math.prod(d for i, d in enumerate(ld) if i not in lc and i not in lb)
        n = math.prod(d for i, d in enumerate(rd) if i not in rc and i not in rb)
        batch = math.prod(ld[i] for i in lb) if lb else 1
        flops = 2.0 * out.size * k
        return flops, (flops, float(m), float(n), float(k), float(batch))

    def _precision(self, comp, ins) -> str | None:
        a, b = self.matmul_operand_ldtypes(comp, ins)
        dtype = _wider(a, b)
        if dtype.startswith("f8"):
            return "fp8"
        return _PRECISION_OF.get(dtype)

    def _matmul(self, comp: Computation, ins: Instruction, count: float) -> int:
        flops, (_, m, n, k, _) = self._matmul_shape(comp, ins)
        prec = self._precision(comp, ins)
        if prec is None:
            a, b = self.matmul_operand_ldtypes(comp, ins)
            return self._uncosted(
                comp, ins, count, f"matmul in {_wider(a, b)}: emu has no peak for it", flops=flops
            )
        # `batch` (m, k) @ (k, n) products of the largest dot carry all the FLOPs (a batched
        # dot, or several dots in one fusion)
        return self._row(
            comp,
            ins,
            kind="matmul",
            count=count,
            flops=flops,
            m=m,
            n=n,
            k=k,
            batch=flops / max(2.0 * m * n * k, 1.0),
            precision=prec,
        )

    # ------------------------------------------------------------------ collectives
    def _groups(self, ins: Instruction) -> list[list[int]]:
        n = self.module.num_partitions or self.mesh.size
        if "replica_groups" in ins.attrs:
            return replica_groups(ins.attrs["replica_groups"], n)
        return [list(range(n))]

    def _place(self, groups: list[list[int]]) -> tuple[float, float, tuple[str, ...]]:
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

    def _role(self, axes: tuple[str, ...]) -> str:
        roles = [self.roles.get(a, "other") for a in axes]
        if not roles:
            return "other"
        if "dp" in roles:
            return "dp"
        return roles[0]

    def _collective(self, comp: Computation, ins: Instruction, count: float) -> int:
        kind = _COLLECTIVE_OPS[ins.opcode]
        if kind == "collective-permute":
            pairs = source_target_pairs(ins.attrs.get("source_target_pairs", ""))
            nbytes = sum(self.value_bytes(comp, o) for o in ins.operands[:1])
            dist = max((abs(t - s) for s, t in pairs), default=0)
            axes = ()
            if pairs:
                axes = tuple(sorted({a for s, t in pairs for a in self.mesh.axes_of([s, t])}))
            return self._row(
                comp,
                ins,
                kind="collective",
                count=count,
                bytes=nbytes,
                collective=kind,
                group_size=2.0 if dist else 1.0,
                stride=float(max(dist, 1)),
                axes=axes,
                role=self._role(axes),
            )
        groups = self._groups(ins)
        size, stride, axes = self._place(groups)
        if size <= 1:
            # a collective over one device (a mesh axis of size 1) moves nothing
            return -1
        if ins.opcode.endswith("-start") or ins.shape.is_tuple and kind != "all-reduce":
            # async starts return (operands, results, ...): size from the operands
            el = _width(self.ld(comp, ins.operands[0])) if ins.operands else 4.0
            elements = sum(comp.by_name[o].shape.size for o in ins.operands if o in comp.by_name)
            nbytes = elements * el * (size if kind == "all-gather" else 1.0)
        else:
            nbytes = self.value_bytes(comp, ins.name) * (size if kind == "reduce-scatter" else 1.0)
        note = ""
        if kind == "all-reduce" and size > 1 and self._only_sliced(comp, ins, size):
            kind, note = "reduce-scatter", "all-reduce + dynamic-slice (a reduce-scatter)"
        return self._row(
            comp,
            ins,
            kind="collective",
            count=count,
            bytes=nbytes,
            collective=kind,
            group_size=size,
            stride=stride,
            axes=axes,
            role=self._role(axes),
            note=note,
        )

    def _only_sliced(self, comp: Computation, ins: Instruction, size: float) -> bool:
        """Every consumer of the (tuple) all-reduce reads only a 1/size slice of it."""
        if ins.shape.is_tuple:
            values = []
            for u in comp.users.get(ins.name, []):
                if u.opcode != "get-tuple-element":
                    return False
                values.append(u.name)
        else:
            values = [ins.name]
        if not values:
            return False
        for v in values:
            uses = self.uses(comp, v)
            if not uses:
                return False
            full = self.value_bytes(comp, v)
            for user, pos in uses:
                if user.opcode in ("get-tuple-element", "tuple"):
                    return False
                got = self.read_bytes(comp, user, pos, user.operands[pos])
                if got > full / size * 1.0001 or got <= 0:
                    return False
        return True

    def _async_start(self, comp: Computation, ins: Instruction, count: float) -> int | None:
        inner = self.comp(ins.attrs["calls"]) if "calls" in ins.attrs else None
        if inner is None:
            return self._uncosted(comp, ins, count, "async-start without a called computation")
        coll = next((i for i in inner.instructions if i.opcode in _COLLECTIVE_OPS), None)
        if coll is None:
            self.visit(inner, count, self._args_ld(comp, ins))
            return None
        self.compute_ldtypes(inner, self._args_ld(comp, ins))
        row = self._collective(inner, coll, count)
        if row < 0:
            return None
        self.ops[row].is_async = True
        self.ops[row].computation = comp.name
        self.ops[row].first_index = ins.index
        self.ops[row].last_index = ins.index
        return row

    def _close_async(self, comp: Computation, ins: Instruction, async_rows: dict) -> None:
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
            if src is not None and src.opcode in _DONE_OPS | {"get-tuple-element"}:
                todo += list(src.operands)

    # ------------------------------------------------------------------ custom calls
    def _custom_call(self, comp: Computation, ins: Instruction, count: float) -> None:
        target = ins.attrs.get("custom_call_target", "").strip('"')
        if any(target.startswith(t) for t in _FREE_TARGETS):
            return
        if "fmha" in target.lower() or "flash" in target.lower():
            self._attention_call(comp, ins, count, target)
            return
        self._uncosted(comp, ins, count, f"custom call '{target}' has no cost model in emu")

    def _attention_call(self, comp, ins, count, target) -> None:
        # cuDNN / FlashAttention calls: q, k, v are (batch, seq, heads, d)
        ops = [comp.by_name[o] for o in ins.operands[:3] if o in comp.by_name]
        if len(ops) < 3 or len(ops[0].shape.dims) != 4:
            self._uncosted(comp, ins, count, f"attention call '{target}' of unknown layout")
            return
        b, sq, h, d = ops[0].shape.dims
        skv = ops[1].shape.dims[1]
        dv = ops[2].shape.dims[-1]
        bwd = "backward" in target.lower() or "bwd" in target.lower()
        flops = 2.0 * b * h * sq * skv * (d + dv) * (2.5 if bwd else 1.0)
        nbytes = sum(self.value_bytes(comp, o.name) for o in ops) + self.value_bytes(comp, ins.name)
        causal = "causal" in str(ins.attrs.get("backend_config", "")).lower()
        self._row(
            comp,
            ins,
            kind="kernel",
            count=count,
            flops=flops,
            bytes=nbytes,
            m=float(sq),
            n=float(skv),
            k=float(d),
            precision=_PRECISION_OF.get(ops[0].shape.dtype, "bf16"),
            flop_share=0.5 if causal else 1.0,
            note=f"custom call {target}",
        )

    def _uncosted(self, comp, ins, count, reason: str, flops: float = 0.0) -> int:
        nbytes = sum(self.value_bytes(comp, o) for o in ins.operands if o in comp.by_name)
        nbytes += self.value_bytes(comp, ins.name)
        return self._row(
            comp, ins, kind="uncosted", count=count, bytes=nbytes, flops=flops, note=reason
        )

    # ------------------------------------------------------------------ fused groups
    def _boundary(self, comp: Computation, members: list[Instruction]) -> float:
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
                if self.is_const(comp, src):
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

    def _kernel(self, comp: Computation, key: str, members: list[Instruction], count) -> None:
        flops, best, precision = 0.0, None, "bf16"
        for m in members:
            if self.is_matmul(m):
                f, dims = self._matmul_shape(comp, m)
                flops += f
                if best is None or dims[0] > best[0]:
                    best = dims
                    precision = self._precision(comp, m) or "bf16"
        label = key[key.find(KERNEL_MARK) + len(KERNEL_MARK) : -1]
        causal = label.endswith(",causal")
        lead = max(
            members, key=lambda i: self._matmul_shape(comp, i)[0] if self.is_matmul(i) else 0
        )
        _, m_, n_, k_, _ = best if best is not None else (0, 1, 1, 1, 1)
        self.ops.append(
            Op(
                kind="kernel",
                name=label.split(",")[0],
                computation=comp.name,
                count=count,
                op_name=lead.op_name or key,
                source=lead.source,
                flops=flops,
                bytes=self._boundary(comp, members),
                m=m_,
                n=n_,
                k=k_,
                precision=precision,
                flop_share=0.5 if causal else 1.0,
                members=len(members),
                first_index=min(i.index for i in members),
                last_index=max(i.index for i in members),
            )
        )

    def _memory(self, comp: Computation, members: list[Instruction], count: float) -> None:
        if not members:
            return
        if self.fusion == "as_compiled":
            groups = [[m] for m in members]
        else:
            groups = self._chains(comp, members)
        for group in groups:
            if self.fusion == "ideal" and all(self._layout_only(i) for i in group):
                # copies, transposes, retypes, slices and in-place updates between matmuls and
                # collectives: the target reads and writes them in place (layout assignment,
                # GEMMs on strided operands, XLA GPU's dynamic-slice fusion of GEMMs)
                continue
            nbytes = self._boundary(comp, group)
            lead = max(group, key=lambda i: self.value_bytes(comp, i.name))
            self.ops.append(
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

    def _layout_only(self, ins: Instruction) -> bool:
        layout = {
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
        if ins.opcode in layout:
            return True
        body = self.fused(ins)
        # scalar ops inside are index arithmetic (a reversed loop counter)
        return body is not None and all(
            i.opcode in layout or (not i.shape.is_tuple and i.shape.size <= 1)
            for i in body.instructions
        )

    def _chains(self, comp: Computation, members: list[Instruction]) -> list[list[Instruction]]:
        """Memory-bound ops that one kernel can run: connected (through aliases) and at the
        same depth of heavy ops (matmuls, kernels, collectives, calls), so that no member
        waits on a heavy op that waits on another member."""
        names = {m.name: m for m in members}
        depth: dict[str, int] = {}
        for ins in comp.instructions:
            d = 0
            for o in ins.operands:
                src = comp.by_name.get(o)
                if src is None:
                    continue
                heavy = src.name not in names and not (
                    src.opcode in _FREE_OPS or src.opcode in _ALIAS_OPS or self.is_pure_convert(src)
                )
                d = max(d, depth.get(o, 0) + (1 if heavy else 0))
            depth[ins.name] = d
        parent = {n: n for n in names}

        def find(x):
            while parent[x] != x:
                parent[x] = parent[parent[x]]
                x = parent[x]
            return x

        for m in members:
            for o in m.operands:
                src = self.resolve(comp, o)
                if src in names and depth[src] == depth[m.name]:
                    parent[find(src)] = find(m.name)
        groups: dict[str, list[Instruction]] = {}
        for m in members:
            groups.setdefault(find(m.name), []).append(m)
        return list(groups.values())


#: GEMM custom calls of GPU-compiled modules (`emu program --hlo` of a GPU compile)
_GEMM_TARGETS = ("__cublas$gemm", "__cublas$lt$matmul", "__cublas$lt$matmul$f8")


def _is_gemm_call(ins: Instruction) -> bool:
    return (
        ins.opcode == "custom-call"
        and ins.attrs.get("custom_call_target", "").strip('"') in _GEMM_TARGETS
        and len(ins.operands) >= 2
    )


def _int_literal(text: str) -> int | None:
    m = re.search(r"-?\d+", text or "")
    return int(m.group(0)) if m else None


def build_table(
    hlo_text: str,
    mesh: MeshInfo,
    *,
    fusion: str = "ideal",
    axis_roles: dict[str, str] | None = None,
) -> OpTable:
    """The op table of an optimised, SPMD-partitioned HLO module (`compiled.as_text()`)."""
    module = parse_module(hlo_text)
    if module.num_partitions > 1 and module.num_partitions != mesh.size:
        raise ValueError(
            f"the HLO module is partitioned {module.num_partitions} ways but the mesh "
            f"{dict(zip(mesh.axis_names, mesh.shape, strict=True))} has {mesh.size} devices; "
            "pass the mesh the program was compiled for."
        )
    unknown = set(axis_roles or {}) - set(mesh.axis_names)
    if unknown:
        raise ValueError(
            f"axis_roles names unknown mesh axes {sorted(unknown)}; the mesh has "
            f"{', '.join(mesh.axis_names)}."
        )
    bad = {r for r in (axis_roles or {}).values() if r not in ROLES}
    if bad:
        raise ValueError(f"unknown role(s) {sorted(bad)}; known: {', '.join(ROLES)}.")
    table = _Builder(module, mesh, fusion=fusion, axis_roles=axis_roles or {}).run()
    for op in table.ops:
        if op.kind == "collective" and op.role == "other" and op.group_size > 1:
            table.notes.append(
                f"collective {op.name} over axes {op.axes or '?'}: no overlap class "
                "(name the axis role with axis_roles=...); charged fully exposed"
            )
    _windows(table)
    return table


def _windows(table: OpTable) -> None:
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
