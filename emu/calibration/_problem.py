"""The calibration problem: which shared parameters the rows constrain, in which transformed
coordinates, and the loss (a Huber loss on log errors plus a Gaussian prior), evaluated as a
sum of per-group compiled blocks.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import jax
import jax.numpy as jnp
import numpy as np
import optax

from emu.catalog import calibration
from emu.struct import replace
from emu.validation import Item, predict_items, run_groups

#: in transformed units (logit or log). The data term is a weighted sum over rows divided by
#: the total weight, and so is the prior's, so a sigma of 1 weighs as much as one unit-weight
#: row per parameter, and more than a few rows whose residuals move weakly with it: a
#: parameter only a few rows constrain (a link type's collectives) stays near its prior,
#: which is why the priors must not be fits to the rows (defaults.toml). Judged by
#: leave-one-source-out on the 340 rows with those priors (`emu calibrate --cv --dry-run`):
#: sigma 1 / 3 / 10 gave LOSO medians 11.8% / 11.9% / 12.5% (p90 43.6% / 44.1% / 45.2%),
#: in-sample 9.3% / 6.9% / 6.4%. 3 and 10 fit the rows better without predicting held-out
#: sources better, and 3 lets SGLang's Atlas A3 decode rows double the 910C launch cost
#: (11.1 -> 21.7 us), which puts DeepSeek-R1 batch-1 decode on CloudMatrix 384 at 65 ms a
#: token against CloudMatrix-Infer's measured batch 8 at 15 ms (facts section 5): 1 stays.
PRIOR_SIGMA = 1.0
HUBER_DELTA = 0.25  # in log error units (about 25%)
LOWP = ("fp8", "int8", "fp4")
#: fitted per chip family (the matmul efficiency curve and the per-kernel fixed cost; also
#: `grouped_matmul_efficiency` for families with MoE rows, `parameter_spec`)
FAMILY_FIELDS = ("matmul_efficiency", "matmul_half_dim", "kernel_overhead_s")
#: fitted per link type (emu.collectives: ring efficiency, per-hop latency and chunking; MoE
#: dispatch/combine kernels' bandwidth fraction, peer penalty, per-copy message floor and
#: fixed costs), where the calibration defaults define them; fractions in logit, the rest
#: in log coordinates
LINK_FIELDS = (
    ("efficiency", "logit"),
    ("latency_s", "log"),
    ("ring_chunking", "logit"),
    ("a2a_efficiency", "logit"),
    ("a2a_peer_penalty", "log"),
    ("a2a_message_s", "log"),
    ("dispatch_latency_s", "log"),
    ("combine_latency_s", "log"),
)
#: collective parameters shared by every link type (one value each, fidelity DESIGN §3c:
#: the base cost of one library call, the ring channels entering a domain, the in-switch
#: all-reduce latency, the share of an MoE kernel's fixed cost its transfer hides), fitted
#: as one global and written to every [link.*] section; the all-to-all one only when some
#: row runs MoE dispatch/combine kernels
SHARED_LINK_FIELDS = (
    ("base_latency_s", "log"),
    ("ring_channels", "log"),
    ("nvls_latency_s", "log"),
    ("a2a_latency_hiding", "logit"),
)


def _uses_a2a(it: Item) -> bool:
    """Whether a row's prediction runs MoE dispatch/combine kernels."""
    if it.kind == "moe_comm":
        return True
    plans = [it.plan] + ([it.serving.prefill] if it.serving and it.serving.prefill else [])
    return (
        it.kind == "run" and float(it.model.n_experts) > 0 and any(float(p.ep) > 1 for p in plans)
    )


