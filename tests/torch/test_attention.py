"""The torch frontend against the float64 reference of the contract, at small sizes.

Without a GPU these run the real Triton kernels through the interpreter (fp16); with one, on the GPU.
"""
import subprocess
import sys
import textwrap

import pytest
import torch

from sparse_sageattn.reference import REL_L1_MAX, assert_close, attention, rel_l1
from sparse_sageattn import sparse_sageattn

from qkv_cases import make_qkv, random_mask


def check(q, k, v, mask_id=None, is_causal=False, tensor_layout="HND", sm_scale=None, smooth_k=True):
    inputs = [x.clone() for x in (q, k, v)]
    out, lse = sparse_sageattn(q, k, v, mask_id, is_causal, tensor_layout, sm_scale=sm_scale, smooth_k=smooth_k,
                               return_lse=True)
    for before, after in zip(inputs, (q, k, v)):
        assert torch.equal(before, after), "an input was modified"
    assert out.shape == q.shape and out.dtype == q.dtype and out.device == q.device
    mask_np = None if mask_id is None else mask_id.cpu().numpy()
    ref_out, ref_lse = attention(*(x.float().cpu().numpy() for x in (q, k, v)), mask_np, is_causal, tensor_layout,
                                 sm_scale)
    assert_close(out.float().cpu().numpy(), lse.cpu().numpy(), ref_out, ref_lse, tensor_layout)
    return out, lse


@pytest.mark.parametrize("layout", ["HND", "NHD"])
@pytest.mark.parametrize("head_dim", [8, 40, 64, 96, 128, 256])
def test_head_dims_and_layouts(device, layout, head_dim):
    q, k, v = make_qkv(head_dim, 1, 2, 2, 200, 300, head_dim, layout, device)
    check(q, k, v, tensor_layout=layout)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("heads_q,heads_kv", [(4, 4), (4, 2), (4, 1)])
def test_gqa_with_head_mask(device, seed, heads_q, heads_kv):
    n_q, n_k = 256, 320
    q, k, v = make_qkv(seed, 2, heads_q, heads_kv, n_q, n_k, 64, device=device)
    mask = random_mask(seed, (heads_q, 2, 5)).to(device)  # mask heads are query heads
    check(q, k, v, mask)


@pytest.mark.parametrize("n_q,n_k", [(1, 1), (1, 77), (77, 1), (129, 65), (300, 200), (200, 300), (64, 1000)])
@pytest.mark.parametrize("is_causal", [False, True])
def test_ragged_lengths(device, n_q, n_k, is_causal):
    q, k, v = make_qkv(n_q * 7 + n_k, 1, 2, 1, n_q, n_k, 64, device=device)
    check(q, k, v, is_causal=is_causal)


@pytest.mark.parametrize("mask_shape", [
    "Qb Kb", "Hq Qb Kb", "1 Hq Qb Kb", "B 1 Qb Kb", "B Hq Qb Kb", "1 1 1 Kb", "Qb 1", "1",
])
def test_mask_broadcast_shapes(device, mask_shape):
    batch, heads, n_q, n_k = 2, 3, 300, 250
    dims = {"B": batch, "Hq": heads, "Qb": 3, "Kb": 4, "1": 1}
    mask = random_mask(len(mask_shape), tuple(dims[d] for d in mask_shape.split()), density=0.5)
    mask.view(-1)[0] = True  # at least one live block, or the comparison is between zeros
    mask = mask.to(device)
    q, k, v = make_qkv(1, batch, heads, heads, n_q, n_k, 64, device=device)
    check(q, k, v, mask, is_causal=True)


@pytest.mark.parametrize("dtype", [torch.bool, torch.int8, torch.uint8, torch.int32, torch.int64])
def test_mask_dtypes(device, dtype):
    q, k, v = make_qkv(3, 1, 2, 2, 256, 256, 64, device=device)
    mask = (random_mask(3, (2, 2, 4), density=0.5).to(dtype) * 3).to(device)  # any nonzero counts
    check(q, k, v, mask)


def test_fully_masked_rows_and_causal_empty_rows(device):
    q, k, v = make_qkv(5, 1, 2, 2, 384, 192, 64, device=device)
    mask = torch.ones(2, 3, 3, dtype=torch.bool)
    mask[0, 1] = False  # head 0, query block 1: no key at all
    out, lse = check(q, k, v, mask.to(device))
    assert torch.isneginf(lse[0, 0, 128:256]).all() and not out[0, 0, 128:256].any()
    # causal with Nq > Nk: the first Nq - Nk queries see no key
    out, lse = check(q, k, v, is_causal=True)
    assert torch.isneginf(lse[:, :, :192]).all() and not out[:, :, :192].any()


