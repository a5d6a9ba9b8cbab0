"""Cost of collectives on a system's network tiers, in the shapes measured (issue 11).

Ranks, not packages: every function here works on `topology.rank_system(system)` (a 910C
package is two ranks), so `size` counts ranks. A group of `size` ranks `stride` apart has
n_k participants at tier k and m_k = n_0 ... n_k members inside one tier-k domain
(`topology.members`). Zero bytes or a group of one cost nothing.

Ring collectives (reduce-scatter, all-gather: `passes` = 1; all-reduce: 2), an NCCL-like
ring whose chunked pipeline pays a share c of an optimal pipeline's overhead (fidelity
DESIGN §3c; the in-switch NVLS all-reduce inside one domain takes the same form):

    x   = passes (n - 1)/n S                       busbw-normalised bytes (S the buffer)
    B_k = W_k min(m_{k-1}, C_k) [x (n_k - 1)/(D_k - 1) on a mesh tier]
                                                   C_k ring channels enter a tier-k domain
                                                   at once, each on its own port; D_k the
                                                   mesh size (tier-(k-1) domains in one)
    B   = min over spanned tiers of B_k            (x s_nvls on the innermost spanned tier
                                                   for an in-switch all-reduce, NVLS)
    L   = passes sum_k (n/m_{k-1} - n/m_k) lam_k   the ring's hops, each at its tier's
                                                   latency (NVLS inside one domain: lam_nvls)
    t   = base + x / B + L + 2 c sqrt(x L / B)     base = max base_latency_s over spanned tiers,
                                                   c = ring_chunking of the farthest
                                                   spanned tier

with W_k = bytes_per_s efficiency / oversubscription (per rank, one direction). With c = 1
the last line is the optimum of a pipeline of k chunks over p stages, (k + p - 1)(S/(kB) +
lam) = (sqrt(x / B) + sqrt(L))^2: busbw rises with size as 1 - O(S^-1/2), as every
measured curve does (facts §27: Azure 4-GPU 80 -> 680 GB/s from 1 MB to 8 GB; CoreWeave
1,440 GPUs 151 -> 406 GB/s); c = 0 is the alpha-beta bound x / B + L, which no chunking
reaches. A library's fixed chunk sizes and its channels' parallel pipelines put it between
the two (OCI's 2-rack GB200 all-reduce at 16-512 MB lies there), so c is fitted per link
type, that of the farthest tier the ring spans. Parameters: per link type (`Tier` fields
`efficiency`, `latency_s`, `ring_chunking`, `base_latency_s`, `ring_channels`,
`nvls_latency_s`; `allreduce_speedup` is the tier's s_nvls), fitted by `emu calibrate` from
priors that are assumptions or NCCL planning constants, not fits to the rows
(configs/calibration/defaults.toml).

MoE dispatch and combine (`moe_all_to_all_time`): each rank sends T tokens of h b bytes to
top_k experts spread over the group; copies whose farthest crossed tier is k use tier k:

    copies_k = dedup (n_k - 1)(1 - (1 - 1/D_k)^K) + (1 - dedup) K (m_k - m_{k-1}) / n
    bw_k     = a2a_efficiency W_k / (1 + a2a_peer_penalty log2(peers_k))
    x        = max_k copies_k T max(h b / bw_k, (1 - dedup) tau_k')
               [the combine: max(x, K T h b / HBM), the copies summed as they arrive]
    t        = (alpha^q + x^q)^(1/q),  q = 1 / (1 - a2a_latency_hiding)

(D_k = n / m_{k-1} lower domains; dedup = 1: a token crosses a tier once per destination
domain, DeepEP normal kernels; 0: one copy per expert, low-latency and one-sided kernels;
alpha = `dispatch_latency_s` or `combine_latency_s` of the farthest spanned tier's link;
tau_k' = `a2a_message_s` (1 + a2a_peer_penalty log2(peers_k)): a kernel that sends each
token copy on its own is message-bound when a copy's h b bytes take less than tau on the
link, i.e. its bandwidth is capped at h b / tau: CloudMatrix-Infer's decode dispatch
moves half its combine's bytes in about the combine's time, CM Table 7, facts §26; with
0 < dedup < 1 only the (1 - dedup) share sent per expert has the floor).
The kernel's fixed cost (launch, flags, barriers) and its data movement overlap in part:
a hiding of 0 adds them, towards 1 only the larger counts (one parameter shared by every
link type; measured: TRT-LLM's one-sided dispatch on 8 GB200 takes 18.9, 31.7 and 311.8 us
at 1, 128 and 2,048 tokens per rank, so at 128 tokens, where fixed cost and transfer are
alike, it costs 1.65x either, not 2x: q ~ 1.4; its prior is 0.5, an assumption).
Tiers of the same link type nested in one another are levels of one switched fabric
reached through the same ports (UB node and supernode): an all-to-all sees them as one
tier (a token is deduplicated per rank there, and all its copies share the ports).
Fitted by `emu calibrate` to the DeepEP, DeepEP-Ascend and TRT-LLM one-sided rows, from
assumed priors.

>>> import jax.numpy as jnp
>>> from emu.topology import example_system
>>> sys = example_system()
>>> t = all_reduce_time(sys, jnp.float32(8e9), jnp.float32(8), algorithm="ring")
>>> round(8e9 / float(t) * 2 * 7 / 8 / 1e9)   # ring busbw of 8 H100s, GB/s (NCCL-212: ~370)
370
>>> float(all_reduce_time(sys, jnp.float32(1e9), jnp.float32(1)))
0.0
"""

