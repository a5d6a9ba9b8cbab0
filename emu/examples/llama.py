"""A Llama-style decoder in flax.linen: an AdamW train step and a KV-cache decode step,
sharded data x tensor parallel (Megatron layout, optional sequence parallelism) over a
`jax.make_mesh` mesh with axes ('data', 'model').

Layout (Megatron-LM, Shoeybi et al. 2019; Korthikanti et al. 2022):
- fused QKV projection column-parallel over KV-head groups (each rank holds whole GQA groups),
  output projection row-parallel; SwiGLU gate and up as one column-parallel matmul, down
  row-parallel;
- embedding vocab-parallel, output head column-parallel over the vocabulary;
- with `sp` the residual stream is split over the sequence on the 'model' axis, so each block
  all-gathers its input and reduce-scatters its output (otherwise one all-reduce each);
- fp32 master weights, bf16 compute; layers are one `nn.scan` (a scan over layers costs
  layers x body in `emu.program`);
- attention is a flash-style `jax.custom_vjp` (the backward recomputes the scores from Q, K, V,
  O and the log-sum-exp, 5 matmuls against the forward's 2), marked with
  `emu.program.fused_kernel` so that the emulator charges it as one fused kernel whose
  scores never reach HBM, as cuDNN/FlashAttention/splash kernels run on the target.

Builders for `emu program` (called in a process that has the devices; each returns
`(fn, args)` with `fn` jitted with its shardings and `args` `jax.ShapeDtypeStruct`s):

    emu program emu/examples/llama.py:train --devices 64 --system gb200_nvl72

>>> cfg = Config(n_layers=2, d_model=64, n_heads=4, n_kv_heads=2, d_ff=128, vocab=256,
...              seq_len=16, batch=2)
>>> mesh = make_mesh(tp=1, dp=1)
>>> fn, args = build_train(cfg, mesh)
>>> params = args[0]
>>> sum(x.size for x in jax.tree.leaves(params)) == params_count(cfg)
True
>>> params_count(cfg)   # 2 layers, untied embedding and head
106816
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

__all__ = [
    "Config",
    "Llama",
    "make_mesh",
    "build_train",
    "build_decode",
    "train",
    "decode",
    "emu_model_dict",
    "emu_model_toml",
    "params_count",
    "flash_attention",
]


@dataclasses.dataclass(frozen=True)
class Config:
    """Model and batch. `batch` is the global batch of sequences per train step (or of
    sequences decoded per step); `context` the KV-cache length of the decode step."""

    n_layers: int = 16
    d_model: int = 256
    n_heads: int = 8
    n_kv_heads: int = 8
    d_ff: int = 512
    vocab: int = 1024
    seq_len: int = 128
    batch: int = 8
    context: int = 256
    rope_theta: float = 500_000.0
    sp: bool = True
    learning_rate: float = 3e-4
    dtype: Any = jnp.bfloat16
    param_dtype: Any = jnp.float32

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads

    def check(self, tp: int, dp: int) -> Config:
        if self.d_model % self.n_heads or self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"Config: n_heads={self.n_heads} must divide d_model={self.d_model} and "
                f"n_kv_heads={self.n_kv_heads} must divide n_heads."
            )
        for name, v in (("n_kv_heads", self.n_kv_heads), ("d_ff", self.d_ff)):
            if v % tp:
                raise ValueError(f"Config: tp={tp} must divide {name}={v}; pick another tp.")
        if self.vocab % tp:
            raise ValueError(f"Config: tp={tp} must divide vocab={self.vocab}.")
        if self.batch % dp:
            raise ValueError(f"Config: dp={dp} must divide batch={self.batch}.")
        if self.sp and self.seq_len % tp:
            raise ValueError(f"Config: with sp, tp={tp} must divide seq_len={self.seq_len}.")
        return self


def emu_model_dict(cfg: Config, name: str = "reference_llama") -> dict:
    """The same model as emu's catalog keys (a model TOML; `emu_model_toml`)."""
    return {
        "name": name,
        "ffn": "swiglu",
        "tied_embeddings": False,
        "n_layers": cfg.n_layers,
        "d_model": cfg.d_model,
        "n_heads": cfg.n_heads,
        "n_kv_heads": cfg.n_kv_heads,
        "d_head": cfg.d_head,
        "d_ff": cfg.d_ff,
        "vocab": cfg.vocab,
    }


