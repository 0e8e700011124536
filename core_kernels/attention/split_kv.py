"""Attention for short query sequences (decoding): split-KV, a kv group's query heads packed into one tile.

With few query rows, one program per (batch, query head, query block) leaves most SMs idle and reads every K/V
tile once per query head. Here one program takes (batch, kv head, HEADS_PER_PROGRAM of its query heads, one of
SPLITS slices of the block list): its rows are those heads' n_q queries each (row r: head r // n_q, query
r % n_q), so a K/V tile is read once per group, and the slices run in parallel. Each slice writes its partial
output and log2-sum-exp, which combine.py merges exactly; with SPLITS == 1 the program writes the result itself.

Nothing is prepared in a separate pass but K's channel sums (its mean must be global): the program quantizes its
Q rows per head (each head's n_q <= BLOCK_M rows are its one 128-row quantization block) and each K block it
visits, with quantize.py's `_to_int8` -- the same INT8 values and scales as the quantize launch -- and reads V as
it is (bf16 rounded to fp16 in registers). With K_INT8 the keys come from an INT8 KV cache (kv_cache/append.py):
its int8 blocks, their scales and its fixed smoothing vector, read as they are; with V_E4M3 too its values:
e4m3 (exact in fp16) times a power of two per block and channel, which multiplies each block's fp32 P.V
product. Scores, masks and the online softmax are kernel.py's.
"""
import triton
import triton.language as tl

from .. import contract
from ..alignment import _aligned
from .block_lists import _live_blocks
from .fp8 import pow2
from .kernel import _softmax_step
from .kv_lens import _valid_keys
from .quantize import _abs_max, _channel_mean, _to_int8

LN2 = tl.constexpr(contract.LN2)

UNSPECIALIZED = [
    "n_q", "n_k", "heads_q", "kv_group", "list_stride_b", "list_stride_h", "stride_qb", "stride_qh", "stride_qn",
    "stride_kb", "stride_kh", "stride_kn", "stride_vb", "stride_vh", "stride_vn", "stride_ob", "stride_oh",
    "stride_on",
]


@triton.jit
def _quantize_q_rows(x, row_head, HEADS: tl.constexpr):
    """Packed Q rows (fp32, sm_scale*log2(e) folded in) -> int8 and a (rows, 1) scale: one quantization block per
    head, as the quantize launch forms it (a max is exact in any order)."""
    row_amax = _abs_max(x, 1)
    amax = tl.zeros_like(row_amax)
    for g in tl.static_range(HEADS):
        in_g = row_head == g
        amax = tl.where(in_g, _abs_max(tl.where(in_g, row_amax, 0.0), 0), amax)
    return _to_int8(x, amax[:, None])


@triton.jit
def _quantize_key_block(k, k_mean, kv_mask, SMOOTH_K: tl.constexpr, PARTIAL: tl.constexpr):
    """A key block as loaded (zeros where kv_mask is off) -> int8 and its scale, as the quantize launch's
    _quantize_block forms them: mean subtracted over the valid entries, one scale for the block. PARTIAL: kv_mask
    may be off somewhere (else the select is skipped: it would keep every entry)."""
    k = k.to(tl.float32)
    if SMOOTH_K:
        if PARTIAL:
            k = tl.where(kv_mask, k - k_mean[None, :], 0.0)
        else:
            k = k - k_mean[None, :]
    return _to_int8(k, _abs_max(k))


