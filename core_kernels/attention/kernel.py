"""Block-sparse INT8 attention (SageAttention V1 numerics) over the live key blocks of each query block.

One program per (batch, query head, query block of BLOCK_M rows). It walks the block list written by
block_lists.py: first the `full` entries with no element mask, then the rest with the causal / key-tail
mask, one or two list entries per step (KEY_BLOCKS_PER_STEP, from the launch table). Scores are INT8 Q.K^T
with int32 accumulation, scaled by the two block scales into the log2 domain (sm_scale*log2(e) is already
folded into Q's scale), then an exp2 online softmax; P.V runs in fp16 with fp32 accumulation, or with
PV_FP8 as e4m3 P (static scale 448) times e4m3 V^T (per-channel scales), each tile's product added in fp32.
Rows that see no key end with l == 0 and are written as zeros with lse = -inf.
"""
import triton
import triton.language as tl

from ..alignment import _aligned
from .. import contract
from .fp8 import E4M3_MAX, to_e4m3
from .kv_lens import _valid_keys

LN2 = tl.constexpr(contract.LN2)  # a global a compiled kernel may read must be a tl.constexpr object
P_FP8_SCALE = E4M3_MAX  # static scale of P (in [0, 1]) in the FP8 P.V mode: its largest value maps to e4m3's


@triton.jit
def _softmax_step(acc, m_i, l_i, s, MASKED: tl.constexpr):
    """The online softmax's update by a tile of log2-domain scores s (rows x keys): the tile's weights p, acc
    rescaled to the new row maxima, and the new (m, l). MASKED: s may hold -inf, whole rows of it."""
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    if MASKED:
        m_new_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row with nothing visible yet: no -inf - -inf
    else:
        m_new_safe = m_new
    alpha = tl.math.exp2(m_i - m_new_safe)
    p = tl.math.exp2(s - m_new_safe[:, None])
    l_i = l_i * alpha + tl.sum(p, axis=1)
    acc = acc * alpha[:, None]
    return p, acc, m_new, l_i


@triton.jit
def _attend_tile(
    acc, m_i, l_i, q, score_scale, k_ptrs, v_ptrs, k_rows, q_rows, n_q, n_k,
    HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr, IS_CAUSAL: tl.constexpr, MASKED: tl.constexpr,
    PV_FP8: tl.constexpr, FP8_SOFTWARE_ROUNDING: tl.constexpr,
):
    """One online-softmax step over a tile of keys (global rows k_rows). k_ptrs: the tile's int8 K rows (keys x
    channels); v_ptrs: its V rows (keys x channels), or in the FP8 mode its e4m3 V^T (channels x keys: FP8 MMAs
    take both operands K-major). score_scale: q_scale * k_scale, a scalar or a (1, keys) row."""
    d_valid = tl.arange(0, HEAD_DIM_PAD) < HEAD_DIM
    if MASKED:
        key_valid = k_rows < n_k
        kv_mask = key_valid[:, None] & d_valid[None, :]
    else:
        kv_mask = d_valid[None, :]
    k = tl.load(k_ptrs, mask=kv_mask, other=0)
    s = tl.dot(q, tl.trans(k)).to(tl.float32) * score_scale
    if MASKED:
        visible = key_valid[None, :]
        if IS_CAUSAL:
            visible = visible & (k_rows[None, :] <= q_rows[:, None] + (n_k - n_q))
        s = tl.where(visible, s, float("-inf"))
    p, acc, m_new, l_i = _softmax_step(acc, m_i, l_i, s, MASKED)
    if PV_FP8:
        if MASKED:
            vt_mask = d_valid[:, None] & key_valid[None, :]
        else:
            vt_mask = d_valid[:, None]
        vt = tl.load(v_ptrs, mask=vt_mask, other=0).to(tl.float8e4nv, bitcast=True)
        p_fp8 = to_e4m3(p * P_FP8_SCALE, FP8_SOFTWARE_ROUNDING)
        acc += tl.dot(p_fp8, tl.trans(vt))  # a fresh fp32 accumulator per tile, added in fp32
    else:
        v = tl.load(v_ptrs, mask=kv_mask, other=0.0)
        acc = tl.dot(p.to(tl.float16), v.to(tl.float16), acc)
    return acc, m_new, l_i


