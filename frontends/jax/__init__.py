"""JAX frontend: `sparse_sageattn` launching the core kernels through jax-triton on CUDA (imported lazily, only
where that path is lowered), a pure-JAX path on other backends, a Flax `attention_fn` adapter, a shard_map
wrapper, static block-mask builders and a predicted block mask."""
from ._launch import CAPABILITY_ENV
from .attention import sparse_sageattn
from .flax_adapter import attention_fn
from .masks import causal_mask, sink_mask, sliding_window_mask, union_mask
from .predict import predict_mask
from .sharding import sharded_sparse_sageattn

__all__ = [
    "sparse_sageattn", "attention_fn", "sharded_sparse_sageattn", "CAPABILITY_ENV", "causal_mask",
    "sliding_window_mask", "sink_mask", "union_mask", "predict_mask",
]
