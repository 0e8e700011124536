"""A predicted block mask from q and k (SpargeAttn-style), in two kernels, no host sync, no atomics.

  pool_blocks_kernel    one block of rows -> its fp32 mean over the rows that exist (a ragged last block averages
                        fewer rows). Launched for Q (128-row blocks) and for K (64-row blocks, stored transposed
                        so the selection kernel reads one channel of every key block contiguously).
  select_blocks_kernel  one (batch, query head, query block) -> one row of the int8 mask: pooled scores against
                        every candidate key block, a softmax over them, then the kept set.

K is not smoothed by its mean: subtracting one vector m from every pooled key shifts every score of a query block
by the same pq . m, and a softmax over that block's key blocks does not see a common shift (also under causality,
which only removes whole key blocks from the row). So smoothing would change nothing but rounding.

The kept set, for the candidate key blocks of a row (all of them, or under causality those not entirely above
the diagonal), ranked by probability descending and then by index ascending (ties are kept deterministic):
  cdf_threshold  the shortest prefix whose probability mass reaches the threshold (all blocks if none does),
  topk           the first ceil(topk * candidates) of them,
plus, always, the sink (key block 0) and the diagonal blocks (the key blocks holding the query block's own
positions, bottom-right aligned: query i sits at key position i + Nk - Nq). Non-candidates are never kept.

No sort: every candidate gets a unique int64 key, (bits of its fp32 probability) * KB_PAD + (KB_PAD - 1 - index),
which orders candidates exactly as the ranking does (non-negative floats order like their bit patterns). The kept
prefix is then {key >= T} with T the largest value whose {key >= T} still reaches the target mass (or count); T
is built bit by bit from the top, each step one masked sum. Sums of a growing set of non-negative terms in one
fixed reduction order never decrease, so the search is exact for the sums it computes.
"""
import triton
import triton.language as tl

from ..alignment import _aligned


@triton.jit(do_not_specialize=["n_rows", "heads", "stride_b", "stride_h", "stride_n", "out_stride_blk",
                               "out_stride_d"])
def pool_blocks_kernel(
    x_ptr,
    n_rows, heads, stride_b, stride_h, stride_n, out_stride_blk, out_stride_d,
    pooled_ptr,
    BLOCK_ROWS: tl.constexpr, HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr, STRIDE_ALIGN: tl.constexpr,
):
    """x[b, h, rows of block] -> fp32 mean at pooled[bh * n_blocks * HEAD_DIM + blk * out_stride_blk
    + d * out_stride_d]: (blk, d) row-major for Q, (d, blk) for K."""
    stride_b, stride_h, stride_n = _aligned(stride_b, stride_h, stride_n, STRIDE_ALIGN)
    bh = tl.program_id(0)
    blk = tl.program_id(1)
    n_blocks = tl.num_programs(1)
    b = bh // heads
    h = bh % heads
    offs_r = tl.arange(0, BLOCK_ROWS)
    offs_d = tl.arange(0, HEAD_DIM_PAD)
    d_valid = offs_d < HEAD_DIM
    valid = (blk * BLOCK_ROWS + offs_r < n_rows)[:, None] & d_valid[None, :]
    block_ptr = (x_ptr + b.to(tl.int64) * stride_b + h.to(tl.int64) * stride_h
                 + (blk * BLOCK_ROWS).to(tl.int64) * stride_n)
    x = tl.load(block_ptr + offs_r[:, None] * stride_n + offs_d[None, :], mask=valid, other=0.0).to(tl.float32)
    n_valid = tl.minimum(n_rows - blk * BLOCK_ROWS, BLOCK_ROWS)  # >= 1: the grid holds no empty block
    mean = tl.sum(x, axis=0) / n_valid.to(tl.float32)
    out_ptr = pooled_ptr + bh.to(tl.int64) * n_blocks * HEAD_DIM + blk * out_stride_blk
    tl.store(out_ptr + offs_d * out_stride_d, mean, mask=d_valid)


