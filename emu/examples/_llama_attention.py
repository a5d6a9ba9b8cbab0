"""The reference Llama's attention (private; public through `emu.examples.llama`): a
flash-style causal attention with a recomputing backward, a KV-cache decode attention, and
rotary position embeddings.

Each kernel runs under a `jax.named_scope("emu_kernel[name(,causal)]")`, the scope that
`emu.program.fused_kernel` makes, so that the emulator charges it as one fused kernel whose
scores never reach HBM (as cuDNN/FlashAttention/splash kernels run on the target). The
backward recomputes the scores from Q, K, V, O and the log-sum-exp: 5 matmuls against the
forward's 2 (FlashAttention-2, Dao 2023).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

__all__ = ["flash_attention", "decode_attention", "rope"]


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


def decode_attention(q, k_cache, v_cache, pos):
    """One query token per sequence against a KV cache whose first pos+1 entries are valid."""
    with _kernel_scope("decode_attention", False):
        s = _scores(q, k_cache, False, 0)
        valid = jnp.arange(k_cache.shape[1]) <= pos
        s = jnp.where(valid, s, -1e30)
        p = jax.nn.softmax(s, axis=-1).astype(v_cache.dtype)
        return jnp.einsum("bkgst,btkd->bskgd", p, v_cache)


def rope(x, positions, theta):
    """Rotary position embedding (Su et al. 2021) as in Llama: rotate the pairs (first half,
    second half) of x (b, s, ..., dh) by positions x theta^(-2i/dh), in fp32."""
    dh = x.shape[-1]
    freq = 1.0 / (theta ** (jnp.arange(0, dh, 2, dtype=jnp.float32) / dh))
    ang = positions[:, None].astype(jnp.float32) * freq[None, :]  # (s, dh/2)
    shape = (1, ang.shape[0]) + (1,) * (x.ndim - 3) + (dh // 2,)
    cos, sin = jnp.cos(ang).reshape(shape), jnp.sin(ang).reshape(shape)
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)
