"""The gradient search: the discrete space relaxed to continuous coordinates, optimised by
an optax transform from many random starts at once, then rounded to valid configurations and
polished by a discrete local search (emu.search._local); every reported value is exact.

Continuous coordinates: log2 of the free degrees in RELAXED (and of the chip count when it is
free; dp takes the remaining chips) and one coordinate in [0, 1] per grid axis (log-spaced
between its extremes when its values are positive). ZeRO, recompute and SP are relaxed
categorical choices (a softmax per knob; each step samples one value by Gumbel-max and moves
the logits by the score-function gradient against a moving baseline, so a step costs one
evaluation however many combinations exist). Constraints (memory, SLO, power cap, reach, and
the plan's own: dp >= 1, tp <= heads, micro-batch <= batch per rank, ep <= tp dp cp) enter as
smooth penalties.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from emu.policy import DEFAULT_BATCH_TOKENS
from emu.search._evaluate import compile_fast, make_row_fn
from emu.search._local import Exact, descend
from emu.search._objectives import get_objective
from emu.search._problem import KNOBS, Problem, check_budget
from emu.search._results import SearchResult
from emu.search._space import Space
from emu.topology import System
from emu.workload import Model

#: plan knobs relaxed to continuous log2 coordinates (dp too when the chip count is free)
RELAXED = ("tp", "pp", "cp", "ep", "microbatch", "vpp")
#: plan knobs chosen per start and by the discrete polish (categorical)
CATEGORICAL = ("zero", "recompute", "sp")
#: weight of the constraint penalties (p + p^2) against the log objective
PENALTY = 10.0
#: relaxations of up to this many coordinates take their gradient by forward mode
#: (`value_and_grad_x`); a Jacobian-vector product per coordinate costs a forward pass each
FORWARD_MAX = 16


class _Relaxation:
    """The relaxed space of one problem: continuous coordinates x (log2 degrees, then the
    grid axes in [0, 1]) with their bounds, the categorical choices, and `score(x, cat)`,
    the relaxed objective of one start (traceable)."""

    def __init__(self, system: System, model: Model, problem: Problem, space: Space):
        self.space, self.problem = space, problem
        plans = space.plans
        names = [k for k in RELAXED if np.unique(plans[:, KNOBS.index(k)]).size > 1]
        table = {k: plans[:, KNOBS.index(k)] for k in names}
        if np.unique(space.chips).size > 1:  # the chip count is a knob; dp follows it
            names.append("chips")
            table["chips"] = space.chips
        self.names = names
        self.logp = (
            np.log2(np.column_stack([table[k] for k in names]))
            if names
            else np.zeros((len(plans), 0))
        )
        self.axes = list(space.axes)
        self.g_axes = [j for j, a in enumerate(self.axes) if a.size > 1]
        self.pos = [bool(np.all(a > 0)) for a in self.axes]
        n_g = len(self.g_axes)
        self.lo = jnp.asarray(np.concatenate([self.logp.min(0), np.zeros(n_g)]), jnp.float32)
        self.hi = jnp.asarray(np.concatenate([self.logp.max(0), np.ones(n_g)]), jnp.float32)
        self.dim = len(names) + n_g
        self.cat_idx = [KNOBS.index(c) for c in CATEGORICAL]
        self.choices = [jnp.asarray(np.unique(plans[:, j]), jnp.float32) for j in self.cat_idx]
        self.sizes = [int(c.size) for c in self.choices]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(int)
        self.row = make_row_fn(system, model, problem, space.names)
        self.objective = get_objective(problem.objective)
        self.heads = float(model.n_heads)
        self.moe = float(model.n_experts) > 0

    def t_of(self, j: int, v):
        """Grid value(s) of axis j -> coordinate in [0, 1]."""
        a = self.axes[j]
        lo, hi = (np.log(a[0]), np.log(a[-1])) if self.pos[j] else (a[0], a[-1])
        x = np.log(v) if self.pos[j] else v
        return (x - lo) / (hi - lo)

    def value_of(self, j: int, t):
        """Coordinate -> grid value of axis j (traceable)."""
        a = self.axes[j]
        if self.pos[j]:
            return jnp.exp(np.log(a[0]) + t * (np.log(a[-1]) - np.log(a[0])))
        return a[0] + t * (a[-1] - a[0])

    def _knobs(self, x, cat):
        """(knobs vector, global batch, plan-validity penalty) of coordinates x."""
        problem, i_dp = self.problem, KNOBS.index("dp")
        i_mb, i_ep = KNOBS.index("microbatch"), KNOBS.index("ep")
        k = jnp.asarray(self.space.plans[0], jnp.float32)
        for c, kname in zip(cat, CATEGORICAL, strict=True):
            k = k.at[KNOBS.index(kname)].set(c)
        deg = {n: 2.0 ** x[j] for j, n in enumerate(self.names)}
        for n, v in deg.items():
            if n != "chips":
                k = k.at[KNOBS.index(n)].set(v)
        tp, pp, cp = (k[KNOBS.index(n)] for n in ("tp", "pp", "cp"))
        extra = jnp.float32(0.0)
        chips = float(self.space.chips[0])  # the chip count when it is not a knob
        k = k.at[i_dp].set(deg.get("chips", chips) / (tp * pp * cp))
        dp = k[i_dp]
        if problem.phase == "train":
            gb = (
                jnp.float32(problem.global_batch)
                if problem.global_batch
                else jnp.maximum(dp, DEFAULT_BATCH_TOKENS / problem.seq_len)
            )
            extra += jax.nn.relu(jnp.log2(k[i_mb] * dp / gb))  # micro-batch <= batch per rank
        else:
            gb = dp * k[i_mb]
        extra += jax.nn.relu(-jnp.log2(dp)) + jax.nn.relu(jnp.log2(tp / self.heads))
        if self.moe:
            extra += jax.nn.relu(jnp.log2(k[i_ep] / (tp * dp * cp)))
        return k, gb, extra

    def score(self, x, cat):
        """Relaxed score of one start: sign x log objective - penalties."""
        k, gb, extra = self._knobs(x, cat)
        n = len(self.names)
        full = [
            self.value_of(j, x[n + self.g_axes.index(j)]) if j in self.g_axes else jnp.float32(a[0])
            for j, a in enumerate(self.axes)
        ]
        gvec = jnp.stack(full) if full else jnp.zeros((0,), jnp.float32)
        out, pen = self.row(k, gb, gvec)
        v = out[0]
        if self.objective.log_space:
            core = self.objective.sign * jnp.log(jnp.maximum(v, 1e-30))
        else:
            core = v
        p = pen + extra
        return core - PENALTY * (p + p**2)

    def sample(self, lg, key):
        """One categorical value per knob (Gumbel-max), its one-hot and the softmax."""
        vals, onehot, prob = [], [], []
        for j, n in enumerate(self.sizes):
            part = lg[self.offsets[j] : self.offsets[j] + n]
            key, sub = jax.random.split(key)
            i = jnp.argmax(part + jax.random.gumbel(sub, (n,)))
            vals.append(self.choices[j][i])
            onehot.append(jax.nn.one_hot(i, n))
            prob.append(jax.nn.softmax(part))
        return jnp.stack(vals), jnp.concatenate(onehot), jnp.concatenate(prob)


def value_and_grad_x(f, dim: int):
    """(value, gradient) of f(x, c) with respect to a 1-D x of `dim` coordinates. Up to
    FORWARD_MAX coordinates by forward mode: one Jacobian-vector product per coordinate, all
    under one vmap; the same gradient as reverse mode (`jax.value_and_grad`, to float32
    rounding), and its program compiles faster, since the reverse pass of the whole model
    is most of what XLA has to compile otherwise (bench_search's 1e8 problem, one run each:
    one start's program 13 s against 19 s, the whole gradient phase 31.5 s -> 21.3 s).
    Wider relaxations use reverse mode."""
    if dim > FORWARD_MAX:
        return jax.value_and_grad(f)

    def vg(x, c):
        if dim == 0:  # nothing relaxed: only categorical knobs
            return f(x, c), jnp.zeros_like(x)
        basis = jnp.eye(dim, dtype=x.dtype)
        vals, grads = jax.vmap(lambda v: jax.jvp(lambda y: f(y, c), (x,), (v,)))(basis)
        return vals[0], grads

    return vg


def _optimise(relax: _Relaxation, *, starts, steps, opt, seed):
    """(best x [starts, dim], its categorical values [starts, 3]) of `starts` random starts,
    each run for `steps` steps of `opt` inside one compiled `lax.scan`, all under vmap."""
    import optax

    lo, hi = relax.lo, relax.hi
    rng = np.random.default_rng(seed)
    x0 = jnp.asarray(rng.uniform(0, 1, (starts, relax.dim)) * (hi - lo) + lo, jnp.float32)
    lg0 = jnp.asarray(rng.normal(0.0, 0.5, (starts, int(relax.offsets[-1]))), jnp.float32)
    keys = jax.random.split(jax.random.PRNGKey(seed), starts)
    vg = value_and_grad_x(lambda x, c: -relax.score(x, c), relax.dim)

    def step(carry, key):
        (x, lg), state, best_x, best_c, best_f, base = carry
        c, onehot, prob = relax.sample(lg, key)
        f, gx = vg(x, c)
        gx = jnp.where(jnp.isfinite(gx), gx, 0.0)
        base = jnp.where(jnp.isfinite(base), base, f)
        adv = jnp.clip(f - base, -10.0, 10.0)
        glg = adv * (onehot - prob)  # d E[f] / d logits, score-function estimate
        base = 0.8 * base + 0.2 * f
        better = f < best_f
        best_x = jnp.where(better, x, best_x)
        best_c = jnp.where(better, c, best_c)
        best_f = jnp.where(better, f, best_f)
        upd, state = opt.update((gx, glg), state, (x, lg))
        x, lg = optax.apply_updates((x, lg), upd)
        x = jnp.clip(x, lo, hi)
        return ((x, lg), state, best_x, best_c, best_f, base), None

    def one(x, lg, key):
        params = (x, lg)
        inf = jnp.float32(jnp.inf)
        c0 = jnp.stack([ch[0] for ch in relax.choices])
        init = (params, opt.init(params), x, c0, inf, inf)
        (_, _, best_x, best_c, _, _), _ = jax.lax.scan(step, init, jax.random.split(key, steps))
        return best_x, best_c  # the best evaluated point and its categorical values

    run = jax.jit(lambda x0, lg0, keys: jax.vmap(one)(x0, lg0, keys))
    with jax.numpy_dtype_promotion("standard"):
        compiled = compile_fast(run.lower(x0, lg0, keys))
        x_opt, cats = jax.device_get(compiled(x0, lg0, keys))
    return np.asarray(x_opt), np.asarray(cats)


def _round(relax: _Relaxation, x_opt, cats, neighbours: int) -> list[list[int]]:
    """Per start: its `neighbours` nearest valid plans (log2 distance, same categorical
    choice when one exists) at the grid points around it (the nearest value below and above
    on each axis), as flat indices."""
    space, plans, n = relax.space, relax.space.plans, len(relax.names)
    per_start = []
    for s in range(x_opt.shape[0]):
        same = np.nonzero(np.all(plans[:, relax.cat_idx] == cats[s], axis=1))[0]
        pool = same if same.size else np.arange(len(plans))
        d = np.sum((relax.logp[pool] - x_opt[s, :n]) ** 2, axis=1)
        near = pool[np.argsort(d, kind="stable")[:neighbours]]
        around = []
        for m, j in enumerate(relax.g_axes):
            t = relax.t_of(j, relax.axes[j]) - x_opt[s, n + m]
            lo = np.nonzero(t <= 0)[0]
            hi = np.nonzero(t >= 0)[0]
            around.append(sorted({int(lo[-1]) if lo.size else 0, int(hi[0]) if hi.size else 0}))
        mine = []
        for pick in itertools.product(*around):
            gi = [0] * len(relax.axes)
            for j, v in zip(relax.g_axes, pick, strict=True):
                gi[j] = v
            g = int(np.ravel_multi_index(tuple(gi), space.shape)) if relax.axes else 0
            mine += [g * space.n_plans + int(p) for p in near]
        per_start.append(mine)
    return per_start


def gradient_search(
    system: System,
    model: Model,
    problem: Problem,
    *,
    grid: dict | None = None,
    objective=None,
    starts=None,
    steps=40,
    learning_rate=0.2,
    optimizer=None,
    neighbours=3,
    polish=5,
    top=10,
    seed=0,
    progress=None,
) -> SearchResult:
    """Maximise the problem's objective by gradient over relaxed plans (and grid axes), then
    round to valid discrete configurations and polish them (module doc).

    `starts` random starts (seeded; default sqrt(space size) / 16, clipped to 4..16) run
    at once under vmap for `steps` steps of `optimizer` (default optax.adam(learning_rate)).
    Each is rounded to its `neighbours` nearest valid plans at the grid points around it;
    from the best rounded point of the `polish` best starts, a variable-neighbourhood
    descent moves to the best configuration one move away, or two when none is better,
    until neither improves (emu.search._local). `progress(stage, evaluations)`, if given, is
    called as the search advances."""
    import optax

    check_budget(starts=starts, steps=steps, neighbours=neighbours, polish=polish, top=top)
    if not (learning_rate > 0 and math.isfinite(learning_rate)):
        raise ValueError(f"learning_rate must be a positive number (got {learning_rate!r}).")
    if objective is not None:
        problem = dataclasses.replace(problem, objective=objective)
    t0 = time.perf_counter()
    space = Space(system, model, problem, grid)
    if starts is None:  # the budget grows with the space: 4 starts up to 16 from 65,536
        starts = int(np.clip(math.sqrt(space.size) / 16, 4, 16))
    relax = _Relaxation(system, model, problem, space)
    report = progress or (lambda stage, evaluations: None)
    report("compiling and running the gradient phase", 0)
    opt = optax.adam(learning_rate) if optimizer is None else optimizer
    x_opt, cats = _optimise(relax, starts=starts, steps=steps, opt=opt, seed=seed)
    grad_evals = starts * steps
    exact = Exact(system, model, problem, space)
    per_start = _round(relax, x_opt, cats, neighbours)
    report("rounding to valid plans", grad_evals)
    exact([i for m in per_start for i in m])
    # polish seeds: the best rounded configuration of each start (diverse basins), best first
    firsts = {max(m, key=exact.score) for m in per_start}
    seeds = sorted(firsts, key=lambda i: (-exact.score(i), i))[:polish]
    descend(space, exact, seeds, lambda n: report("polishing (local search)", grad_evals + n))
    report("done", grad_evals + len(exact.values))
    ranked = sorted(exact.values, key=lambda i: (-exact.score(i), i))
    feasible = [i for i in ranked if exact.score(i) > -math.inf]
    top_rows = space.describe(feasible[:top], [exact.values[i] for i in feasible[:top]])
    return SearchResult(
        problem=problem,
        objective=problem.objective_name(),
        best=top_rows[0] if top_rows else None,
        top=top_rows,
        evaluations=int(grad_evals + len(exact.values)),
        gradient_evaluations=int(grad_evals),
        exact_evaluations=len(exact.values),
        space_size=int(space.size),
        wall_s=time.perf_counter() - t0,
        space=space,
        scores=exact.values,
    )
