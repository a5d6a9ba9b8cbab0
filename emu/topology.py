"""Network tiers, whole systems, and how a group of chips maps onto the tiers.

A system is a `Chip` on a stack of network `Tier`s, innermost first. Tier k groups
`domain_chips` chips (cumulative: an 8-GPU node, then a 72-GPU NVLink domain, then the whole
cluster on the scale-out fabric). Inside a tier-k domain every chip reaches every other chip
at `bytes_per_s` per direction (unidirectional, per chip), scaled by the achievable
`efficiency` and divided by the `oversubscription` of that tier.

A communication group of `size` chips whose ranks are `stride` apart (Megatron order: TP is
innermost, stride 1; then CP, DP, PP) has `members_within(k)` members inside one tier-k
domain, so it spans a tier only when it outgrows the domain below.

>>> import jax.numpy as jnp
>>> sys = example_system()
>>> [float(x) for x in participants(sys.tiers, jnp.float32(16), jnp.float32(1))]
[8.0, 2.0]
>>> [float(x) for x in participants(sys.tiers, jnp.float32(4), jnp.float32(8))]
[1.0, 4.0]
"""

from __future__ import annotations

import jax.numpy as jnp

from emu.hardware import Chip, Facility, Host, Overlap, example_chip, example_overlap
from emu.numerics import safe_div
from emu.struct import dataclass, static_field

__all__ = ["Tier", "System", "participants", "example_system", "tier_names"]

Array = jnp.ndarray


@dataclass
class Tier:
    """One level of the network.

    `link` names the link technology (for calibration per link type, e.g. "nvlink4", "ub",
    "ib400"). Numbers (SI): `domain_chips` chips share one domain of this tier (the last tier's
    value is the largest cluster it can build); `bytes_per_s` per chip per direction;
    `efficiency` achievable fraction of it for large collectives; `latency_s` per algorithm
    step (hop plus endpoint); `base_latency_s` fixed cost of one collective call on this tier;
    `oversubscription` >= 1 (taper of the tier's switches); `allreduce_speedup` >= 1 from
    in-network reduction (NVLink SHARP), 1 where the switches cannot reduce.

    Power, attributed per chip: `switch_w_per_chip` (switch ASICs and their boxes),
    `optics_per_chip` transceivers of `optic_w` each, `nic_w_per_chip` (NICs, DPUs).
    """

    name: str = static_field()
    link: str = static_field()
    domain_chips: Array
    bytes_per_s: Array
    efficiency: Array
    latency_s: Array
    base_latency_s: Array
    oversubscription: Array
    allreduce_speedup: Array
    switch_w_per_chip: Array
    optics_per_chip: Array
    optic_w: Array
    nic_w_per_chip: Array


@dataclass
class System:
    """A machine: `n_chips` chips (one supernode, rack or node) of `chip` on `tiers`.

    Clusters larger than `n_chips` are several systems on the outermost tier.
    """

    name: str = static_field()
    n_chips: Array
    chip: Chip
    tiers: tuple
    host: Host
    facility: Facility
    overlap: Overlap


def tier_names(system: System) -> list[str]:
    return [t.name for t in system.tiers]


def members_within(tiers, size, stride):
    """Members of a group (size, stride) inside one domain of each tier, innermost first."""
    out = []
    for k, tier in enumerate(tiers):
        if k == len(tiers) - 1:
            out.append(size)
        else:
            out.append(jnp.clip(safe_div(tier.domain_chips, stride), 1.0, size))
    return out


def participants(tiers, size, stride):
    """Participants per tier: n_k = m_k / m_{k-1}; their product is the group size."""
    m = members_within(tiers, size, stride)
    prev = jnp.ones_like(size)
    out = []
    for mk in m:
        mk = jnp.maximum(mk, prev)
        out.append(safe_div(mk, prev, 1.0))
        prev = mk
    return out


def example_system() -> System:
    """A DGX-H100-like system: 8-GPU NVLink node, 400G InfiniBand (facts §10, nominal)."""
    f = jnp.float32
    nvlink = Tier(
        name="nvlink",
        link="nvlink4",
        domain_chips=f(8),
        bytes_per_s=f(450e9),
        efficiency=f(0.82),
        latency_s=f(1e-6),
        base_latency_s=f(10e-6),
        oversubscription=f(1.0),
        allreduce_speedup=f(1.3),
        switch_w_per_chip=f(30.0),
        optics_per_chip=f(0.0),
        optic_w=f(0.0),
        nic_w_per_chip=f(0.0),
    )
    ib = Tier(
        name="infiniband",
        link="ib400",
        domain_chips=f(1e6),
        bytes_per_s=f(50e9),
        efficiency=f(0.85),
        latency_s=f(5e-6),
        base_latency_s=f(20e-6),
        oversubscription=f(1.0),
        allreduce_speedup=f(1.0),
        switch_w_per_chip=f(35.0),
        optics_per_chip=f(2.0),
        optic_w=f(8.0),
        nic_w_per_chip=f(25.0),
    )
    return System(
        name="example-dgx-h100",
        n_chips=f(8),
        chip=example_chip(),
        tiers=(nvlink, ib),
        host=Host(cpus_per_chip=f(0.25), cpu_w=f(350.0), other_w_per_chip=f(300.0)),
        facility=Facility(psu_efficiency=f(0.95), pue=f(1.3)),
        overlap=example_overlap(),
    )
