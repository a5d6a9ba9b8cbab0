"""Replica groups and source-target pairs of collectives (private; public through
`emu.program.hlo`): the three spellings of `replica_groups=`, expanded to device ids.

    {{0,1},{2,3}}                                   explicit
    [2,4]<=[8]   [4,2]<=[2,4]T(1,0)                 iota: reshape(transpose(iota))
    mesh['x'=2,'y'=4] {'y'}   (device_ids=(...))    mesh axes (sub-axes 'x':(1)2)

Sources: XLA's IotaReplicaGroupList (`xla/hlo/ir/collective_device_list.h`) and
MeshAxesReplicaGroupList (Shardy's mesh-axes groups).
"""

from __future__ import annotations

import math
import re

import numpy as np

from emu.program._hlo_text import split_top

__all__ = ["replica_groups", "source_target_pairs"]


def replica_groups(text: str, n_devices: int | None = None) -> list[list[int]]:
    """Expand a `replica_groups=` value to lists of device ids. An empty list `{}` means one
    group of all `n_devices`."""
    text = text.strip()
    if text.startswith("[") and "<=" in text:
        return _iota(text).tolist()
    if text.startswith("mesh") or text.startswith("@mesh"):
        return _mesh_groups(text)
    if text.startswith("{"):
        groups = [
            [int(x) for x in re.findall(r"\d+", g)] for g in re.findall(r"\{([^{}]*)\}", text)
        ]
        groups = [g for g in groups if g]
        if not groups and n_devices:
            return [list(range(n_devices))]
        return groups
    raise ValueError(f"HLO: cannot read replica_groups='{text[:60]}'.")


def source_target_pairs(text: str) -> list[tuple[int, int]]:
    """'{{0,1},{1,2}}' -> [(0, 1), (1, 2)]."""
    return [(int(a), int(b)) for a, b in re.findall(r"\{\s*(\d+)\s*,\s*(\d+)\s*\}", text)]


def _iota(text: str) -> np.ndarray:
    """'[4,2]<=[2,4]T(1,0)' -> the 2-D array of device ids."""
    m = re.match(r"\s*\[([\d,\s]+)\]\s*<=\s*\[([\d,\s]+)\](?:\s*T\(([\d,\s]+)\))?", text)
    if not m:
        raise ValueError(f"HLO: cannot read the iota device list '{text[:60]}'.")
    out = [int(x) for x in m.group(1).split(",")]
    dims = [int(x) for x in m.group(2).split(",")]
    ids = np.arange(math.prod(dims)).reshape(dims)
    if m.group(3):
        perm = [int(x) for x in m.group(3).split(",")]
        if sorted(perm) != list(range(len(dims))):
            raise ValueError(f"HLO: bad transpose {perm} in the iota device list '{text[:60]}'.")
        ids = ids.transpose(perm)
    if math.prod(out) != ids.size:
        raise ValueError(f"HLO: iota device list '{text[:60]}' has mismatched sizes.")
    return ids.reshape(out)


def _mesh_groups(text: str) -> list[list[int]]:
    """mesh['a'=2,'b'=4](device_ids) {'b'} or {'a':(1)2} -> groups (XLA's
    MeshAxesReplicaGroupList: reshape each axis around its sub-axes, move the grouped
    axes last, and read the groups off in row-major order)."""
    m = re.match(r"\s*@?mesh\s*[\[<](.*?)[\]>]", text)
    if not m:
        raise ValueError(f"HLO: cannot read the mesh replica groups '{text[:60]}'.")
    axes = [(n.strip("'\" "), int(s)) for n, s in re.findall(r"([^=,]+)=(\d+)", m.group(1))]
    names = [a for a, _ in axes]
    sizes = [s for _, s in axes]
    ids, rest = _mesh_device_ids(text[m.end() :], sizes)
    refs = _grouped_axes(text, rest, names)
    reshape, grouped_axes = _split_axes(sizes, refs)
    perm = [d for d in range(len(reshape)) if d not in grouped_axes] + grouped_axes
    per_group = math.prod(reshape[d] for d in grouped_axes)
    arr = ids.reshape(reshape).transpose(perm).reshape(-1, per_group)
    return arr.tolist()


def _mesh_device_ids(rest: str, sizes: list[int]) -> tuple[np.ndarray, str]:
    """The mesh's device ids (iota, or the `device_ids=(...)` list that follows the axes)
    shaped as the mesh, and the text after them."""
    ids = np.arange(math.prod(sizes)).reshape(sizes)
    dm = re.match(r"\s*,?\s*(?:device_ids=)?\((.*?\))\)", rest) or re.match(
        r"\s*,?\s*(?:device_ids=)?\((\[.*?\].*?)\)\s*\{", rest
    )
    if not dm:
        return ids, rest
    inner = dm.group(1)
    if "<=" in inner:
        arr = _iota(inner)
    elif inner.startswith("["):
        # an iota tile assignment printed as [reshape_dims]T(perm): the mesh's ids are
        # iota(n) reshaped to reshape_dims, transposed by perm
        shape = ",".join(map(str, sizes))
        arr = _iota(f"[{shape}]<={inner}")
    else:
        arr = np.array([int(x) for x in re.findall(r"\d+", inner)])
    if arr.size == ids.size:
        ids = arr.reshape(sizes)
    return ids, rest[dm.end() :]


def _grouped_axes(text: str, rest: str, names: list[str]) -> list[tuple[int, tuple | None]]:
    """The grouped axes `{'b', 'a':(1)2}` as (axis index, (pre-size, size) of a sub-axis or
    None), in the order written."""
    gm = re.search(r"\{([^}]*)\}", rest)
    if not gm:
        raise ValueError(f"HLO: mesh replica groups without grouped axes: '{text[:80]}'.")
    refs = []
    for part in split_top(gm.group(1)):
        part = part.strip()
        if not part:
            continue
        am = re.match(r"['\"]?([^'\":]+)['\"]?(?::\((\d+)\)(\d+))?$", part)
        if not am or am.group(1) not in names:
            raise ValueError(f"HLO: unknown mesh axis '{part}' in replica groups '{text[:80]}'.")
        sub = (int(am.group(2)), int(am.group(3))) if am.group(2) else None
        refs.append((names.index(am.group(1)), sub))
    return refs


def _split_axes(sizes: list[int], refs: list) -> tuple[list[int], list[int]]:
    """Reshape of the mesh that gives every grouped (sub-)axis its own dimension, and those
    dimensions in the order the groups name them."""
    reshape, grouped = [], []
    for axis, size in enumerate(sizes):
        mine = [(i, sub) for i, (a, sub) in enumerate(refs) if a == axis]
        base = len(reshape)
        if not mine:
            reshape.append(size)
            continue
        if len(mine) == 1 and mine[0][1] is None:
            reshape.append(size)
            grouped.append((mine[0][0], base))
            continue
        subs = sorted(((sub, i) for i, sub in mine), key=lambda t: t[0][0])
        prefix = 1
        for (pre, sz), order in subs:
            if pre != prefix:
                reshape.append(pre // prefix)
                prefix = pre
            grouped.append((order, len(reshape)))
            reshape.append(sz)
            prefix *= sz
        if prefix != size:
            reshape.append(size // prefix)
    return reshape, [d for _, d in sorted(grouped)]
