"""Model descriptions and their parameters, FLOPs and KV cache.

Decoder-only transformers with MHA/GQA/MQA or DeepSeek MLA attention, a GELU (2 matrices)
or SwiGLU (3 matrices) FFN, and optional MoE layers (routed and shared experts, a router).
Counts are parameters (elements) or per token unless stated; all quantities are float32
leaves so a sweep over models is one compiled function.

>>> m = example_model()
>>> round(float(params_total(m)) / 1e9, 1)   # Llama 3 8B
8.0
>>> round(float(model_flops_per_token(m, 8192.0)) / 1e9)   # 6N + 12 l s d_attn
58
"""

from __future__ import annotations

from emu._backend import jnp
from emu.compute import windowed_causal_fraction
from emu.numerics import safe_div
from emu.struct import dataclass, error, field, static_field

__all__ = [
    "Model",
    "FFN_KINDS",
    "ATTENTION_KINDS",
    "attn_dims",
    "ffn_mats",
    "params_attention",
    "kv_cache_bytes_per_token",
    "windowed_share",
    "causal_pair_fraction",
    "attended_context",
    "n_moe_layers",
    "n_dense_ffn_layers",
    "params_expert",
    "params_moe_ffn",
    "params_moe_ffn_active",
    "params_ffn",
    "params_per_layer",
    "params_embedding",
    "params_total",
    "params_active",
    "attention_flops_dims",
    "model_flops_per_token",
    "example_model",
]

Array = jnp.ndarray
#: FFN kind -> weight matrices per FFN (GELU: up, down; SwiGLU: gate, up, down)
FFN_KINDS = {"gelu": 2.0, "swiglu": 3.0}
#: attention kinds: "gqa" (MHA/GQA/MQA) and "mla" (DeepSeek multi-head latent attention)
ATTENTION_KINDS = ("gqa", "mla")


@dataclass
class Model:
    """A decoder-only transformer (counts and widths as float32 leaves; bounds beside each
    field). MoE fields are 0 for dense models; MLA fields are 0 for GQA attention. Rules
    across fields: `n_kv_heads` divides `n_heads`; MLA needs `kv_lora_rank` and `v_head_dim`;
    an MoE model has 1 <= `top_k` <= `n_experts`, `d_ff_expert` > 0 and fewer dense layers
    than layers.
    """

    name: str = static_field()
    ffn: str = field(
        static=True,
        default="swiglu",
        choices=FFN_KINDS,
        help='"gelu" (up, down) or "swiglu" (gate, up, down)',
    )
    attention: str = field(
        static=True,
        default="gqa",
        choices=ATTENTION_KINDS,
        help='"gqa" (MHA/GQA/MQA) or "mla" (DeepSeek multi-head latent attention)',
    )
    tied_embeddings: bool = static_field(default=False)
    n_layers: Array = field("[1, 1e4]", integer=True, help="transformer blocks")
    d_model: Array = field("[1, 1e6]", integer=True, help="hidden width")
    n_heads: Array = field("[1, 1e5]", integer=True, help="query heads")
    n_kv_heads: Array = field("[1, 1e5]", integer=True, help="key/value heads (divides n_heads)")
    d_head: Array = field(
        "(0, 1e5]", help="per-head dimension (MLA: the no-RoPE query/key head dim)"
    )
    d_ff: Array = field("[1, 1e7]", integer=True, help="FFN width of the dense layers")
    vocab: Array = field("[1, 1e8]", integer=True, help="vocabulary size")
    n_experts: Array = field("[0, 1e5]", integer=True, help="routed experts (0 = dense)")
    top_k: Array = field("[0, 1e3]", integer=True, help="routed experts per token")
    d_ff_expert: Array = field("[0, 1e7]", help="FFN width of one expert")
    n_shared_experts: Array = field("[0, 1e3]", integer=True, help="always-active experts")
    n_dense_layers: Array = field("[0, 1e4]", integer=True, help="leading dense FFN layers")
    q_lora_rank: Array = field("[0, 1e6]", help="MLA query compression rank (0 = none)")
    kv_lora_rank: Array = field("[0, 1e6]", help="MLA key/value latent width")
    rope_head_dim: Array = field("[0, 1e5]", help="MLA decoupled RoPE key/query width")
    v_head_dim: Array = field("[0, 1e5]", help="MLA value head dim")
    mtp_layers: Array = field(
        "[0, 100]",
        integer=True,
        help="multi-token-prediction modules (training cost; draft tokens in decode)",
    )
    route_max_nodes: Array = field(
        "[0, 1e5]",
        integer=True,
        help="node-limited routing: nodes a token reaches at most (DeepSeek-V3: 4; 0 = any)",
    )
    attention_window: Array = field(
        "[0, 1e8]",
        integer=True,
        help="sliding-window attention: keys a query of a windowed layer attends to, itself "
        "included (Mistral 7B v0.1: 4096; 0 = no window)",
    )
    window_layers: Array = field(
        "[0, 1e4]",
        integer=True,
        help="layers with the sliding window; the others attend to their whole context "
        "(gpt-oss: 18 of 36, Gemma 2: half)",
    )

    def _cross_check(self, where: str, at: str) -> None:
        f = lambda name: float(getattr(self, name))
        if self.attention == "mla" and (f("kv_lora_rank") <= 0 or f("v_head_dim") <= 0):
            raise error(where, f'{at}attention = "mla" needs kv_lora_rank > 0 and v_head_dim > 0.')
        if f("n_experts") > 0:
            if not 1 <= f("top_k") <= f("n_experts"):
                raise error(
                    where,
                    f"{at}top_k={f('top_k'):g} must be between 1 and "
                    f"{at}n_experts={f('n_experts'):g}.",
                )
            if f("d_ff_expert") <= 0:
                raise error(where, f"{at}d_ff_expert must be > 0 in an MoE model.")
            if f("n_dense_layers") >= f("n_layers"):
                raise error(
                    where,
                    f"{at}n_dense_layers={f('n_dense_layers'):g} must be < "
                    f"{at}n_layers={f('n_layers'):g}.",
                )
        if (f("attention_window") > 0) != (f("window_layers") > 0):
            raise error(
                where,
                f"{at}attention_window={f('attention_window'):g} and "
                f"{at}window_layers={f('window_layers'):g}: set both (a sliding window and the "
                "layers that use it) or neither.",
            )
        if f("window_layers") > f("n_layers"):
            raise error(
                where,
                f"{at}window_layers={f('window_layers'):g} must be <= "
                f"{at}n_layers={f('n_layers'):g}.",
            )
        heads, kv = f("n_heads"), f("n_kv_heads")
        if kv > heads or heads % kv:
            raise error(where, f"{at}n_kv_heads={kv:g} must divide {at}n_heads={heads:g}.")


