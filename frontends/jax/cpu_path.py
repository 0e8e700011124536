"""The pure-JAX path of sparse_sageattn and of the INT8 KV cache's append, taken on every backend but CUDA: a
correctness path, not a fast one.

It follows the kernels' numerics step by step (SageAttention V1): Q quantized to INT8 per block of 128 rows
with sm_scale*log2(e) folded in, K per block of 64 rows after subtracting its mean over the keys, an INT8 Q.K^T
with int32 accumulation scaled into the log2 domain, an exp2 softmax, P.V with fp16 operands and fp32
accumulation -- or, with pv_dtype="fp8", P * 448 and V scaled per channel by 448 / max|V| both rounded to e4m3;
over an e4m3 KV cache, each 64-key block's fp32 product of fp16 P and its e4m3 values times their powers of two.
It materialises the (Nq, Nk) score matrix per head, so it suits tests and small models on CPU.
Its results are close to the kernels' (same quantization), not bitwise equal (the kernels' softmax is online).
`cache_append` writes the append kernel's bits (under the Triton interpreter), but for the first fill's smoothing
vector (summed in another order) and for bfloat16 values below fp32's normal range (XLA's CPU flushes them to
zero).
"""
import math

import jax
import jax.numpy as jnp

from sparse_sageattn.core_kernels.contract import BLOCK_M, BLOCK_N, E4M3_MAX, LN2, LOG2E


