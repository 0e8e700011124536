"""FlexAttention interop: a sparse_sageattn `mask_id` as a `BlockMask` and back.

`to_flex_block_mask` builds the BlockMask from block lists (no mask_mod is evaluated to build it): BLOCK_SIZE
(128, 64), the blocks of sparse_sageattn. `from_flex_block_mask` reads the live blocks of a BlockMask with 128-row query blocks
and 64- or 128-key blocks; it reads tensor values, so call it outside compiled regions.
"""
import torch
from torch.nn.attention.flex_attention import BlockMask, noop_mask

from sparse_sageattn import masks as _masks

BLOCK_SIZE = (_masks.BLOCK_M, _masks.BLOCK_N)


def _length(value, name):
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


def _kv_lists(live):
    """FlexAttention's per-row block lists: counts, and the live key blocks first (a stable descending sort)."""
    live = live.to(torch.int32)
    return live.sum(-1, dtype=torch.int32), torch.argsort(live, dim=-1, descending=True, stable=True).to(torch.int32)


def to_flex_block_mask(mask_id, q_len, kv_len, *, is_causal=False):
    """A FlexAttention BlockMask (BLOCK_SIZE (128, 64)) computing what sparse_sageattn computes for `mask_id`.

    Args:
      mask_id: bool or integer tensor broadcastable to (B, H, ceil(q_len/128), ceil(kv_len/64)), as for
        sparse_sageattn; its batch and head dims stay (size 1 broadcasts in flex_attention too).
      q_len, kv_len: the query and key lengths.
      is_causal: also apply sparse_sageattn's causal rule (key j visible to query i iff j <= i + kv_len - q_len).

    Live blocks below the causal diagonal (all of them without is_causal) are full blocks: the compiled
    flex_attention kernel computes them whole, without calling the mask_mod. Blocks crossing the diagonal are
    partial (the kernel applies the causal rule per element); blocks above it are dropped. The mask_mod also
    looks the block up in mask_id, so paths that evaluate it everywhere (flex_attention without torch.compile,
    create_mask) give the same result.
    """
    if not isinstance(mask_id, torch.Tensor):
        raise TypeError(f"mask_id must be a torch.Tensor, got {type(mask_id).__name__}")
    if mask_id.dtype.is_floating_point or mask_id.dtype.is_complex:
        raise TypeError(f"mask_id must be a bool or integer tensor, got {mask_id.dtype}")
    q_len, kv_len = _length(q_len, "q_len"), _length(kv_len, "kv_len")
    if not isinstance(is_causal, bool):
        raise TypeError(f"is_causal must be a bool, got {type(is_causal).__name__}")
    blocks = (-(-q_len // BLOCK_SIZE[0]), -(-kv_len // BLOCK_SIZE[1]))
    if mask_id.dim() > 4:
        raise ValueError(f"mask_id must have at most 4 dims (B, H, Qb, Kb), got shape {tuple(mask_id.shape)}")
    lead = ((1, 1) + tuple(mask_id.shape)[:-2])[-2:]  # (B, H), 1 where mask_id has no such dim
    try:
        live = torch.broadcast_to(mask_id != 0, (*lead, *blocks)).contiguous()
    except RuntimeError:
        raise ValueError(f"mask_id of shape {tuple(mask_id.shape)} does not broadcast to (B, H, {blocks[0]}, "
                         f"{blocks[1]}) for q_len={q_len}, kv_len={kv_len}") from None
    b_step, h_step = int(lead[0] > 1), int(lead[1] > 1)  # a dim of 1 broadcasts: always index 0

    def sparse_sageattn_block_mask(b, h, q_idx, kv_idx):
        return live[b * b_step, h * h_step, q_idx // BLOCK_SIZE[0], kv_idx // BLOCK_SIZE[1]]

    if not is_causal:
        return BlockMask.from_kv_blocks(*_kv_lists(torch.zeros_like(live)), *_kv_lists(live), BLOCK_SIZE=BLOCK_SIZE,
                                        mask_mod=sparse_sageattn_block_mask, seq_lengths=(q_len, kv_len))
    offset = kv_len - q_len

    def sparse_sageattn_causal_block_mask(b, h, q_idx, kv_idx):
        return (kv_idx <= q_idx + offset) & sparse_sageattn_block_mask(b, h, q_idx, kv_idx)

    full = torch.from_numpy(_masks.causal_full_mask(q_len, kv_len)).to(live.device)
    partial = torch.from_numpy(_masks.causal_mask(q_len, kv_len)).to(live.device) & ~full
    return BlockMask.from_kv_blocks(*_kv_lists(live & partial), *_kv_lists(live & full), BLOCK_SIZE=BLOCK_SIZE,
                                    mask_mod=sparse_sageattn_causal_block_mask, seq_lengths=(q_len, kv_len))


def from_flex_block_mask(block_mask, *, keep_partial=False):
    """The `mask_id` (bool, (B, H, ceil(q_len/128), ceil(kv_len/64))) of a BlockMask's live blocks.

    Accepts BLOCK_SIZE (128, 64) and (128, 128) (each 128-key block becomes two 64-key blocks). A block mask is
    all sparse_sageattn takes, so partial blocks under a mask_mod other than the no-op one are refused: the
    mask_mod masks elements inside them. keep_partial=True counts them as whole blocks instead -- right when the
    mask_mod is the bottom-right causal rule and you call sparse_sageattn with is_causal=True; otherwise those
    blocks' masked pairs are computed too.
    """
    if not isinstance(block_mask, BlockMask):
        raise TypeError(f"block_mask must be a torch.nn.attention.flex_attention.BlockMask, "
                        f"got {type(block_mask).__name__}")
    q_block, kv_block = block_mask.BLOCK_SIZE
    if q_block != BLOCK_SIZE[0] or kv_block not in (BLOCK_SIZE[1], 2 * BLOCK_SIZE[1]):
        raise ValueError(f"block_mask.BLOCK_SIZE must be (128, 64) or (128, 128), got {block_mask.BLOCK_SIZE}")
    if block_mask.mask_mod is not noop_mask and not keep_partial and bool(block_mask.kv_num_blocks.any()):
        name = getattr(block_mask.mask_mod, "__name__", repr(block_mask.mask_mod))
        raise ValueError(
            f"block_mask has partial blocks under the mask_mod {name!r}, which masks elements inside blocks; a "
            f"sparse_sageattn mask_id is block-granular and cannot express that. Build the BlockMask from whole "
            f"blocks (no mask_mod, or full blocks only), or pass keep_partial=True to compute those blocks whole "
            f"(right for a bottom-right causal mask_mod used with is_causal=True)"
        )
    q_len, kv_len = block_mask.seq_lengths
    live = block_mask.to_dense() != 0
    if kv_block != BLOCK_SIZE[1]:
        live = live.repeat_interleave(kv_block // BLOCK_SIZE[1], dim=-1)
    q_blocks, kv_blocks = -(-q_len // BLOCK_SIZE[0]), -(-kv_len // BLOCK_SIZE[1])
    if live.shape[-2] < q_blocks or live.shape[-1] < kv_blocks:
        raise ValueError(f"block_mask's block lists ({tuple(live.shape)}) are shorter than its seq_lengths "
                         f"{block_mask.seq_lengths} need")
    return live[..., :q_blocks, :kv_blocks].contiguous()