from __future__ import annotations

from collections.abc import Callable

from emu._backend import jnp
from emu.numerics import overlapped_sum, safe_div, safe_pow
from emu.struct import dataclass, replace
from emu.topology import System, members, participants, rank_system

Array = jnp.ndarray

__all__ = [
    "all_reduce_time",
    "all_gather_time",
    "reduce_scatter_time",
    "all_to_all_time",
    "send_recv_time",
    "moe_all_to_all_time",
    "moe_all_to_all",
    "AllToAll",
    "effective_bandwidth",
    "ring_bandwidth",
    "ALGORITHMS",
    "Algorithm",
    "register",
    "hierarchical",
    "ring",
    "ring_flat",
    "staged",
]

#: An algorithm prices one reduce-scatter-like sweep over a group:
#: fn(system, nbytes, size, stride, *, passes, reduce) -> seconds, where `passes` is 1
#: (reduce-scatter or all-gather) or 2 (all-reduce = reduce-scatter + all-gather) and
#: `reduce` says the data are reduced in flight (all-reduce: in-network reduction applies).
#: `system` is a rank view (`topology.rank_system`).
Algorithm = Callable[..., jnp.ndarray]

#: The registry: name -> Algorithm. `Plan.algorithm` names an entry (checked when the plan
#: is made); the CLI lists its keys. Add one with `register`.
ALGORITHMS: dict[str, Algorithm] = {}


def register(name: str) -> Callable[[Algorithm], Algorithm]:
    """Decorator: add `fn` to ALGORITHMS under `name` (a new algorithm is one function plus
    this line). Raises ValueError if the name is taken.

    >>> @register("doc-example")
    ... def flat(system, nbytes, size, stride, *, passes, reduce):
    ...     return passes * nbytes / 1e11
    >>> "doc-example" in ALGORITHMS
    True
    >>> del ALGORITHMS["doc-example"]
    """

    def add(fn: Algorithm) -> Algorithm:
        if name in ALGORITHMS:
            raise ValueError(f"collective algorithm '{name}' is already registered.")
        ALGORITHMS[name] = fn
        return fn

    return add


def effective_bandwidth(tier):
    """Achievable bytes/s per rank per direction of a ring on `tier`:
    bytes_per_s * efficiency / oversubscription."""
    return safe_div(tier.bytes_per_s * tier.efficiency, tier.oversubscription)


def _spans(n):
    # 1 where the group has more than one participant at this tier; linear in between so
    # that gradients stay finite when degrees are relaxed to real numbers.
    return jnp.clip(n - 1.0, 0.0, 1.0)


