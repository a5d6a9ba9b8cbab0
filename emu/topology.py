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

import dataclasses

from emu._backend import jax, jnp
from emu.hardware import Chip, Facility, Host, Overlap, example_chip, example_overlap
from emu.numerics import safe_div
from emu.struct import dataclass, error, field, static_field

__all__ = [
    "Tier",
    "System",
    "participants",
    "members",
    "rank_system",
    "n_ranks",
    "node_tier",
    "TIER_TOPOLOGIES",
    "example_system",
    "tier_names",
    "reshape",
    "TOPOLOGY_KNOBS",
    "COPPER_REACH_CHIPS",
    "OPTIC_BYTES_PER_S",
    "DEFAULT_OPTIC_W",
]

Array = jnp.ndarray
#: how the members of one domain of a tier are wired: "switch" (every member reaches the
#: switches at the full per-chip bandwidth) or "mesh" (a direct full mesh: a member's
#: bandwidth is split over links to each of the other members; HCCS on 910B, the 910C
#: die-to-die link)
TIER_TOPOLOGIES = ("switch", "mesh")


def _f32(x: float):
    return lambda: jnp.float32(x)


@dataclass
class Tier:
    """One level of the network, innermost first.

    `link` names the link technology (for calibration per link type, e.g. "nvlink4", "ub",
    "ib"). Bandwidth is per chip and per direction; power is attributed per chip. The
    collective and all-to-all parameters (`efficiency` ... `a2a_latency_hiding`) are shared
    per link type and filled from the calibration overlay (configs/calibration/); their
    meaning is in `emu.collectives`. Bounds beside each field; `domain_chips` grow outwards
    (a System rule).
    """

    name: str = static_field()
    link: str = static_field()
    topology: str = field(
        static=True,
        default="switch",
        choices=TIER_TOPOLOGIES,
        help='"switch" or "mesh" (a direct full mesh between the members of a domain)',
    )
    domain_chips: Array = field(
        "[1, 1e7]",
        integer=True,
        unit="chips",
        help="chips in one domain of this tier, cumulative (the last tier: the largest "
        "cluster it can build)",
    )
    bytes_per_s: Array = field(
        "[1e6, 1e14]",
        unit="bytes/s",
        help="per chip per direction, e.g. 50e9 for 400 Gb/s",
    )
    efficiency: Array = field(
        "[0.01, 1]", help="achievable fraction of bytes_per_s of a ring collective's steps"
    )
    latency_s: Array = field(
        "[0, 1e-2]", unit="s", help="one hop of a ring (or a send), e.g. 1e-6 for 1 us"
    )
    base_latency_s: Array = field(
        "[0, 1e-1]", unit="s", help="fixed cost of one collective call, e.g. 2e-5 for 20 us"
    )
    oversubscription: Array = field(
        "[1, 64]", help="taper of the tier's switches (1 = non-blocking)"
    )
    allreduce_speedup: Array = field(
        "[1, 10]", help="in-network reduction (NVLink SHARP); 1 where switches cannot reduce"
    )
    switch_w_per_chip: Array = field("[0, 1e4]", unit="W", help="switch ASICs and their boxes")
    optics_per_chip: Array = field(
        "[0, 1e3]", unit="transceivers", help="transceivers per chip, both ends counted"
    )
    optic_w: Array = field("[0, 1e3]", unit="W", help="one transceiver")
    nic_w_per_chip: Array = field("[0, 1e4]", unit="W", help="NICs and DPUs")
    ring_channels: Array = field(
        "[1, 1024]",
        default_factory=_f32(15.0),
        unit="channels",
        help="ring channels that cross into a domain of this tier at once, each on its own "
        "port (NCCL channels over the NICs of a node)",
    )
    ring_chunking: Array = field(
        "[0, 1]",
        default_factory=_f32(0.5),
        help="share of an optimally chunked pipeline's overhead a ring (or an in-switch "
        "all-reduce) pays when this is the farthest tier it spans: 1 = (sqrt(x/B) + "
        "sqrt(L))^2, 0 = x/B + L (emu.collectives); 0.5, the calibration's prior, when left out",
    )
    nvls_latency_s: Array = field(
        "[0, 1e-2]",
        default_factory=_f32(6.3e-6),
        unit="s",
        help="latency of an in-switch (NVLS) all-reduce inside one domain of this tier",
    )
    a2a_efficiency: Array = field(
        "[0.01, 1]",
        default_factory=_f32(0.85),
        help="achievable fraction of bytes_per_s of an MoE dispatch/combine kernel",
    )
    a2a_peer_penalty: Array = field(
        "[0, 10]",
        default_factory=_f32(0.05),
        help="all-to-all bandwidth falls as 1 / (1 + penalty log2(peers)): fewer bytes per peer "
        "(the per-copy message floor rises by the same factor)",
    )
    a2a_message_s: Array = field(
        "[0, 1e-3]",
        default_factory=_f32(0.0),
        unit="s",
        help="least time per token copy of a kernel that sends each copy on its own "
        "(low-latency, one-sided): a message-rate floor under bytes / bandwidth",
    )
    dispatch_latency_s: Array = field(
        "[0, 1e-2]",
        default_factory=_f32(20e-6),
        unit="s",
        help="fixed cost of one MoE dispatch kernel whose farthest peer is on this tier",
    )
    combine_latency_s: Array = field(
        "[0, 1e-2]",
        default_factory=_f32(20e-6),
        unit="s",
        help="fixed cost of one MoE combine kernel whose farthest peer is on this tier",
    )
    a2a_latency_hiding: Array = field(
        "[0, 0.99]",
        default_factory=_f32(0.25),
        help="how much of an MoE kernel's fixed cost its data movement hides: 0 adds them, "
        "towards 1 the larger one alone (emu.collectives)",
    )