@triton.jit(do_not_specialize=["keep_target", "n_q", "n_k", "heads_q", "kv_group"])
def select_blocks_kernel(
    pooled_q_ptr, pooled_k_ptr,
    score_scale, keep_target, n_q, n_k, heads_q, kv_group,
    mask_ptr,
    HEAD_DIM: tl.constexpr, KB_PAD: tl.constexpr, KEY_BITS: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, IS_CAUSAL: tl.constexpr, TOPK: tl.constexpr,
):
    """mask: int8 [B*Hq, n_qb, n_kb] row-major, 1 = keep. score_scale = sm_scale * log2(e); keep_target is the
    CDF threshold, or with TOPK the fraction of candidates. KB_PAD: a power of 2 >= n_kb; KEY_BITS: the bits
    of a ranking key (30 for a probability <= 1, log2(KB_PAD) for the index)."""
    bhq = tl.program_id(0)
    qb = tl.program_id(1)
    n_qb = tl.num_programs(1)
    n_kb = tl.cdiv(n_k, BLOCK_N)
    b = bhq // heads_q
    h = bhq % heads_q
    bkv = b * (heads_q // kv_group) + h // kv_group
    kbs = tl.arange(0, KB_PAD)
    in_range = kbs < n_kb

    # Pooled scores, one channel at a time: a fixed fp32 accumulation order, no cross-lane reduction.
    pq_ptr = pooled_q_ptr + (bhq.to(tl.int64) * n_qb + qb) * HEAD_DIM
    pk_ptr = pooled_k_ptr + bkv.to(tl.int64) * HEAD_DIM * n_kb + kbs
    acc = tl.zeros([KB_PAD], dtype=tl.float32)
    for d in range(0, HEAD_DIM):
        acc += tl.load(pq_ptr + d) * tl.load(pk_ptr + d * n_kb, mask=in_range, other=0.0)
    scores = acc * tl.cast(score_scale, tl.float32)  # log2 domain; jax-triton passes Python floats as fp64

    first_pos = qb * BLOCK_M + (n_k - n_q)
    last_pos = tl.minimum(qb * BLOCK_M + BLOCK_M - 1, n_q - 1) + (n_k - n_q)
    candidate = in_range
    if IS_CAUSAL:
        candidate = candidate & (kbs * BLOCK_N <= last_pos)
    diagonal = (kbs * BLOCK_N + BLOCK_N - 1 >= first_pos) & (kbs * BLOCK_N <= last_pos)
    forced = candidate & (diagonal | (kbs == 0))

    row_max = tl.max(tl.where(candidate, scores, float("-inf")), axis=0)
    e = tl.where(candidate, tl.exp2(scores - row_max), 0.0)
    # The best candidate contributes exp2(0) = 1, so total >= 1 whenever there is one; 1 keeps 0/0 out otherwise.
    p = e / tl.maximum(tl.sum(e, axis=0), 1.0)

    key = tl.where(candidate, p.to(tl.int32, bitcast=True).to(tl.int64) * KB_PAD + (KB_PAD - 1 - kbs), -1)
    if TOPK:
        weight = tl.where(candidate, 1.0, 0.0)
        target = tl.ceil(tl.cast(keep_target, tl.float32) * tl.sum(weight, axis=0))
    else:
        weight = p
        target = tl.cast(keep_target, tl.float32)
    threshold = tl.zeros([], dtype=tl.int64)
    for i in range(0, KEY_BITS):
        trial = threshold | (tl.full([], 1, tl.int64) << (KEY_BITS - 1 - i))
        reached = tl.sum(tl.where(key >= trial, weight, 0.0), axis=0) >= target
        threshold = tl.where(reached, trial, threshold)
    # Non-candidates have key -1 < threshold; a target no prefix reaches leaves threshold 0: every candidate.
    keep = (key >= threshold) | forced
    tl.store(mask_ptr + (bhq.to(tl.int64) * n_qb + qb) * n_kb + kbs, keep.to(tl.int8), mask=in_range)