#: width of the step from "inside one domain" to "crosses into the next" in participants: a
#: group of 128 on 72-rank domains (n = 1.78) crosses fully; relaxed degrees between 1 and
#: 1.01 ramp linearly so gradients stay finite
_CROSS_WIDTH = 0.01


def _crosses(n):
    # 1 where the group reaches beyond one domain of the tier below (n > 1 participants)
    return jnp.clip((n - 1.0) / _CROSS_WIDTH, 0.0, 1.0)


def _sqrt(u):
    # sqrt with a finite gradient at 0 (where it is 0)
    pos = u > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, u, 1.0)), 0.0)


def _algorithm(name: str) -> Algorithm:
    if name not in ALGORITHMS:
        raise ValueError(f"unknown algorithm '{name}'; known: {', '.join(ALGORITHMS)}.")
    return ALGORITHMS[name]


def _mesh_share(tier, nk, inner_domain):
    # a full mesh of D members: a participant reaches the n - 1 others over n - 1 of its
    # D - 1 links, so the ring sees that share of the per-rank bandwidth
    if tier.topology != "mesh":
        return 1.0
    mesh = safe_div(tier.domain_chips, inner_domain, 1.0)
    return jnp.clip(safe_div(nk - 1.0, mesh - 1.0, 1.0), 0.0, 1.0)


def ring_bandwidth(system: System, size, *, stride=1.0, nvls=False, channels=True):
    """(inverse bandwidth 1/B in s/byte, ring latency L in s per pass, base latency in s, whether
    the group is one in-switch (NVLS) domain, its NVLS latency, and c the farthest spanned
    tier's `ring_chunking`) of a ring over a group of `size` ranks `stride` apart on the
    rank view of `system` (module doc): B the slowest spanned tier's W_k min(m_{k-1}, C_k)
    (one channel when not `channels`; the mesh share on mesh tiers; x allreduce_speedup on
    the innermost spanned tier when `nvls`), L the ring's hops per pass at their tiers'
    latency (the tier's nvls_latency_s when `nvls` and the group lies inside one domain of
    an in-switch tier), base the largest base_latency_s of the spanned tiers."""
    system = rank_system(system)
    n, m = members(system.tiers, size, stride)
    zero = jnp.zeros_like(jnp.asarray(size))
    inv_bw, hops, base, lam_nvls, w_nvls, chunk = zero, zero, zero, zero, zero, zero
    prev_m, inner_domain, inner_free = jnp.ones_like(zero), 1.0, jnp.ones_like(zero)
    spans = [_crosses(nk) for nk in n]
    outer_free = [jnp.ones_like(zero)]  # prod_{j>k} (1 - s_j), built outermost first
    for s in spans[:0:-1]:
        outer_free.insert(0, outer_free[0] * (1.0 - s))
    for k, (tier, nk, mk) in enumerate(zip(system.tiers, n, m, strict=True)):
        s = spans[k]
        w = effective_bandwidth(tier) * _mesh_share(tier, nk, inner_domain)
        w = w * (jnp.minimum(prev_m, tier.ring_channels) if channels else 1.0)
        first = s * inner_free  # 1 on the innermost spanned tier
        if nvls:
            gain = jnp.where(tier.allreduce_speedup > 1.0, tier.allreduce_speedup, 1.0)
            w = w * (1.0 + first * (gain - 1.0))
            # the whole group inside one domain of an in-switch tier: NVLS latency
            alone = first * outer_free[k] * jnp.where(tier.allreduce_speedup > 1.0, 1.0, 0.0)
            w_nvls = w_nvls + alone
            lam_nvls = lam_nvls + alone * tier.nvls_latency_s
        inv_bw = jnp.maximum(inv_bw, s * safe_div(1.0, w))
        hops = hops + (safe_div(size, prev_m) - safe_div(size, mk)) * tier.latency_s
        base = jnp.maximum(base, s * tier.base_latency_s)
        chunk = chunk + s * outer_free[k] * tier.ring_chunking  # the farthest spanned tier's
        prev_m, inner_domain, inner_free = mk, tier.domain_chips, inner_free * (1.0 - s)
    return inv_bw, hops, base, w_nvls, lam_nvls, chunk


