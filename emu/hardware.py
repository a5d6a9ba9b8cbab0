"""Chips, hosts and facilities as pytrees.

A `Chip` carries its dense peak FLOP/s per precision (0 where the chip lacks the precision),
HBM capacity and bandwidth, power (idle and TDP) and the shared, calibrated parameters of its
achievable-efficiency curves. All bandwidths are per chip; SI units throughout.

>>> chip = example_chip()
>>> round(float(peak_flops(chip, "bf16")) / 1e12)
989
"""

from __future__ import annotations

from emu._backend import jnp
from emu.struct import dataclass, error, field, static_field
from emu.units import PRECISIONS

__all__ = [
    "Chip",
    "Host",
    "Facility",
    "Overlap",
    "peak_flops",
    "usable_hbm_bytes",
    "example_chip",
    "example_overlap",
]

Array = jnp.ndarray


#: an achievable fraction of a peak below 1% is not a working system: a unit slip
_EFFICIENCY = "[0.01, 1]"


@dataclass
class Chip:
    """One accelerator package: peak FLOP/s per precision, HBM, power, and the shared,
    calibrated parameters of its achievable-efficiency curves (SI units; bandwidths are per
    chip, one direction). Matmul efficiency rises with the shape (see `emu.compute`):

        eff(m, n, k) = matmul_efficiency / (1 + matmul_half_dim * (1/m + 1/n + 1/k))

    A package may hold `dies_per_chip` dies that software sees as separate devices (Ascend
    910C: 2, facts §25; B200/B300 are two dies but one CUDA device, so 1). The fields are
    package totals as vendors publish them; `emu.topology.rank_system` derives the per-die
    rank the cost model computes on (each die 1/d of the FLOP/s, HBM, bandwidth and power).
    Usable memory per device is the reported capacity minus `hbm_reserve_bytes`
    (`usable_hbm_bytes`).

    Power: dynamic power (tdp_w - idle_w) is scaled by the activity of the step
    (`matmul_power`, `memory_power`, `comm_power`; see `emu.power`). Bounds beside each
    field; `idle_w <= tdp_w` and "bf16 or fp16 supported" are cross-field rules.
    """

    name: str = static_field()
    family: str = static_field(default="")
    peak_flops_per_s: dict = field(
        "[1e9, 1e18]",
        zero_ok=True,
        unit="FLOP/s",
        help="dense peak per precision of emu.units.PRECISIONS (0 = unsupported)",
    )
    hbm_bytes: Array = field(
        "[1e8, 1e14]",
        unit="bytes",
        help="HBM capacity per package as the driver reports it (nvidia-smi / npu-smi, binary "
        "MiB): 81559 MiB = 85.5e9 on an H100 '80 GB'",
    )
    hbm_bytes_per_s: Array = field(
        "[1e9, 1e15]", unit="bytes/s", help="HBM bandwidth, e.g. 3.35e12 for 3.35 TB/s"
    )
    tdp_w: Array = field("[1, 1e5]", unit="W", help="board power at full load")
    idle_w: Array = field("[0, 1e5]", unit="W", help="board power when idle (<= tdp_w)")
    matmul_efficiency: Array = field(
        _EFFICIENCY, help="asymptotic fraction of the 16-bit peak reached by large matmuls"
    )
    lowp_matmul_efficiency: Array = field(
        _EFFICIENCY,
        help="the same for 8- and 4-bit matmuls, as a fraction of *their* peak (scaling, "
        "casting and amax overheads make FP8 reach a smaller fraction)",
    )
    matmul_half_dim: Array = field(
        "[0, 1e5]", unit="elements", help="how fast matmul efficiency rises with the shape"
    )
    hbm_efficiency: Array = field(
        _EFFICIENCY, help="achievable fraction of HBM bandwidth for memory-bound kernels"
    )
    grouped_matmul_efficiency: Array = field(
        _EFFICIENCY,
        default_factory=lambda: jnp.float32(1.0),
        help="the routed experts' grouped GEMMs reach this fraction of the rate of a dense "
        "GEMM of the same shape (ragged per-expert token counts, per-expert tails); 1 = as "
        "dense",
    )
    kernel_overhead_s: Array = field("[0, 1e-3]", unit="s", help="fixed cost of one kernel")
    matmul_power: Array = field("[0, 1]", help="activity (share of tdp - idle) in matmuls")
    memory_power: Array = field("[0, 1]", help="activity in memory-bound kernels")
    comm_power: Array = field("[0, 1]", help="activity while only waiting on communication")
    dies_per_chip: Array = field(
        "[1, 16]",
        integer=True,
        default_factory=lambda: jnp.float32(1.0),
        unit="dies",
        help="software-visible devices (ranks) per package: 2 on Ascend 910C, else 1",
    )
    hbm_reserve_bytes: Array = field(
        "[0, 1e12]",
        unit="bytes",
        default_factory=lambda: jnp.float32(0.0),
        help="HBM each device's runtime holds before the model sees memory (context, "
        "collective buffers, workspaces), per die; e.g. 2.684e9 for 2.5 GiB",
    )

    def _cross_check(self, where: str, at: str) -> None:
        if float(self.idle_w) > float(self.tdp_w):
            raise error(
                where,
                f"{at}idle_w={float(self.idle_w):g} exceeds {at}tdp_w={float(self.tdp_w):g}.",
            )
        d, reserve = float(self.dies_per_chip), float(self.hbm_reserve_bytes)
        if d * reserve >= float(self.hbm_bytes):
            raise error(
                where,
                f"{at}hbm_reserve_bytes={reserve:g} per die x {d:g} dies leaves no memory of "
                f"{at}hbm_bytes={float(self.hbm_bytes):g}.",
            )
        peaks = self.peak_flops_per_s
        if float(peaks.get("bf16", 0.0)) <= 0 and float(peaks.get("fp16", 0.0)) <= 0:
            raise error(where, f"{at}peak_flops_per_s: bf16 or fp16 must be > 0.")
        unknown = set(peaks) - set(PRECISIONS)
        if unknown:
            raise error(
                where,
                f"{at}peak_flops_per_s: unknown precision(s) {sorted(unknown)}; "
                f"known: {', '.join(PRECISIONS)}.",
            )