@dataclass
class System:
    """A machine: `n_chips` chips (one supernode, rack or node) of `chip` on `tiers`.

    Clusters larger than `n_chips` are several systems on the outermost tier. Rules across
    fields: tier names unique, `domain_chips` non-decreasing outwards, each scale-up tier's
    (every tier but the outermost) a multiple of the one inside it and a divisor of `n_chips`
    where it is no larger, `n_chips` no larger than the outermost domain.
    """

    name: str = static_field()
    n_chips: Array = field("[1, 1e7]", integer=True, unit="chips", help="chips in one system")
    chip: Chip
    tiers: tuple
    host: Host
    facility: Facility
    overlap: Overlap

    def _cross_check(self, where: str, at: str) -> None:
        seen: set[str] = set()
        prev = 0.0
        for t in self.tiers:
            if t.name in seen:
                raise error(where, f"{at}tiers: name '{t.name}' is used twice; names are unique.")
            seen.add(t.name)
            d = float(t.domain_chips)
            if d < prev:
                raise error(
                    where,
                    f"{at}tiers.{t.name}.domain_chips={d:g} must be an integer no smaller than "
                    f"the tier inside it ({prev:g}); list tiers innermost first.",
                )
            last = t is self.tiers[-1]
            if prev >= 1 and not last and d % prev:
                # a scale-up domain holds whole domains of the tier inside it (the outermost,
                # scale-out tier is the whole cluster and need not be a multiple)
                raise error(
                    where,
                    f"{at}tiers.{t.name}.domain_chips={d:g} is not a multiple of the tier "
                    f"inside it ({prev:g}): its domains would split one of those; use a "
                    f"multiple of {prev:g}.",
                )
            prev = d
        n = float(self.n_chips)
        if n > prev:
            raise error(
                where,
                f"{at}n_chips={n:g} must be an integer <= the outermost tier's domain ({prev:g}).",
            )
        for t in self.tiers[:-1]:
            d = float(t.domain_chips)
            if 1 < d <= n and n % d:
                raise error(
                    where,
                    f"{at}tiers.{t.name}.domain_chips={d:g} does not divide the system's "
                    f"n_chips={n:g}: a group would straddle two domains, which emu does not "
                    f"model; use a divisor of {n:g} (or a domain larger than the system).",
                )


