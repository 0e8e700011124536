"""An INT8 KV cache for JAX: K kept quantized as it grows, attention reading it as it is. Functional: append
returns the updated cache. Exported by sparse_sageattn.jax as Int8KVCache, init_cache, cache_append (append) and
cache_attend (attend).

    cache = init_cache(batch, heads_kv, capacity, head_dim, jnp.bfloat16)   # v_format="e4m3": FP8 values
    cache = cache_append(cache, k_prompt, v_prompt)      # first fill: fixes K's smoothing vector (the keys' mean)
    out = sparse_sageattn(q, k_prompt, v_prompt, is_causal=True)   # prefill attention: the plain call

    @functools.partial(jax.jit, donate_argnums=0)        # donated: XLA updates the cache's buffers in place
    def step(cache, q, k, v):
        cache = cache_append(cache, k, v)                # quantizes only the new tokens' blocks
        return cache, cache_attend(cache, q, is_causal=True)

Without donation XLA copies every array of the cache on each append (the old cache stays valid), which costs a
pass over the cache per step. Per token and kv head the cache holds D int8 keys and D values: in the cache's
dtype (v_format="native": 0.75x a bf16 cache's K+V bytes) or as FP8 e4m3 with a power-of-two scale per 64-key
block and channel (v_format="e4m3": about 0.51x), plus one fp32 scale per 64 keys and fixed 64-token
full-precision tails. The arrays (core_kernels/kv_cache/append.py says what each holds) are the fields of
`Int8KVCache`, a pytree: it goes through jit, vmap (every array's batch axis absorbs the mapped axis) and
tree_util like any. On CUDA both ops launch the core kernels through jax-triton (bitwise equal to the torch
frontend's Int8KVCache); elsewhere cpu_path.py's pure-JAX path runs. jax.grad is refused.
"""
import dataclasses
import functools

import jax
import jax.numpy as jnp

from sparse_sageattn.core_kernels import kv_cache

from . import cpu_path
from ._launch import PlanOp, describe, sm_count
from .attention import _fold

_NO_GRAD = (
    "sparse_sageattn: the INT8 KV cache is not differentiable; jax.grad / jax.vjp / jax.jvp cannot go through "
    "cache_append or cache_attend (apply jax.lax.stop_gradient to what they take)"
)


# The fields hold every format's arrays; a native cache's v_exp and v_tail are None (no leaves).
@functools.partial(jax.tree_util.register_dataclass, data_fields=list(kv_cache.cache_arrays("e4m3")),
                   meta_fields=["filled"])
@dataclasses.dataclass(frozen=True)
class Int8KVCache:
    """One layer's INT8 KV cache of `capacity` tokens (a multiple of 64) per batch row; make it with init_cache.

    k_int8 (B, Hkv, capacity, D) int8, k_scale (B, Hkv, capacity / 64) float32, k_mean (B, Hkv, D) float32,
    k_tail (B, Hkv, 64, D) in the cache's dtype, lens (B,) int32: each row's tokens. v_format "native":
    v_cache (B, Hkv, capacity, D) in the cache's dtype, v_exp and v_tail None. v_format "e4m3": v_cache
    (B, Hkv, capacity / 64, D, 64) uint8, the e4m3 bits of V / 2**v_exp, each 64-key block transposed (a
    channel's keys contiguous, as the kernel's P.V reads them); v_exp (B, Hkv, capacity / 64, D) int8, per block
    and channel the smallest exponent that keeps the block's values within e4m3's range; v_tail (B, Hkv, 64, D)
    in the cache's dtype, the values of the last, partly filled block, from which it is quantized again as it
    fills. Rows may differ: `dataclasses.replace(cache, lens=...)` moves rows back (rejected draft tokens), to
    a multiple of 64 or within the block of the row's last token -- the tails keep only that block's tokens,
    which the next append quantizes again. filled (static): False until the first append, which computes K's
    smoothing vector from its keys.
    """
    k_int8: jax.Array
    k_scale: jax.Array
    k_mean: jax.Array
    k_tail: jax.Array
    v_cache: jax.Array
    lens: jax.Array
    v_exp: jax.Array | None = None
    v_tail: jax.Array | None = None
    filled: bool = False

    @property
    def v_format(self) -> str:
        return "native" if self.v_exp is None else "e4m3"

    @property
    def arrays(self) -> dict:
        """name -> array, in kv_cache.cache_arrays(v_format) order."""
        return {name: getattr(self, name) for name in kv_cache.cache_arrays(self.v_format)}

    @property
    def capacity(self) -> int:
        return self.k_int8.shape[2]

    @property
    def dtype(self):
        return self.k_tail.dtype


