"""The INT8 KV cache op: appending tokens (append.py: K quantized per 64-key block against a smoothing vector fixed
at the first fill) and the plans (plan.py) of appending and of attention over the cache (the attention op's
split-KV kernel reading INT8 keys)."""
from .plan import (ATTEND_ARRAYS, CACHE_ARRAYS, UPDATED, cache_buffers, make_append_plan, make_attend_plan,
                   validate_cache)

__all__ = ["ATTEND_ARRAYS", "CACHE_ARRAYS", "UPDATED", "cache_buffers", "make_append_plan", "make_attend_plan",
           "validate_cache"]