def parameter_spec(items: list[Item]) -> OrderedDict[tuple, dict]:
    """The fitted parameters for these rows: (section, key, field) -> {transform, prior}.
    Only parameters some row depends on: the chip-family fields of the families with
    train/serving rows (the 8-bit efficiency only with low-precision rows, the achievable
    HBM bandwidth fraction only with decode rows, the grouped expert GEMMs' efficiency only
    with MoE rows), the ring fields
    of every link type of the rows' systems, the all-to-all fields of link types whose
    systems have MoE communication rows or expert-parallel MoE runs, the overlap fractions
    of the plans that use them."""
    cal = calibration(fitted=False)
    spec: OrderedDict = OrderedDict()
    fams, lowp, serve, moe, links, a2a_links = [], set(), set(), set(), [], set()
    for it in items:
        sys = it.system
        if it.kind == "run":
            fam = sys.chip.family
            if fam not in fams:
                fams.append(fam)
            if it.plan.precision in LOWP:
                lowp.add(fam)
            if it.plan.phase == "decode":
                serve.add(fam)
            if float(it.model.n_experts) > 0:
                moe.add(fam)
        for t in sys.tiers:
            if t.link not in links:
                links.append(t.link)
            if _uses_a2a(it):
                a2a_links.add(t.link)
    for fam in fams:
        fields = list(FAMILY_FIELDS)
        if fam in lowp:
            fields.insert(1, "lowp_matmul_efficiency")
        if fam in serve:  # decode steps are HBM-bound: their rows constrain it
            fields.append("hbm_efficiency")
        if fam in moe:  # only MoE rows run grouped expert GEMMs
            fields.append("grouped_matmul_efficiency")
        for f in fields:
            kind = "logit" if "efficiency" in f else "log"
            spec[("chip_family", fam, f)] = {
                "transform": kind,
                "prior": float(cal["chip_family"][fam][f]),
            }
    for link in links:
        for f, kind in LINK_FIELDS:
            a2a = f.startswith(("a2a_", "dispatch_", "combine_"))
            if f in cal["link"].get(link, {}) and (link in a2a_links or not a2a):
                spec[("link", link, f)] = {
                    "transform": kind,
                    "prior": float(cal["link"][link][f]),
                }
    for f, kind in SHARED_LINK_FIELDS:
        if f.startswith("a2a_") and not a2a_links:
            continue
        priors = [float(cal["link"][k][f]) for k in links if f in cal["link"].get(k, {})]
        if priors:  # the geometric mean of the link priors (they agree in the defaults)
            prior = math.exp(sum(math.log(x) for x in priors) / len(priors))
            spec[("link", "", f)] = {"transform": kind, "prior": prior}
    runs = [it for it in items if it.kind == "run"]
    used = {
        "tp": any(float(it.plan.tp) > 1 for it in runs),
        "dp": any(it.plan.phase == "train" and float(it.plan.dp) > 1 for it in runs),
        "ep_tbo": any(float(it.plan.a2a_overlap) > 0 for it in runs),
        "pipelining": any(it.plan.algorithm == "staged" for it in runs),
    }
    for f, on in used.items():
        if on:
            spec[("overlap", "", f)] = {"transform": "logit", "prior": float(cal["overlap"][f])}
    if any(it.plan.phase == "train" for it in runs):
        f = "host_kernel_s"
        spec[("overlap", "", f)] = {"transform": "log", "prior": float(cal["overlap"][f])}
    return spec


def _to_u(x, kind):
    x = min(max(x, 1e-6), 1 - 1e-6) if kind == "logit" else max(x, 1e-12)
    return math.log(x / (1 - x)) if kind == "logit" else math.log(x)


def _from_u(u, kind):
    return jax.nn.sigmoid(u) if kind == "logit" else jnp.exp(u)


def apply_parameters(system, values: dict):
    """`system` with the chip-family, link and overlap fields of `values` substituted (a
    link key "" is a parameter shared by every link type)."""
    fam, chip = system.chip.family, {}
    for (sec, key, f), v in values.items():
        if sec == "chip_family" and key == fam:
            chip[f] = v
    tiers = []
    for t in system.tiers:
        ch = {f: v for (sec, key, f), v in values.items() if sec == "link" and key in ("", t.link)}
        tiers.append(replace(t, **ch) if ch else t)
    ov = {f: v for (sec, _, f), v in values.items() if sec == "overlap"}
    return replace(
        system,
        chip=replace(system.chip, **chip),
        tiers=tuple(tiers),
        overlap=replace(system.overlap, **ov),
    )