def init_cache(batch, heads_kv, capacity, head_dim, dtype=jnp.float16, v_format="native") -> Int8KVCache:
    """An empty cache (zeros) of `capacity` tokens per batch row (a multiple of 64), for keys and values of
    `dtype` (float16 or bfloat16) with heads_kv heads of head_dim; values kept in `dtype` (v_format "native") or
    as FP8 e4m3 ("e4m3")."""
    buffers = kv_cache.cache_buffers(batch, heads_kv, capacity, head_dim, jnp.dtype(dtype).name, v_format)
    return Int8KVCache(**{name: jnp.full(buf.shape, buf.fill, jnp.dtype(buf.dtype)) for name, buf in buffers.items()})


def _check(where, cache, arrays):
    if not isinstance(cache, Int8KVCache):
        raise TypeError(f"{where}: cache must be an Int8KVCache (init_cache), got {type(cache).__name__}")
    missing = [name for name, x in cache.arrays.items() if x is None]
    if missing:
        raise ValueError(f"{where}: cache.{missing[0]} is None, but an e4m3 cache (v_exp set) holds "
                         f"{', '.join(kv_cache.cache_arrays('e4m3'))}")
    for name, x in arrays.items():
        if not isinstance(x, jax.Array):
            raise TypeError(f"{where}: {name} must be a jax.Array, got {type(x).__name__}")


@dataclasses.dataclass(frozen=True)
class _AppendOptions:
    tensor_layout: str
    first_fill: bool


def _append_plan(descs, options: _AppendOptions, capability=None):
    cache = {n: d for n, d in descs.items() if n not in ("k", "v")}
    return kv_cache.make_append_plan(descs["k"], descs["v"], cache, options.tensor_layout, options.first_fill)


def _append_pure_jax(*arrays, names, options: _AppendOptions):
    cache = dict(zip(names, arrays))
    k, v = cache.pop("k"), cache.pop("v")
    return tuple(cpu_path.cache_append(k, v, cache, **dataclasses.asdict(options)).values())


# One op per format, as the torch frontend's: each takes all of its format's arrays.
_APPENDS = {
    "native": PlanOp("sparse_sageattn_kv_cache_append", ("k", "v", *kv_cache.cache_arrays("native")), _append_plan,
                     _append_pure_jax, no_grad=_NO_GRAD),
    "e4m3": PlanOp("sparse_sageattn_kv_cache_append_e4m3", ("k", "v", *kv_cache.cache_arrays("e4m3")),
                   _append_plan, _append_pure_jax, no_grad=_NO_GRAD),
}


@functools.partial(jax.jit, static_argnames=("options",))
def _append_jitted(arrays, options: _AppendOptions):
    return _APPENDS[kv_cache.v_format_of(arrays)](arrays, options)


def append(cache: Int8KVCache, k, v, tensor_layout="HND") -> Int8KVCache:
    """The cache with k, v ((B, Hkv, n, D) for "HND", (B, n, Hkv, D) for "NHD", the cache's dtype) written
    after each row's lens[b] tokens; tokens past the capacity are dropped (lens stops there). Only the 64-key
    blocks the new tokens touch are quantized. The first append of a cache (filled=False) also fixes K's
    smoothing vector: the mean of its keys. Jitted (tensor_layout static); donate the cache to an enclosing
    jax.jit for an update in place (module docstring). An e4m3 cache quantizes the touched blocks' values again
    too (from v_tail and the new values), each at its own exponents."""
    _check("cache_append", cache, {"k": k, "v": v})
    options = _AppendOptions(tensor_layout, not cache.filled)
    arrays = {"k": k, "v": v, **cache.arrays}
    _append_plan({n: describe(x) for n, x in arrays.items()}, options)  # bad input fails here, before tracing
    updated = _append_jitted(arrays, options=options)
    return Int8KVCache(**dict(zip(cache.arrays, updated)),
                       filled=cache.filled or k.shape[2 if tensor_layout == "HND" else 1] > 0)