#: topology knobs of `reshape`: name -> meaning (all smooth, so gradients flow through them)
TOPOLOGY_KNOBS = {
    "domain": "chips in the scale-up domain (domain_chips of the outermost scale-up tier)",
    "scaleup_bw": "scale-up bandwidth per chip, x configured (links per chip; scale-up "
    "switch, optics and NIC watts scale with it)",
    "scaleout_bw": "scale-out bandwidth per chip, x configured (NICs per chip; scale-out "
    "switch, optics and NIC watts scale with it)",
    "oversubscription": "scale-out oversubscription (switch and optics watts scale with "
    "the ports: (1 + 1/o) / (1 + 1/o_configured))",
    "optics_share": "fraction of the scale-up links that are optical (0..1); copper "
    "reaches COPPER_REACH_CHIPS chips, so a domain D needs a share >= 1 - reach/D",
}
#: chips one copper scale-up domain can span: the NVL72 rack's copper spine (facts §7);
#: an assumption for every system (no other copper reach is published)
COPPER_REACH_CHIPS = 72.0
#: bytes/s per direction of one scale-up optical module: 400G (facts §4: CloudMatrix's UB
#: optics are 400G LPO); one module per 400G of a chip's scale-up bandwidth, chip side
OPTIC_BYTES_PER_S = 50e9
#: watts of a scale-up module where the configured tier has none (facts §4: 8 W 400G LPO,
#: the CloudMatrix 384 assumption)
DEFAULT_OPTIC_W = 8.0
#: an all-optical scale-up tier reaches any domain: the copper share is floored here so the
#: reach stays finite (1e6 x COPPER_REACH_CHIPS)
_MIN_COPPER_SHARE = 1e-6


def _scale_tier(t: Tier, bw, power) -> Tier:
    return dataclasses.replace(
        t,
        bytes_per_s=t.bytes_per_s * bw,
        switch_w_per_chip=t.switch_w_per_chip * power,
        optics_per_chip=t.optics_per_chip * power,
        nic_w_per_chip=t.nic_w_per_chip * power,
    )


def reshape(system: System, **knobs) -> tuple[System, Array]:
    """`system` with its topology changed by `knobs` (see TOPOLOGY_KNOBS; omitted knobs keep
    the configured value), and the violation of the copper-reach rule as a smooth,
    non-negative number (0 when the scale-up domain is reachable; log of the excess).

    The scale-up tiers are all but the last; the scale-out tier is the last. Pure jnp, so
    every knob can be a traced value (vmapped grids, gradient search).

    >>> s, bad = reshape(example_system(), scaleup_bw=2.0)
    >>> round(float(s.tiers[0].bytes_per_s) / 1e9), float(s.tiers[0].switch_w_per_chip), float(bad)
    (900, 60.0, 0.0)
    """
    unknown = set(knobs) - set(TOPOLOGY_KNOBS)
    if unknown:
        raise ValueError(
            f"unknown topology knob(s) {sorted(unknown)}; known: {', '.join(TOPOLOGY_KNOBS)}."
        )
    tiers = list(system.tiers)
    if len(tiers) < 2 and set(knobs) - {"scaleout_bw", "oversubscription"}:
        raise ValueError(f"{system.name} has no scale-up tier to reshape.")
    up, out = len(tiers) - 2, len(tiers) - 1
    if "scaleup_bw" in knobs:
        m = jnp.asarray(knobs["scaleup_bw"], jnp.float32)
        tiers[:out] = [_scale_tier(t, m, m) for t in tiers[:out]]
    if "scaleout_bw" in knobs:
        m = jnp.asarray(knobs["scaleout_bw"], jnp.float32)
        tiers[out] = _scale_tier(tiers[out], m, m)
    if "oversubscription" in knobs:
        o = jnp.asarray(knobs["oversubscription"], jnp.float32)
        t = tiers[out]
        ports = safe_div(1.0 + 1.0 / o, 1.0 + safe_div(1.0, t.oversubscription))
        t = _scale_tier(t, 1.0, ports)
        tiers[out] = dataclasses.replace(
            t, oversubscription=o, nic_w_per_chip=tiers[out].nic_w_per_chip
        )
    violation = jnp.float32(0.0)
    if up >= 0:
        t = tiers[up]
        full = t.bytes_per_s / OPTIC_BYTES_PER_S  # modules per chip if all links were optical
        share = jnp.clip(safe_div(t.optics_per_chip, full), 0.0, 1.0)
        if "optics_share" in knobs:
            share = jnp.clip(jnp.asarray(knobs["optics_share"], jnp.float32), 0.0, 1.0)
            optic_w = jnp.where(t.optic_w > 0, t.optic_w, DEFAULT_OPTIC_W)
            t = dataclasses.replace(t, optics_per_chip=share * full, optic_w=optic_w)
        domain = t.domain_chips
        if "domain" in knobs:
            domain = jnp.asarray(knobs["domain"], jnp.float32)
            t = dataclasses.replace(t, domain_chips=domain)
            tiers[:up] = [
                dataclasses.replace(s, domain_chips=jnp.minimum(s.domain_chips, domain))
                for s in tiers[:up]
            ]
        tiers[up] = t
        reach = COPPER_REACH_CHIPS / jnp.maximum(1.0 - share, _MIN_COPPER_SHARE)
        violation = jax.nn.relu(jnp.log(safe_div(domain, reach)))
    return dataclasses.replace(system, tiers=tuple(tiers)), violation


