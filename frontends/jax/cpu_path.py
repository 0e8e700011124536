"""The pure-JAX path of sparse_sageattn and of the INT8 KV cache's append, taken on every backend but CUDA: a
correctness path, not a fast one.

It follows the kernels' numerics step by step (SageAttention V1): Q quantized to INT8 per block of 128 rows
with sm_scale*log2(e) folded in, K per block of 64 rows after subtracting its mean over the keys, an INT8 Q.K^T
with int32 accumulation scaled into the log2 domain, an exp2 softmax, P.V with fp16 operands and fp32
accumulation -- or, with pv_dtype="fp8", P * 448 and V scaled per channel by 448 / max|V| both rounded to e4m3.
It materialises the (Nq, Nk) score matrix per head, so it suits tests and small models on CPU.
Its results are close to the kernels' (same quantization), not bitwise equal (the kernels' softmax is online).
`cache_append` writes the append kernel's bits, but for the first fill's smoothing vector (summed in another order).
"""
import math

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
              pv_dtype="fp16", k_scale=None, k_mean=None):
    """Same arguments as sparse_sageattn (already validated, sm_scale a float or None); returns (out, lse) or
    (out,), lse of shape (B, Hq, Nq) float32.

    k_scale, k_mean: k is an INT8 KV cache's keys (core_kernels/kv_cache/append.py), already smoothed by k_mean
    (B, Hkv, D) and quantized per 64-key block with the scales k_scale (B, Hkv, Nk / 64); k and v are then
    (B, Hkv, Nk, D) whatever q's layout, and smooth_k must be True (the lse adds q . k_mean back)."""
    cached_k = k_scale is not None
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
    acc = _pv(p, v, n_k_pad, pv_dtype)
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


def cache_append(k, v, k_int8, k_scale, k_mean, k_tail, v_cache, lens, *, tensor_layout, first_fill):
    """An INT8 KV cache's append (core_kernels/kv_cache/append.py, already validated): the cache's arrays, updated.

    As the kernel does: each batch row writes from lens[b] (0 at the first fill, whose keys' fp32 mean becomes the
    smoothing vector) up to the capacity, tokens past it dropped. Every 64-key block the new tokens touch is
    quantized again from its older keys (k_tail) and the new ones, rows past the last token zeros; k_tail becomes
    the keys of the block holding the last token unless that token closes its block.
    """
    if tensor_layout == "NHD":
        k, v = (x.transpose(0, 2, 1, 3) for x in (k, v))
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

    keys = jnp.where(is_old, gather(k_tail, rows - window_start[:, None]),
                     jnp.where(is_new, gather(k, rows - start[:, None]), jnp.zeros((), k.dtype)))
    if first_fill:
        k_mean = jnp.mean(k.astype(jnp.float32), axis=2)
    centered = jnp.where(is_old | is_new, keys.astype(jnp.float32) - k_mean[:, :, None, :], 0.0)
    block_int8, block_scale = _quantize_blocks(centered, BLOCK_N)

    # A block at or past the end is not touched (the kernel skips it): its writes go past the capacity, dropped.
    b, h = jnp.arange(batch)[:, None, None], jnp.arange(heads_kv)[None, :, None]
    touched_rows = jnp.where(rows // BLOCK_N * BLOCK_N < end[:, None], rows, capacity)[:, None, :]
    k_int8 = k_int8.at[b, h, touched_rows].set(block_int8, mode="drop")
    blocks = rows[:, ::BLOCK_N] // BLOCK_N
    touched_blocks = jnp.where(blocks * BLOCK_N < end[:, None], blocks, capacity // BLOCK_N)[:, None, :]
    k_scale = k_scale.at[b, h, touched_blocks].set(block_scale, mode="drop")
    new_rows = (start[:, None] + jnp.arange(n_new))[:, None, :]  # past the capacity: dropped
    v_cache = v_cache.at[b, h, new_rows].set(v, mode="drop")

    # the block of token end - 1, from the window; rows at or past the end keep what the old tail held there
    last_start = (end - 1) // BLOCK_N * BLOCK_N
    tail = gather(keys, (last_start - window_start)[:, None] + jnp.arange(BLOCK_N))
    tail_rows = (last_start[:, None] + jnp.arange(BLOCK_N))[:, None, :, None]
    writes_tail = ((end % BLOCK_N != 0) & (start < end))[:, None, None, None]
    k_tail = jnp.where(writes_tail & (tail_rows < end[:, None, None, None]), tail, k_tail)
    return k_int8, k_scale, k_mean, k_tail, v_cache, end
