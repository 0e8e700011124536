"""Per-block INT8 quantization of Q and K (SageAttention V1), with K smoothed by its mean.

Device functions, called by the launches of prepare.py:
  _channel_reduce  one chunk of ROWS_PER_CHUNK keys -> one row of fp32 partial channel sums (K, for its mean)
                   or channel maxima of |x| (V, for its FP8 scales). Splitting over chunks keeps every SM busy
                   when B*H is small; the partials are later combined in a fixed order, so the result is
                   deterministic (no atomics).
  _quantize_block  one block of rows -> INT8 rows + one fp32 scale. Called for K (mean subtracted) and for Q
                   (sm_scale*log2(e) folded in, optional per-row q.mean for the lse).
  _quantize_v_block  the FP8 P.V mode: one block of BLOCK_N keys of V -> e4m3 V^T (channels x keys), scaled per
                   channel by 448 / max|V[:, channel]| over all keys (SageAttention2's per-channel V scale).
  _v_to_fp16_block  bf16 V in the fp16 P.V mode: one block of BLOCK_N keys -> fp16 rows, the P.V MMA's operand,
                   converted once here instead of in every attention program that reads the block.
Strides reaching them are in elements, already multiplied back by `_aligned`.
"""
import triton
import triton.language as tl
from triton import knobs

from .fp8 import E4M3_MAX, to_e4m3


@triton.jit
def _load_rows(tile_ptr, first_row, n_rows, stride_n, TILE_ROWS: tl.constexpr, HEAD_DIM: tl.constexpr,
               HEAD_DIM_PAD: tl.constexpr):
    """TILE_ROWS rows from tile_ptr (row first_row of its head), zeros past n_rows and HEAD_DIM."""
    offs_r = tl.arange(0, TILE_ROWS)
    offs_d = tl.arange(0, HEAD_DIM_PAD)
    valid = (first_row + offs_r < n_rows)[:, None] & (offs_d < HEAD_DIM)[None, :]
    return tl.load(tile_ptr + offs_r[:, None] * stride_n + offs_d[None, :], mask=valid, other=0.0)


@triton.jit
def _reduce_rows(acc, x, ABS_MAX: tl.constexpr):
    if ABS_MAX:
        # a NaN keeps its own e4m3 NaN and reaches the output; it must not make the channel's scale NaN
        return tl.maximum(acc, tl.where(x == x, tl.abs(x.to(tl.float32)), 0.0))
    else:
        return acc + x.to(tl.float32)


@triton.jit
def _channel_reduce(
    x_ptr, bh, chunk, n_chunks, n_rows, heads, stride_b, stride_h, stride_n, partial_ptr,
    ROWS_PER_CHUNK: tl.constexpr, TILE_ROWS: tl.constexpr, HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr,
    ABS_MAX: tl.constexpr,
):
    """Sums (ABS_MAX False) or maxima of |x| ignoring NaNs (ABS_MAX True) over the chunk's rows, per channel.
    An iteration issues four tile loads before it uses the first: with one in flight a program, the few programs
    an SM that B*Hkv*chunks gives at moderate sizes leave DRAM idle."""
    tl.static_assert(ROWS_PER_CHUNK % (4 * TILE_ROWS) == 0, "_channel_reduce: ROWS_PER_CHUNK % (4 * TILE_ROWS)")
    b = bh // heads
    h = bh % heads
    first_row = chunk * ROWS_PER_CHUNK
    chunk_ptr = x_ptr + b.to(tl.int64) * stride_b + h.to(tl.int64) * stride_h + first_row.to(tl.int64) * stride_n
    offs_d = tl.arange(0, HEAD_DIM_PAD)
    acc = tl.zeros([TILE_ROWS, HEAD_DIM_PAD], dtype=tl.float32)
    for r0 in range(0, ROWS_PER_CHUNK, 4 * TILE_ROWS):
        row = first_row + r0
        ptr = chunk_ptr + r0 * stride_n
        x0 = _load_rows(ptr, row, n_rows, stride_n, TILE_ROWS, HEAD_DIM, HEAD_DIM_PAD)
        x1 = _load_rows(ptr + TILE_ROWS * stride_n, row + TILE_ROWS, n_rows, stride_n, TILE_ROWS, HEAD_DIM,
                        HEAD_DIM_PAD)
        x2 = _load_rows(ptr + 2 * TILE_ROWS * stride_n, row + 2 * TILE_ROWS, n_rows, stride_n, TILE_ROWS, HEAD_DIM,
                        HEAD_DIM_PAD)
        x3 = _load_rows(ptr + 3 * TILE_ROWS * stride_n, row + 3 * TILE_ROWS, n_rows, stride_n, TILE_ROWS, HEAD_DIM,
                        HEAD_DIM_PAD)
        acc = _reduce_rows(_reduce_rows(_reduce_rows(_reduce_rows(acc, x0, ABS_MAX), x1, ABS_MAX), x2, ABS_MAX), x3,
                           ABS_MAX)
    out_ptr = partial_ptr + (bh.to(tl.int64) * n_chunks + chunk) * HEAD_DIM_PAD
    if ABS_MAX:
        tl.store(out_ptr + offs_d, tl.max(acc, axis=0))
    else:
        tl.store(out_ptr + offs_d, tl.sum(acc, axis=0))


