"""Appending keys and values to an INT8 KV cache: only the new tokens' blocks are quantized.

The cache of one layer (plan.py: CACHE_ARRAYS), per (batch row b, kv head h):
  k_int8  int8 [B, Hkv, C, D]    K minus the smoothing vector, quantized per 64-key block
  k_scale fp32 [B, Hkv, C/64]    each block's scale, max|k - mean| / 127 (attention/quantize.py's _to_int8)
  k_mean  fp32 [B, Hkv, D]       the smoothing vector: the mean of the prompt's keys, fixed when the cache is
                                 first filled. Subtracting one vector from every key shifts each query's logits by
                                 a constant, which softmax removes: exact; the lse adds q . mean back.
  k_tail  [B, Hkv, 64, D]        the keys of the last, partly filled block in full precision (q's dtype): a block
                                 is re-quantized from them while it fills, so its scale always fits its keys
  v_cache [B, Hkv, C, D]         V as given (fp16 or bf16)
  lens    int32 [B]              tokens in the cache per batch row

append_kernel: one program per (b, h, block touched by the new tokens). A block holding older tokens (only the
first one, when lens[b] is not a multiple of 64) takes them from k_tail; the first program also writes the new
k_tail (after reading the old one: no other program touches it). With FIRST_FILL the cache is empty and the
smoothing vector comes from the new keys' channel sums (attention/quantize.py's partials), which the first
program of each (b, h) stores. Tokens past the capacity C are dropped; advance_lens_kernel then sets lens to
min(lens + n_new, C) in a launch of its own, since every append program reads lens first.
"""
import triton
import triton.language as tl

from ..alignment import _aligned
from ..attention.quantize import _abs_max, _channel_mean, _to_int8


@triton.jit(do_not_specialize=["n_new", "capacity", "heads_kv", "stride_kb", "stride_kh", "stride_kn",
                               "stride_vb", "stride_vh", "stride_vn"])
