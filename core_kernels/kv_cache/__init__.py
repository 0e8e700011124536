"""The INT8 KV cache op: appending tokens (append.py: K quantized per 64-key block against a smoothing vector fixed
at the first fill; V as given or FP8 e4m3) and the plans (plan.py) of appending and of attention over the cache
(the attention op's split-KV kernel reading INT8 keys)."""
from .plan import (V_FORMATS, attend_arrays, cache_arrays, cache_buffers, make_append_plan, make_attend_plan,
                   updated, v_format_of, validate_cache)

__all__ = ["V_FORMATS", "attend_arrays", "cache_arrays", "cache_buffers", "make_append_plan", "make_attend_plan",
           "updated", "v_format_of", "validate_cache"]
