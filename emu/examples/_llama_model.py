"""The reference Llama's layers (private; public through `emu.examples.llama`): RMSNorm, the
decoder block in Megatron's tensor-parallel layout, the vocab-parallel embedding and the
model (layers as one `nn.scan`).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from emu.examples._llama_attention import decode_attention, flash_attention, rope
from emu.examples._llama_config import Config

__all__ = ["RMSNorm", "Block", "Llama"]


def _init(scale: float = 0.02):
    return nn.initializers.normal(stddev=scale)


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + 1e-5) x scale, in fp32, returned in the compute dtype."""

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
        q, k = rope(q, positions, cfg.rope_theta), rope(k, positions, cfg.rope_theta)
        if cache is None:
            o = flash_attention(q, k, v, True)
            new_cache = None
        else:
            k_cache, v_cache, pos = cache
            k_cache = jax.lax.dynamic_update_slice_in_dim(k_cache, k, pos, axis=1)
            v_cache = jax.lax.dynamic_update_slice_in_dim(v_cache, v, pos, axis=1)
            o = decode_attention(q, k_cache, v_cache, pos)
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
