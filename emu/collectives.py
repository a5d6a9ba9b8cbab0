"""Alpha-beta cost of collectives on a system's network tiers.

A group of `size` chips with rank `stride` (see `topology.participants`) has n_k participants
at tier k. Hierarchical algorithms run each stage on its own tier, innermost first, so slow
outer tiers carry only the already-reduced share of the data:

    reduce_scatter(B) = sum_k [ (n_k - 1)/n_k * B_k / W_k + (n_k - 1) * lat_k + base_k ]
    B_k = B / prod_{j<k} n_j,      W_k = bytes_per_s_k * efficiency_k / oversubscription_k

all_gather is its mirror (same cost), all_reduce = reduce_scatter + all_gather with the
bandwidth term divided by the tier's in-network `allreduce_speedup` (NVLink SHARP). The
stages are pipelined across tiers: a share `overlap.pipelining` of the bandwidth time of the
non-bottleneck stages hides behind the slowest stage (0 = stages in sequence, 1 = only the
slowest counts).
A flat ring ("ring") instead runs one ring over all g members at the slowest spanned tier:
2 (g - 1)/g * B / min_k W_k + 2 (g - 1) * max_k lat_k. `base_k` is charged only on tiers the
group spans. B is the full buffer in bytes; times are seconds. Source of the form: "How To
Scale Your Model" (collectives chapter) and NCCL's tuning model (facts, "Latency terms").

>>> import jax.numpy as jnp
>>> from emu.topology import example_system
>>> sys = example_system()
>>> t = all_reduce_time(sys, jnp.float32(1e9), jnp.float32(8))
>>> round(float(t) * 1e3, 2)   # 2*7/8 * 1 GB / (450 GB/s * 0.82) / 1.3 + 14 us + 10 us
3.67
>>> float(all_reduce_time(sys, jnp.float32(1e9), jnp.float32(1)))
0.0
"""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp

from emu.numerics import safe_div, safe_pow
from emu.topology import System, participants

__all__ = [
    "all_reduce_time",
    "all_gather_time",
    "reduce_scatter_time",
    "all_to_all_time",
    "send_recv_time",
    "moe_all_to_all_time",
    "effective_bandwidth",
    "ALGORITHMS",
    "Algorithm",
    "register",
    "hierarchical",
    "ring",
]

#: An algorithm prices one reduce-scatter-like sweep over a group:
#: fn(system, nbytes, size, stride, *, passes, reduce) -> seconds, where `passes` is 1
#: (reduce-scatter or all-gather) or 2 (all-reduce = reduce-scatter + all-gather) and
#: `reduce` says the data are reduced in flight (all-reduce: in-network reduction applies).
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
    """Achievable bytes/s per chip per direction on `tier`:
    bytes_per_s * efficiency / oversubscription."""
    return safe_div(tier.bytes_per_s * tier.efficiency, tier.oversubscription)


def _spans(n):
    # 1 where the group has more than one participant at this tier; linear in between so
    # that gradients stay finite when degrees are relaxed to real numbers.
    return jnp.clip(n - 1.0, 0.0, 1.0)


def _algorithm(name: str) -> Algorithm:
    if name not in ALGORITHMS:
        raise ValueError(f"unknown algorithm '{name}'; known: {', '.join(ALGORITHMS)}.")
    return ALGORITHMS[name]


@register("hierarchical")
def hierarchical(system: System, nbytes, size, stride, *, passes, reduce):
    """One stage per tier, innermost first, each on the already-reduced share (module doc):
    sum_k passes (n_k - 1)/n_k B_k / W_k, with W_k multiplied by `allreduce_speedup` when
    `reduce`; a share `overlap.pipelining` of the non-bottleneck stages hides behind the
    slowest. Plus passes (n_k - 1) lat_k and base_k on spanned tiers. Seconds."""
    n = participants(system.tiers, size, stride)
    fixed = jnp.zeros_like(nbytes * size)
    stages, share = [], nbytes
    for tier, nk in zip(system.tiers, n, strict=True):
        bw = effective_bandwidth(tier)
        if reduce:
            bw = bw * tier.allreduce_speedup
        frac = safe_div(nk - 1.0, nk)
        stages.append(passes * safe_div(frac * share, bw))
        fixed = fixed + passes * (nk - 1.0) * tier.latency_s + _spans(nk) * tier.base_latency_s
        share = safe_div(share, nk)
    # Stages on different tiers are pipelined chunk by chunk (NCCL): a share `pipelining` of
    # the non-bottleneck stages hides behind the slowest one.
    total_bw = sum(stages)
    slowest = stages[0]
    for st in stages[1:]:
        slowest = jnp.maximum(slowest, st)
    f = system.overlap.pipelining
    return total_bw - f * (total_bw - slowest) + fixed


