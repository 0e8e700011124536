"""Appending keys and values to an INT8 KV cache: only the new tokens' blocks are quantized.

The cache of one layer (plan.py: cache_arrays), per (batch row b, kv head h):
  k_int8  int8 [B, Hkv, C, D]    K minus the smoothing vector, quantized per 64-key block
  k_scale fp32 [B, Hkv, C/64]    each block's scale, max|k - mean| / 127 (attention/quantize.py's _to_int8)
  k_mean  fp32 [B, Hkv, D]       the smoothing vector: the mean of the prompt's keys, fixed when the cache is
                                 first filled. Subtracting one vector from every key shifts each query's logits by
                                 a constant, which softmax removes: exact; the lse adds q . mean back.
  k_tail  [B, Hkv, 64, D]        the keys of the last, partly filled block in full precision (q's dtype): a block
                                 is re-quantized from them while it fills, so its scale always fits its keys
  v_cache [B, Hkv, C, D]         V as given (v_format "native", fp16 or bf16); or (v_format "e4m3", uint8
          [B, Hkv, C/64, D, 64]) the FP8 e4m3 bits of V / 2**v_exp, each block transposed: a channel's 64 keys
                                 contiguous, as the P.V MMA reads them (keys are its reduction axis)
  v_exp   int8 [B, Hkv, C/64, D] (e4m3 only) each (block, channel)'s scale exponent: the smallest e >= -126 with
                                 max|v| / 2**e <= 448, so no value saturates and the scale is exact to apply
                                 (a power of two, as in the OCP MX formats); e4m3's relative precision does not
                                 depend on where the block's maximum lands, so a power of two costs nothing there
  v_tail  [B, Hkv, 64, D]        (e4m3 only) the values of the last, partly filled block in full precision: its
                                 exponents are set again from them as it fills, so a later, larger value never
                                 saturates against a scale fixed earlier
  lens    int32 [B]              tokens in the cache per batch row

append_kernel: one program per (b, h, block touched by the new tokens). A block holding older tokens (only the
first one, when lens[b] is not a multiple of 64) takes them from the tails; the first program also writes the
new tails (after reading the old ones: no other program touches them). With FIRST_FILL the cache is empty and
the smoothing vector comes from the new keys' channel sums (attention/quantize.py's partials), which the first
program of each (b, h) stores. Tokens past the capacity C are dropped; advance_lens_kernel then sets lens to
min(lens + n_new, C) in a launch of its own, since every append program reads lens first.
"""
import triton
import triton.language as tl

from ..alignment import _aligned
from ..attention.fp8 import pow2, to_e4m3
from ..attention.quantize import _INTERPRETED, _abs_max, _channel_mean, _to_int8


@triton.jit
def _e4m3_exponent(amax):
    """The smallest e >= -126 with amax / 2**e <= 448 (= 1.75 * 2**8), from amax's fp32 bits: amax = m * 2**E
    needs e = E - 8, one more when its mantissa m exceeds 1.75."""
    bits = amax.to(tl.int32, bitcast=True)
    e = ((bits >> 23) & 0xFF) - 135 + ((bits & 0x7FFFFF) > 0x600000).to(tl.int32)
    return tl.maximum(e, -126)


@triton.jit
def _quantize_v_e4m3(v):
    """A block of values (fp32, zeros where absent) -> its e4m3 bits (uint8) and per-channel exponents (int8).
    A non-finite value becomes NaN (e4m3 has no infinity; a saturated inf would pass for a finite value)."""
    e = _e4m3_exponent(_abs_max(v, 0))
    scaled = v * pow2(-e)[None, :]
    scaled = tl.where(v - v == 0.0, scaled, float("nan"))
    bits = to_e4m3(scaled, _INTERPRETED).to(tl.uint8, bitcast=True)
    return bits, e.to(tl.int8)


@triton.jit
def _new_tail(block, new_ptr, stride_n, block_start, start, end, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr,
              HEAD_DIM_PAD: tl.constexpr):
    """The tokens [last_start, end) of the block holding token end - 1 (zeros after end), last_start a multiple of
    BLOCK_N: this program's block as loaded when it is that block, else the new tokens from new_ptr."""
    offs_r = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM_PAD)
    last_start = (end - 1) // BLOCK_N * BLOCK_N
    tail_rows = last_start + offs_r
    valid = (tail_rows < end)[:, None] & (offs_d < HEAD_DIM)[None, :]
    if last_start == block_start:
        tail = tl.where(valid, block, 0.0)
    else:
        tail = tl.load(new_ptr + (tail_rows - start)[:, None] * stride_n + offs_d[None, :], mask=valid, other=0.0)
    return tail


