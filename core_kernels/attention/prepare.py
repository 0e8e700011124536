"""The two launches before attention: each grid is split by program id between two independent jobs.

Every Triton launch costs tens of microseconds of Python on the host, so work that can share a launch does:
  sums_and_lists_kernel  programs [0, chunk_programs): per (batch, kv head, chunk of keys), K's partial channel
                         sums (quantize.py) and, in the FP8 P.V mode, V's partial channel maxima; the rest: the
                         block lists (block_lists.py), one per (list, query block). Neither reads what the other
                         writes.
  quantize_kernel        programs [0, k_programs): one K block each (mean subtracted); then q_programs: one Q block
                         each (sm_scale*log2(e) folded in, optional row shift); then, in the FP8 P.V mode, one V
                         block each (e4m3 V^T), or with bf16 V in the fp16 mode one V block each in fp16. They
                         read the partials, so this launch comes second.
The grids are 1-D (the CUDA x dimension takes 2**31 - 1 programs). Each half calls its device function with its
own constexprs and the warps of a launch of its own: the same tiles and layouts, hence bitwise the same results.
"""
import triton
import triton.language as tl

from ..alignment import _aligned
from .block_lists import _block_list
from .kv_lens import _valid_keys
from .quantize import _channel_reduce, _quantize_block, _quantize_v_block, _v_to_fp16_block


