"""Block mask (+ causal) -> per-(batch, head, query block) lists of the live key blocks.

For every query block the kernel writes, in ascending key-block order, the indices of the key blocks that have
at least one pair to compute, plus two counts: `live` (the list length) and `full` (how many of the first entries
need no element mask). Blocks that need the element mask -- the causal diagonal and the ragged key tail -- are
always the highest key blocks of a row, so they sit at the end of the list and the attention kernel walks
[0, full) without masks and [full, live) with them. Everything stays on the device: no host sync, no
data-dependent shapes. `_block_list` is a device function, called by a launch of prepare.py; without a block
mask a list is [0, kb_end) itself, which the split-KV kernel forms from `_live_blocks` without a list.
"""
import triton
import triton.language as tl


@triton.jit
def _live_blocks(qb, n_q, n_valid, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, IS_CAUSAL: tl.constexpr):
    """(kb_end, kb_full_end) of query block qb before any block mask: key blocks [0, kb_end) may hold a visible
    key, [0, kb_full_end) are visible to every row of the block (the first n_valid keys, causal bottom-right
    aligned to them)."""
    n_kb_valid = tl.cdiv(n_valid, BLOCK_N)
    kb_end = n_kb_valid
    kb_full_end = n_kb_valid
    if IS_CAUSAL:
        # Query i sees key j iff j <= i + n_valid - n_q (bottom-right aligned). Numerators are kept >= 0 before
        # dividing, so the integer division rounds the same way on the GPU and in the interpreter.
        last_visible = tl.minimum(qb * BLOCK_M + BLOCK_M - 1, n_q - 1) + (n_valid - n_q)
        kb_end = tl.where(last_visible < 0, 0, tl.minimum(tl.maximum(last_visible, 0) // BLOCK_N + 1, n_kb_valid))
        first_row_keys = qb * BLOCK_M + (n_valid - n_q) + 1  # keys visible to the block's first row
        kb_full_end = tl.where(first_row_keys <= 0, 0, tl.maximum(first_row_keys, 0) // BLOCK_N)
    # the ragged tail block always needs the key mask
    kb_full_end = tl.where(n_valid % BLOCK_N != 0, tl.minimum(kb_full_end, n_kb_valid - 1), kb_full_end)
    return kb_end, kb_full_end


@triton.jit
def _block_list(
    mask_ptr, lbh, qb, n_qb, n_q, n_k, n_valid, list_heads, stride_mb, stride_mh, stride_mq, stride_mk,
    counts_ptr, indices_ptr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, KB_TILE: tl.constexpr,
    HAS_MASK: tl.constexpr, IS_CAUSAL: tl.constexpr,
):
    """The list of query block qb of list lbh. counts: int32 [lists, n_qb, 2] = (live, full); indices: int32
    [lists, n_qb, n_kb], row-major.

    `lists` is B*Hq, or fewer when the mask broadcasts over batch or heads (strides of 0 there). n_k sets the
    layout (n_kb entries a row); the list holds blocks of the first n_valid keys only, aligned to them under
    causal (n_valid is n_k, or the batch row's kv_lens).
    """
    n_kb = tl.cdiv(n_k, BLOCK_N)
    b = lbh // list_heads
    h = lbh % list_heads
    kb_end, kb_full_end = _live_blocks(qb, n_q, n_valid, BLOCK_M, BLOCK_N, IS_CAUSAL)

    mask_row_ptr = mask_ptr + b.to(tl.int64) * stride_mb + h.to(tl.int64) * stride_mh + qb.to(tl.int64) * stride_mq
    list_row = lbh.to(tl.int64) * n_qb + qb
    indices_row_ptr = indices_ptr + list_row * n_kb
    n_live = 0
    n_full = 0
    offs = tl.arange(0, KB_TILE)
    for kb0 in range(0, kb_end, KB_TILE):
        kbs = kb0 + offs
        live = kbs < kb_end
        if HAS_MASK:
            live = live & (tl.load(mask_row_ptr + kbs.to(tl.int64) * stride_mk, mask=live, other=0) != 0)
        live_i32 = live.to(tl.int32)
        slot = n_live + tl.cumsum(live_i32, axis=0) - 1
        tl.store(indices_row_ptr + slot, kbs, mask=live)
        n_live += tl.sum(live_i32, axis=0)
        n_full += tl.sum((live & (kbs < kb_full_end)).to(tl.int32), axis=0)
    tl.store(counts_ptr + list_row * 2, n_live)
    tl.store(counts_ptr + list_row * 2 + 1, n_full)