def tier_names(system: System) -> list[str]:
    """The names of the system's tiers, innermost first (they address `tiers.<name>.*`)."""
    return [t.name for t in system.tiers]


def _members_within(tiers, size, stride):
    """Members of a group (size, stride) inside one domain of each tier, innermost first:
    m_k = clip(domain_chips_k / stride, 1, size), and the whole group on the last tier."""
    out = []
    for k, tier in enumerate(tiers):
        if k == len(tiers) - 1:
            out.append(size)
        else:
            out.append(jnp.clip(safe_div(tier.domain_chips, stride), 1.0, size))
    return out


def members(tiers, size, stride):
    """(n, m) of a group of `size` ranks `stride` apart, innermost first: n_k its
    participants at tier k (`participants`) and m_k = n_0 ... n_k the members inside one
    tier-k domain (the whole group at the last tier). Smooth in size and stride."""
    n = participants(tiers, size, stride)
    m, prev = [], jnp.ones_like(size)
    for nk in n:
        prev = prev * nk
        m.append(prev)
    return n, m


def participants(tiers, size, stride):
    """Participants of a group of `size` chips with ranks `stride` apart at each tier,
    innermost first: n_k = m_k / m_{k-1} with m_k the members inside one tier-k domain
    (module doc); their product is the group size. Smooth in size and stride.

    Args: tiers the system's tiers; size, stride float arrays (chips).
    Returns: a list of arrays, one per tier.
    """
    m = _members_within(tiers, size, stride)
    prev = jnp.ones_like(size)
    out = []
    for mk in m:
        mk = jnp.maximum(mk, prev)
        out.append(safe_div(mk, prev, 1.0))
        prev = mk
    return out


def _is_one(x) -> bool:
    return not isinstance(x, jax.core.Tracer) and jnp.ndim(x) == 0 and float(x) == 1.0