def _quantize_blocks(x, rows):
    """fp32 (B, H, N, D) -> int8 (B, H, n_blocks*rows, D) and one fp32 scale per block of `rows` rows.

    Like quantize.py's _quantize_block: padded rows are zeros, an all-zero block gets scale 0 (never 0/0),
    rounding is half away from zero, and a block holding a NaN gets a NaN scale so the NaN reaches the output.
    """
    batch, heads, n, head_dim = x.shape
    n_blocks = -(-n // rows)
    x = jnp.pad(x, ((0, 0), (0, 0), (0, n_blocks * rows - n), (0, 0)))
    blocks = x.reshape(batch, heads, n_blocks, rows * head_dim)
    amax = jnp.max(jnp.abs(blocks), axis=-1)
    has_nan = jnp.any(jnp.isnan(blocks), axis=-1)  # XLA's max may drop NaNs: count them, as the kernel does
    inv_scale = jnp.where(amax > 0.0, 127.0 / amax, 0.0)
    scaled = blocks * inv_scale[..., None]
    scaled = jnp.where(jnp.isnan(scaled), 0.0, scaled)
    x_int8 = jnp.trunc(scaled + jnp.where(scaled >= 0.0, 0.5, -0.5)).astype(jnp.int8)
    return x_int8.reshape(batch, heads, n_blocks * rows, head_dim), jnp.where(has_nan, jnp.nan, amax / 127.0)


def _visible(mask_id, n_q_pad, n_k_pad, n_q, n_valid, is_causal):
    """bool, broadcastable to (B, Hq, n_q_pad, n_k_pad): the block mask expanded to elements, the keys that
    exist (n_valid: (B, 1, 1, 1)) and the bottom-right causal rule (query i sees key j iff j <= i + n_valid - Nq)."""
    rows = jnp.arange(n_q_pad)[:, None]
    cols = jnp.arange(n_k_pad)[None, :]
    visible = cols < n_valid
    if is_causal:
        visible = visible & (cols <= rows + (n_valid - n_q))
    if mask_id is None:
        return visible
    blocks = mask_id != 0
    blocks = blocks.reshape((1,) * (4 - blocks.ndim) + blocks.shape)
    blocks = jnp.broadcast_to(blocks, blocks.shape[:2] + (n_q_pad // BLOCK_M, n_k_pad // BLOCK_N))
    elements = jnp.repeat(jnp.repeat(blocks, BLOCK_M, axis=2), BLOCK_N, axis=3)
    return elements & visible


def _to_e4m3(x):
    """fp32 -> the nearest e4m3 value (ties to even), saturating at +-448 like the kernels' cast; back in fp32."""
    return jnp.clip(x, -E4M3_MAX, E4M3_MAX).astype(jnp.float8_e4m3fn).astype(jnp.float32)


def _pow2(e):
    """2**e as fp32 for integer e in [-126, 127], from its bits (exact, as the kernels form it)."""
    return jax.lax.bitcast_convert_type((e.astype(jnp.int32) + 127) << 23, jnp.float32)


def _pv_e4m3_cache(p, v_bits, v_exp, n_valid):
    """P (B, Hkv, G, Nq_pad, Nk) times an e4m3 cache's values (core_kernels/kv_cache/append.py), fp32 out, as the
    split-KV kernel takes them: per 64-key block the fp32 product of P in fp16 and the e4m3 values (exact in
    fp16), times the block's 2**v_exp per channel. v_bits (B, Hkv, Nk, D) uint8 in key order (zeros past the
    valid keys), v_exp (B, Hkv, Nk / 64, D) int8."""
    batch, heads_kv, n_k, head_dim = v_bits.shape
    n_kb = n_k // BLOCK_N
    # the exponents of the blocks past the valid keys are never read (the cache may hold anything there)
    block_exists = jnp.arange(n_kb)[None, None, :, None] * BLOCK_N < n_valid
    scale = _pow2(jnp.where(block_exists, v_exp, 0))
    v16 = jax.lax.bitcast_convert_type(v_bits, jnp.float8_e4m3fn).astype(jnp.float16)
    p16 = p.astype(jnp.float16).reshape(p.shape[:-1] + (n_kb, BLOCK_N))
    blocks = jnp.einsum("bhgqnk,bhnkd->bhgqnd", p16, v16.reshape(batch, heads_kv, n_kb, BLOCK_N, head_dim),
                        preferred_element_type=jnp.float32)
    return jnp.sum(blocks * scale[:, :, None, None], axis=-2)


def _pv(p, v, n_k_pad, pv_dtype):
    """P (B, Hkv, G, Nq_pad, Nk_pad) in [0, 1] times V (B, Hkv, Nk, D; zeros past the valid keys), fp32 out."""
    n_k = v.shape[2]
    if pv_dtype == "fp16":
        v16 = jnp.pad(v.astype(jnp.float16), ((0, 0), (0, 0), (0, n_k_pad - n_k), (0, 0)))
        return jnp.einsum("bhgqk,bhkd->bhgqd", p.astype(jnp.float16), v16, preferred_element_type=jnp.float32)
    v32 = v.astype(jnp.float32)
    amax = jnp.max(jnp.where(jnp.isnan(v32), 0.0, jnp.abs(v32)), axis=2, keepdims=True)  # NaNs keep their own
    v8 = _to_e4m3(v32 * jnp.where(amax > 0.0, E4M3_MAX / amax, 0.0))
    v8 = jnp.pad(v8, ((0, 0), (0, 0), (0, n_k_pad - n_k), (0, 0)))
    acc = jnp.einsum("bhgqk,bhkd->bhgqd", _to_e4m3(p * E4M3_MAX), v8, preferred_element_type=jnp.float32)
    return acc * (amax / E4M3_MAX)[:, :, None] * (1.0 / E4M3_MAX)


def attention(q, k, v, mask_id, kv_lens=None, *, is_causal, tensor_layout, sm_scale, smooth_k, return_lse,
              pv_dtype="fp16", k_scale=None, k_mean=None, v_exp=None):
    """Same arguments as sparse_sageattn (already validated, sm_scale a float or None); returns (out, lse) or
    (out,), lse of shape (B, Hq, Nq) float32.

    k_scale, k_mean: k is an INT8 KV cache's keys (core_kernels/kv_cache/append.py), already smoothed by k_mean
    (B, Hkv, D) and quantized per 64-key block with the scales k_scale (B, Hkv, Nk / 64); k and v are then
    (B, Hkv, Nk, D) whatever q's layout, and smooth_k must be True (the lse adds q . k_mean back). v_exp: v is
    the cache's e4m3 values (uint8 bits, (B, Hkv, Nk / 64, D, 64): each block transposed), v_exp
    (B, Hkv, Nk / 64, D) their scale exponents (pv_dtype "fp16")."""
    cached_k = k_scale is not None
    if v_exp is not None:
        v = v.swapaxes(3, 4).reshape(k.shape)  # in key order, as k
    if tensor_layout == "NHD":
        q = q.transpose(0, 2, 1, 3)
        if not cached_k:
            k, v = (x.transpose(0, 2, 1, 3) for x in (k, v))
    batch, heads_q, n_q, head_dim = q.shape
    heads_kv, n_k = k.shape[1], k.shape[2]
    group = heads_q // heads_kv
    if sm_scale is None:
        sm_scale = 1.0 / math.sqrt(head_dim)
    # keys that exist per batch row, (B, 1, 1, 1); the others are never read (where, not multiplication: NaN)
    n_valid = (jnp.full((batch,), n_k, jnp.int32) if kv_lens is None
               else jnp.clip(kv_lens.astype(jnp.int32), 0, n_k)).reshape(batch, 1, 1, 1)
    key_exists = jnp.arange(n_k)[None, None, :, None] < n_valid

    q_scaled = q.astype(jnp.float32) * jnp.float32(sm_scale * LOG2E)  # scores come out in the log2 domain
    v = jnp.where(key_exists, v, jnp.zeros((), v.dtype))
    if cached_k:  # what the cache holds past the valid keys is masked out of the scores below
        k_int8, mean = k, k_mean[:, :, None, :]
    else:
        k32 = jnp.where(key_exists, k.astype(jnp.float32), 0.0)
        mean = jnp.sum(k32, axis=2, keepdims=True) / jnp.maximum(n_valid, 1).astype(jnp.float32) if smooth_k else None
        if smooth_k:
            k32 = jnp.where(key_exists, k32 - mean, 0.0)
        k_int8, k_scale = _quantize_blocks(k32, BLOCK_N)
    q_int8, q_scale = _quantize_blocks(q_scaled, BLOCK_M)
    n_q_pad, n_k_pad = q_int8.shape[2], k_int8.shape[2]

    # Query heads grouped under their kv head: (B, Hkv, G, ...).
    q_int8 = q_int8.reshape(batch, heads_kv, group, n_q_pad, head_dim)
    q_scale = jnp.repeat(q_scale, BLOCK_M, axis=2).reshape(batch, heads_kv, group, n_q_pad)
    k_scale = jnp.repeat(k_scale, BLOCK_N, axis=2)[:, :, None, None, :]
    scores = jnp.einsum("bhgqd,bhkd->bhgqk", q_int8, k_int8, preferred_element_type=jnp.int32)
    scores = scores.astype(jnp.float32) * (q_scale[..., None] * k_scale)

    visible = _visible(mask_id, n_q_pad, n_k_pad, n_q, n_valid, is_causal)
    visible = jnp.broadcast_to(visible, (batch, heads_q, n_q_pad, n_k_pad))
    scores = jnp.where(visible.reshape(batch, heads_kv, group, n_q_pad, n_k_pad), scores, -jnp.inf)
    row_max = jnp.max(scores, axis=-1)
    row_max = jnp.where(row_max == -jnp.inf, 0.0, row_max)  # a row that sees nothing: no -inf - -inf
    p = jnp.exp2(scores - row_max[..., None])
    total = jnp.sum(p, axis=-1)
    acc = _pv(p, v, n_k_pad, pv_dtype) if v_exp is None else _pv_e4m3_cache(p, v, v_exp, n_valid)
    seen_nothing = total == 0.0
    out = acc / jnp.where(seen_nothing, 1.0, total)[..., None]
    out = out.reshape(batch, heads_q, n_q_pad, head_dim)[:, :, :n_q].astype(q.dtype)
    if tensor_layout == "NHD":
        out = out.transpose(0, 2, 1, 3)
    if not return_lse:
        return (out,)

    lse2 = (row_max + jnp.log2(jnp.where(seen_nothing, 1.0, total)))[..., :n_q]
    if smooth_k:
        # What subtracting K's mean removed from every logit (in the log2 domain), added back.
        q_grouped = q_scaled.reshape(batch, heads_kv, group, n_q, head_dim)
        lse2 = lse2 + jnp.sum(q_grouped * mean[:, :, None], axis=-1)
    lse = jnp.where(seen_nothing[..., :n_q], -jnp.inf, lse2 * LN2)
    return out, lse.reshape(batch, heads_q, n_q)


def _e4m3_blocks(v):
    """Values (B, Hkv, W, D) of whole 64-key blocks (zeros where absent) -> their e4m3 bits (uint8, each block
    transposed as the cache holds it: (B, Hkv, W / 64, D, 64)) and the (block, channel) exponents (int8)
    (B, Hkv, W / 64, D), as append.py's _quantize_v_e4m3: e from the fp32 bits of max|v| (the smallest e >= -126
    with max|v| / 2**e <= 448), v / 2**e rounded to nearest even e4m3 (XLA's float8_e4m3fn cast: no value exceeds
    448 there); a non-finite value becomes NaN (0x7F)."""
    batch, heads_kv, n, head_dim = v.shape
    v32 = v.astype(jnp.float32).reshape(batch, heads_kv, n // BLOCK_N, BLOCK_N, head_dim)
    # a NaN makes its channel's max the fp32 NaN the interpreted kernel forms (XLA's max may drop NaNs)
    amax = jnp.where(jnp.any(jnp.isnan(v32), axis=3), jnp.float32(jnp.nan), jnp.max(jnp.abs(v32), axis=3))
    bits = jax.lax.bitcast_convert_type(amax, jnp.int32)
    e = jnp.maximum(((bits >> 23) & 0xFF) - 135 + ((bits & 0x7FFFFF) > 0x600000).astype(jnp.int32), -126)
    scaled = v32 * _pow2(-e)[:, :, :, None]
    codes = jax.lax.bitcast_convert_type(scaled.astype(jnp.float8_e4m3fn), jnp.uint8)
    codes = jnp.where(jnp.isfinite(v32), codes, jnp.uint8(0x7F))  # e4m3 has no infinity; the sign is dropped
    return codes.swapaxes(3, 4), e.astype(jnp.int8)


def cache_append(k, v, cache, *, tensor_layout, first_fill):
    """An INT8 KV cache's append (core_kernels/kv_cache/append.py, already validated). cache: name -> array,
    the arrays of its format (kv_cache.cache_arrays: v_exp present for "e4m3"); returns them updated, same names.

    As the kernel does: each batch row writes from lens[b] (0 at the first fill, whose keys' fp32 mean becomes the
    smoothing vector) up to the capacity, tokens past it dropped. Every 64-key block the new tokens touch is
    quantized again from its older keys (k_tail) and the new ones, rows past the last token zeros; k_tail becomes
    the keys of the block holding the last token (zeros after it) unless that token closes its block. Values are
    written as given, or (e4m3) like the keys: each touched block again from v_tail and the new values, at its
    own exponents, v_tail kept like k_tail.
    """
    if tensor_layout == "NHD":
        k, v = (x.transpose(0, 2, 1, 3) for x in (k, v))
    k_int8, k_scale, k_mean, k_tail, lens = (cache[n] for n in ("k_int8", "k_scale", "k_mean", "k_tail", "lens"))
    batch, heads_kv, capacity = k_int8.shape[:3]
    n_new = k.shape[2]
    n_window = (-(-n_new // BLOCK_N) + 1) * BLOCK_N  # the kernel's APPEND_BLOCKS blocks, from the first touched
    start = jnp.zeros((batch,), jnp.int32) if first_fill else jnp.clip(lens, 0, capacity)
    end = jnp.minimum(start + n_new, capacity)
    window_start = start // BLOCK_N * BLOCK_N
    rows = window_start[:, None] + jnp.arange(n_window)  # (B, W) cache rows of the touched blocks
    is_old = (rows < start[:, None])[:, None, :, None]
    is_new = ((rows >= start[:, None]) & (rows < end[:, None]))[:, None, :, None]

    def gather(x, index):  # x (B, Hkv, n, D) at the rows index (B, m), clipped: the caller masks what is outside
        index = jnp.clip(index, 0, x.shape[2] - 1)[:, None, :, None]
        return jnp.take_along_axis(x, jnp.broadcast_to(index, (batch, heads_kv, index.shape[2], 1)), axis=2)

    def window(tail, new):  # the touched blocks' rows: older ones from the tail, then the new ones, zeros after
        return jnp.where(is_old, gather(tail, rows - window_start[:, None]),
                         jnp.where(is_new, gather(new, rows - start[:, None]), jnp.zeros((), new.dtype)))

    # the block of token end - 1, from the window, zeros after it; the old tail where end closes a block
    last_start = (end - 1) // BLOCK_N * BLOCK_N
    tail_rows = (last_start[:, None] + jnp.arange(BLOCK_N))[:, None, :, None]
    writes_tail = ((end % BLOCK_N != 0) & (start < end))[:, None, None, None]

    def new_tail(block_rows, old_tail):
        tail = gather(block_rows, (last_start - window_start)[:, None] + jnp.arange(BLOCK_N))
        tail = jnp.where(tail_rows < end[:, None, None, None], tail, jnp.zeros((), tail.dtype))
        return jnp.where(writes_tail, tail, old_tail)

    keys = window(k_tail, k)
    if first_fill:
        k_mean = jnp.mean(k.astype(jnp.float32), axis=2)
    centered = jnp.where(is_old | is_new, keys.astype(jnp.float32) - k_mean[:, :, None, :], 0.0)
    block_int8, block_scale = _quantize_blocks(centered, BLOCK_N)

    # A block at or past the end is not touched (the kernel skips it): its writes go past the capacity, dropped.
    b, h = jnp.arange(batch)[:, None, None], jnp.arange(heads_kv)[None, :, None]
    touched_rows = jnp.where(rows // BLOCK_N * BLOCK_N < end[:, None], rows, capacity)[:, None, :]
    blocks = rows[:, ::BLOCK_N] // BLOCK_N
    touched_blocks = jnp.where(blocks * BLOCK_N < end[:, None], blocks, capacity // BLOCK_N)[:, None, :]
    updated = dict(k_int8=k_int8.at[b, h, touched_rows].set(block_int8, mode="drop"),
                   k_scale=k_scale.at[b, h, touched_blocks].set(block_scale, mode="drop"),
                   k_mean=k_mean, k_tail=new_tail(keys, k_tail), lens=end)
    if "v_exp" in cache:
        values = window(cache["v_tail"], v)
        block_bits, block_exp = _e4m3_blocks(values)
        updated.update(v_cache=cache["v_cache"].at[b, h, touched_blocks].set(block_bits, mode="drop"),
                       v_exp=cache["v_exp"].at[b, h, touched_blocks].set(block_exp, mode="drop"),
                       v_tail=new_tail(values, cache["v_tail"]))
    else:
        new_rows = (start[:, None] + jnp.arange(n_new))[:, None, :]  # past the capacity: dropped
        updated["v_cache"] = cache["v_cache"].at[b, h, new_rows].set(v, mode="drop")
    return {name: updated[name] for name in cache}
