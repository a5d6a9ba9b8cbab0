"""Parse XLA's HLO text (`compiled.as_text()`) into computations and instructions (host side).

Only what the emulator needs is read: every instruction's result type, opcode, operands,
called computations, the attributes that size it (contracting and batch dimensions, replica
groups, source-target pairs, trip counts) and its metadata (op_name and source location,
from `source_file`/`source_line` or from the module's StackFrames table).

Replica groups come in three spellings, all expanded to lists of device ids
(`replica_groups`, from `emu.program._replica_groups`):

    {{0,1},{2,3}}                                   explicit
    [2,4]<=[8]   [4,2]<=[2,4]T(1,0)                 iota: reshape(transpose(iota))
    mesh['x'=2,'y'=4] {'y'}   (device_ids=(...))    mesh axes (sub-axes 'x':(1)2)

>>> mod = parse_module('''HloModule m
... ENTRY %main (p0: f32[8,16], p1: f32[16,4]) -> f32[8,4] {
...   %p0 = f32[8,16]{1,0} parameter(0)
...   %p1 = f32[16,4]{1,0} parameter(1)
...   ROOT %dot = f32[8,4]{1,0} dot(%p0, %p1), lhs_contracting_dims={1}, rhs_contracting_dims={0}
... }''')
>>> ins = mod.entry.by_name["dot"]
>>> ins.opcode, ins.shape.dims, ins.operands
('dot', (8, 4), ('p0', 'p1'))
>>> replica_groups("[4,2]<=[2,4]T(1,0)")
[[0, 4], [1, 5], [2, 6], [3, 7]]
"""

from __future__ import annotations

import dataclasses
import json
import math
import re

from emu.program._hlo_text import NAME, matching, metadata, names, parse_attrs, split_top
from emu.program._replica_groups import replica_groups, source_target_pairs

__all__ = [
    "Shape",
    "Instruction",
    "Computation",
    "Module",
    "parse_module",
    "parse_shape",
    "called_name",
    "malformed",
    "replica_groups",
    "source_target_pairs",
    "ELEMENT_BYTES",
]

#: bytes per element of every HLO element type emu may meet (sub-byte types as fractions)
ELEMENT_BYTES = {
    "pred": 1.0,
    "s2": 0.25,
    "u2": 0.25,
    "s4": 0.5,
    "u4": 0.5,
    "s8": 1.0,
    "u8": 1.0,
    "s16": 2.0,
    "u16": 2.0,
    "s32": 4.0,
    "u32": 4.0,
    "s64": 8.0,
    "u64": 8.0,
    "f16": 2.0,
    "bf16": 2.0,
    "f32": 4.0,
    "f64": 8.0,
    "c64": 8.0,
    "c128": 16.0,
    "f4e2m1fn": 0.5,
    "f8e3m4": 1.0,
    "f8e4m3": 1.0,
    "f8e4m3fn": 1.0,
    "f8e4m3fnuz": 1.0,
    "f8e4m3b11fnuz": 1.0,
    "f8e5m2": 1.0,
    "f8e5m2fnuz": 1.0,
    "f8e8m0fnu": 1.0,
    "token": 0.0,
}


@dataclasses.dataclass(frozen=True)
class Shape:
    """An array type (`dtype`, `dims`) or a tuple of shapes (`elements`, dtype "tuple")."""

    dtype: str
    dims: tuple[int, ...] = ()
    elements: tuple[Shape, ...] = ()

    @property
    def is_tuple(self) -> bool:
        """A tuple type (its `elements` are the members)."""
        return self.dtype == "tuple"

    @property
    def size(self) -> int:
        """Elements of an array (1 for a scalar); the sum over a tuple."""
        if self.is_tuple:
            return sum(e.size for e in self.elements)
        return math.prod(self.dims)

    @property
    def element_bytes(self) -> float:
        """Bytes per element (`ELEMENT_BYTES`); ValueError for a type emu does not know."""
        if self.dtype not in ELEMENT_BYTES:
            raise ValueError(
                f"HLO element type '{self.dtype}' is unknown to emu; known: "
                f"{', '.join(ELEMENT_BYTES)}."
            )
        return ELEMENT_BYTES[self.dtype]

    @property
    def nbytes(self) -> float:
        """Bytes: elements x bytes per element, summed over a tuple."""
        if self.is_tuple:
            return sum(e.nbytes for e in self.elements)
        return self.size * self.element_bytes

    def leaves(self) -> list[Shape]:
        """The array shapes of a (nested) tuple, in order; [self] for an array."""
        if self.is_tuple:
            return [x for e in self.elements for x in e.leaves()]
        return [self]