@triton.jit
def _channel_mean(partial_sums_ptr, mean_bh, n_chunks, n_mean_rows, ROWS_PER_CHUNK: tl.constexpr,
                  HEAD_DIM_PAD: tl.constexpr):
    """Mean over the first n_mean_rows keys of one (batch, kv head), from _channel_reduce's partial sums (n_chunks
    a row), summed in chunk order: the same value in every kernel that asks. Four partials are loaded at a time,
    before any is added (one dependent load a chunk cost each quantize program a round trip per 2048 keys); a
    partial past the last reads as +0.0, which leaves the sum's bits as they are (it is never -0.0)."""
    offs_d = tl.arange(0, HEAD_DIM_PAD)
    row_ptr = partial_sums_ptr + mean_bh.to(tl.int64) * n_chunks * HEAD_DIM_PAD
    n_used = tl.cdiv(n_mean_rows, ROWS_PER_CHUNK)
    total = tl.zeros([HEAD_DIM_PAD], dtype=tl.float32)
    for c in range(0, n_used, 4):
        x0 = tl.load(row_ptr + c * HEAD_DIM_PAD + offs_d)
        x1 = tl.load(row_ptr + (c + 1) * HEAD_DIM_PAD + offs_d, mask=(c + 1 < n_used) & (offs_d >= 0), other=0.0)
        x2 = tl.load(row_ptr + (c + 2) * HEAD_DIM_PAD + offs_d, mask=(c + 2 < n_used) & (offs_d >= 0), other=0.0)
        x3 = tl.load(row_ptr + (c + 3) * HEAD_DIM_PAD + offs_d, mask=(c + 3 < n_used) & (offs_d >= 0), other=0.0)
        total = (((total + x0) + x1) + x2) + x3
    # n_mean_rows == 0 only when no key is valid; the mean is then unused, keep it finite.
    return total / tl.maximum(n_mean_rows, 1).to(tl.float32)


@triton.jit
def _load_block(x_ptr, b, h, blk, n_rows, stride_b, stride_h, stride_n, BLOCK_ROWS: tl.constexpr,
                HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr):
    """Rows [blk*BLOCK_ROWS, +BLOCK_ROWS) of x[b, h] in fp32, zeros past n_rows and HEAD_DIM; also the global row
    indices and the validity mask."""
    offs_r = tl.arange(0, BLOCK_ROWS)
    offs_d = tl.arange(0, HEAD_DIM_PAD)
    rows = blk * BLOCK_ROWS + offs_r
    valid = (rows < n_rows)[:, None] & (offs_d < HEAD_DIM)[None, :]
    block_ptr = x_ptr + b.to(tl.int64) * stride_b + h.to(tl.int64) * stride_h + (blk * BLOCK_ROWS).to(tl.int64) * stride_n
    x = tl.load(block_ptr + offs_r[:, None] * stride_n + offs_d[None, :], mask=valid, other=0.0).to(tl.float32)
    return x, rows, valid