def emu_model_toml(cfg: Config, name: str = "reference_llama") -> str:
    """The same model as a TOML file for `emu.load_model(path)` (emu.evaluate's model).

    >>> print(emu_model_toml(Config(n_layers=2)).splitlines()[1])
    ffn = "swiglu"
    """
    lines = []
    for key, value in emu_model_dict(cfg, name).items():
        if isinstance(value, bool):
            lines.append(f"{key} = {'true' if value else 'false'}")
        elif isinstance(value, str):
            lines.append(f'{key} = "{value}"')
        else:
            lines.append(f"{key} = {value}")
    return "\n".join(lines) + "\n"


def params_count(cfg: Config) -> int:
    d, dh = cfg.d_model, cfg.d_head
    attn = d * (cfg.n_heads + 2 * cfg.n_kv_heads) * dh + cfg.n_heads * dh * d
    layer = attn + 3 * d * cfg.d_ff + 2 * d
    return cfg.n_layers * layer + 2 * cfg.vocab * d + d


def make_mesh(*, tp: int, dp: int) -> jax.sharding.Mesh:
    """A ('data', 'model') mesh of dp x tp devices; 'model' is the inner (stride-1) axis."""
    n = jax.device_count()
    if tp * dp != n:
        raise ValueError(
            f"make_mesh: tp*dp = {tp * dp} must equal the {n} devices of this process; "
            "adjust tp/dp or run with --devices N."
        )
    auto = (jax.sharding.AxisType.Auto,) * 2
    return jax.make_mesh((dp, tp), ("data", "model"), axis_types=auto)


# ----------------------------------------------------------------------------- attention


def _kernel_scope(name: str, causal: bool):
    # emu.program reads this scope name from the HLO metadata (see emu.program.fused_kernel);
    # spelled out here so that the model does not import the emulator.
    return jax.named_scope(f"emu_kernel[{name}{',causal' if causal else ''}]")


def _scores(q, k, causal: bool, offset):
    # q (b, s, kv, g, dh), k (b, t, kv, dh) -> fp32 scores (b, kv, g, s, t)
    scale = 1.0 / math.sqrt(q.shape[-1])
    s = jnp.einsum("bskgd,btkd->bkgst", q, k, preferred_element_type=jnp.float32) * scale
    if causal:
        qi = jnp.arange(q.shape[1])[:, None] + offset
        ki = jnp.arange(k.shape[1])[None, :]
        s = jnp.where(ki <= qi, s, -1e30)
    return s


def _attention_fwd_core(q, k, v, causal):
    s = _scores(q, k, causal, 0)
    lse = jax.nn.logsumexp(s, axis=-1)
    p = jnp.exp(s - lse[..., None]).astype(v.dtype)
    o = jnp.einsum("bkgst,btkd->bskgd", p, v)
    return o, lse


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def flash_attention(q, k, v, causal=True):
    """Softmax attention with flash semantics: the backward pass recomputes the scores from
    (q, k, v, o, lse) instead of storing them. q (b, s, kv, g, dh), k and v (b, t, kv, dh)."""
    with _kernel_scope("flash_attention", causal):
        return _attention_fwd_core(q, k, v, causal)[0]


def _flash_fwd(q, k, v, causal):
    with _kernel_scope("flash_attention", causal):
        o, lse = _attention_fwd_core(q, k, v, causal)
    return o, (q, k, v, o, lse)


