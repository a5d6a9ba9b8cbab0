"""Dot, convolution and fused-kernel FLOPs (private): the rows of kind matmul and kernel.

FLOPs count 2 per multiply-add (the convention of emu.workload and of "How To Scale Your
Model", ch. 1), per execution:

- dot: 2 x output elements x contracted elements; (m, n, k) from the operand shapes with the
  batch dimensions as `batch` (XLA's DotDimensionNumbers, `lhs/rhs_contracting_dims`,
  `lhs/rhs_batch_dims`);
- convolution: 2 x output elements x (kernel elements / output features), the MACs behind
  each output element (`dim_labels` names the kernel's output-feature dimension 'o');
- cuBLAS GEMM custom call: as a dot, dimension numbers from its `gemm_backend_config`, result
  = the first element of its (result, workspace) tuple;
- attention custom call (cuDNN fMHA, FlashAttention): 2 x b x h x s_q x s_kv x (d + d_v)
  forward (QK^T and PV), x 2.5 backward (FlashAttention-2, Dao 2023: the backward recomputes
  QK^T and runs four more matmuls against the forward's two); x 1/2 when causal;
- marked kernel (`fused_kernel`): the sum of its dots' FLOPs (x 1/2 when causal: a flash
  kernel skips the masked blocks), HBM bytes = the values crossing its boundary.

Precision: the wider of the operands' logical types (`_dtypes`), named as emu's peak table
names it (`PRECISION_OF`; any f8 type is fp8).
"""

from __future__ import annotations

import math
import re

from emu.program._opcodes import PRECISION_OF, is_gemm_call, wider
from emu.program._optable import KERNEL_MARK, Op
from emu.program._values import Values, uncosted_op
from emu.program.hlo import Computation, Instruction, Shape

__all__ = ["matmul_shape", "precision", "matmul_op", "kernel_op", "attention_call_op"]

#: (flops, m, n, k, batch) of one dot or convolution
_Dims = tuple[float, float, float, float, float]


def _contraction(lhs: Shape, rhs: Shape, out: Shape, lc, rc, lb, rb) -> _Dims:
    """(flops, m, n, k, batch) of a contraction from its shapes and dimension numbers:
    k = product of the contracted lhs dims, m and n the free dims of lhs and rhs, flops =
    2 x out elements x k."""
    ld, rd = lhs.dims, rhs.dims
    k = math.prod(ld[i] for i in lc) if lc else 1
    batch = math.prod(ld[i] for i in lb) if lb else 1
    m = math.prod(d for i, d in enumerate(ld) if i not in lc and i not in lb)
    n = math.prod(d for i, d in enumerate(rd) if i not in rc and i not in rb)
    flops = 2.0 * out.size * k
    return flops, float(m), float(n), float(k), float(batch)


def _dot_dims(lhs: Instruction, rhs: Instruction, dot: Instruction) -> _Dims:
    """A `dot` instruction's contraction (`lhs/rhs_contracting_dims`, `lhs/rhs_batch_dims`)."""
    lc, rc = dot.int_list("lhs_contracting_dims"), dot.int_list("rhs_contracting_dims")
    lb, rb = dot.int_list("lhs_batch_dims"), dot.int_list("rhs_batch_dims")
    return _contraction(lhs.shape, rhs.shape, dot.shape, lc, rc, lb, rb)


def _conv_dims(rhs: Instruction, out: Instruction) -> _Dims:
    """A convolution: MACs per output element = kernel elements / output features."""
    labels = out.attrs.get("dim_labels", "")
    parts = re.split(r"_|->", labels)
    rhs_labels = parts[1] if len(parts) > 1 else ""
    o_at = rhs_labels.find("o")
    rd = rhs.shape.dims
    out_feat = rd[o_at] if 0 <= o_at < len(rd) else 1
    macs_per_out = math.prod(rd) / max(out_feat, 1)
    flops = 2.0 * out.shape.size * macs_per_out
    m = out.shape.size / max(out_feat, 1)
    return flops, float(m), float(out_feat), float(macs_per_out), 1.0


def _gemm_call_dims(comp: Computation, ins: Instruction) -> _Dims:
    """A cuBLAS GEMM custom call: dimension numbers from its backend config."""
    cfg = ins.backend_config()
    dims = cfg.get("gemm_backend_config", cfg).get("dot_dimension_numbers", {})
    lhs, rhs = comp.by_name[ins.operands[0]], comp.by_name[ins.operands[1]]
    out = ins.shape.elements[0] if ins.shape.is_tuple else ins.shape

    def get(key):
        return [int(x) for x in dims.get(key, [])]

    lc, rc = get("lhs_contracting_dimensions"), get("rhs_contracting_dimensions")
    lb, rb = get("lhs_batch_dimensions"), get("rhs_batch_dimensions")
    return _contraction(lhs.shape, rhs.shape, out, lc, rc, lb, rb)