@register("ring")
def ring(system: System, nbytes, size, stride, *, passes, reduce):
    """One flat ring over all g members at the slowest spanned tier (no in-network
    reduction, so `reduce` is unused): passes ((g - 1)/g B / min_k W_k + (g - 1) max_k lat_k)
    + max_k base_k over spanned tiers. Seconds."""
    del reduce
    n = participants(system.tiers, size, stride)
    spanned = [_spans(nk) for nk in n]
    # slowest spanned tier sets the ring's bandwidth; the largest spanned latency its steps
    inv_bw = jnp.zeros_like(nbytes)
    lat = jnp.zeros_like(nbytes)
    base = jnp.zeros_like(nbytes)
    for tier, s in zip(system.tiers, spanned, strict=True):
        inv_bw = jnp.maximum(inv_bw, s * safe_div(1.0, effective_bandwidth(tier)))
        lat = jnp.maximum(lat, s * tier.latency_s)
        base = jnp.maximum(base, s * tier.base_latency_s)
    frac = safe_div(size - 1.0, size)
    return passes * (frac * nbytes * inv_bw + (size - 1.0) * lat) + base


def all_reduce_time(system: System, nbytes, size, *, stride=1.0, algorithm="hierarchical"):
    """Seconds to all-reduce `nbytes` (the full buffer, bytes) over `size` chips whose ranks
    are `stride` apart, with the registered `algorithm`: reduce-scatter + all-gather
    (passes = 2), in-network reduction where the tier has it."""
    return _algorithm(algorithm)(system, nbytes, size, stride, passes=2.0, reduce=True)


def reduce_scatter_time(system: System, nbytes, size, *, stride=1.0, algorithm="hierarchical"):
    """Seconds to reduce-scatter an `nbytes` input buffer over `size` chips (passes = 1)."""
    return _algorithm(algorithm)(system, nbytes, size, stride, passes=1.0, reduce=False)


def all_gather_time(system: System, nbytes, size, *, stride=1.0, algorithm="hierarchical"):
    """Seconds to all-gather into an `nbytes` output buffer over `size` chips: the mirror of
    reduce-scatter, same cost."""
    return reduce_scatter_time(system, nbytes, size, stride=stride, algorithm=algorithm)


def all_to_all_time(system: System, nbytes, size, *, stride=1.0):
    """Seconds for an all-to-all in which each chip sends `nbytes` in total.

    A share (1 - m_{k-1}/g) of each chip's data leaves its tier-(k-1) domain and crosses
    tier k; tiers work in parallel, so the slowest sets the time:
    max_k (1 - m_{k-1}/g) B / W_k + sum of spanned latencies.
    """
    n = participants(system.tiers, size, stride)
    inside = jnp.ones_like(size)
    worst = jnp.zeros_like(nbytes * size)
    lat = jnp.zeros_like(worst)
    for tier, nk in zip(system.tiers, n, strict=True):
        leaving = 1.0 - safe_div(inside, size, 1.0)
        worst = jnp.maximum(worst, safe_div(leaving * nbytes, effective_bandwidth(tier)))
        lat = lat + _spans(nk) * (tier.base_latency_s + tier.latency_s)
        inside = inside * nk
    return worst + lat


def moe_all_to_all_time(system: System, token_bytes, top_k, size, *, dedup=1.0, max_domains=0.0):
    """Seconds for an MoE dispatch (or combine) in which each chip routes its tokens, of
    `token_bytes` in total, to `top_k` experts spread uniformly over `size` chips.

    With dedup (DeepEP), a token crosses a tier boundary once per distinct remote domain it
    reaches, then is forwarded inside that domain: with D lower domains in the group the
    copies leaving are (D - 1)(1 - (1 - 1/D)^top_k). Without dedup every expert copy that
    leaves is sent: top_k (1 - 1/D). Node-limited routing (`max_domains` M > 0) caps the
    remote domains a token reaches beyond the innermost tier at M (1 - 1/D). Tiers work in
    parallel; the slowest sets the time.
    """
    n = participants(system.tiers, size, 1.0)
    inside = jnp.ones_like(size)
    worst = jnp.zeros_like(token_bytes * size)
    lat = jnp.zeros_like(worst)
    for k, (tier, nk) in enumerate(zip(system.tiers, n, strict=True)):
        domains = safe_div(size, inside, 1.0)
        hit = 1.0 - safe_pow(jnp.clip(1.0 - safe_div(1.0, domains), 0.0, 1.0), top_k)
        copies_dedup = (domains - 1.0) * hit
        if k > 0:
            cap = max_domains * (1.0 - safe_div(1.0, domains))
            copies_dedup = jnp.where(max_domains > 0, jnp.minimum(copies_dedup, cap), copies_dedup)
        copies_all = top_k * (1.0 - safe_div(1.0, domains))
        copies = dedup * copies_dedup + (1.0 - dedup) * copies_all
        worst = jnp.maximum(worst, safe_div(copies * token_bytes, effective_bandwidth(tier)))
        lat = lat + _spans(nk) * (tier.base_latency_s + tier.latency_s)
        inside = inside * nk
    return worst + lat


def send_recv_time(system: System, nbytes, *, stride=1.0):
    """Seconds to send `nbytes` to the chip `stride` ranks away (a pipeline boundary)."""
    n = participants(system.tiers, jnp.full_like(jnp.asarray(nbytes), 2.0), stride)
    # the pair sits on the innermost tier where both members fit (n_k = 2 there)
    t = jnp.zeros_like(nbytes)
    for tier, nk in zip(system.tiers, n, strict=True):
        s = _spans(nk)
        t = t + s * (safe_div(nbytes, effective_bandwidth(tier)) + tier.latency_s)
    return t
