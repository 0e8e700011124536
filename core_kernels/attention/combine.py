"""Merging attention computed over disjoint key sets: the partial outputs and log2-sum-exps of each set -> the
output and lse of all keys, exactly (up to fp32 rounding), in a fixed order (deterministic).

    out = sum_s 2**(lse_s - M) * out_s / sum_s 2**(lse_s - M),   lse = M + log2(sum_s 2**(lse_s - M))

with M the maximum of the lse_s. A set that saw no key has lse_s = -inf and weighs nothing; a row no set
saw stays zeros with lse -inf. The split-KV kernel (split_kv.py) produces such partials; so would attention over
key shards held by different GPUs.
"""
import triton
import triton.language as tl

from .. import contract
from ..alignment import _aligned

LN2 = tl.constexpr(contract.LN2)


@triton.jit(do_not_specialize=["n_rows", "heads", "stride_ob", "stride_oh", "stride_on"])
def combine_kernel(
    partial_out_ptr, partial_lse_ptr,
    n_rows, heads, stride_ob, stride_oh, stride_on,
    out_ptr, lse_ptr,
    HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr, SPLITS: tl.constexpr, SPLITS_PAD: tl.constexpr,
    RETURN_LSE: tl.constexpr, STRIDE_ALIGN: tl.constexpr,
):
    """partial_out: fp32 [B*heads, SPLITS, n_rows, HEAD_DIM] (each set's normalized output); partial_lse: fp32
    [B*heads, SPLITS, n_rows], base 2. out: [B, heads, n_rows, HEAD_DIM] at the given strides, in its dtype;
    lse: [B*heads, n_rows], natural log. Grid: B * heads * n_rows, one row each: all of its SPLITS partials are
    loaded at once (SPLITS_PAD: the next power of two), so a row costs one round trip, not SPLITS."""
    stride_ob, stride_oh, stride_on = _aligned(stride_ob, stride_oh, stride_on, STRIDE_ALIGN)
    pid = tl.program_id(0)
    bh = pid // n_rows
    row = pid % n_rows
    offs_s = tl.arange(0, SPLITS_PAD)
    offs_d = tl.arange(0, HEAD_DIM_PAD)
    part_rows = (bh.to(tl.int64) * SPLITS + offs_s) * n_rows + row
    lse_s = tl.load(partial_lse_ptr + part_rows, mask=offs_s < SPLITS, other=float("-inf"))
    m = tl.max(lse_s, axis=0)
    m_safe = tl.where(m == float("-inf"), 0.0, m)  # no set saw a key: no -inf - -inf
    weight = tl.math.exp2(lse_s - m_safe)
    out_s = tl.load(partial_out_ptr + part_rows[:, None] * HEAD_DIM + offs_d[None, :],
                    mask=(offs_s < SPLITS)[:, None] & (offs_d < HEAD_DIM)[None, :], other=0.0)
    total = tl.sum(weight, axis=0)
    acc = tl.sum(weight[:, None] * out_s, axis=0)
    seen_nothing = total == 0.0
    out = acc / tl.where(seen_nothing, 1.0, total)
    b = bh // heads
    h = bh % heads
    out_ptrs = out_ptr + b.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh + row * stride_on + offs_d
    tl.store(out_ptrs, out.to(out_ptr.dtype.element_ty), mask=offs_d < HEAD_DIM)
    if RETURN_LSE:
        lse = tl.where(seen_nothing, float("-inf"), (m + tl.math.log2(tl.where(seen_nothing, 1.0, total))) * LN2)
        tl.store(lse_ptr + bh.to(tl.int64) * n_rows + row, lse)