def _ring_time(system, nbytes, size, stride, *, passes, nvls, channels):
    inv_bw, hops, base, w_nvls, lam_nvls, chunk = ring_bandwidth(
        system, size, stride=stride, nvls=nvls, channels=channels
    )
    lat = (1.0 - w_nvls) * passes * hops + lam_nvls
    a = passes * safe_div(size - 1.0, size) * nbytes * inv_bw
    t = base + a + lat + 2.0 * chunk * _sqrt(a * lat)
    return jnp.where(nbytes > 0, t, 0.0)


@register("hierarchical")
def hierarchical(system: System, nbytes, size, stride, *, passes, reduce):
    """The library's own choice (NCCL's defaults): an in-switch (NVLS) all-reduce on a tier
    with `allreduce_speedup` > 1, else rings whose traffic into a larger domain spreads over
    `ring_channels` ports (module doc). Seconds."""
    return _ring_time(system, nbytes, size, stride, passes=passes, nvls=reduce, channels=True)


@register("ring")
def ring(system: System, nbytes, size, stride, *, passes, reduce):
    """Rings only (NCCL_ALGO=Ring, NVLS off): as `hierarchical` without in-switch reduction.
    Seconds."""
    del reduce
    return _ring_time(system, nbytes, size, stride, passes=passes, nvls=False, channels=True)


@register("ring_flat")
def ring_flat(system: System, nbytes, size, stride, *, passes, reduce):
    """One ring channel across every domain boundary (FSDP / ZeRO-3 layer-by-layer gathers
    and reductions: small per-layer buffers, no node-level aggregation). Seconds."""
    del reduce
    return _ring_time(system, nbytes, size, stride, passes=passes, nvls=False, channels=False)


@register("staged")
def staged(system: System, nbytes, size, stride, *, passes, reduce):
    """One stage per tier, innermost first, each on the already-reduced share (the
    alpha-beta form emu used before issue 11): sum_k passes (n_k - 1)/n_k B_k / W_k with
    B_k = B / prod_{j<k} n_j, W_k x `allreduce_speedup` when `reduce`; a share
    `overlap.pipelining` of the non-bottleneck stages hides behind the slowest. Plus
    passes (n_k - 1) lat_k and base_k on spanned tiers. Seconds."""
    system = rank_system(system)
    n = participants(system.tiers, size, stride)
    fixed = jnp.zeros_like(nbytes * size)
    stages, share = [], nbytes
    for tier, nk in zip(system.tiers, n, strict=True):
        bw = effective_bandwidth(tier)
        if reduce:
            bw = bw * tier.allreduce_speedup
        stages.append(passes * safe_div(safe_div(nk - 1.0, nk) * share, bw))
        fixed = fixed + passes * (nk - 1.0) * tier.latency_s + _spans(nk) * tier.base_latency_s
        share = safe_div(share, nk)
    total_bw = sum(stages)
    slowest = stages[0]
    for st in stages[1:]:
        slowest = jnp.maximum(slowest, st)
    f = system.overlap.pipelining
    return jnp.where(nbytes > 0, total_bw - f * (total_bw - slowest) + fixed, 0.0)


def all_reduce_time(system: System, nbytes, size, *, stride=1.0, algorithm="hierarchical"):
    """Seconds to all-reduce `nbytes` (the full buffer, bytes) over `size` ranks whose ranks
    are `stride` apart, with the registered `algorithm`: reduce-scatter + all-gather
    (passes = 2), in-network reduction where the algorithm and the tier allow it."""
    return _algorithm(algorithm)(system, nbytes, size, stride, passes=2.0, reduce=True)


def reduce_scatter_time(system: System, nbytes, size, *, stride=1.0, algorithm="hierarchical"):
    """Seconds to reduce-scatter an `nbytes` input buffer over `size` ranks (passes = 1)."""
    return _algorithm(algorithm)(system, nbytes, size, stride, passes=1.0, reduce=False)