@triton.jit
def _attend_blocks(
    acc, m_i, l_i, q, q_scale,
    k_head_ptr, k_scale_head_ptr, v_head_ptr, v_fp8_head_ptr, indices_row_ptr, list_start, list_end,
    q_rows, n_q, n_k, n_valid, stride_vn,
    BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr, IS_CAUSAL: tl.constexpr,
    MASKED: tl.constexpr, PV_FP8: tl.constexpr, FP8_SOFTWARE_ROUNDING: tl.constexpr,
):
    """List entries [list_start, list_end), one 64-key block per step. n_k: the keys K/V are laid out for;
    n_valid: the keys that exist (kv_lens), what the key mask and the causal rule use."""
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM_PAD)
    # Each step's block index is loaded by the step before, into a loop-carried scalar. Loaded in the step that
    # uses it, it feeds that step's K/V addresses, and Triton's pipeliner then waits for every outstanding async
    # copy at each step (cp.async.wait_group 0): the next tiles' loads would never overlap the current step.
    kb_next = tl.load(indices_row_ptr + list_start, mask=list_start < list_end, other=0)
    for it in range(list_start, list_end):
        kb = kb_next
        kb_next = tl.load(indices_row_ptr + it + 1, mask=it + 1 < list_end, other=0)
        k_ptrs = k_head_ptr + kb * (BLOCK_N * HEAD_DIM) + offs_n[:, None] * HEAD_DIM + offs_d[None, :]
        if PV_FP8:
            v_ptrs = v_fp8_head_ptr + kb * (BLOCK_N * HEAD_DIM) + offs_d[:, None] * BLOCK_N + offs_n[None, :]
        else:
            v_ptrs = (v_head_ptr + (kb * BLOCK_N).to(tl.int64) * stride_vn + offs_n[:, None] * stride_vn
                      + offs_d[None, :])
        acc, m_i, l_i = _attend_tile(acc, m_i, l_i, q, q_scale * tl.load(k_scale_head_ptr + kb), k_ptrs, v_ptrs,
                                     kb * BLOCK_N + offs_n, q_rows, n_q, n_valid, HEAD_DIM, HEAD_DIM_PAD,
                                     IS_CAUSAL, MASKED, PV_FP8, FP8_SOFTWARE_ROUNDING)
    return acc, m_i, l_i


@triton.jit
def _attend_block_pairs(
    acc, m_i, l_i, q, q_scale,
    k_head_ptr, k_scale_head_ptr, v_head_ptr, v_fp8_head_ptr, indices_row_ptr, list_start, list_end,
    q_rows, n_q, n_k, n_valid, stride_vn,
    BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr, IS_CAUSAL: tl.constexpr,
    MASKED: tl.constexpr, PV_FP8: tl.constexpr, FP8_SOFTWARE_ROUNDING: tl.constexpr,
):
    """Entries [list_start, list_end) two at a time: one 2*BLOCK_N-key tile per step, rows (and score columns)
    0..BLOCK_N-1 from the first block, the rest from the second. Unmasked calls get an even count. In masked
    calls an odd count leaves the last step one block: its second half points past the last key block, so the
    key mask that already serves the ragged tail hides it (no load, -inf scores, zero V rows); n_valid <= n_k."""
    offs_n = tl.arange(0, 2 * BLOCK_N)
    first_half = offs_n < BLOCK_N
    offs_in_block = offs_n % BLOCK_N
    offs_d = tl.arange(0, HEAD_DIM_PAD)
    n_kb = tl.cdiv(n_k, BLOCK_N)
    # Block indices are read one step ahead (see _attend_blocks); a second entry past the list reads as n_kb.
    kb_a_next = tl.load(indices_row_ptr + list_start, mask=list_start < list_end, other=0)
    kb_b_next = tl.load(indices_row_ptr + list_start + 1, mask=list_start + 1 < list_end, other=n_kb)
    for it in range(list_start, list_end, 2):
        kb_a = kb_a_next
        kb_b = kb_b_next
        kb_a_next = tl.load(indices_row_ptr + it + 2, mask=it + 2 < list_end, other=0)
        kb_b_next = tl.load(indices_row_ptr + it + 3, mask=it + 3 < list_end, other=n_kb)
        if MASKED:
            scale_b = tl.load(k_scale_head_ptr + kb_b, mask=kb_b < n_kb, other=0.0)
        else:
            scale_b = tl.load(k_scale_head_ptr + kb_b)
        kb = tl.where(first_half, kb_a, kb_b)
        k_rows = kb * BLOCK_N + offs_in_block
        k_ptrs = k_head_ptr + kb[:, None] * (BLOCK_N * HEAD_DIM) + offs_in_block[:, None] * HEAD_DIM + offs_d[None, :]
        if PV_FP8:
            v_ptrs = (v_fp8_head_ptr + kb[None, :] * (BLOCK_N * HEAD_DIM) + offs_d[:, None] * BLOCK_N
                      + offs_in_block[None, :])
        else:
            v_ptrs = v_head_ptr + k_rows.to(tl.int64)[:, None] * stride_vn + offs_d[None, :]
        # Per-column scales; each product is the one the one-block path forms, so scores match it exactly.
        score_scale = tl.where(first_half, q_scale * tl.load(k_scale_head_ptr + kb_a), q_scale * scale_b)
        acc, m_i, l_i = _attend_tile(acc, m_i, l_i, q, score_scale[None, :], k_ptrs, v_ptrs, k_rows, q_rows, n_q,
                                     n_valid, HEAD_DIM, HEAD_DIM_PAD, IS_CAUSAL, MASKED, PV_FP8,
                                     FP8_SOFTWARE_ROUNDING)
    return acc, m_i, l_i


