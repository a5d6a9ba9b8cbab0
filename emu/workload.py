"""Model descriptions and their per-layer FLOPs, parameters and activations.

Dense transformers with MHA or GQA attention (`n_kv_heads` <= `n_heads`) and a GELU
(2 matrices) or SwiGLU (3 matrices) FFN. Counts are per token unless stated; all
quantities are float32 leaves so a sweep over models is one compiled function.

>>> m = example_model()
>>> round(float(params_total(m)) / 1e9, 1)   # Llama 3 8B
8.0
>>> round(float(model_flops_per_token(m, 8192.0)) / 1e9)   # 6N + 12 l s d_attn
58
"""

from __future__ import annotations

import jax.numpy as jnp

from emu.struct import dataclass, static_field

__all__ = [
    "Model",
    "FFN_KINDS",
    "attn_dims",
    "params_per_layer",
    "params_embedding",
    "params_total",
    "model_flops_per_token",
    "example_model",
]

Array = jnp.ndarray
FFN_KINDS = {"gelu": 2.0, "swiglu": 3.0}


@dataclass
class Model:
    """A decoder-only transformer.

    `ffn` is "gelu" (up, down) or "swiglu" (gate, up, down). `d_head` is the per-head
    dimension (often d_model / n_heads). `tied_embeddings` shares the input embedding and the
    output head. MoE fields (`n_experts`, `top_k`, `d_ff_expert`, `n_shared_experts`,
    `n_dense_layers`) are 0 for dense models.
    """

    name: str = static_field()
    ffn: str = static_field(default="swiglu")
    tied_embeddings: bool = static_field(default=False)
    n_layers: Array
    d_model: Array
    n_heads: Array
    n_kv_heads: Array
    d_head: Array
    d_ff: Array
    vocab: Array
    n_experts: Array
    top_k: Array
    d_ff_expert: Array
    n_shared_experts: Array
    n_dense_layers: Array


def attn_dims(model: Model):
    """(d_q, d_kv): widths of the query and of each of key and value projections."""
    return model.n_heads * model.d_head, model.n_kv_heads * model.d_head


def ffn_mats(model: Model) -> float:
    return FFN_KINDS[model.ffn]


def params_attention(model: Model):
    d_q, d_kv = attn_dims(model)
    return model.d_model * (d_q + 2.0 * d_kv) + d_q * model.d_model


def params_ffn(model: Model):
    return ffn_mats(model) * model.d_model * model.d_ff


def params_per_layer(model: Model):
    """Weights of one layer: attention, FFN and the two norms."""
    return params_attention(model) + params_ffn(model) + 2.0 * model.d_model


def params_embedding(model: Model):
    """Input embedding plus output head (one matrix if tied)."""
    n = 1.0 if model.tied_embeddings else 2.0
    return n * model.vocab * model.d_model


def params_total(model: Model):
    return model.n_layers * params_per_layer(model) + params_embedding(model) + model.d_model


def model_flops_per_token(model: Model, seq_len):
    """Training model FLOPs per token, no recomputation (PaLM appendix B convention):
    6 * (non-embedding params + output head) + 12 * n_layers * seq_len * d_q."""
    d_q, _ = attn_dims(model)
    n_matmul = model.n_layers * (params_attention(model) + params_ffn(model))
    head = model.vocab * model.d_model
    return 6.0 * (n_matmul + head) + 12.0 * model.n_layers * seq_len * d_q


def example_model() -> Model:
    """Llama 3 8B (arXiv:2407.21783 Table 3)."""
    f = jnp.float32
    return Model(
        name="llama3-8b",
        ffn="swiglu",
        n_layers=f(32),
        d_model=f(4096),
        n_heads=f(32),
        n_kv_heads=f(8),
        d_head=f(128),
        d_ff=f(14336),
        vocab=f(128256),
        n_experts=f(0),
        top_k=f(0),
        d_ff_expert=f(0),
        n_shared_experts=f(0),
        n_dense_layers=f(0),
    )
