"""JAX frontend: `sparse_sageattn` launching the core kernels through jax-triton on CUDA (imported lazily),
a pure-JAX path elsewhere, a Flax `attention_fn` adapter and a shard_map wrapper."""
from .attention import CAPABILITY_ENV, sparse_sageattn

__all__ = ["sparse_sageattn", "CAPABILITY_ENV"]