# The attention kernels' runtime scalars, none specialized (core_kernels/alignment.py); every variant takes them.
UNSPECIALIZED = [
    "n_q", "n_k", "heads_q", "kv_group", "list_stride_b", "list_stride_h",
    "stride_vb", "stride_vh", "stride_vn", "stride_ob", "stride_oh", "stride_on",
]


@triton.jit(do_not_specialize=UNSPECIALIZED)
def attention_kernel(
    q_int8_ptr, q_scale_ptr, k_int8_ptr, k_scale_ptr, v_ptr, v_fp8_ptr, v_scale_ptr, counts_ptr, indices_ptr,
    row_shift_ptr, kv_lens_ptr,
    n_q, n_k, heads_q, kv_group, list_stride_b, list_stride_h,
    stride_vb, stride_vh, stride_vn,
    stride_ob, stride_oh, stride_on,
    out_ptr, lse_ptr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr,
    IS_CAUSAL: tl.constexpr, RETURN_LSE: tl.constexpr, SHIFT_LSE: tl.constexpr, STRIDE_ALIGN: tl.constexpr,
    KEY_BLOCKS_PER_STEP: tl.constexpr, PV_FP8: tl.constexpr, FP8_SOFTWARE_ROUNDING: tl.constexpr,
    HAS_KV_LENS: tl.constexpr,
):
    """v_fp8_ptr / v_scale_ptr: V^T in e4m3 per key block and its per-channel scales (quantize_v), read only when
    PV_FP8; v_ptr is read only without it. kv_lens_ptr: valid keys per batch row, read only with HAS_KV_LENS."""
    stride_vb, stride_vh, stride_vn = _aligned(stride_vb, stride_vh, stride_vn, STRIDE_ALIGN)
    stride_ob, stride_oh, stride_on = _aligned(stride_ob, stride_oh, stride_on, STRIDE_ALIGN)
    n_qb = tl.cdiv(n_q, BLOCK_M)
    n_kb = tl.cdiv(n_k, BLOCK_N)
    pid = tl.program_id(0)
    bh = pid // n_qb
    qb = n_qb - 1 - pid % n_qb  # last query blocks first: under causal they carry the most work
    b = bh // heads_q
    h = bh % heads_q
    kv_bh = b * (heads_q // kv_group) + h // kv_group
    n_valid = _valid_keys(kv_lens_ptr, b, n_k, HAS_KV_LENS)

    list_row = (b * list_stride_b + h * list_stride_h).to(tl.int64) * n_qb + qb
    n_live = tl.load(counts_ptr + list_row * 2)
    n_full = tl.load(counts_ptr + list_row * 2 + 1)
    indices_row_ptr = indices_ptr + list_row * n_kb

    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM_PAD)
    d_valid = offs_d < HEAD_DIM
    q_block = bh.to(tl.int64) * n_qb + qb
    q = tl.load(q_int8_ptr + q_block * (BLOCK_M * HEAD_DIM) + offs_m[:, None] * HEAD_DIM + offs_d[None, :],
                mask=d_valid[None, :], other=0)
    q_scale = tl.load(q_scale_ptr + q_block)
    q_rows = qb * BLOCK_M + offs_m

    k_head_ptr = k_int8_ptr + kv_bh.to(tl.int64) * n_kb * (BLOCK_N * HEAD_DIM)
    k_scale_head_ptr = k_scale_ptr + kv_bh.to(tl.int64) * n_kb
    v_head_ptr = v_ptr + b.to(tl.int64) * stride_vb + (h // kv_group).to(tl.int64) * stride_vh
    v_fp8_head_ptr = v_fp8_ptr + kv_bh.to(tl.int64) * n_kb * (BLOCK_N * HEAD_DIM)

    acc = tl.zeros([BLOCK_M, HEAD_DIM_PAD], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    if KEY_BLOCKS_PER_STEP == 1:
        acc, m_i, l_i = _attend_blocks(acc, m_i, l_i, q, q_scale, k_head_ptr, k_scale_head_ptr, v_head_ptr,
                                       v_fp8_head_ptr, indices_row_ptr, 0, n_full, q_rows, n_q, n_k, n_valid,
                                       stride_vn, BLOCK_N, HEAD_DIM, HEAD_DIM_PAD, IS_CAUSAL, False, PV_FP8,
                                       FP8_SOFTWARE_ROUNDING)
        acc, m_i, l_i = _attend_blocks(acc, m_i, l_i, q, q_scale, k_head_ptr, k_scale_head_ptr, v_head_ptr,
                                       v_fp8_head_ptr, indices_row_ptr, n_full, n_live, q_rows, n_q, n_k, n_valid,
                                       stride_vn, BLOCK_N, HEAD_DIM, HEAD_DIM_PAD, IS_CAUSAL, True, PV_FP8,
                                       FP8_SOFTWARE_ROUNDING)
    else:
        # Unmasked pairs up to the last even full entry; an odd full block joins the masked steps (its mask is
        # all-visible), which keeps the unmasked loop free of any per-step test.
        n_full_even = n_full - n_full % 2
        acc, m_i, l_i = _attend_block_pairs(acc, m_i, l_i, q, q_scale, k_head_ptr, k_scale_head_ptr, v_head_ptr,
                                            v_fp8_head_ptr, indices_row_ptr, 0, n_full_even, q_rows, n_q, n_k,
                                            n_valid, stride_vn, BLOCK_N, HEAD_DIM, HEAD_DIM_PAD, IS_CAUSAL, False,
                                            PV_FP8, FP8_SOFTWARE_ROUNDING)
        acc, m_i, l_i = _attend_block_pairs(acc, m_i, l_i, q, q_scale, k_head_ptr, k_scale_head_ptr, v_head_ptr,
                                            v_fp8_head_ptr, indices_row_ptr, n_full_even, n_live, q_rows, n_q, n_k,
                                            n_valid, stride_vn, BLOCK_N, HEAD_DIM, HEAD_DIM_PAD, IS_CAUSAL, True,
                                            PV_FP8, FP8_SOFTWARE_ROUNDING)

    if PV_FP8:  # undo both static scales: P's, and V's per channel
        acc = acc * (tl.load(v_scale_ptr + kv_bh.to(tl.int64) * HEAD_DIM_PAD + offs_d) * (1.0 / P_FP8_SCALE))[None, :]
    seen_nothing = l_i == 0.0
    out = acc / tl.where(seen_nothing, 1.0, l_i)[:, None]  # acc is 0 there too: zeros, never 0/0
    row_valid = q_rows < n_q
    out_ptrs = (out_ptr + b.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh
                + (qb * BLOCK_M).to(tl.int64) * stride_on + offs_m[:, None] * stride_on + offs_d[None, :])
    tl.store(out_ptrs, out.to(out_ptr.dtype.element_ty), mask=row_valid[:, None] & d_valid[None, :])
    if RETURN_LSE:
        lse2 = m_i + tl.math.log2(tl.where(seen_nothing, 1.0, l_i))
        if SHIFT_LSE:
            lse2 += tl.load(row_shift_ptr + bh.to(tl.int64) * n_qb * BLOCK_M + q_rows)
        lse = tl.where(seen_nothing, float("-inf"), lse2 * LN2)
        tl.store(lse_ptr + bh.to(tl.int64) * n_q + q_rows, lse, mask=row_valid)