@triton.jit(do_not_specialize=["n_new", "capacity", "heads_kv", "stride_kb", "stride_kh", "stride_kn",
                               "stride_vb", "stride_vh", "stride_vn"])
def append_kernel(
    k_ptr, v_ptr, partial_sums_ptr, lens_ptr,
    cache_k_int8_ptr, cache_k_scale_ptr, cache_k_mean_ptr, cache_k_tail_ptr, cache_v_ptr, cache_v_exp_ptr,
    cache_v_tail_ptr,
    n_new, capacity, heads_kv, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn,
    k_int8_ptr, k_scale_ptr, k_mean_ptr, k_tail_ptr, v_cache_ptr, v_exp_ptr, v_tail_ptr,
    BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr, APPEND_BLOCKS: tl.constexpr,
    ROWS_PER_CHUNK: tl.constexpr, FIRST_FILL: tl.constexpr, STRIDE_ALIGN: tl.constexpr, V_E4M3: tl.constexpr,
):
    """k, v: the new tokens, [B, Hkv, n_new, D] at the given strides. cache_*: the cache as given; the outputs are
    the same arrays (jax-triton passes an aliased array as an input and as an output; torch passes one tensor
    twice), written in place. v_exp and v_tail (and their cache_ inputs) are read and written only with V_E4M3.
    Grid: B * Hkv * APPEND_BLOCKS, APPEND_BLOCKS = ceil(n_new / 64) + 1 (the new tokens may start inside a
    block)."""
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
        old_mask = is_old[:, None] & d_valid[None, :]
        new_mask = is_new[:, None] & d_valid[None, :]
        tile = offs_r[:, None] * HEAD_DIM + offs_d[None, :]  # a [64, D] tile of a contiguous cache array
        cache_row = bh.to(tl.int64) * capacity
        block_ptr = (cache_row + block_start) * HEAD_DIM
        block_index = bh.to(tl.int64) * (capacity // BLOCK_N) + first_block + j
        tail_offset = bh.to(tl.int64) * (BLOCK_N * HEAD_DIM)
        k_new_ptr = k_ptr + b.to(tl.int64) * stride_kb + h.to(tl.int64) * stride_kh
        v_new_ptr = v_ptr + b.to(tl.int64) * stride_vb + h.to(tl.int64) * stride_vh
        new_index = rows - start
        k_old = tl.load(k_tail_ptr + tail_offset + tile, mask=old_mask, other=0.0)
        k_new = tl.load(k_new_ptr + new_index[:, None] * stride_kn + offs_d[None, :], mask=new_mask, other=0.0)
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
        tl.store(k_int8_ptr + block_ptr + tile, k_int8, mask=d_valid[None, :])  # zeros past the last token
        tl.store(k_scale_ptr + block_index, k_scale)
        v_new = tl.load(v_new_ptr + new_index[:, None] * stride_vn + offs_d[None, :], mask=new_mask, other=0.0)
        if V_E4M3:  # the whole block again, older values from the tail
            v_old = tl.load(v_tail_ptr + tail_offset + tile, mask=old_mask, other=0.0)
            v = tl.where(is_old[:, None], v_old, v_new)
            v_bits, v_exp = _quantize_v_e4m3(v.to(tl.float32))
            tile_t = offs_d[:, None] * BLOCK_N + offs_r[None, :]
            tl.store(v_cache_ptr + block_ptr + tile_t, tl.trans(v_bits), mask=d_valid[:, None])
            tl.store(v_exp_ptr + block_index * HEAD_DIM + offs_d, v_exp, mask=d_valid)
        else:
            tl.store(v_cache_ptr + block_ptr + tile, v_new, mask=new_mask)
        if j == 0 and end % BLOCK_N != 0:  # the new tails, unless end closes a block
            k_tail = _new_tail(k, k_new_ptr, stride_kn, block_start, start, end, BLOCK_N, HEAD_DIM, HEAD_DIM_PAD)
            if V_E4M3:
                v_tail = _new_tail(v, v_new_ptr, stride_vn, block_start, start, end, BLOCK_N, HEAD_DIM,
                                   HEAD_DIM_PAD)
            tl.debug_barrier()  # every thread has read the old tails (k_old, v_old) before any overwrites them
            tl.store(k_tail_ptr + tail_offset + tile, k_tail, mask=d_valid[None, :])
            if V_E4M3:
                tl.store(v_tail_ptr + tail_offset + tile, v_tail, mask=d_valid[None, :])


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