# The interpreter runs tl.reduce with a custom combine element by element (minutes for one quantize launch), so
# there _abs_max forms the same value from tl.max, which drops NaNs, and a NaN count.
_INTERPRETED = tl.constexpr(knobs.runtime.interpret)


@triton.jit
def _max_propagating_nan(a, b):
    return tl.maximum(a, b, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def _abs_max(x, axis=None):
    """max |x| (over `axis`, or all of x), NaN if any element is NaN: a NaN must make its block's scale NaN so that
    it reaches the output (a plain max drops NaNs on the GPU)."""
    if _INTERPRETED:
        return tl.where(tl.sum((x != x).to(tl.int32), axis) > 0, float("nan"), tl.max(tl.abs(x), axis))
    elif axis is None:
        return tl.reduce(tl.reduce(tl.abs(x), 1, _max_propagating_nan), 0, _max_propagating_nan)
    else:
        return tl.reduce(tl.abs(x), axis, _max_propagating_nan)


@triton.jit
def _to_int8(x, amax):
    """x -> (int8, scale) given its block's _abs_max (a scalar, or a tensor broadcasting to x's rows when blocks
    are row groups): scale = amax / 127, round half away from zero, an all-zero block quantizes to 0 (never 0/0).
    A block whose amax is NaN or inf gets that scale, which carries it to the output; its int8 values (of
    0 * x) are then never used."""
    inv_scale = tl.where(amax > 0.0, 127.0 / amax, 0.0)
    scaled = x * inv_scale
    # + or - 0.5 by the sign bit of `scaled` (-0.0 rounds to 0 either way), then truncation
    half = ((scaled.to(tl.int32, bitcast=True) & -2147483648) | 0x3F000000).to(tl.float32, bitcast=True)
    return (scaled + half).to(tl.int8), amax / 127.0


@triton.jit
def _quantize_block(
    x_ptr, partial_sums_ptr, pre_scale, bh, blk, n_blocks, n_rows, n_chunks, n_mean_rows, heads, mean_head_group,
    stride_b, stride_h, stride_n, x_int8_ptr, x_scale_ptr, row_shift_ptr,
    BLOCK_ROWS: tl.constexpr, HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr,
    ROWS_PER_CHUNK: tl.constexpr, SUBTRACT_MEAN: tl.constexpr, WRITE_ROW_SHIFT: tl.constexpr,
):
    """x[b, h, rows of block] * pre_scale (- mean) -> int8 [B*H, n_blocks*BLOCK_ROWS, HEAD_DIM] + fp32 scale.

    The mean is the one of kv head h // mean_head_group (1 for K itself, the GQA group size for Q), over its
    n_mean_rows valid keys. Rows past n_rows are written as zeros so the attention kernel loads whole blocks
    without a mask.
    """
    b = bh // heads
    h = bh % heads
    if SUBTRACT_MEAN or WRITE_ROW_SHIFT:  # its loads first: they overlap the block's
        mean = _channel_mean(partial_sums_ptr, b * (heads // mean_head_group) + h // mean_head_group, n_chunks,
                             n_mean_rows, ROWS_PER_CHUNK, HEAD_DIM_PAD)
    x, rows, valid = _load_block(x_ptr, b, h, blk, n_rows, stride_b, stride_h, stride_n, BLOCK_ROWS, HEAD_DIM,
                                 HEAD_DIM_PAD)
    offs_r = tl.arange(0, BLOCK_ROWS)
    offs_d = tl.arange(0, HEAD_DIM_PAD)
    d_valid = offs_d < HEAD_DIM
    x = x * tl.cast(pre_scale, tl.float32)  # jax-triton passes Python floats as fp64
    if SUBTRACT_MEAN or WRITE_ROW_SHIFT:
        if SUBTRACT_MEAN:
            x = tl.where(valid, x - mean[None, :], 0.0)
        if WRITE_ROW_SHIFT:
            # (pre_scale * q) . mean: what smoothing K removed from each logit, added back to the lse.
            row_shift = tl.sum(x * mean[None, :], axis=1)
            tl.store(row_shift_ptr + bh.to(tl.int64) * n_blocks * BLOCK_ROWS + rows, row_shift)
    x_int8, scale = _to_int8(x, _abs_max(x))
    out_ptr = x_int8_ptr + (bh.to(tl.int64) * n_blocks + blk) * (BLOCK_ROWS * HEAD_DIM)
    tl.store(out_ptr + offs_r[:, None] * HEAD_DIM + offs_d[None, :], x_int8, mask=d_valid[None, :])
    tl.store(x_scale_ptr + bh.to(tl.int64) * n_blocks + blk, scale)


@triton.jit
def _quantize_v_block(
    v_ptr, partial_amax_ptr, bh, blk, n_blocks, n_rows, n_chunks, heads, stride_b, stride_h, stride_n, v_fp8_ptr,
    v_scale_ptr,
    BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr, ROWS_PER_CHUNK: tl.constexpr,
    FP8_SOFTWARE_ROUNDING: tl.constexpr,
):
    """V[b, h, keys of block] -> e4m3 bits of V^T (HEAD_DIM x BLOCK_N, keys contiguous) at block blk of
    [B*H, n_blocks, HEAD_DIM, BLOCK_N]; block 0 also writes the dequantization scales max|V[:, d]| / 448.

    Keys past n_rows (the valid ones) are written as zeros; a channel that is all zeros gets scale 0 (never 0/0).
    n_chunks: the row length of the partial maxima.
    """
    x, _, _ = _load_block(v_ptr, bh // heads, bh % heads, blk, n_rows, stride_b, stride_h, stride_n, BLOCK_N,
                          HEAD_DIM, HEAD_DIM_PAD)
    offs_r = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM_PAD)
    d_valid = offs_d < HEAD_DIM
    amax_row_ptr = partial_amax_ptr + bh.to(tl.int64) * n_chunks * HEAD_DIM_PAD
    amax = tl.zeros([HEAD_DIM_PAD], dtype=tl.float32)
    for c in range(0, tl.cdiv(n_rows, ROWS_PER_CHUNK)):
        amax = tl.maximum(amax, tl.load(amax_row_ptr + c * HEAD_DIM_PAD + offs_d))
    inv_scale = tl.where(amax > 0.0, E4M3_MAX / amax, 0.0)
    x_fp8 = to_e4m3(x * inv_scale[None, :], FP8_SOFTWARE_ROUNDING)
    out_ptr = v_fp8_ptr + (bh.to(tl.int64) * n_blocks + blk) * (HEAD_DIM * BLOCK_N)
    tl.store(out_ptr + offs_d[:, None] * BLOCK_N + offs_r[None, :], tl.trans(x_fp8.to(tl.uint8, bitcast=True)),
             mask=d_valid[:, None])
    if blk == 0:
        tl.store(v_scale_ptr + bh.to(tl.int64) * HEAD_DIM_PAD + offs_d, amax / E4M3_MAX)


@triton.jit
def _v_to_fp16_block(
    v_ptr, bh, blk, n_blocks, n_rows, heads, stride_b, stride_h, stride_n, v_fp16_ptr,
    BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr,
):
    """V[b, h, keys of block] -> fp16 at block blk of [B*H, n_blocks*BLOCK_N, HEAD_DIM] (rounded to nearest
    even: bf16 -> fp32 is exact, so this is the attention kernel's own bf16 -> fp16 conversion). Keys past n_rows
    are written as zeros."""
    x, _, _ = _load_block(v_ptr, bh // heads, bh % heads, blk, n_rows, stride_b, stride_h, stride_n, BLOCK_N,
                          HEAD_DIM, HEAD_DIM_PAD)
    offs_r = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM_PAD)
    out_ptr = v_fp16_ptr + (bh.to(tl.int64) * n_blocks + blk) * (BLOCK_N * HEAD_DIM)
    tl.store(out_ptr + offs_r[:, None] * HEAD_DIM + offs_d[None, :], x.to(tl.float16),
             mask=(offs_d < HEAD_DIM)[None, :])