def _flash_bwd(causal, res, do):
    q, k, v, o, lse = res
    with _kernel_scope("flash_attention_bwd", causal):
        scale = 1.0 / math.sqrt(q.shape[-1])
        p = jnp.exp(_scores(q, k, causal, 0) - lse[..., None])
        dv = jnp.einsum("bkgst,bskgd->btkd", p.astype(do.dtype), do)
        dp = jnp.einsum("bskgd,btkd->bkgst", do, v, preferred_element_type=jnp.float32)
        delta = jnp.einsum("bskgd,bskgd->bkgs", do.astype(jnp.float32), o.astype(jnp.float32))
        ds = (p * (dp - delta[..., None]) * scale).astype(q.dtype)
        dq = jnp.einsum("bkgst,btkd->bskgd", ds, k)
        dk = jnp.einsum("bkgst,bskgd->btkd", ds, q)
    return dq, dk, dv


flash_attention.defvjp(_flash_fwd, _flash_bwd)


def _decode_attention(q, k_cache, v_cache, pos):
    """One query token per sequence against a KV cache whose first pos+1 entries are valid."""
    with _kernel_scope("decode_attention", False):
        s = _scores(q, k_cache, False, 0)
        valid = jnp.arange(k_cache.shape[1]) <= pos
        s = jnp.where(valid, s, -1e30)
        p = jax.nn.softmax(s, axis=-1).astype(v_cache.dtype)
        return jnp.einsum("bkgst,btkd->bskgd", p, v_cache)


def _rope(x, positions, theta):
    # x (b, s, ..., dh); rotate pairs (first half, second half) as in Llama
    dh = x.shape[-1]
    freq = 1.0 / (theta ** (jnp.arange(0, dh, 2, dtype=jnp.float32) / dh))
    ang = positions[:, None].astype(jnp.float32) * freq[None, :]  # (s, dh/2)
    shape = (1, ang.shape[0]) + (1,) * (x.ndim - 3) + (dh // 2,)
    cos, sin = jnp.cos(ang).reshape(shape), jnp.sin(ang).reshape(shape)
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)


# ----------------------------------------------------------------------------- model


def _init(scale: float = 0.02):
    return nn.initializers.normal(stddev=scale)


class RMSNorm(nn.Module):
    cfg: Config

    @nn.compact
    def __call__(self, x):
        scale = self.param(
            "scale",
            nn.with_partitioning(nn.initializers.ones, (None,)),
            (x.shape[-1],),
            self.cfg.param_dtype,
        )
        xf = x.astype(jnp.float32)
        y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + 1e-5)
        return (y * scale.astype(jnp.float32)).astype(self.cfg.dtype)