def attn_dims(model: Model):
    """(d_q, d_kv) = (n_heads d_head, n_kv_heads d_head): widths of the query and of each of
    the key and value projections (elements)."""
    return model.n_heads * model.d_head, model.n_kv_heads * model.d_head


def ffn_mats(model: Model) -> float:
    """Weight matrices per FFN: 2 (GELU) or 3 (SwiGLU)."""
    return FFN_KINDS[model.ffn]


def params_attention(model: Model):
    """Weights of one attention block. GQA: d (d_q + 2 d_kv) + d_q d. MLA (DeepSeek-V2 §2.1):
    query down/up projections (or a full one without q_lora_rank), the joint KV down
    projection to kv_lora_rank + rope_head_dim, the KV up projection to H (d_head +
    v_head_dim), and the output H v_head_dim d."""
    d = model.d_model
    if model.attention == "mla":
        h = model.n_heads
        qk = model.d_head + model.rope_head_dim
        q = jnp.where(
            model.q_lora_rank > 0,
            d * model.q_lora_rank + model.q_lora_rank * h * qk,
            d * h * qk,
        )
        kv = d * (model.kv_lora_rank + model.rope_head_dim) + model.kv_lora_rank * h * (
            model.d_head + model.v_head_dim
        )
        return q + kv + h * model.v_head_dim * d
    d_q, d_kv = attn_dims(model)
    return d * (d_q + 2.0 * d_kv) + d_q * d


def kv_cache_bytes_per_token(model: Model, bytes_per_element=2.0):
    """KV-cache bytes one token adds per layer: 2 * n_kv_heads * d_head elements (GQA), or the
    compressed latent plus the RoPE key, kv_lora_rank + rope_head_dim (MLA), of
    `bytes_per_element` each (2 bf16; a plan's `kv_precision` leaf holds its own)."""
    if model.attention == "mla":
        return (model.kv_lora_rank + model.rope_head_dim) * bytes_per_element
    return 2.0 * model.n_kv_heads * model.d_head * bytes_per_element


def windowed_share(model: Model):
    """Share of the layers with a sliding attention window (0 without one). It switches on
    at attention_window > 0, so the gradient in the window is 0 at 0 (no window): a search
    cannot grow a window from none."""
    return jnp.where(model.attention_window > 0, safe_div(model.window_layers, model.n_layers), 0.0)