@triton.jit
def _split_steps(
    acc, m_i, l_i, q_int8, q_scale, k_mean, k_head_ptr, k_scale_head_ptr, v_head_ptr, v_exp_head_ptr,
    indices_row_ptr, list_start, list_end, q_index, n_q, n_valid, stride_kn, stride_vn,
    BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr, SMOOTH_K: tl.constexpr,
    IS_CAUSAL: tl.constexpr, MASKED: tl.constexpr, K_INT8: tl.constexpr, V_E4M3: tl.constexpr,
    DENSE_LIST: tl.constexpr,
):
    """List entries [list_start, list_end), one 64-key block per step: quantize the block (K_INT8: read it and
    its scale), score, softmax, P.V (V_E4M3: of the e4m3 values, then scaled by the block's channel scales).
    The block index is read one step ahead (kernel.py's _attend_blocks says why); Triton's pipeliner keeps the
    next blocks' K and V loads in flight (num_stages). It does not pipeline the small loads of a cache block's
    scale and exponents, so each is read one step ahead too, at the end of the step before, when that step's
    read of the next index has long arrived."""
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM_PAD)
    d_valid = offs_d < HEAD_DIM
    PARTIAL: tl.constexpr = MASKED or HEAD_DIM != HEAD_DIM_PAD  # some entry of a tile may be off
    # in-tile offsets, int32 and loop-invariant; each step adds its block's int64 base
    k_tile = offs_n[:, None] * stride_kn + offs_d[None, :]
    if V_E4M3:  # a block's values transposed: [HEAD_DIM, 64], each channel's 64 keys contiguous
        v_tile = offs_d[:, None] * BLOCK_N + offs_n[None, :]
    else:
        v_tile = offs_n[:, None] * stride_vn + offs_d[None, :]
    if DENSE_LIST:  # entry i is key block i
        kb_next = list_start
    else:
        kb_next = tl.load(indices_row_ptr + list_start, mask=list_start < list_end, other=0)
    if K_INT8:
        k_scale_next = tl.load(k_scale_head_ptr + kb_next, mask=list_start < list_end, other=0.0)
    if V_E4M3:
        v_exp_next = tl.load(v_exp_head_ptr + kb_next * HEAD_DIM + offs_d, mask=d_valid & (list_start < list_end),
                             other=0)
    for it in range(list_start, list_end):
        kb = kb_next
        if DENSE_LIST:
            kb_next = it + 1
        else:
            kb_next = tl.load(indices_row_ptr + it + 1, mask=it + 1 < list_end, other=0)
        k_rows = kb * BLOCK_N + offs_n
        k_block_ptr = k_head_ptr + (kb * BLOCK_N).to(tl.int64) * stride_kn
        v_block_ptr = v_head_ptr + (kb * BLOCK_N).to(tl.int64) * stride_vn
        kv_mask = (k_rows < n_valid)[:, None] & d_valid[None, :]
        if PARTIAL:
            k = tl.load(k_block_ptr + k_tile, mask=kv_mask, other=0.0)
            if V_E4M3:
                v = tl.load(v_block_ptr + v_tile, mask=tl.trans(kv_mask), other=0)
            else:
                v = tl.load(v_block_ptr + v_tile, mask=kv_mask, other=0.0)
        else:
            k = tl.load(k_block_ptr + k_tile)
            v = tl.load(v_block_ptr + v_tile)
        if K_INT8:
            k_int8 = k
            k_scale = k_scale_next
        else:
            k_int8, k_scale = _quantize_key_block(k, k_mean, kv_mask, SMOOTH_K, PARTIAL)
        s = tl.dot(q_int8, tl.trans(k_int8)).to(tl.float32) * (q_scale * k_scale)
        if MASKED:
            visible = (k_rows < n_valid)[None, :]
            if IS_CAUSAL:
                visible = visible & (k_rows[None, :] <= q_index[:, None] + (n_valid - n_q))
            s = tl.where(visible, s, float("-inf"))
        p, acc, m_i, l_i = _softmax_step(acc, m_i, l_i, s, MASKED)
        if V_E4M3:
            v_scale = pow2(v_exp_next.to(tl.int32))
            v16 = tl.trans(v.to(tl.float8e4nv, bitcast=True).to(tl.float16))
            acc += tl.dot(p.to(tl.float16), v16) * v_scale[None, :]
        else:
            acc = tl.dot(p.to(tl.float16), v.to(tl.float16), acc)
        if K_INT8:  # the next block's (none past the list)
            k_scale_next = tl.load(k_scale_head_ptr + kb_next, mask=it + 1 < list_end, other=0.0)
        if V_E4M3:
            v_exp_next = tl.load(v_exp_head_ptr + kb_next * HEAD_DIM + offs_d, mask=d_valid & (it + 1 < list_end),
                                 other=0)
    return acc, m_i, l_i


