"""Reference JAX programs that `emu.program` reads (`emu program emu/examples/llama.py:train`).

`llama`: a Llama-style decoder in flax.linen with an optax AdamW train step and a KV-cache
decode step, sharded data x tensor (Megatron) parallel over a `jax.make_mesh` mesh.
"""

__all__ = ["llama"]