def all_gather_time(system: System, nbytes, size, *, stride=1.0, algorithm="hierarchical"):
    """Seconds to all-gather into an `nbytes` output buffer over `size` ranks: the mirror of
    reduce-scatter, same cost."""
    return reduce_scatter_time(system, nbytes, size, stride=stride, algorithm=algorithm)


def _fabrics(system: System, size, stride):
    """The tiers an all-to-all sees, innermost first: nested tiers of the same link type
    merged into one fabric (the same ports reach both levels: UB node and supernode), each
    as (tier with the smallest bandwidth of its levels, n participants, m members)."""
    n, m = members(system.tiers, size, stride)
    out = []
    for tier, nk, mk in zip(system.tiers, n, m, strict=True):
        if out and out[-1][0].link == tier.link:
            t0, n0, _ = out[-1]
            slow = replace(
                t0,
                bytes_per_s=jnp.minimum(t0.bytes_per_s, tier.bytes_per_s),
                oversubscription=jnp.maximum(t0.oversubscription, tier.oversubscription),
            )
            out[-1] = (slow, n0 * nk, mk)
        else:
            out.append((tier, nk, mk))
    return out


def _a2a_time(fabrics, copies, peers, single=None, messages=0.0):
    """(max_k copies_k / bw_k, copies at that k): seconds and copies per byte of one copy of
    every token, over the fabrics of `_fabrics` (module doc). Of each fabric's copies, those
    in `single` are sent one token at a time, each taking at least `a2a_message_s`
    (`messages`: tokens per byte of one copy)."""
    worst = jnp.zeros_like(copies[0])
    at = jnp.zeros_like(worst)
    single = single if single is not None else [0.0] * len(copies)
    for (tier, nk, _), c, c1, p in zip(fabrics, copies, single, peers, strict=True):
        bw = safe_div(tier.bytes_per_s * tier.a2a_efficiency, tier.oversubscription)
        floor = jnp.maximum(safe_div(1.0, bw), tier.a2a_message_s * messages)
        per_copy = (c - c1) * safe_div(1.0, bw) + c1 * floor
        penalty = 1.0 + tier.a2a_peer_penalty * jnp.log2(jnp.maximum(p, 1.0))
        load = _crosses(nk) * per_copy * penalty
        at = jnp.where(load > worst, c, at)
        worst = jnp.maximum(worst, load)
    return worst, at


def _farthest(fabrics, name: str):
    # the field `name` of the farthest spanned fabric, smooth in relaxed spans
    out = jnp.zeros_like(fabrics[0][1])
    for tier, nk, _ in fabrics:
        s = _crosses(nk)
        out = s * getattr(tier, name) + (1.0 - s) * out
    return out


def all_to_all_time(system: System, nbytes, size, *, stride=1.0):
    """Seconds for a uniform all-to-all in which each rank sends `nbytes` in total, evenly to
    the `size` ranks of its group: the share (m_k - m_{k-1})/n whose farthest crossed fabric
    is k uses fabric k (`_fabrics`), at its all-to-all bandwidth (module doc), fabrics in
    parallel; plus the farthest spanned fabric's base_latency_s."""
    system = rank_system(system)
    fabrics = _fabrics(system, size, stride)
    prev = [jnp.ones_like(fabrics[0][2])] + [f[2] for f in fabrics[:-1]]
    share = [safe_div(f[2] - pk, size) for f, pk in zip(fabrics, prev, strict=True)]
    peers = [f[2] - pk for f, pk in zip(fabrics, prev, strict=True)]
    per_byte, _ = _a2a_time(fabrics, share, peers)
    t = _farthest(fabrics, "base_latency_s") + nbytes * per_byte
    return jnp.where(nbytes > 0, t, 0.0)


@dataclass
class AllToAll:
    """One MoE dispatch or combine kernel on one rank: `time_s` seconds and
    `bottleneck_bytes`, the bytes its slowest tier carries (DeepEP's "bottleneck bandwidth"
    is bottleneck_bytes / time_s)."""

    time_s: Array
    bottleneck_bytes: Array