def append_kernel(
    k_ptr, v_ptr, partial_sums_ptr, lens_ptr,
    cache_k_int8_ptr, cache_k_scale_ptr, cache_k_mean_ptr, cache_k_tail_ptr, cache_v_ptr,
    n_new, capacity, heads_kv, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn,
    k_int8_ptr, k_scale_ptr, k_mean_ptr, k_tail_ptr, v_cache_ptr,
    BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr, APPEND_BLOCKS: tl.constexpr,
    ROWS_PER_CHUNK: tl.constexpr, FIRST_FILL: tl.constexpr, STRIDE_ALIGN: tl.constexpr,
):
    """k, v: the new tokens, [B, Hkv, n_new, D] at the given strides. cache_*: the cache as given; the outputs are
    the same arrays (jax-triton passes an aliased array as an input and as an output; torch passes one tensor
    twice), written in place. Grid: B * Hkv * APPEND_BLOCKS, APPEND_BLOCKS = ceil(n_new / 64) + 1 (the new
    tokens may start inside a block)."""
    stride_kb, stride_kh, stride_kn = _aligned(stride_kb, stride_kh, stride_kn, STRIDE_ALIGN)
    stride_vb, stride_vh, stride_vn = _aligned(stride_vb, stride_vh, stride_vn, STRIDE_ALIGN)
    pid = tl.program_id(0)
    bh = pid // APPEND_BLOCKS
    j = pid % APPEND_BLOCKS
    b = bh // heads_kv
    h = bh % heads_kv
    if FIRST_FILL:
        start = 0
    else:
        start = tl.minimum(tl.maximum(tl.load(lens_ptr + b), 0), capacity)
    end = tl.minimum(start + n_new, capacity)
    first_block = start // BLOCK_N
    block_start = (first_block + j) * BLOCK_N
    if block_start < end:
        offs_r = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, HEAD_DIM_PAD)
        d_valid = offs_d < HEAD_DIM
        rows = block_start + offs_r
        is_old = rows < start
        is_new = (rows >= start) & (rows < end)
        tile = offs_r[:, None] * HEAD_DIM + offs_d[None, :]  # a [64, D] tile of a contiguous cache array
        cache_row = bh.to(tl.int64) * capacity
        tail_ptr = k_tail_ptr + bh.to(tl.int64) * (BLOCK_N * HEAD_DIM)
        k_new_ptr = k_ptr + b.to(tl.int64) * stride_kb + h.to(tl.int64) * stride_kh
        new_index = rows - start
        k_old = tl.load(tail_ptr + tile, mask=is_old[:, None] & d_valid[None, :], other=0.0)
        k_new = tl.load(k_new_ptr + new_index[:, None] * stride_kn + offs_d[None, :],
                        mask=is_new[:, None] & d_valid[None, :], other=0.0)
        k = tl.where(is_old[:, None], k_old, k_new)
        if FIRST_FILL:
            k_mean = _channel_mean(partial_sums_ptr, bh, tl.cdiv(n_new, ROWS_PER_CHUNK), n_new, ROWS_PER_CHUNK,
                                   HEAD_DIM_PAD)
            if j == 0:
                tl.store(k_mean_ptr + bh.to(tl.int64) * HEAD_DIM + offs_d, k_mean, mask=d_valid)
        else:
            k_mean = tl.load(k_mean_ptr + bh.to(tl.int64) * HEAD_DIM + offs_d, mask=d_valid, other=0.0)
        centered = tl.where((is_old | is_new)[:, None] & d_valid[None, :], k.to(tl.float32) - k_mean[None, :], 0.0)
        k_int8, k_scale = _to_int8(centered, _abs_max(centered))
        block_ptr = (cache_row + block_start) * HEAD_DIM
        tl.store(k_int8_ptr + block_ptr + tile, k_int8, mask=d_valid[None, :])  # zeros past the last token
        tl.store(k_scale_ptr + bh.to(tl.int64) * (capacity // BLOCK_N) + first_block + j, k_scale)
        v_new = tl.load(v_ptr + b.to(tl.int64) * stride_vb + h.to(tl.int64) * stride_vh
                        + new_index[:, None] * stride_vn + offs_d[None, :], mask=is_new[:, None] & d_valid[None, :])
        tl.store(v_cache_ptr + block_ptr + tile, v_new, mask=is_new[:, None] & d_valid[None, :])
        if j == 0:
            # the new tail: the keys of the block holding token end - 1, unless end closes a block
            last_start = (end - 1) // BLOCK_N * BLOCK_N
            if end % BLOCK_N != 0:
                tail_rows = last_start + offs_r
                tail_valid = (tail_rows < end)[:, None] & d_valid[None, :]
                if last_start == block_start:
                    tail = k
                else:
                    tail = tl.load(k_new_ptr + (tail_rows - start)[:, None] * stride_kn + offs_d[None, :],
                                   mask=tail_valid, other=0.0)
                tl.debug_barrier()  # every thread has read the old tail (k_old) before any overwrites it
                tl.store(tail_ptr + tile, tail, mask=tail_valid)


@triton.jit(do_not_specialize=["n_new", "capacity", "batch"])
def advance_lens_kernel(
    cache_lens_ptr,
    n_new, capacity, batch,
    lens_ptr,
    BLOCK_B: tl.constexpr, FIRST_FILL: tl.constexpr,
):
    """lens = min(lens + n_new, capacity) (lens taken as 0 with FIRST_FILL), in place. One program, BLOCK_B >=
    batch."""
    offs = tl.arange(0, BLOCK_B)
    in_batch = offs < batch
    if FIRST_FILL:
        old = tl.zeros([BLOCK_B], dtype=tl.int32)
    else:
        old = tl.minimum(tl.maximum(tl.load(lens_ptr + offs, mask=in_batch, other=0), 0), capacity)
    tl.store(lens_ptr + offs, tl.minimum(old + n_new, capacity), mask=in_batch)
