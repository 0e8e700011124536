"""Per-sequence key counts: `kv_lens[b]` valid keys in batch row b of a preallocated (static) cache.

Every kernel that reads keys asks `_valid_keys` how many of batch row b's n_k exist; keys at or past it are
never loaded (they may hold anything, NaN included) and never contribute. Without kv_lens it is n_k itself.
"""
import triton
import triton.language as tl


@triton.jit
def _valid_keys(kv_lens_ptr, b, n_k, HAS_KV_LENS: tl.constexpr):
    """kv_lens[b] clamped to [0, n_k] (a device value: no host check can see it), or n_k."""
    if HAS_KV_LENS:
        return tl.minimum(tl.maximum(tl.load(kv_lens_ptr + b), 0), n_k)
    else:
        return n_k