def moe_all_to_all(
    system: System, token_bytes, top_k, size, *, dedup=1.0, max_domains=0.0, combine=False,
    tokens=0.0,
) -> AllToAll:  # fmt: skip
    """One MoE dispatch (or, with `combine`, combine) kernel in which each rank routes its
    tokens, `token_bytes` for one copy of all of them, to `top_k` experts spread uniformly
    over `size` ranks (module doc). `dedup` 1: one copy per destination domain, forwarded
    inside it (DeepEP normal); 0: one copy per routed expert (low-latency, one-sided), each
    of the `tokens` copies sent on its own and taking at least the link's `a2a_message_s`
    (0 tokens: no such floor).
    Node-limited routing (`max_domains` M > 0) caps the remote domains a token reaches
    beyond the innermost tier at M (1 - 1/D). The combine sums the top_k returned copies
    (read from HBM at hbm_efficiency) as they arrive: it takes the longer of that sum and
    the transfer (TensorRT-LLM's one-sided combine on 8 GB200 at 2,048 tokens per rank takes
    323 us against its dispatch's 312 us, where a sum after the transfer would add ~35 us;
    rows of the measurement set, which this structure was chosen by looking at)."""
    system = rank_system(system)
    fabrics = _fabrics(system, size, 1.0)
    copies, single, peers, prev = [], [], [], jnp.ones_like(fabrics[0][2])
    for k, (_, nk, mk) in enumerate(fabrics):
        domains = safe_div(size, prev, 1.0)
        hit = 1.0 - safe_pow(jnp.clip(1.0 - safe_div(1.0, domains), 0.0, 1.0), top_k)
        c_dedup = (nk - 1.0) * hit
        if k > 0:
            cap = max_domains * (1.0 - safe_div(1.0, domains))
            c_dedup = jnp.where(max_domains > 0, jnp.minimum(c_dedup, cap), c_dedup)
        c_all = top_k * safe_div(mk - prev, size)
        copies.append(dedup * c_dedup + (1.0 - dedup) * c_all)
        single.append((1.0 - dedup) * c_all)
        peers.append(dedup * (nk - 1.0) + (1.0 - dedup) * (mk - prev))
        prev = mk
    per_byte, at = _a2a_time(fabrics, copies, peers, single, safe_div(tokens, token_bytes))
    name = "combine_latency_s" if combine else "dispatch_latency_s"
    t = token_bytes * per_byte
    if combine:  # the K returned copies are summed as they arrive: the slower of the two
        chip = system.chip
        t = jnp.maximum(
            t, safe_div(top_k * token_bytes, chip.hbm_bytes_per_s * chip.hbm_efficiency)
        )
    t = overlapped_sum(_farthest(fabrics, name), t, _farthest(fabrics, "a2a_latency_hiding"))
    busy = jnp.max(jnp.stack([_crosses(f[1]) for f in fabrics]), axis=0)
    on = token_bytes > 0
    return AllToAll(
        time_s=jnp.where(on, busy * t, 0.0), bottleneck_bytes=jnp.where(on, at * token_bytes, 0.0)
    )


def moe_all_to_all_time(
    system: System, token_bytes, top_k, size, *, dedup=1.0, max_domains=0.0, combine=False,
    tokens=0.0,
):  # fmt: skip
    """Seconds of one MoE dispatch (combine) kernel: `moe_all_to_all(...).time_s`."""
    return moe_all_to_all(
        system, token_bytes, top_k, size, dedup=dedup, max_domains=max_domains, combine=combine,
        tokens=tokens,
    ).time_s  # fmt: skip


def send_recv_time(system: System, nbytes, *, stride=1.0):
    """Seconds to send `nbytes` to the rank `stride` ranks away (a pipeline boundary): over
    the innermost tier both share, nbytes / W + latency_s."""
    system = rank_system(system)
    n = participants(system.tiers, jnp.full_like(jnp.asarray(nbytes), 2.0), stride)
    # the pair sits on the innermost tier where both members fit (n_k = 2 there)
    t = jnp.zeros_like(nbytes)
    for tier, nk in zip(system.tiers, n, strict=True):
        s = _spans(nk)
        t = t + s * (safe_div(nbytes, effective_bandwidth(tier)) + tier.latency_s)
    return jnp.where(nbytes > 0, t, 0.0)