@dataclasses.dataclass
class Instruction:
    """One HLO instruction: result type, opcode, operand names, attributes as written, its
    position in its computation (`index`, the schedule order) and its metadata."""

    name: str
    shape: Shape
    opcode: str
    operands: tuple[str, ...]
    attrs: dict[str, str]
    computation: str
    index: int
    is_root: bool = False
    op_name: str = ""
    source: str = ""
    #: parameter number (opcode "parameter") or constant text (opcode "constant")
    literal: str = ""
    #: line of the module text it was read from (1-based; 0 when not read from text)
    line: int = 0

    def called(self) -> list[str]:
        """Names of the computations this instruction calls, in attribute order."""
        out = []
        for key in ("calls", "to_apply", "condition", "body", "true_computation"):
            if key in self.attrs:
                out += names(self.attrs[key])
        for key in ("false_computation", "branch_computations"):
            if key in self.attrs:
                out += names(self.attrs[key])
        return out

    def int_list(self, key: str) -> tuple[int, ...]:
        """The integers of an attribute ('lhs_contracting_dims={1,2}' -> (1, 2))."""
        text = self.attrs.get(key, "")
        return tuple(int(x) for x in re.findall(r"-?\d+", text))

    def backend_config(self) -> dict:
        """The JSON backend config ({} when absent or unreadable)."""
        text = self.attrs.get("backend_config", "")
        if text.startswith('"') and text.endswith('"'):
            text = bytes(text[1:-1], "utf-8").decode("unicode_escape")
        try:
            out = json.loads(text) if text.startswith("{") else {}
        except json.JSONDecodeError:
            return {}
        return out if isinstance(out, dict) else {}


@dataclasses.dataclass
class Computation:
    """A computation: its instructions in order, indexed by name and by user."""

    name: str
    instructions: list[Instruction]
    is_entry: bool = False
    by_name: dict[str, Instruction] = dataclasses.field(default_factory=dict)
    users: dict[str, list[Instruction]] = dataclasses.field(default_factory=dict)

    @property
    def root(self) -> Instruction:
        """The ROOT instruction (the last one when none is marked)."""
        for ins in self.instructions:
            if ins.is_root:
                return ins
        return self.instructions[-1]

    def parameters(self) -> list[Instruction]:
        """Parameter instructions by parameter number."""
        ps = [i for i in self.instructions if i.opcode == "parameter"]
        return sorted(ps, key=lambda i: int(i.literal or 0))


@dataclasses.dataclass
class Module:
    """A parsed HLO module: its computations by name, the entry, the SPMD partition count."""

    name: str
    computations: dict[str, Computation]
    entry: Computation
    num_partitions: int = 1
    #: `replica_count` of the header (a pmap-style module runs on that many replicas)
    num_replicas: int = 1
    #: output indices ({} the whole result, {1} its second element) that alias a parameter
    #: (`input_output_alias` of the header: donated buffers)
    aliased_outputs: tuple[tuple[int, ...], ...] = ()

    def io_bytes(self) -> float:
        """Bytes of the entry's parameters and outputs on one device, an output that
        aliases a parameter counted once: what a step holds besides its temporaries (an
        element type emu does not know counts 0 here)."""

        def nbytes(shape: Shape | None) -> float:
            leaves = shape.leaves() if shape is not None else []
            return sum(x.size * ELEMENT_BYTES.get(x.dtype, 0.0) for x in leaves)

        params = sum(nbytes(p.shape) for p in self.entry.parameters())
        out = self.entry.root.shape
        aliased = 0.0
        for path in self.aliased_outputs:
            shape = out
            for i in path:
                ok = shape is not None and shape.is_tuple and i < len(shape.elements)
                shape = shape.elements[i] if ok else None
            aliased += nbytes(shape)
        return params + nbytes(out) - aliased


_ARRAY = re.compile(r"(\w+)\[([^\]]*)\]")


def called_name(text: str) -> str:
    """'%fused_computation.3' -> 'fused_computation.3'."""
    return text.strip().lstrip("%")