@triton.jit(do_not_specialize=UNSPECIALIZED)
def split_kv_kernel(
    q_ptr, k_ptr, v_ptr, partial_sums_ptr, counts_ptr, indices_ptr, kv_lens_ptr, k_scale_ptr, k_mean_ptr,
    v_exp_ptr, q_pre_scale, n_q, n_k, heads_q, kv_group, list_stride_b, list_stride_h,
    stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn,
    stride_ob, stride_oh, stride_on,
    out_ptr, lse_ptr, partial_out_ptr, partial_lse_ptr,
    BLOCK_ROWS: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr,
    HEADS_PER_PROGRAM: tl.constexpr, SPLITS: tl.constexpr, ROWS_PER_CHUNK: tl.constexpr, SMOOTH_K: tl.constexpr,
    IS_CAUSAL: tl.constexpr, RETURN_LSE: tl.constexpr, SHIFT_LSE: tl.constexpr, STRIDE_ALIGN: tl.constexpr,
    HAS_KV_LENS: tl.constexpr, K_INT8: tl.constexpr, V_E4M3: tl.constexpr, DENSE_LIST: tl.constexpr,
):
    """Grid: B * Hkv * (kv_group / HEADS_PER_PROGRAM) * SPLITS; n_q * HEADS_PER_PROGRAM <= BLOCK_ROWS <= 128.

    K_INT8: k is an INT8 cache's int8 keys [B, Hkv, n_k, D], k_scale its fp32 block scales
    [B*Hkv, n_k / 64], k_mean its fp32 smoothing vectors [B*Hkv, HEAD_DIM]; partial_sums is not read. Without it
    k_scale and k_mean are not read.

    The block lists are block_lists.py's for the single query block (n_q <= 128); a program packing several
    heads reads the list of its first head (the plan packs heads only when their lists are one list). With
    DENSE_LIST (no block mask) there are none: the list is every live block in order (_live_blocks), and
    counts / indices are not read.
    SPLITS > 1: partial_out (fp32, [B*Hq, SPLITS, n_q, HEAD_DIM]) and partial_lse (log2, [B*Hq, SPLITS, n_q]):
    each slice's normalized output and log2-sum-exp (-inf and zeros for a slice that sees nothing), for
    combine.py. SPLITS == 1: out and lse (natural log) directly.
    V_E4M3 (with K_INT8): v is the cache's e4m3 bits (uint8, each 64-key block transposed: [HEAD_DIM, 64] at
    the block's start, which the v strides address) and v_exp its int8 scale exponents [B*Hkv, n_k / 64,
    HEAD_DIM]; without it v_exp is not read.
    """
    stride_qb, stride_qh, stride_qn = _aligned(stride_qb, stride_qh, stride_qn, STRIDE_ALIGN)
    stride_kb, stride_kh, stride_kn = _aligned(stride_kb, stride_kh, stride_kn, STRIDE_ALIGN)
    stride_vb, stride_vh, stride_vn = _aligned(stride_vb, stride_vh, stride_vn, STRIDE_ALIGN)
    stride_ob, stride_oh, stride_on = _aligned(stride_ob, stride_oh, stride_on, STRIDE_ALIGN)
    heads_kv = heads_q // kv_group
    n_kb = tl.cdiv(n_k, BLOCK_N)
    pid = tl.program_id(0)
    split = pid % SPLITS
    head_groups = kv_group // HEADS_PER_PROGRAM
    bkv = pid // SPLITS // head_groups
    b = bkv // heads_kv
    kv_h = bkv % heads_kv
    h0 = kv_h * kv_group + (pid // SPLITS % head_groups) * HEADS_PER_PROGRAM
    n_valid = _valid_keys(kv_lens_ptr, b, n_k, HAS_KV_LENS)

    offs_r = tl.arange(0, BLOCK_ROWS)
    offs_d = tl.arange(0, HEAD_DIM_PAD)
    d_valid = offs_d < HEAD_DIM
    row_head = offs_r // n_q
    q_index = offs_r % n_q
    row_valid = row_head < HEADS_PER_PROGRAM
    heads = h0 + row_head  # rows past the packed heads are padding: masked, never stored
    q_rows_ptr = q_ptr + b.to(tl.int64) * stride_qb + heads.to(tl.int64)[:, None] * stride_qh \
        + q_index[:, None] * stride_qn + offs_d[None, :]
    q = tl.load(q_rows_ptr, mask=row_valid[:, None] & d_valid[None, :], other=0.0).to(tl.float32)
    q = q * tl.cast(q_pre_scale, tl.float32)  # jax-triton passes Python floats as fp64
    q_int8, q_scale = _quantize_q_rows(q, row_head, HEADS_PER_PROGRAM)
    k_mean = tl.zeros([HEAD_DIM_PAD], dtype=tl.float32)
    if K_INT8:
        k_mean = tl.load(k_mean_ptr + bkv.to(tl.int64) * HEAD_DIM + offs_d, mask=d_valid, other=0.0)
    elif SMOOTH_K:
        k_mean = _channel_mean(partial_sums_ptr, bkv, tl.cdiv(n_k, ROWS_PER_CHUNK), n_valid, ROWS_PER_CHUNK,
                               HEAD_DIM_PAD)

    list_row = (b * list_stride_b + h0 * list_stride_h).to(tl.int64)  # the one query block's list
    if DENSE_LIST:  # BLOCK_ROWS >= n_q stands for the query block's 128 rows: both clip to n_q
        n_live, n_full = _live_blocks(0, n_q, n_valid, BLOCK_ROWS, BLOCK_N, IS_CAUSAL)
    else:
        n_live = tl.load(counts_ptr + list_row * 2)
        n_full = tl.load(counts_ptr + list_row * 2 + 1)
    per_split = tl.cdiv(n_live, SPLITS)
    start = split * per_split
    end = tl.minimum(start + per_split, n_live)
    indices_row_ptr = indices_ptr + list_row * n_kb
    k_head_ptr = k_ptr + b.to(tl.int64) * stride_kb + kv_h.to(tl.int64) * stride_kh
    v_head_ptr = v_ptr + b.to(tl.int64) * stride_vb + kv_h.to(tl.int64) * stride_vh
    k_scale_head_ptr = k_scale_ptr + bkv.to(tl.int64) * n_kb
    v_exp_head_ptr = v_exp_ptr + bkv.to(tl.int64) * n_kb * HEAD_DIM

    acc = tl.zeros([BLOCK_ROWS, HEAD_DIM_PAD], dtype=tl.float32)
    m_i = tl.full([BLOCK_ROWS], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_ROWS], dtype=tl.float32)
    # the slice's unmasked entries, then its masked ones (causal diagonal, ragged tail: the list's last)
    acc, m_i, l_i = _split_steps(acc, m_i, l_i, q_int8, q_scale, k_mean, k_head_ptr, k_scale_head_ptr, v_head_ptr,
                                 v_exp_head_ptr, indices_row_ptr, start, tl.minimum(end, n_full), q_index, n_q,
                                 n_valid, stride_kn, stride_vn, BLOCK_N, HEAD_DIM, HEAD_DIM_PAD, SMOOTH_K, IS_CAUSAL,
                                 False, K_INT8, V_E4M3, DENSE_LIST)
    acc, m_i, l_i = _split_steps(acc, m_i, l_i, q_int8, q_scale, k_mean, k_head_ptr, k_scale_head_ptr, v_head_ptr,
                                 v_exp_head_ptr, indices_row_ptr, tl.maximum(start, n_full), end, q_index, n_q,
                                 n_valid, stride_kn, stride_vn, BLOCK_N, HEAD_DIM, HEAD_DIM_PAD, SMOOTH_K, IS_CAUSAL,
                                 True, K_INT8, V_E4M3, DENSE_LIST)

    seen_nothing = l_i == 0.0
    out = acc / tl.where(seen_nothing, 1.0, l_i)[:, None]  # acc is 0 there too: zeros, never 0/0
    lse2 = m_i + tl.math.log2(tl.where(seen_nothing, 1.0, l_i))
    if SHIFT_LSE:  # what smoothing K removed from each logit: (scaled q) . mean
        lse2 += tl.sum(q * k_mean[None, :], axis=1)
    lse2 = tl.where(seen_nothing, float("-inf"), lse2)
    row_bh = (b * heads_q + heads).to(tl.int64)
    store_mask = row_valid[:, None] & d_valid[None, :]
    if SPLITS == 1:
        out_ptrs = out_ptr + b.to(tl.int64) * stride_ob + heads.to(tl.int64)[:, None] * stride_oh \
            + q_index[:, None] * stride_on + offs_d[None, :]
        tl.store(out_ptrs, out.to(out_ptr.dtype.element_ty), mask=store_mask)
        if RETURN_LSE:
            tl.store(lse_ptr + row_bh * n_q + q_index, lse2 * LN2, mask=row_valid)
    else:
        part_row = (row_bh * SPLITS + split) * n_q + q_index
        tl.store(partial_out_ptr + part_row[:, None] * HEAD_DIM + offs_d[None, :], out, mask=store_mask)
        tl.store(partial_lse_ptr + part_row, lse2, mask=row_valid)