def rank_system(system: System) -> System:
    """The same machine seen as ranks: each of the d = `chip.dies_per_chip` dies of a
    package becomes one chip with 1/d of the package's peak FLOP/s, HBM capacity, HBM
    bandwidth, TDP and idle power (facts §25: "per die: 64 GB at 1.6 TB/s, UB 196 GB/s per
    direction, RDMA 200 Gb/s"), each tier's per-chip bandwidth and watts divided by d and its
    domain counted in ranks (x d), the system's `n_chips` in ranks, the host's per-chip
    shares divided by d. Totals (FLOP/s, bytes, watts of a system) are unchanged. The
    result has dies_per_chip = 1, so the function is idempotent; d = 1 returns `system`
    unchanged in value. Every cost function of emu computes on this view (group sizes,
    plan degrees and memory are per rank); the TOML and `--set` keep package numbers.

    >>> import jax.numpy as jnp
    >>> from emu.struct import replace
    >>> s = example_system()
    >>> s2 = replace(s, chip=replace(s.chip, dies_per_chip=jnp.float32(2)))
    >>> r = rank_system(s2)
    >>> int(r.n_chips), int(r.tiers[0].domain_chips), round(float(r.chip.hbm_bytes_per_s) / 1e12, 3)
    (16, 16, 1.675)
    """
    c = system.chip
    d = c.dies_per_chip
    if _is_one(d):
        return system
    inv = 1.0 / d  # one division shared by every per-die figure (d = 1 or 2: exact)
    per = lambda x: x * inv  # noqa: E731 - a package total shared by its d dies
    chip = dataclasses.replace(
        c,
        peak_flops_per_s={k: per(v) for k, v in c.peak_flops_per_s.items()},
        hbm_bytes=per(c.hbm_bytes),
        hbm_bytes_per_s=per(c.hbm_bytes_per_s),
        tdp_w=per(c.tdp_w),
        idle_w=per(c.idle_w),
        dies_per_chip=jnp.ones_like(d),
    )
    tiers = tuple(
        dataclasses.replace(
            t,
            domain_chips=t.domain_chips * d,
            bytes_per_s=per(t.bytes_per_s),
            switch_w_per_chip=per(t.switch_w_per_chip),
            optics_per_chip=per(t.optics_per_chip),
            nic_w_per_chip=per(t.nic_w_per_chip),
        )
        for t in system.tiers
    )
    h = system.host
    host = dataclasses.replace(
        h, cpus_per_chip=per(h.cpus_per_chip), other_w_per_chip=per(h.other_w_per_chip)
    )
    return dataclasses.replace(
        system, chip=chip, tiers=tiers, host=host, n_chips=system.n_chips * d
    )


def node_tier(system: System) -> Tier:
    """The innermost tier whose domain holds more than one package (a DGX node, an NVL72
    rack, a CloudMatrix node): the scale-up tier that TP groups live in. The die tier of a
    multi-die package (domain_chips = 1) is skipped; a single-tier system returns its tier."""
    for t in system.tiers:
        if float(t.domain_chips) > 1:
            return t
    return system.tiers[-1]


def n_ranks(system: System) -> Array:
    """Ranks (software-visible devices) of one system: n_chips * dies_per_chip."""
    return system.n_chips * system.chip.dies_per_chip


def example_system() -> System:
    """A DGX-H100-like system: 8-GPU NVLink node, 400G InfiniBand (facts §10, nominal;
    collective parameters: an early fit of issue 11's network rows, fixed here so the
    example does not move with a refit; the catalog's systems take the shipped fit)."""
    f = jnp.float32
    nvlink = Tier(
        name="nvlink",
        link="nvlink4",
        domain_chips=f(8),
        bytes_per_s=f(450e9),
        efficiency=f(0.836),
        latency_s=f(0.71e-6),
        base_latency_s=f(9.3e-6),
        oversubscription=f(1.0),
        allreduce_speedup=f(1.32),
        switch_w_per_chip=f(30.0),
        optics_per_chip=f(0.0),
        optic_w=f(0.0),
        nic_w_per_chip=f(0.0),
        a2a_efficiency=f(0.83),
        a2a_peer_penalty=f(0.044),
        dispatch_latency_s=f(19.8e-6),
        combine_latency_s=f(19.6e-6),
    )
    ib = Tier(
        name="infiniband",
        link="ib",
        domain_chips=f(1e6),
        bytes_per_s=f(50e9),
        efficiency=f(0.933),
        latency_s=f(4.19e-6),
        base_latency_s=f(9.3e-6),
        oversubscription=f(1.0),
        allreduce_speedup=f(1.0),
        switch_w_per_chip=f(35.0),
        optics_per_chip=f(2.0),
        optic_w=f(8.0),
        nic_w_per_chip=f(25.0),
        a2a_efficiency=f(0.921),
        a2a_peer_penalty=f(0.0212),
        dispatch_latency_s=f(24.3e-6),
        combine_latency_s=f(18.6e-6),
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