def parse_shape(text: str) -> Shape:
    """'bf16[8,32]{1,0}' or '(f32[], s32[4])' -> Shape."""
    text = text.strip()
    if text.startswith("("):
        inner = text[1 : matching(text, 0) - 1]
        return Shape("tuple", (), tuple(parse_shape(p) for p in split_top(inner) if p.strip()))
    m = _ARRAY.match(text)
    if not m:
        if text.startswith("token"):
            return Shape("token")
        raise ValueError(f"HLO: cannot read the type '{text[:60]}'.")
    dims = []
    for d in m.group(2).split(","):
        if not d.strip():
            continue
        if not re.fullmatch(r"\s*(<=)?\d+\s*", d):  # a static or bounded dynamic size
            raise ValueError(
                f"HLO: dimension '{d.strip()[:20]}' of the type '{text[:60]}' is not a size."
            )
        dims.append(int(d.replace("<=", "")))
    return Shape(m.group(1), tuple(dims))


_INSTR = re.compile(r"^\s*(ROOT\s+)?%?(" + NAME + r")\s*=\s*")
_HEADER = re.compile(r"^\s*(ENTRY\s+)?%?(" + NAME + r")\s*(\(.*)?\{\s*$")


#: paths of installed libraries: a source location inside them is not the user's line
_LIBRARY_MARKS = ("site-packages", "dist-packages", "/jax/_src/", "/flax/", "/optax/")


class _Frames:
    """The StackFrames / FileLocations / FileNames / FunctionNames tables of newer HLO."""

    def __init__(self):
        self.files: dict[int, str] = {}
        self.functions: dict[int, str] = {}
        self.locations: dict[int, dict] = {}
        self.frames: dict[int, dict] = {}

    def read(self, section: str, line: str) -> None:
        """One line of a FileNames / FunctionNames / FileLocations / StackFrames table."""
        m = re.match(r"\s*(\d+)\s+(.*)$", line)
        if not m:
            return
        key, rest = int(m.group(1)), m.group(2).strip()
        if section == "FileNames":
            self.files[key] = rest.strip('"')
        elif section == "FunctionNames":
            self.functions[key] = rest.strip('"')
        elif section == "FileLocations":
            self.locations[key] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", rest)}
        elif section == "StackFrames":
            self.frames[key] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", rest)}

    def _at(self, frame: dict) -> str:
        loc = self.locations.get(frame.get("file_location_id", -1), {})
        f = self.files.get(loc.get("file_name_id", -1), "")
        return f"{f}:{loc['line']}" if f and "line" in loc else ""

    def source(self, frame_id: int) -> str:
        """The innermost frame in the user's code (not in an installed library), else the
        innermost frame."""
        first, seen = "", set()
        frame = self.frames.get(frame_id)
        while frame and frame_id not in seen:
            seen.add(frame_id)
            at = self._at(frame)
            first = first or at
            if at and not any(m in at for m in _LIBRARY_MARKS):
                return at
            frame_id = frame.get("parent_frame_id", -1)
            frame = self.frames.get(frame_id)
        return first


