"""The split-KV kernel (core_kernels/attention/split_kv.py) and the combine of its splits, against the float64
reference, on the torch frontend's launcher with a forced split count (make_plan's split_kv_override): one
split (no combine), several, more splits than live blocks (empty slices), GQA heads packed into one tile or one
head per program, causal with kv_lens, rows that see nothing. Also: the kernel quantizes each K block to the
quantize launch's exact INT8 values and scale."""
import pytest
import torch
import triton
import triton.language as tl

from sparse_sageattn.core_kernels.attention import make_plan
from sparse_sageattn.core_kernels.attention.quantize import _channel_mean
from sparse_sageattn.core_kernels.attention.split_kv import _quantize_key_block
from sparse_sageattn.core_kernels.contract import BLOCK_N
from sparse_sageattn.reference import assert_close, attention, cosine
from sparse_sageattn.torch import _launch

from qkv_cases import make_qkv, random_mask, run_plan


def check(q, k, v, mask_id=None, is_causal=False, kv_lens=None, splits=1):
    out, lse = run_plan(q, k, v, mask_id, is_causal, kv_lens=kv_lens, split_kv_override={"splits": splits})
    ref_out, ref_lse = attention(*(x.float().cpu().numpy() for x in (q, k, v)),
                                 None if mask_id is None else mask_id.cpu().numpy(), is_causal,
                                 kv_lens=None if kv_lens is None else kv_lens.cpu().numpy())
    assert_close(out.float().cpu().numpy(), lse.cpu().numpy(), ref_out, ref_lse)
    return out, lse


@pytest.mark.parametrize("splits", [1, 2, 5, 16])  # 16 > the 10 live blocks: empty slices
def test_splits_combine_exactly(device, splits):
    q, k, v = make_qkv(splits, 2, 8, 2, 3, 600, 64, device=device, k_offset=2.0)
    check(q, k, v, is_causal=True, splits=splits)


@pytest.mark.parametrize("n_q,heads_q,heads_kv", [(1, 8, 1), (40, 8, 2), (33, 4, 4)])  # 8, 2 or 1 heads a tile
def test_head_packing(device, n_q, heads_q, heads_kv):
    q, k, v = make_qkv(n_q, 3, heads_q, heads_kv, n_q, 333, 64, device=device, k_offset=2.0)
    out, _ = check(q, k, v, is_causal=True, splits=3)
    # as accurate as the table's attention kernel on the same call (the same INT8 numerics)
    table, _ = run_plan(q, k, v, None, True, override={"kernel": "triton", "key_blocks_per_step": 1})
    ref, _ = attention(*(x.float().cpu().numpy() for x in (q, k, v)), None, True)
    assert cosine(out.float().cpu().numpy(), ref) >= cosine(table.float().cpu().numpy(), ref) - 1e-6


def test_mask_per_head_with_empty_rows_and_kv_lens(device):
    q, k, v = make_qkv(5, 2, 4, 2, 16, 500, 128, device=device, k_offset=2.0)
    mask = random_mask(5, (2, 4, 1, 8), density=0.5)
    mask[0, 1] = False  # a head that sees nothing: zeros, lse -inf
    mask[1, :, :, 0] = True
    kv_lens = torch.tensor([500, 70], dtype=torch.int32, device=device)
    for b, n_valid in enumerate(kv_lens.tolist()):
        k[b, :, n_valid:] = float("nan")
        v[b, :, n_valid:] = float("nan")
    out, lse = check(q, k, v, mask.to(device), is_causal=True, kv_lens=kv_lens, splits=4)
    assert not out[0, 1].any() and torch.isneginf(lse[0, 1]).all()


@triton.jit
def _quantize_key_blocks(k_ptr, partial_sums_ptr, n_k, k_int8_ptr, k_scale_ptr, BLOCK_N: tl.constexpr,
                         HEAD_DIM: tl.constexpr, ROWS_PER_CHUNK: tl.constexpr):
    """One (kv head, key block) per program, loaded and quantized as split_kv_kernel does."""
    bh = tl.program_id(0)
    kb = tl.program_id(1)
    rows = kb * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    kv_mask = (rows < n_k)[:, None] & (offs_d < HEAD_DIM)[None, :]
    k = tl.load(k_ptr + bh * n_k * HEAD_DIM + rows[:, None] * HEAD_DIM + offs_d[None, :], mask=kv_mask, other=0.0)
    k_mean = _channel_mean(partial_sums_ptr, bh, tl.cdiv(n_k, ROWS_PER_CHUNK), n_k, ROWS_PER_CHUNK, HEAD_DIM)
    k_int8, k_scale = _quantize_key_block(k, k_mean, kv_mask, True, True)
    n_kb = tl.num_programs(1)
    tl.store(k_int8_ptr + (bh * n_kb + kb) * BLOCK_N * HEAD_DIM + tl.arange(0, BLOCK_N)[:, None] * HEAD_DIM
             + offs_d[None, :], k_int8)
    tl.store(k_scale_ptr + bh * n_kb + kb, k_scale)


def test_key_blocks_quantize_as_the_quantize_launch_does(device):
    q, k, v = make_qkv(9, 1, 2, 2, 200, 4200, 64, device=device, k_offset=3.0)  # 3 sum chunks, a ragged tail
    plan = make_plan(*(_launch.describe(x) for x in (q, k, v)), capability=_launch.capability(q.device),
                     attention_override={"kernel": "triton"})
    env = _launch.run(plan, {"q": q, "k": k, "v": v}, q.device)
    n_kb = -(-4200 // BLOCK_N)
    k_int8 = torch.empty(2 * n_kb * BLOCK_N * 64, dtype=torch.int8, device=device)
    k_scale = torch.empty(2 * n_kb, dtype=torch.float32, device=device)
    _quantize_key_blocks[(2, n_kb)](k, env["k_channel_sums"], 4200, k_int8, k_scale, BLOCK_N=BLOCK_N, HEAD_DIM=64,
                                    ROWS_PER_CHUNK=plan.launches[0].constexprs["ROWS_PER_CHUNK"])
    assert torch.equal(k_int8, env["k_int8"]) and torch.equal(k_scale, env["k_scale"])
