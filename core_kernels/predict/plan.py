"""The predict_mask op's plan: validation and launches, framework-free (see kernels.py for the rule).

Launches: pool Q blocks, pool K blocks (per kv head: GQA query heads share them), select per query block. The
output is the buffer "mask", int8 (B, Hq, ceil(Nq/128), ceil(Nk/64)).
"""
import math

from .. import configs
from ..attention.plan import aligned_strides, bhn_strides
from ..attention.plan import validate as validate_attention
from ..contract import BLOCK_M, BLOCK_N, LOG2E, cdiv, layout_axes
from ..launch import ArrayDesc, Buffer, Launch, Plan, Ref, flat, next_pow2
from .kernels import pool_blocks_kernel, select_blocks_kernel

OUTPUTS = ("mask",)
# A predicted-mask row lives in registers (a few values per key block): 8192 key blocks = 524288 keys.
MAX_KEY_BLOCKS = 8192


def _check_fraction(name, value):
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                              or not 0.0 < value <= 1.0):
        raise ValueError(f"predict_mask: {name} must be a number in (0, 1] or None, got {value!r}")


def validate(q: ArrayDesc, k: ArrayDesc, cdf_threshold, topk, is_causal, tensor_layout, sm_scale):
    """Raise ValueError/TypeError naming the argument; q and k are checked as sparse_sageattn checks them."""
    validate_attention(q, k, k, None, is_causal, tensor_layout, sm_scale, True, False)
    _check_fraction("cdf_threshold", cdf_threshold)
    _check_fraction("topk", topk)
    if (cdf_threshold is None) == (topk is None):
        raise ValueError("predict_mask: give exactly one of cdf_threshold and topk")
    n_k = k.shape[layout_axes(tensor_layout)[2]]
    if cdiv(n_k, BLOCK_N) > MAX_KEY_BLOCKS:
        raise ValueError(f"predict_mask: k may hold at most {MAX_KEY_BLOCKS * BLOCK_N} keys, got {n_k}")


def make_plan(q: ArrayDesc, k: ArrayDesc, cdf_threshold=None, topk=None, is_causal=False, tensor_layout="HND",
              sm_scale=None) -> Plan:
    """Validate and resolve one predict_mask call."""
    validate(q, k, cdf_threshold, topk, is_causal, tensor_layout, sm_scale)
    b_axis, h_axis, n_axis = layout_axes(tensor_layout)
    batch, heads_q, n_q = q.shape[b_axis], q.shape[h_axis], q.shape[n_axis]
    heads_kv, n_k = k.shape[h_axis], k.shape[n_axis]
    head_dim = int(q.shape[3])
    if sm_scale is None:
        sm_scale = 1.0 / math.sqrt(head_dim)
    n_qb, n_kb = cdiv(n_q, BLOCK_M), cdiv(n_k, BLOCK_N)
    mask_shape = (batch, heads_q, n_qb, n_kb)
    if batch == 0 or heads_q == 0 or n_q == 0 or n_k == 0:
        return Plan({"mask": Buffer(mask_shape, "int8", 0)}, (), OUTPUTS)

    stride_align, (q_strides, k_strides) = aligned_strides(bhn_strides(q, tensor_layout), bhn_strides(k, tensor_layout))
    pool = dict(HEAD_DIM=head_dim, HEAD_DIM_PAD=max(16, next_pow2(head_dim)), STRIDE_ALIGN=stride_align)
    pool_cfg = configs.PREDICT_POOL
    kb_pad = max(16, next_pow2(int(n_kb)))
    select_cfg = configs.predict_select(kb_pad)
    buffers = {
        "pooled_q": Buffer(flat(batch * heads_q, n_qb, head_dim), "float32"),
        "pooled_k": Buffer(flat(batch * heads_kv, head_dim, n_kb), "float32"),
        "mask": Buffer(mask_shape, "int8"),
    }

    def pool_launch(name, x, pooled, n_rows, heads, x_strides, out_stride_blk, out_stride_d, grid_blocks, rows):
        return Launch(name, pool_blocks_kernel, (batch * heads, grid_blocks),
                      dict(x_ptr=Ref(x), n_rows=n_rows, heads=heads,
                           **{f"stride_{axis}": s for axis, s in zip("bhn", x_strides)},
                           out_stride_blk=out_stride_blk, out_stride_d=out_stride_d, pooled_ptr=Ref(pooled),
                           BLOCK_ROWS=rows, **pool),
                      (pooled,), pool_cfg.num_warps, pool_cfg.num_stages)

    launches = (
        pool_launch("pool_q", "q", "pooled_q", n_q, heads_q, q_strides, head_dim, 1, n_qb, BLOCK_M),
        pool_launch("pool_k", "k", "pooled_k", n_k, heads_kv, k_strides, 1, n_kb, n_kb, BLOCK_N),
        Launch("select", select_blocks_kernel, (batch * heads_q, n_qb),
               dict(pooled_q_ptr=Ref("pooled_q"), pooled_k_ptr=Ref("pooled_k"),
                    score_scale=float(sm_scale) * LOG2E,
                    keep_target=float(topk if cdf_threshold is None else cdf_threshold),
                    n_q=n_q, n_k=n_k, heads_q=heads_q, kv_group=heads_q // heads_kv, mask_ptr=Ref("mask"),
                    HEAD_DIM=head_dim, KB_PAD=kb_pad, KEY_BITS=30 + kb_pad.bit_length() - 1, BLOCK_M=BLOCK_M,
                    BLOCK_N=BLOCK_N, IS_CAUSAL=is_causal, TOPK=cdf_threshold is None),
               ("mask",), select_cfg.num_warps, select_cfg.num_stages),
    )
    return Plan(buffers, launches, OUTPUTS)