class FitProblem:
    """Rows, parameter spec and the loss as a sum of per-group compiled blocks: each block
    (rows sharing one program structure, or one collective row kind) compiles once and its
    value and gradient are summed on the host, which keeps compile time and memory small."""

    def __init__(self, items: list[Item]):
        self.items = items
        self.spec = parameter_spec(items)
        self.keys = list(self.spec)
        self.kinds = [self.spec[k]["transform"] for k in self.keys]
        self.u0 = jnp.asarray(
            [_to_u(self.spec[k]["prior"], self.spec[k]["transform"]) for k in self.keys],
            jnp.float32,
        )
        self.measured = np.asarray([it.base["measured"] for it in items], np.float32)
        blocks = [list(ix) for ix in run_groups(items).values()]
        for kind in ("allreduce", "moe_comm"):
            for name in sorted({it.system.name for it in items if it.kind == kind}):
                blocks.append(
                    [i for i, it in enumerate(items) if it.kind == kind and it.system.name == name]
                )
        self.blocks = [b for b in blocks if b]
        # one compiled function per block gives the loss, its gradient and the residuals
        self._fns = [
            jax.jit(
                jax.value_and_grad(self._make_block_loss(self._make_residuals(b)), has_aux=True)
            )
            for b in self.blocks
        ]

    def spec_priors(self):
        return [self.spec[k]["prior"] for k in self.keys]

    def values(self, u):
        return {
            k: _from_u(u[i], kind)
            for i, (k, kind) in enumerate(zip(self.keys, self.kinds, strict=True))
        }

    def _make_residuals(self, idxs):
        sub = [self.items[i] for i in idxs]
        meas = jnp.asarray(self.measured[idxs])
        system = sub[0].system

        def residuals(u):
            vals = self.values(u)
            s = apply_parameters(system, vals)
            preds, _ = predict_items(sub, {system.name: s})
            pred = jnp.stack([jnp.asarray(p, jnp.float32) for p in preds])
            return jnp.log(jnp.maximum(pred, 1e-30)) - jnp.log(meas)

        return residuals

    @staticmethod
    def _make_block_loss(residuals):
        def block(u, w):
            r = residuals(u)
            return jnp.sum(w * optax.huber_loss(r, delta=HUBER_DELTA)), r

        return block

    def log_errors(self, u):
        """log(predicted / measured) of every row at `u` (on the metric as published)."""
        out = np.zeros(len(self.items), np.float32)
        for idxs, f in zip(self.blocks, self._fns, strict=True):
            (_, r), _ = f(u, jnp.ones(len(idxs), jnp.float32))
            out[idxs] = np.asarray(r)
        return out

    def value_and_grad(self, u, w):
        w = np.asarray(w, np.float32)
        total_w = float(w.sum())
        val, grad = 0.0, jnp.zeros_like(u)
        for idxs, f in zip(self.blocks, self._fns, strict=True):
            wb = w[idxs]
            if not wb.any():
                continue
            (v, _), g = f(u, jnp.asarray(wb))
            val, grad = val + float(v), grad + g
        d = u - self.u0
        val = val / total_w + 0.5 * float(jnp.sum((d / PRIOR_SIGMA) ** 2)) / total_w
        grad = grad / total_w + d / PRIOR_SIGMA**2 / total_w
        return val, grad

    def loss(self, u, w):
        return self.value_and_grad(u, w)[0]

    def hessian(self, u, w, h=1e-3):
        """Central differences of the analytic gradient (P gradient pairs)."""
        n = u.shape[0]
        cols = []
        for j in range(n):
            e = jnp.zeros_like(u).at[j].set(h)
            cols.append(
                (
                    np.asarray(self.value_and_grad(u + e, w)[1])
                    - np.asarray(self.value_and_grad(u - e, w)[1])
                )
                / (2 * h)
            )
        hmat = np.stack(cols, axis=1).astype(np.float64)
        return 0.5 * (hmat + hmat.T)