def parse_module(text: str) -> Module:
    """Parse HLO module text; ValueError (one line) when it is not HLO."""
    lines = text.splitlines()
    if not lines or not any(line.startswith("HloModule") for line in lines[:5]):
        raise ValueError(
            "not an HLO module: expected text from `jax.jit(f).lower(*args).compile().as_text()`."
        )
    header = next(line for line in lines if line.startswith("HloModule"))
    name = (header.split()[1:] or [""])[0].rstrip(",")
    m = re.search(r"num_partitions=(\d+)", header)
    partitions = int(m.group(1)) if m else 1
    m = re.search(r"replica_count=(\d+)", header)
    replicas = int(m.group(1)) if m else 1
    if not name or partitions < 1 or replicas < 1:
        what = (
            f"num_partitions={partitions}, replica_count={replicas} (0 devices)"
            if name
            else "no module name"
        )
        raise ValueError(
            f"malformed HLO: its header has {what}; pass the whole, unedited text of "
            "`compiled.as_text()`."
        )
    aliased = ()
    if "input_output_alias=" in header:
        at = header.index("input_output_alias=") + len("input_output_alias=")
        text = header[at : matching(header, at)] if header[at : at + 1] == "{" else ""
        aliased = tuple(
            tuple(int(x) for x in re.findall(r"\d+", path))
            for path in re.findall(r"\{([\d,\s]*)\}\s*:\s*\(", text)
        )
    frames = _Frames()
    comps: dict[str, Computation] = {}
    entry = None
    current: Computation | None = None
    section = ""
    entry_line = 0
    for number, line in enumerate(lines[1:], start=2):
        stripped = line.strip()
        if current is None:
            if stripped in ("FileNames", "FunctionNames", "FileLocations", "StackFrames"):
                section = stripped
                continue
            hm = _HEADER.match(line)
            if hm and stripped.endswith("{"):
                section = ""
                current = Computation(hm.group(2), [], is_entry=bool(hm.group(1)))
                if current.is_entry and entry_line:
                    what = f"a second ENTRY computation (the first at line {entry_line})"
                    raise malformed(number, f"'{stripped}'", what)
                entry_line = number if current.is_entry else entry_line
                continue
            if section and stripped:
                frames.read(section, stripped)
            continue
        if stripped == "}" or stripped.startswith("},"):  # "}, execution_thread=..."
            comps[current.name] = current
            if current.is_entry:
                entry = current
            current = None
            continue
        if stripped:
            try:
                ins = _parse_instruction(line, current, frames)
            except (ValueError, IndexError) as e:
                what = str(e).removeprefix("HLO: ").rstrip(".")
                raise malformed(number, f"'{stripped}'", what) from None
            if ins is not None:
                ins.line = number
                current.instructions.append(ins)
    if current is not None:
        raise ValueError(
            f"HLO module '{name}' is cut short: computation '{current.name}' has no closing "
            "'}'; pass the whole text of `compiled.as_text()`."
        )
    if entry is None:
        raise ValueError(
            f"malformed HLO: module '{name}' has no ENTRY computation (the program's entry "
            "point); pass the whole, unedited text of `compiled.as_text()`."
        )
    if not entry.instructions:
        raise malformed(entry_line, f"ENTRY {entry.name}", "it has no instructions")
    for comp in comps.values():
        comp.by_name = {i.name: i for i in comp.instructions}
        for ins in comp.instructions:
            for op in ins.operands:
                comp.users.setdefault(op, []).append(ins)
    return Module(name, comps, entry, partitions, replicas, aliased)


def malformed(number: int, where: str, what: str) -> ValueError:
    """The one-line error of HLO text that does not read: its line `number`, `where` on it
    (the line or the instruction) and `what` is wrong."""
    shown = where if len(where) <= 60 else where[:57] + "..."
    at = f" at line {number}" if number else ""
    return ValueError(
        f"malformed HLO{at} ({shown}): {what}; pass the whole, unedited text of "
        "`compiled.as_text()`."
    )


def _parse_instruction(line: str, comp: Computation, frames: _Frames) -> Instruction | None:
    m = _INSTR.match(line)
    if not m:
        return None
    rest = line[m.end() :]
    # the result type: a tuple in parentheses, or one array type
    if rest.startswith("("):
        end = matching(rest, 0)
    else:
        tm = re.match(r"\w+\[[^\]]*\](\{[^}]*\})?", rest)
        end = tm.end() if tm else rest.find(" ")
        if end < 0:
            raise ValueError(f"cannot read the result type '{rest[:40]}' (the line is cut?)")
    shape = parse_shape(rest[:end])
    rest = rest[end:].strip()
    om = re.match(r"([\w\-]+)\(", rest)
    if not om:
        return None
    opcode = om.group(1)
    close = matching(rest, om.end() - 1)
    operand_text = rest[om.end() : close - 1]
    attrs = parse_attrs(rest[close:].lstrip(", "))
    literal = ""
    if opcode in ("parameter", "constant"):
        operands: tuple[str, ...] = ()
        literal = operand_text.strip()
    else:
        operands = tuple(re.findall(r"%(" + NAME + r")", operand_text))
        if not operands and operand_text.strip():
            operands = tuple(
                p.strip().split()[-1].lstrip("%") for p in split_top(operand_text) if p.strip()
            )
    meta = metadata(attrs.get("metadata", ""))
    source = ""
    if "source_file" in meta:
        source = f"{meta['source_file']}:{meta.get('source_line', '?')}"
    elif "stack_frame_id" in meta:
        source = frames.source(int(meta["stack_frame_id"]))
    return Instruction(
        name=m.group(2),
        shape=shape,
        opcode=opcode,
        operands=operands,
        attrs=attrs,
        computation=comp.name,
        index=len(comp.instructions),
        is_root=bool(m.group(1)),
        op_name=meta.get("op_name", ""),
        source=source,
        literal=literal,
    )