class Block(nn.Module):
    """One decoder layer; `__call__(x, positions, cache)` -> (x, cache) for `nn.scan`."""

    cfg: Config
    mesh: Any

    def _constrain(self, x, spec):
        return jax.lax.with_sharding_constraint(x, NamedSharding(self.mesh, spec))

    def _gather(self, x):  # block input: full sequence on every 'model' rank
        return self._constrain(x, P("data", None, None))

    def _scatter(self, x):  # block output: back to the residual layout
        seq = "model" if self.cfg.sp and x.shape[1] > 1 else None
        return self._constrain(x, P("data", seq, None))

    @nn.compact
    def __call__(self, x, positions, cache):
        cfg = self.cfg
        kv, g, dh = cfg.n_kv_heads, cfg.n_heads // cfg.n_kv_heads, cfg.d_head
        dense = functools.partial(
            nn.DenseGeneral, use_bias=False, dtype=cfg.dtype, param_dtype=cfg.param_dtype
        )
        h = self._gather(RMSNorm(cfg, name="attn_norm")(x))
        qkv = dense(
            features=(kv, g + 2, dh),
            kernel_init=nn.with_partitioning(_init(), (None, "model", None, None)),
            name="qkv",
        )(h)
        qkv = self._constrain(qkv, P("data", None, "model", None, None))
        q, k, v = qkv[..., :g, :], qkv[..., g, :], qkv[..., g + 1, :]
        q, k = _rope(q, positions, cfg.rope_theta), _rope(k, positions, cfg.rope_theta)
        if cache is None:
            o = flash_attention(q, k, v, True)
            new_cache = None
        else:
            k_cache, v_cache, pos = cache
            k_cache = jax.lax.dynamic_update_slice_in_dim(k_cache, k, pos, axis=1)
            v_cache = jax.lax.dynamic_update_slice_in_dim(v_cache, v, pos, axis=1)
            o = _decode_attention(q, k_cache, v_cache, pos)
            new_cache = (k_cache, v_cache)
        o = self._constrain(o, P("data", None, "model", None, None))
        a = dense(
            features=cfg.d_model,
            axis=(-3, -2, -1),
            kernel_init=nn.with_partitioning(_init(), ("model", None, None, None)),
            name="out",
        )(o)
        x = x + self._scatter(a)
        h = self._gather(RMSNorm(cfg, name="mlp_norm")(x))
        # gate and up as one column-parallel matmul (Megatron's fc1): one reduce-scatter of
        # their input gradient instead of two
        gate_up = dense(
            features=(2, cfg.d_ff),
            kernel_init=nn.with_partitioning(_init(), (None, None, "model")),
            name="gate_up",
        )(h)
        gate_up = self._constrain(gate_up, P("data", None, None, "model"))
        hidden = nn.silu(gate_up[..., 0, :]) * gate_up[..., 1, :]
        hidden = self._constrain(hidden, P("data", None, "model"))
        m = dense(
            features=cfg.d_model,
            kernel_init=nn.with_partitioning(_init(), ("model", None)),
            name="down",
        )(hidden)
        return x + self._scatter(m), new_cache


def _vocab_parallel_embed(table, tokens, mesh, sp: bool):
    """Megatron's vocab-parallel lookup: each 'model' rank gathers the rows it holds (zeros
    elsewhere), then one reduce-scatter over the sequence (sp) or all-reduce sums them."""

    def lookup(t, ids):
        rows = t.shape[0]
        local = ids - jax.lax.axis_index("model") * rows
        ok = (local >= 0) & (local < rows)
        x = jnp.where(ok[..., None], jnp.take(t, jnp.clip(local, 0, rows - 1), axis=0), 0)
        if sp:
            return jax.lax.psum_scatter(x, "model", scatter_dimension=1, tiled=True)
        return jax.lax.psum(x, "model")

    out = P("data", "model" if sp else None, None)
    return jax.shard_map(
        lookup, mesh=mesh, in_specs=(P("model", None), P("data", None)), out_specs=out
    )(table, tokens)


class Llama(nn.Module):
    """tokens (b, s) int32 -> logits (b, s, vocab) fp32 (and the updated KV cache when a
    cache `(k, v, pos)` with k, v of shape (layers, b, context, kv_heads, d_head) is given)."""

    cfg: Config
    mesh: Any

    @nn.compact
    def __call__(self, tokens, positions, cache=None):
        cfg = self.cfg
        embed = self.param(
            "embed",
            nn.with_partitioning(_init(1.0), ("model", None)),
            (cfg.vocab, cfg.d_model),
            cfg.param_dtype,
        )
        sp = cfg.sp and tokens.shape[1] > 1
        x = _vocab_parallel_embed(embed.astype(cfg.dtype), tokens, self.mesh, sp)
        stack = nn.scan(
            Block,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=(nn.broadcast, 0),
            length=cfg.n_layers,
            metadata_params={nn.PARTITION_NAME: None},
        )
        if cache is None:
            x, new_cache = stack(cfg, self.mesh, name="layers")(x, positions, None)
        else:
            k, v, pos = cache
            layer_pos = jnp.broadcast_to(pos, (cfg.n_layers,))
            x, new_cache = stack(cfg, self.mesh, name="layers")(x, positions, (k, v, layer_pos))
        x = RMSNorm(cfg, name="final_norm")(x)
        x = jax.lax.with_sharding_constraint(x, NamedSharding(self.mesh, P("data", None, None)))
        logits = nn.DenseGeneral(
            features=cfg.vocab,
            use_bias=False,
            dtype=cfg.dtype,
            param_dtype=cfg.param_dtype,
            kernel_init=nn.with_partitioning(_init(), (None, "model")),
            name="head",
        )(x)
        return logits.astype(jnp.float32), new_cache


