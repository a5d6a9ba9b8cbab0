"""Exact evaluation and the discrete local search of the gradient search: a cache of exactly
evaluated configurations, the neighbourhood of a configuration (one or two moves), and a
variable-neighbourhood descent from seed configurations."""

from __future__ import annotations

import itertools
import math

import jax
import numpy as np

from emu.search._evaluate import gather, make_eval
from emu.search._space import Space


class Exact:
    """Exact, cached evaluation of flat configuration indices, in compiled batches of
    fixed size (one compilation), returning sign x objective (-inf when infeasible)."""

    def __init__(self, system, model, problem, space):
        self.BATCH = 64 * len(jax.local_devices())  # any device count divides it
        self.space, self.sign = space, problem.sign()
        self.fn = make_eval(system, model, problem, space, self.BATCH, fast_compile=True)
        self.values: dict[int, np.ndarray] = {}

    def __call__(self, idx) -> None:
        new = [int(i) for i in dict.fromkeys(idx) if int(i) not in self.values]
        for s in range(0, len(new), self.BATCH):
            part = np.asarray(new[s : s + self.BATCH], np.int64)
            pad = np.concatenate([part, np.full(self.BATCH - part.size, part[0])])
            out = gather(self.fn(pad))
            for j, i in enumerate(part):
                self.values[int(i)] = out[j]

    def score(self, i: int) -> float:
        v = self.values[int(i)]
        return float(self.sign * v[0]) if v[1] > 0.5 else -math.inf


def neighbours(space: Space, i: int, radius: int) -> list[int]:
    """Configurations `radius` moves or fewer from i. A move changes one independent plan
    knob (or the chip count, when it is free) to another valid value (dp follows the chip
    count, SP follows TP) or steps one grid axis to the next value up or down, possibly
    setting one other axis to any value (axes that must move together, such as the
    scale-up domain and its optical share). A single move may jump a knob to any value;
    within several moves each knob steps to a neighbouring value."""
    p, g = i % space.n_plans, i // space.n_plans
    t, (tp, sp), (pp, vpp) = space.moves, space.moves_tp_sp, space.moves_pp_vpp
    other = [j for j in range(t.shape[1]) if j not in (sp, vpp)]
    diff = np.sum(t[:, other] != t[p, other], axis=1)
    # SP follows TP and VPP follows PP (they exist only with tp > 1, pp > 1): a change of
    # their own counts as a move only then
    diff += (t[:, tp] > 1) & (t[p, tp] > 1) & (t[:, sp] != t[p, sp])
    diff += (t[:, pp] > 1) & (t[p, pp] > 1) & (t[:, vpp] != t[p, vpp])
    # one move may jump a knob to any value; several moves step each knob to a neighbouring
    # value (keeps the two-move neighbourhood small)
    adjacent = np.max(np.abs(space.ranks[:, other] - space.ranks[p, other]), axis=1) <= 1
    gi = np.array(np.unravel_index(g, space.shape)) if space.names else np.zeros(0, int)
    out = []
    for grid_moves in range(min(radius, 2 * len(space.shape)) + 1):
        budget = radius - grid_moves
        ok = (diff <= budget) & (diff > 0 if grid_moves == 0 else diff >= 0)
        if radius > 1:
            ok &= adjacent | (diff <= 1) & (grid_moves == 0)
        near = np.nonzero(ok)[0]
        for steps in itertools.combinations(range(len(space.shape)), grid_moves):
            for signs in itertools.product((-1, 1), repeat=grid_moves):
                h = gi.copy()
                for a, d in zip(steps, signs, strict=True):
                    h[a] += d
                if np.any(h < 0) or np.any(h >= np.asarray(space.shape, int)):
                    continue
                gg = int(np.ravel_multi_index(tuple(h), space.shape)) if space.names else 0
                out.extend((gg * space.n_plans + near).tolist())
    shape = np.asarray(space.shape, int)
    if radius == 1 and shape.size > 1:  # coupled axes: a step on one, any value on another
        for a, d in itertools.product(range(shape.size), (-1, 1)):
            if not 0 <= gi[a] + d < shape[a]:
                continue
            for b in range(shape.size):
                for v in range(shape[b]) if b != a else ():
                    h = gi.copy()
                    h[a], h[b] = h[a] + d, v
                    out.append(int(np.ravel_multi_index(tuple(h), space.shape)) * space.n_plans + p)
    return [j for j in dict.fromkeys(out) if j != i]


def descend(space: Space, exact: Exact, seeds, on_step=None) -> None:
    """Variable-neighbourhood descent from each seed: move to the best configuration one
    move away, or two when none is better, until neither improves. Every configuration seen
    is evaluated into `exact`; `on_step(evaluations so far)` is called after each
    neighbourhood."""
    for cur in seeds:
        radius = 1
        while radius <= 2:
            nb = neighbours(space, cur, radius)
            exact(nb)
            if on_step:
                on_step(len(exact.values))
            best_nb = max(nb, key=exact.score, default=cur)
            if exact.score(best_nb) > exact.score(cur):
                cur, radius = best_nb, 1
            else:
                radius += 1