def causal_pair_fraction(model: Model, s_kv):
    """Mean over the layers of the query-key pairs a causal pass over `s_kv` tokens scores,
    as a fraction of s_kv^2: 1/2 for full attention, `compute.windowed_causal_fraction` for
    a window of w keys."""
    share = windowed_share(model)
    return (1.0 - share) * 0.5 + share * windowed_causal_fraction(model.attention_window, s_kv)


def attended_context(model: Model, context):
    """Mean over the layers of the cached tokens a decode query reads (and a sequence keeps)
    at `context` tokens: windowed layers hold at most attention_window of them."""
    share = windowed_share(model)
    return (1.0 - share) * context + share * jnp.minimum(context, model.attention_window)


def n_moe_layers(model: Model):
    """Layers with an MoE FFN: n_layers - n_dense_layers for MoE models, else 0."""
    return jnp.where(model.n_experts > 0, model.n_layers - model.n_dense_layers, 0.0)


def n_dense_ffn_layers(model: Model):
    """Layers with a dense FFN: n_layers - n_moe_layers."""
    return model.n_layers - n_moe_layers(model)


def params_expert(model: Model):
    """Weights of one expert FFN: mats d_model d_ff_expert."""
    return ffn_mats(model) * model.d_model * model.d_ff_expert


def params_moe_ffn(model: Model):
    """FFN weights of one MoE layer: routed + shared experts + router."""
    return (model.n_experts + model.n_shared_experts) * params_expert(model) + (
        model.d_model * model.n_experts
    )


def params_moe_ffn_active(model: Model):
    """FFN weights one token touches in an MoE layer: top_k routed + shared experts +
    router."""
    return (model.top_k + model.n_shared_experts) * params_expert(model) + (
        model.d_model * model.n_experts
    )


def params_ffn(model: Model):
    """Weights of one dense FFN: mats d_model d_ff."""
    return ffn_mats(model) * model.d_model * model.d_ff


def params_per_layer(model: Model):
    """Average weights of one layer: attention, FFN (dense or MoE) and the two norms."""
    ffn = safe_div(
        n_dense_ffn_layers(model) * params_ffn(model) + n_moe_layers(model) * params_moe_ffn(model),
        model.n_layers,
    )
    return params_attention(model) + ffn + 2.0 * model.d_model


def params_embedding(model: Model):
    """Input embedding plus output head (one matrix if tied)."""
    n = 1.0 if model.tied_embeddings else 2.0
    return n * model.vocab * model.d_model


def params_total(model: Model):
    """All weights: n_layers per-layer weights + embeddings + the final norm (d_model)."""
    return model.n_layers * params_per_layer(model) + params_embedding(model) + model.d_model


def params_active(model: Model):
    """Matmul weights one token touches: attention, FFN (MoE layers: top_k routed + shared
    experts + router) and the output head (vocab d_model; the input embedding is a lookup,
    and norms are not matmuls)."""
    ffn = n_dense_ffn_layers(model) * params_ffn(model) + n_moe_layers(model) * (
        params_moe_ffn_active(model)
    )
    return model.n_layers * params_attention(model) + ffn + model.vocab * model.d_model


def attention_flops_dims(model: Model):
    """(d_qk, d_v) head widths that set the s^2 attention FLOPs: (d_head, d_head) for GQA;
    (d_head + rope_head_dim, v_head_dim) for MLA."""
    if model.attention == "mla":
        return model.d_head + model.rope_head_dim, model.v_head_dim
    return model.d_head, model.d_head


def model_flops_per_token(model: Model, seq_len):
    """Training model FLOPs per token, no recomputation (PaLM appendix B convention):
    6 * (active matmul params + output head) + 6 * n_layers * seq_len * H * (d_qk + d_v)
    (= 12 l s d_q for standard attention)."""
    qk, v = attention_flops_dims(model)
    # params_active counts the output head (vocab x d_model) once; the input embedding is a
    # lookup, not a matmul
    attn = 6.0 * model.n_layers * seq_len * model.n_heads * (qk + v)
    return 6.0 * params_active(model) + attn


def example_model() -> Model:
    """Llama 3 8B (arXiv:2407.21783 Table 3), for examples and tests."""
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
        q_lora_rank=f(0),
        kv_lora_rank=f(0),
        rope_head_dim=f(0),
        v_head_dim=f(0),
        mtp_layers=f(0),
        route_max_nodes=f(0),
        attention_window=f(0),
        window_layers=f(0),
    )