# ----------------------------------------------------------------------------- steps


def _abstract_params(model: Llama, cfg: Config, mesh, dtype=None):
    tokens = jax.ShapeDtypeStruct((cfg.batch, cfg.seq_len), jnp.int32)
    positions = jax.ShapeDtypeStruct((cfg.seq_len,), jnp.int32)
    boxed = jax.eval_shape(model.init, jax.random.key(0), tokens, positions)["params"]
    specs = nn.get_partition_spec(boxed)
    shapes = nn.unbox(boxed)

    def sds(x, spec):
        return jax.ShapeDtypeStruct(x.shape, dtype or x.dtype, sharding=NamedSharding(mesh, spec))

    return jax.tree.map(sds, shapes, specs), specs


def build_train(cfg: Config, mesh) -> tuple[Any, tuple]:
    """(train_step, (params, master, opt_state, tokens, targets)): one AdamW step on
    `cfg.batch` sequences of `cfg.seq_len` tokens.

    Mixed precision as Megatron-LM and apex O2 keep it: bf16 weights for the forward and
    backward, fp32 master weights and Adam moments in the optimizer, which writes the new bf16
    weights (no per-layer casts in the step). Weights and optimizer state are replicated over
    'data'; the bf16 gradients are all-reduced over 'data' (ZeRO 0)."""
    tp, dp = mesh.shape["model"], mesh.shape["data"]
    cfg.check(tp, dp)
    model = Llama(cfg, mesh)
    tx = optax.adamw(cfg.learning_rate, weight_decay=0.1)
    master, specs = _abstract_params(model, cfg, mesh)
    params = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, cfg.dtype, sharding=x.sharding), master
    )
    opt_shapes = jax.eval_shape(tx.init, master)
    opt_specs = optax.tree_map_params(
        tx,
        lambda _, spec: spec,
        opt_shapes,
        specs,
        transform_non_params=lambda _: P(),
        is_leaf=lambda x: isinstance(x, P),
    )
    named = lambda tree: jax.tree.map(  # noqa: E731
        lambda s: NamedSharding(mesh, s), tree, is_leaf=lambda x: isinstance(x, P)
    )
    opt_state = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        opt_shapes,
        named(opt_specs),
    )
    data = NamedSharding(mesh, P("data", None))
    tokens = jax.ShapeDtypeStruct((cfg.batch, cfg.seq_len), jnp.int32, sharding=data)
    positions = jnp.arange(cfg.seq_len, dtype=jnp.int32)

    def loss_fn(p, tokens, targets):
        logits, _ = model.apply({"params": p}, tokens, positions)
        lse = jax.nn.logsumexp(logits, axis=-1)
        onehot = jax.nn.one_hot(targets, cfg.vocab, dtype=logits.dtype)
        return jnp.mean(lse - jnp.sum(logits * onehot, axis=-1))

    def train_step(params, master, opt_state, tokens, targets):
        loss, grads = jax.value_and_grad(loss_fn)(params, tokens, targets)
        grads = jax.tree.map(lambda g: g.astype(jnp.float32), grads)
        updates, opt_state = tx.update(grads, opt_state, master)
        master = optax.apply_updates(master, updates)
        params = jax.tree.map(lambda w: w.astype(cfg.dtype), master)
        return params, master, opt_state, loss

    fn = jax.jit(
        train_step,
        in_shardings=(named(specs), named(specs), named(opt_specs), data, data),
        out_shardings=(named(specs), named(specs), named(opt_specs), NamedSharding(mesh, P())),
        donate_argnums=(0, 1, 2),
    )
    return fn, (params, master, opt_state, tokens, tokens)


