"""JAX frontend: `sparse_sageattn` launching the core kernels through jax-triton on CUDA (imported lazily, only
where that path is lowered), a pure-JAX path on other backends, a Flax `attention_fn` adapter and a shard_map
wrapper."""
from .attention import CAPABILITY_ENV, sparse_sageattn
from .flax_adapter import attention_fn
from .sharding import sharded_sparse_sageattn

__all__ = ["sparse_sageattn", "attention_fn", "sharded_sparse_sageattn", "CAPABILITY_ENV"]