def matmul_shape(values: Values, comp: Computation, ins: Instruction) -> tuple[float, _Dims]:
    """(total FLOPs, dims of the largest dot) of a matmul instruction or fusion."""
    if is_gemm_call(ins):
        dims = _gemm_call_dims(comp, ins)
        return dims[0], dims
    if ins.opcode in ("dot", "convolution"):
        where, dots = comp, [ins]
    else:
        where = values.view.fused(ins)
        dots = [i for i in where.instructions if i.opcode in ("dot", "convolution")]
    total, best = 0.0, None
    for d in dots:
        lhs, rhs = where.by_name[d.operands[0]], where.by_name[d.operands[1]]
        dims = _dot_dims(lhs, rhs, d) if d.opcode == "dot" else _conv_dims(rhs, d)
        total += dims[0]
        if best is None or dims[0] > best[0]:
            best = dims
    return total, best


def precision(values: Values, comp: Computation, ins: Instruction) -> str | None:
    """emu's precision name of a matmul (None when emu has no peak for its type)."""
    a, b = values.types.matmul_operands(comp, ins)
    dtype = wider(a, b)
    if dtype.startswith("f8"):
        return "fp8"
    return PRECISION_OF.get(dtype)


def matmul_op(values: Values, comp: Computation, ins: Instruction, count: float) -> Op:
    """The matmul row of a dot/convolution/GEMM (uncosted when its type has no peak).

    `batch` (m, k) @ (k, n) products of the largest dot carry all the FLOPs (a batched dot,
    or several dots in one fusion): batch = flops / (2 m n k)."""
    flops, (_, m, n, k, _) = matmul_shape(values, comp, ins)
    prec = precision(values, comp, ins)
    if prec is None:
        a, b = values.types.matmul_operands(comp, ins)
        reason = f"matmul in {wider(a, b)}: emu has no peak for it"
        return uncosted_op(values, comp, ins, count, reason, flops=flops)
    return Op.at(
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


def kernel_op(
    values: Values, comp: Computation, key: str, members: list[Instruction], count: float
) -> Op:
    """The row of a marked fused kernel: its dots' FLOPs, the shape and precision of its
    largest dot, its boundary bytes."""
    flops, best, prec = 0.0, None, "bf16"
    for m in members:
        if values.view.is_matmul(m):
            f, dims = matmul_shape(values, comp, m)
            flops += f
            if best is None or dims[0] > best[0]:
                best = dims
                prec = precision(values, comp, m) or "bf16"
    label = key[key.find(KERNEL_MARK) + len(KERNEL_MARK) : -1]
    causal = label.endswith(",causal")
    lead = max(
        members,
        key=lambda i: matmul_shape(values, comp, i)[0] if values.view.is_matmul(i) else 0,
    )
    _, m_, n_, k_, _ = best if best is not None else (0, 1, 1, 1, 1)
    return Op(
        kind="kernel",
        name=label.split(",")[0],
        computation=comp.name,
        count=count,
        op_name=lead.op_name or key,
        source=lead.source,
        flops=flops,
        bytes=values.boundary(comp, members),
        m=m_,
        n=n_,
        k=k_,
        precision=prec,
        flop_share=0.5 if causal else 1.0,
        members=len(members),
        first_index=min(i.index for i in members),
        last_index=max(i.index for i in members),
    )


def attention_call_op(
    values: Values, comp: Computation, ins: Instruction, count: float, target: str
) -> Op:
    """A cuDNN / FlashAttention custom call with q, k, v of layout (batch, seq, heads, d)
    as one kernel (uncosted for another layout); bytes = q, k, v and the result."""
    ops = [comp.by_name[o] for o in ins.operands[:3] if o in comp.by_name]
    if len(ops) < 3 or len(ops[0].shape.dims) != 4:
        reason = f"attention call '{target}' of unknown layout"
        return uncosted_op(values, comp, ins, count, reason)
    b, sq, h, d = ops[0].shape.dims
    skv = ops[1].shape.dims[1]
    dv = ops[2].shape.dims[-1]
    bwd = "backward" in target.lower() or "bwd" in target.lower()
    flops = 2.0 * b * h * sq * skv * (d + dv) * (2.5 if bwd else 1.0)
    nbytes = sum(values.value_bytes(comp, o.name) for o in ops)
    nbytes += values.value_bytes(comp, ins.name)
    causal = "causal" in str(ins.attrs.get("backend_config", "")).lower()
    return Op.at(
        comp,
        ins,
        kind="kernel",
        count=count,
        flops=flops,
        bytes=nbytes,
        m=float(sq),
        n=float(skv),
        k=float(d),
        precision=PRECISION_OF.get(ops[0].shape.dtype, "bf16"),
        flop_share=0.5 if causal else 1.0,
        note=f"custom call {target}",
    )