@triton.jit(do_not_specialize=[
    "n_q", "n_k", "heads_kv", "list_heads", "chunk_programs", "stride_kb", "stride_kh", "stride_kn",
    "stride_vb", "stride_vh", "stride_vn", "stride_mb", "stride_mh", "stride_mq", "stride_mk",
])
def sums_and_lists_kernel(
    k_ptr, v_ptr, mask_ptr, kv_lens_ptr,
    n_q, n_k, heads_kv, list_heads, chunk_programs,
    stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn, stride_mb, stride_mh, stride_mq, stride_mk,
    partial_sums_ptr, partial_amax_ptr, counts_ptr, indices_ptr,
    ROWS_PER_CHUNK: tl.constexpr, TILE_ROWS: tl.constexpr, HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr,
    STRIDE_ALIGN: tl.constexpr, SMOOTH_K: tl.constexpr, PV_FP8: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, KB_TILE: tl.constexpr, HAS_MASK: tl.constexpr, IS_CAUSAL: tl.constexpr,
    HAS_KV_LENS: tl.constexpr,
):
    """chunk_programs: B*Hkv*ceil(n_k/ROWS_PER_CHUNK), or 0 when neither SMOOTH_K nor PV_FP8; the grid adds
    lists*ceil(n_q/BLOCK_M). With kv_lens there is one list per batch row (its own valid keys)."""
    pid = tl.program_id(0)
    if pid < chunk_programs:  # first: these programs are the long ones
        n_chunks = tl.cdiv(n_k, ROWS_PER_CHUNK)
        n_valid = _valid_keys(kv_lens_ptr, pid // n_chunks // heads_kv, n_k, HAS_KV_LENS)
        if SMOOTH_K:
            stride_b, stride_h, stride_n = _aligned(stride_kb, stride_kh, stride_kn, STRIDE_ALIGN)
            _channel_reduce(k_ptr, pid // n_chunks, pid % n_chunks, n_chunks, n_valid, heads_kv, stride_b,
                            stride_h, stride_n, partial_sums_ptr, ROWS_PER_CHUNK, TILE_ROWS, HEAD_DIM,
                            HEAD_DIM_PAD, False)
        if PV_FP8:
            stride_b, stride_h, stride_n = _aligned(stride_vb, stride_vh, stride_vn, STRIDE_ALIGN)
            _channel_reduce(v_ptr, pid // n_chunks, pid % n_chunks, n_chunks, n_valid, heads_kv, stride_b,
                            stride_h, stride_n, partial_amax_ptr, ROWS_PER_CHUNK, TILE_ROWS, HEAD_DIM,
                            HEAD_DIM_PAD, True)
    else:
        n_qb = tl.cdiv(n_q, BLOCK_M)
        list_pid = pid - chunk_programs
        n_valid = _valid_keys(kv_lens_ptr, list_pid // n_qb // list_heads, n_k, HAS_KV_LENS)
        _block_list(mask_ptr, list_pid // n_qb, list_pid % n_qb, n_qb, n_q, n_k, n_valid, list_heads, stride_mb,
                    stride_mh, stride_mq, stride_mk, counts_ptr, indices_ptr, BLOCK_M, BLOCK_N, KB_TILE, HAS_MASK,
                    IS_CAUSAL)


@triton.jit(do_not_specialize=[
    "n_q", "n_k", "heads_q", "heads_kv", "k_programs", "q_programs", "stride_qb", "stride_qh", "stride_qn",
    "stride_kb", "stride_kh", "stride_kn", "stride_vb", "stride_vh", "stride_vn",
])
def quantize_kernel(
    q_ptr, k_ptr, v_ptr, partial_sums_ptr, partial_amax_ptr, kv_lens_ptr,
    q_pre_scale, n_q, n_k, heads_q, heads_kv, k_programs, q_programs,
    stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn,
    q_int8_ptr, q_scale_ptr, q_row_shift_ptr, k_int8_ptr, k_scale_ptr, v_fp8_ptr, v_scale_ptr, v_fp16_ptr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr,
    ROWS_PER_CHUNK: tl.constexpr, SMOOTH_K: tl.constexpr, WRITE_ROW_SHIFT: tl.constexpr,
    STRIDE_ALIGN: tl.constexpr, PV_FP8: tl.constexpr, FP8_SOFTWARE_ROUNDING: tl.constexpr,
    V_TO_FP16: tl.constexpr, HAS_KV_LENS: tl.constexpr,
):
    """k_programs: B*Hkv*ceil(n_k/BLOCK_N); q_programs: B*Hq*ceil(n_q/BLOCK_M); with PV_FP8 or V_TO_FP16 the grid
    adds k_programs V blocks. Q's mean is its kv head's. Keys past a row's valid count are written as zeros."""
    pid = tl.program_id(0)
    n_kb = tl.cdiv(n_k, BLOCK_N)
    n_chunks = tl.cdiv(n_k, ROWS_PER_CHUNK)
    if pid < k_programs:
        stride_b, stride_h, stride_n = _aligned(stride_kb, stride_kh, stride_kn, STRIDE_ALIGN)
        n_valid = _valid_keys(kv_lens_ptr, pid // n_kb // heads_kv, n_k, HAS_KV_LENS)
        # K as it is: pre_scale 1.0 (x * 1.0 == x, folded away); q_row_shift_ptr: a slot the K path never writes
        _quantize_block(k_ptr, partial_sums_ptr, 1.0, pid // n_kb, pid % n_kb, n_kb, n_valid, n_chunks, n_valid,
                        heads_kv, 1, stride_b, stride_h, stride_n, k_int8_ptr, k_scale_ptr, q_row_shift_ptr,
                        BLOCK_N, HEAD_DIM, HEAD_DIM_PAD, ROWS_PER_CHUNK, SMOOTH_K, False)
    elif pid < k_programs + q_programs:
        stride_b, stride_h, stride_n = _aligned(stride_qb, stride_qh, stride_qn, STRIDE_ALIGN)
        n_qb = tl.cdiv(n_q, BLOCK_M)
        q_pid = pid - k_programs
        n_valid = _valid_keys(kv_lens_ptr, q_pid // n_qb // heads_q, n_k, HAS_KV_LENS)
        _quantize_block(q_ptr, partial_sums_ptr, q_pre_scale, q_pid // n_qb, q_pid % n_qb, n_qb, n_q, n_chunks,
                        n_valid, heads_q, heads_q // heads_kv, stride_b, stride_h, stride_n, q_int8_ptr, q_scale_ptr,
                        q_row_shift_ptr, BLOCK_M, HEAD_DIM, HEAD_DIM_PAD, ROWS_PER_CHUNK, False, WRITE_ROW_SHIFT)
    elif PV_FP8:
        stride_b, stride_h, stride_n = _aligned(stride_vb, stride_vh, stride_vn, STRIDE_ALIGN)
        v_pid = pid - k_programs - q_programs
        n_valid = _valid_keys(kv_lens_ptr, v_pid // n_kb // heads_kv, n_k, HAS_KV_LENS)
        _quantize_v_block(v_ptr, partial_amax_ptr, v_pid // n_kb, v_pid % n_kb, n_kb, n_valid, n_chunks, heads_kv,
                          stride_b, stride_h, stride_n, v_fp8_ptr, v_scale_ptr, BLOCK_N, HEAD_DIM, HEAD_DIM_PAD,
                          ROWS_PER_CHUNK, FP8_SOFTWARE_ROUNDING)
    elif V_TO_FP16:
        stride_b, stride_h, stride_n = _aligned(stride_vb, stride_vh, stride_vn, STRIDE_ALIGN)
        v_pid = pid - k_programs - q_programs
        n_valid = _valid_keys(kv_lens_ptr, v_pid // n_kb // heads_kv, n_k, HAS_KV_LENS)
        _v_to_fp16_block(v_ptr, v_pid // n_kb, v_pid % n_kb, n_kb, n_valid, heads_kv, stride_b, stride_h, stride_n,
                         v_fp16_ptr, BLOCK_N, HEAD_DIM, HEAD_DIM_PAD)