@dataclass
class Host:
    """Everything in a node besides accelerators and network, attributed per chip (watts
    are averages under an LLM job; a stated assumption where no source gives them)."""

    cpus_per_chip: Array = field("[0, 64]", unit="CPUs", help="host CPUs per accelerator")
    cpu_w: Array = field(
        "[0, 5e3]", unit="W", help="one CPU under load (with its memory where the source does)"
    )
    other_w_per_chip: Array = field(
        "[0, 1e5]", unit="W", help="fans, DRAM, boards, storage and management, per chip"
    )


@dataclass
class Facility:
    """Power conversion and cooling: IT power = DC load / psu_efficiency; facility power =
    pue * IT power (reported separately; `power_w` is IT)."""

    psu_efficiency: Array = field(
        "(0.5, 1]", help="DC load / AC input of the power supplies (real PSUs: 0.9-0.97)"
    )
    pue: Array = field("[1, 4]", help="facility power / IT power (power usage effectiveness)")


@dataclass
class Overlap:
    """Shares of communication and host work hidden behind compute by the frameworks:
    seven fractions (`tp`, `dp`, `pp`, `cp`, `ep`, `ep_tbo`, `pipelining`, each in [0, 1])
    and one time (`host_kernel_s`). The host runs ahead of the GPU, so `host_kernel_s`
    costs time only when a micro-batch issues kernels faster than the GPU retires them
    (fine-grained MoE: per-expert GEMM and cast launches; see `emu.step`)."""

    tp: Array = field(
        "[0, 1]",
        help="TP collectives overlapped with GEMMs in training (serving exposes them: "
        "emu.step.SERVING_TP_OVERLAP)",
    )
    dp: Array = field(
        "[0, 1]",
        help="gradient reduce-scatter and parameter all-gather overlapped with one "
        "micro-batch of compute",
    )
    pp: Array = field("[0, 1]", help="pipeline send/recv overlapped")
    cp: Array = field("[0, 1]", help="context-parallel KV exchange overlapped with attention")
    ep: Array = field(
        "[0, 1]", help="MoE dispatch/combine overlapped without a two-micro-batch schedule"
    )
    ep_tbo: Array = field(
        "[0, 1]",
        help="share of min(all-to-all, compute) a two-micro-batch / DualPipe schedule hides",
    )
    pipelining: Array = field(
        "[0, 1]",
        help="share of the non-bottleneck stages of a hierarchical collective hidden behind "
        "its slowest stage by chunked pipelining",
    )
    host_kernel_s: Array = field(
        "[0, 1e-2]",
        unit="s",
        help="host time to issue one kernel from a training framework (Python dispatch, "
        "FP8 scaling bookkeeping, CUDA launch)",
    )


def example_overlap() -> Overlap:
    """The calibration defaults' overlap fractions (configs/calibration/defaults.toml)."""
    f = jnp.float32
    return Overlap(
        tp=f(0.3),
        dp=f(0.9),
        pp=f(0.8),
        cp=f(0.9),
        ep=f(0.0),
        ep_tbo=f(0.5),
        pipelining=f(0.0),
        host_kernel_s=f(30e-6),
    )


def peak_flops(chip: Chip, precision: str) -> Array:
    """Dense peak FLOP/s of `chip` at `precision` (0 where unsupported); ValueError lists the
    known precisions for an unknown name."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision '{precision}'; known: {', '.join(PRECISIONS)}.")
    return chip.peak_flops_per_s[precision]


def usable_hbm_bytes(chip: Chip) -> Array:
    """Bytes a framework can allocate on one package: the reported capacity less the runtime
    reserve of each of its dies, hbm_bytes - dies_per_chip * hbm_reserve_bytes (on a rank
    chip from `emu.topology.rank_system`, d = 1: per die). Source of the rule: issue 11 /
    fidelity DESIGN §3d (nvidia-smi / npu-smi totals less the idle occupancy).

    >>> round(float(usable_hbm_bytes(example_chip())) / 2**30, 2)   # 81559 MiB - 2.5 GiB
    77.15
    """
    return chip.hbm_bytes - chip.dies_per_chip * chip.hbm_reserve_bytes


def example_chip() -> Chip:
    """An H100-SXM-like chip for examples and tests (facts §10, nominal)."""
    f = jnp.float32
    return Chip(
        name="example-h100",
        family="hopper",
        peak_flops_per_s={
            "bf16": f(989e12),
            "fp16": f(989e12),
            "fp8": f(1979e12),
            "int8": f(1979e12),
            "fp4": f(0.0),
        },
        hbm_bytes=f(81559 * 2**20),
        hbm_bytes_per_s=f(3.35e12),
        tdp_w=f(700.0),
        idle_w=f(70.0),
        matmul_efficiency=f(0.75),
        lowp_matmul_efficiency=f(0.6),
        matmul_half_dim=f(64.0),
        hbm_efficiency=f(0.85),
        kernel_overhead_s=f(4e-6),
        matmul_power=f(1.0),
        memory_power=f(0.6),
        comm_power=f(0.3),
        hbm_reserve_bytes=f(2.5 * 2**30),
    )