def build_decode(cfg: Config, mesh) -> tuple[Any, tuple]:
    """(decode_step, (params, k_cache, v_cache, tokens, pos)): one greedy token for each of
    `cfg.batch` sequences against a KV cache of `cfg.context` tokens; bf16 weights, batch
    over 'data', heads over 'model'."""
    tp, dp = mesh.shape["model"], mesh.shape["data"]
    cfg.check(tp, dp)
    model = Llama(cfg, mesh)
    params, specs = _abstract_params(model, cfg, mesh, dtype=cfg.dtype)
    cache_spec = NamedSharding(mesh, P(None, "data", None, "model", None))
    shape = (cfg.n_layers, cfg.batch, cfg.context, cfg.n_kv_heads, cfg.d_head)
    cache = jax.ShapeDtypeStruct(shape, cfg.dtype, sharding=cache_spec)
    data = NamedSharding(mesh, P("data", None))
    tokens = jax.ShapeDtypeStruct((cfg.batch, 1), jnp.int32, sharding=data)
    pos = jax.ShapeDtypeStruct((), jnp.int32, sharding=NamedSharding(mesh, P()))

    def decode_step(params, k_cache, v_cache, tokens, pos):
        positions = jnp.reshape(pos, (1,))
        logits, (k, v) = model.apply({"params": params}, tokens, positions, (k_cache, v_cache, pos))
        return jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32), k, v

    named = jax.tree.map(
        lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda x: isinstance(x, P)
    )
    fn = jax.jit(
        decode_step,
        in_shardings=(named, cache_spec, cache_spec, data, NamedSharding(mesh, P())),
        out_shardings=(NamedSharding(mesh, P("data")), cache_spec, cache_spec),
        donate_argnums=(1, 2),
    )
    return fn, (params, cache, cache, tokens, pos)


# ----------------------------------------------------------------------------- builders

#: the model of the README example and of experiments/program_consistency.py: Llama 3 8B
LLAMA3_8B = dict(n_layers=32, d_model=4096, n_heads=32, n_kv_heads=8, d_ff=14336, vocab=128256)


def _config(size: str, overrides: dict) -> Config:
    base = {"tiny": {}, "8b": LLAMA3_8B}
    if size not in base:
        raise ValueError(f"unknown size '{size}'; known: {', '.join(base)}.")
    fields = {f.name for f in dataclasses.fields(Config)}
    unknown = set(overrides) - fields
    if unknown:
        raise ValueError(f"unknown Config field(s) {sorted(unknown)}; known: {sorted(fields)}.")
    return Config(**{**base[size], **overrides})


def _degrees(tp: int | None) -> tuple[int, int]:
    n = jax.device_count()
    tp = min(8, n) if tp is None else int(tp)
    if tp < 1 or n % tp:
        raise ValueError(f"tp={tp} must divide the {n} devices.")
    return tp, n // tp


def train(size: str = "tiny", tp: int | None = None, **overrides):
    """Builder: the train step on all devices of this process, tp-way tensor parallel
    (default min(8, devices)) x data parallel over the rest. `size` "tiny" or "8b"; keyword
    overrides set Config fields (e.g. seq_len=2048, batch=64)."""
    tp, dp = _degrees(tp)
    return build_train(_config(size, overrides), make_mesh(tp=tp, dp=dp))


def decode(size: str = "tiny", tp: int | None = None, **overrides):
    """Builder: the decode step (see `train` for the arguments)."""
    tp, dp = _degrees(tp)
    return build_decode(_config(size, overrides), make_mesh(tp=tp, dp=dp))


def example_batch(cfg: Config, seed: int = 0) -> np.ndarray:
    """Random tokens (batch, seq_len) for running the train step for real."""
    return np.random.default_rng(seed).integers(0, cfg.vocab, (cfg.batch, cfg.seq_len), np.int32)
