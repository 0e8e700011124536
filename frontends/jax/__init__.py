"""JAX frontend: `sparse_sageattn` launching the core kernels through jax-triton on CUDA (imported lazily, only
where that path is lowered), a pure-JAX path on other backends, a Flax `attention_fn` adapter, a shard_map
wrapper, static block-mask builders, a predicted block mask, and an INT8 KV cache for decoding, its values kept
as given or in FP8 e4m3 (`Int8KVCache`: `init_cache`, then `cache_append` returns the updated cache and
`cache_attend` attends over it; kv_cache.py)."""
from ._launch import CAPABILITY_ENV
from .attention import sparse_sageattn
from .flax_adapter import attention_fn
from .kv_cache import Int8KVCache, init_cache
from .kv_cache import append as cache_append
from .kv_cache import attend as cache_attend
from .masks import causal_mask, sink_mask, sliding_window_mask, union_mask
from .predict import predict_mask
from .sharding import sharded_sparse_sageattn

__all__ = [
    "sparse_sageattn", "attention_fn", "sharded_sparse_sageattn", "CAPABILITY_ENV", "causal_mask",
    "sliding_window_mask", "sink_mask", "union_mask", "predict_mask", "Int8KVCache", "init_cache", "cache_append",
    "cache_attend",
]
