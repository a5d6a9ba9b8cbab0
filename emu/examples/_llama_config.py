"""The reference Llama's configuration (private; public through `emu.examples.llama`): model
and batch sizes, and the same model in emu's catalog form (`emu.load_model`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

__all__ = ["Config", "emu_model_dict", "emu_model_toml", "params_count"]


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
        """Width of one attention head: d_model / n_heads."""
        return self.d_model // self.n_heads

    def check(self, tp: int, dp: int) -> Config:
        """Itself, or a one-line ValueError when tp or dp does not divide what it shards."""
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
    """Parameters of the model: per layer the fused QKV (d x (h + 2 kv) x d_head), the output
    projection (h d_head x d), SwiGLU (3 d d_ff) and two RMSNorm scales (2 d); an untied
    embedding and head (2 vocab d) and the final norm (d)."""
    d, dh = cfg.d_model, cfg.d_head
    attn = d * (cfg.n_heads + 2 * cfg.n_kv_heads) * dh + cfg.n_heads * dh * d
    layer = attn + 3 * d * cfg.d_ff + 2 * d
    return cfg.n_layers * layer + 2 * cfg.vocab * d + d