def test_all_zero_blocks(device):
    q, k, v = make_qkv(6, 1, 2, 2, 256, 256, 64, device=device)
    q[:, :, :128] = 0  # a whole quantization block of zeros: scale 0, never 0/0
    k[:, :, 64:128] = 0
    v[:, :, :64] = 0
    check(q, k, v)
    check(q, k, v, smooth_k=False)


def test_strided_views_without_copy(device):
    batch, n, heads, head_dim = 2, 200, 4, 64
    gen = torch.Generator().manual_seed(7)
    qkv = torch.randn(batch, n, 3, heads, head_dim, generator=gen).to(device=device, dtype=torch.float16)
    q, k, v = qkv.unbind(2)  # NHD views out of a fused projection: non-contiguous
    assert not q.is_contiguous()
    check(q, k, v, tensor_layout="NHD", is_causal=True)
    check(*(x.transpose(1, 2) for x in (q, k, v)), tensor_layout="HND")
    padded = torch.randn(batch, heads, n, head_dim + 4, generator=gen).to(device=device, dtype=torch.float16)
    q = padded[..., :head_dim]  # row stride 68: not a multiple of 8, the kernels take their unaligned path
    check(q, k.transpose(1, 2), v.transpose(1, 2))


def test_sm_scale(device):
    q, k, v = make_qkv(8, 1, 2, 2, 200, 200, 64, device=device)
    check(q, k, v, sm_scale=0.05)


def test_smoothing_matters_for_k_with_channel_offsets(device):
    q, k, v = make_qkv(9, 1, 2, 2, 256, 512, 128, device=device, k_offset=20.0)
    check(q, k, v)  # smoothed: within the normal bounds
    ref, _ = attention(*(x.float().cpu().numpy() for x in (q, k, v)))
    err_smooth = rel_l1(sparse_sageattn(q, k, v).float().cpu().numpy(), ref)
    err_plain = rel_l1(sparse_sageattn(q, k, v, smooth_k=False).float().cpu().numpy(), ref)
    assert err_plain > 2 * err_smooth
    assert err_plain > REL_L1_MAX


def test_empty_sequences(device):
    q, k, v = make_qkv(10, 1, 2, 2, 0, 100, 64, device=device)
    out, lse = sparse_sageattn(q, k, v, return_lse=True)
    assert out.shape == (1, 2, 0, 64) and lse.shape == (1, 2, 0)
    q, k, v = make_qkv(10, 1, 2, 2, 100, 0, 64, device=device)
    out, lse = sparse_sageattn(q, k, v, return_lse=True)
    assert out.shape == q.shape and not out.any() and torch.isneginf(lse).all()


def test_nan_reaches_only_the_affected_block(device):
    q, k, v = make_qkv(11, 1, 2, 2, 256, 256, 64, device=device)
    q[0, 1, 130, 5] = float("nan")
    out = sparse_sageattn(q, k, v)
    assert torch.isnan(out[0, 1, 128:256]).all()  # the quantization block of the NaN
    assert torch.isfinite(out[0, 1, :128]).all() and torch.isfinite(out[0, 0]).all()


def test_default_mask_computes_every_block(device):
    q, k, v = make_qkv(12, 1, 2, 2, 300, 700, 64, device=device)
    full = torch.ones(3, 11, dtype=torch.bool, device=device)
    assert torch.equal(sparse_sageattn(q, k, v), sparse_sageattn(q, k, v, full))


def test_requires_grad_is_refused(device):
    q, k, v = make_qkv(13, 1, 1, 1, 64, 64, 64, device=device)
    with pytest.raises(NotImplementedError, match="backward"):
        sparse_sageattn(q.requires_grad_(), k, v)
    with torch.no_grad():
        sparse_sageattn(q, k, v)


def test_seed_example(device):
    """The seed's README example: 512 x 512, a 4 x 8 block mask."""
    q, k, v = make_qkv(14, 1, 2, 2, 512, 512, 128, device=device)
    mask_id = random_mask(14, (4, 8), density=0.5).to(device)
    check(q, k, v, mask_id)


def test_cpu_tensors_need_the_interpreter():
    code = textwrap.dedent("""
        import os, torch
        os.environ.pop("TRITON_INTERPRET", None)
        from sparse_sageattn import sparse_sageattn
        q = torch.randn(1, 1, 64, 64, dtype=torch.float16)
        try:
            sparse_sageattn(q, q, q)
        except RuntimeError as e:
            print("refused:", e)
    """)
    env = {k: v for k, v in __import__("os").environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert "refused:" in result.stdout and "TRITON_INTERPRET=1" in result.stdout, result.stdout + result.stderr
