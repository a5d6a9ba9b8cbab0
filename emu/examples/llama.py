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

Pieces: `_llama_config` (Config, the same model for `emu.load_model`), `_llama_attention`
(flash and decode attention, rotary embeddings), `_llama_model` (RMSNorm, Block, Llama); this
module builds the sharded train and decode steps and the builders below.

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
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from emu.examples._llama_attention import flash_attention
from emu.examples._llama_config import Config, emu_model_dict, emu_model_toml, params_count
from emu.examples._llama_model import Llama

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