@dataclasses.dataclass(frozen=True)
class _AttendOptions:
    is_causal: bool
    tensor_layout: str
    sm_scale: float | None
    return_lse: bool


# The attend plan names its arrays as the attention op does: k is the cache's k_int8, v its v_cache, kv_lens its
# lens (v_exp: an e4m3 cache's only).
_ATTEND_ARRAYS = {"k": "k_int8", "v": "v_cache", "kv_lens": "lens", "k_scale": "k_scale", "k_mean": "k_mean",
                  "v_exp": "v_exp"}


def _attend_arrays(cache: Int8KVCache) -> dict:
    """The attend plan's name -> the cache's array, for the arrays of the cache's format."""
    arrays = cache.arrays
    return {plan_name: arrays[name] for plan_name, name in _ATTEND_ARRAYS.items() if name in arrays}


def _attend_plan(descs, options: _AttendOptions, capability=None):
    cache = {name: descs[plan_name] for plan_name, name in _ATTEND_ARRAYS.items() if plan_name in descs}
    return kv_cache.make_attend_plan(descs["q"], cache, descs.get("mask_id"), options.is_causal,
                                     options.tensor_layout, options.sm_scale, options.return_lse, capability,
                                     num_sms=None if capability is None else sm_count())


def _attend_pure_jax(*arrays, names, options: _AttendOptions):
    named = dict(zip(names, arrays))
    return cpu_path.attention(named["q"], named["k"], named["v"], named.get("mask_id"), named["kv_lens"],
                              is_causal=options.is_causal, tensor_layout=options.tensor_layout,
                              sm_scale=options.sm_scale, smooth_k=True, return_lse=options.return_lse,
                              k_scale=named["k_scale"], k_mean=named["k_mean"], v_exp=named.get("v_exp"))


_attend = PlanOp("sparse_sageattn_kv_cache_attend",
                 ("q", "k", "v", "mask_id", "kv_lens", "k_scale", "k_mean", "v_exp"),
                 _attend_plan, _attend_pure_jax, _fold, _NO_GRAD,
                 n_returned=lambda options: 2 if options.return_lse else 1)


@functools.partial(jax.jit, static_argnames=("options",))
def _attend_jitted(arrays, options: _AttendOptions):
    return _attend(arrays, options)


def attend(cache: Int8KVCache, q, mask_id=None, is_causal=False, tensor_layout="HND", *, sm_scale=None,
           return_lse=False):
    """sparse_sageattn of q ((B, Hq, Nq, D) or (B, Nq, Hq, D), Nq <= 128, the cache's dtype -- either float
    dtype over an e4m3 cache, whose attention reads no array of its dtype; Hq a multiple of Hkv) over each row's
    first lens[b] cached tokens. mask_id: broadcastable to (B, Hq, 1, capacity / 64), traced; is_causal: query
    i sees token j iff j <= i + lens[b] - Nq; sm_scale, return_lse as in sparse_sageattn (static, with is_causal
    and tensor_layout). Returns out (q's dtype and layout) or (out, lse). An e4m3 cache's values are read as the
    kernel takes them: e4m3 (exact in fp16) in each block's P.V product, which their power-of-two scales
    multiply."""
    arrays = {"q": q} if mask_id is None else {"q": q, "mask_id": mask_id}
    _check("cache_attend", cache, arrays)
    arrays.update(_attend_arrays(cache))
    # bad input fails here, before tracing
    _attend_plan({n: describe(x) for n, x in arrays.items()}, _AttendOptions(is_causal, tensor_layout, sm_scale,
                                                                            return_lse))
    options = _AttendOptions(is_causal, tensor_layout, None if sm_scale is None else float(sm_scale), return_lse)
    outputs = _attend_jitted(arrays, options=options)
    return outputs if return_lse else outputs[0]
