"""pv_dtype="fp8" (e4m3 P and V) through the torch frontend, against the float64 reference and its e4m3 floor.

The FP8 mode cannot be as accurate as the exact result allows INT8 attention: rounding P and V to e4m3 alone
costs ~0.0006 of cosine on random inputs (reference.fp8_pv_attention computes that floor in float64). Its bound
is that floor plus the INT8 attention's own budget (reference.assert_close_fp8). Without a GPU the kernels run in
the interpreter (fp16); with one, on the GPU (where the mode needs sm_89+).
"""
import numpy as np
import pytest
import torch

from sparse_sageattn import sparse_sageattn
from sparse_sageattn.core_kernels import ArrayDesc, configs
from sparse_sageattn.core_kernels.attention import make_plan
from sparse_sageattn.core_kernels import contiguous_strides
from sparse_sageattn.reference import LSE_ABS_MAX, assert_close_fp8, attention, fp8_pv_attention

from qkv_cases import make_qkv, random_mask, run_plan


def check_fp8(q, k, v, mask_id=None, is_causal=False, tensor_layout="HND", smooth_k=True):
    inputs = [x.clone() for x in (q, k, v)]
    out, lse = sparse_sageattn(q, k, v, mask_id, is_causal, tensor_layout, smooth_k=smooth_k, return_lse=True,
                               pv_dtype="fp8")
    for before, after in zip(inputs, (q, k, v)):
        assert torch.equal(before, after), "an input was modified"
    assert out.shape == q.shape and out.dtype == q.dtype
    args = [x.double().cpu().numpy() for x in (q, k, v)]
    mask_np = None if mask_id is None else mask_id.cpu().numpy()
    ref_out, _ = attention(*args, mask_np, is_causal, tensor_layout)
    assert_close_fp8(out.double().cpu().numpy(), ref_out, fp8_pv_attention(*args, mask_np, is_causal, tensor_layout))
    # The softmax statistics do not depend on how P.V is computed: the lse is the fp16 mode's, bit for bit, where
    # both modes take the attention kernel (the fp16 mode's short calls take the split-KV kernel: there the lse
    # meets the contract's bound against the reference instead).
    _, lse_fp16 = sparse_sageattn(q, k, v, mask_id, is_causal, tensor_layout, smooth_k=smooth_k, return_lse=True)
    n_q = q.shape[2 if tensor_layout == "HND" else 1]
    if n_q > configs.SPLIT_KV_MAX_QUERIES:
        assert torch.equal(lse, lse_fp16)
    else:
        got, ref_lse = lse.cpu().numpy(), attention(*args, mask_np, is_causal, tensor_layout)[1]
        empty = np.isneginf(ref_lse)
        assert np.array_equal(np.isneginf(got), empty)
        assert np.abs(got[~empty] - ref_lse[~empty]).max(initial=0.0) <= LSE_ABS_MAX
    return out


@pytest.mark.parametrize("layout", ["HND", "NHD"])
@pytest.mark.parametrize("head_dim", [40, 64, 128])
def test_head_dims_and_layouts(device, layout, head_dim):
    check_fp8(*make_qkv(head_dim, 1, 2, 2, 200, 300, head_dim, layout, device), tensor_layout=layout)


@pytest.mark.parametrize("heads_q,heads_kv", [(4, 4), (4, 1)])
def test_gqa_with_head_mask_and_causal(device, heads_q, heads_kv):
    q, k, v = make_qkv(heads_q + heads_kv, 2, heads_q, heads_kv, 256, 320, 64, device=device)
    check_fp8(q, k, v, random_mask(heads_q, (heads_q, 2, 5)).to(device), is_causal=True)


@pytest.mark.parametrize("n_q,n_k", [(1, 77), (129, 65), (300, 200)])
def test_ragged_lengths(device, n_q, n_k):
    check_fp8(*make_qkv(n_q + n_k, 1, 2, 1, n_q, n_k, 64, device=device), is_causal=True, smooth_k=False)


def test_bfloat16_on_gpu(device):
    if device == "cpu":
        pytest.skip("the interpreter has no bfloat16")
    check_fp8(*make_qkv(3, 2, 4, 2, 1000, 1500, 128, device=device, dtype=torch.bfloat16), is_causal=True)


@pytest.mark.parametrize("key_blocks_per_step", [1, 2])
def test_key_block_pairs(device, key_blocks_per_step):
    """The two-blocks-per-step loop gathers V^T columns of two blocks: same bounds, odd counts included."""
    q, k, v = make_qkv(7, 1, 2, 2, 300, 450, 64, device=device)
    mask = random_mask(7, (2, 3, 8)).to(device)
    out = run_plan(q, k, v, mask, True, "HND", True, {"key_blocks_per_step": key_blocks_per_step},
                   pv_dtype="fp8")[0]
    args = [x.double().cpu().numpy() for x in (q, k, v)]
    ref_out, _ = attention(*args, mask.cpu().numpy(), True)
    assert_close_fp8(out.double().cpu().numpy(), ref_out, fp8_pv_attention(*args, mask.cpu().numpy(), True))


def test_zero_and_large_channels(device):
    """Per-channel V scales: an all-zero channel stays exactly zero (scale 0, never 0/0), and a channel 1000x
    larger than the others does not cost the small ones their precision."""
    q, k, v = make_qkv(11, 1, 2, 2, 256, 256, 64, device=device)
    v = v.clone()
    v[..., 3] = 0
    v[..., 5] *= 1000
    out = check_fp8(q, k, v)
    assert not out[..., 3].any()


def test_nan_in_v_reaches_only_rows_that_see_it(device):
    if device == "cpu":
        pytest.skip("the interpreter converts e4m3 to fp32 as if 0x7F (e4m3's NaN) were 480")
    q, k, v = make_qkv(12, 1, 1, 1, 256, 256, 64, device=device)
    v = v.clone()
    v[0, 0, 200, 7] = float("nan")  # key 200: key block 3, seen by both query blocks only with the mask below
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool, device=device)
    out = sparse_sageattn(q, k, v, mask, pv_dtype="fp8")
    assert torch.isfinite(out[0, 0, :128]).all()
    assert out[0, 0, 128:, 7].isnan().all()


def test_pv_dtype_is_checked_before_any_launch(device):
    q, k, v = make_qkv(0, 1, 1, 1, 64, 64, 64, device=device)
    with pytest.raises(ValueError, match="pv_dtype must be 'fp16'.*or 'fp8'.*got 'bf16'"):
        sparse_sageattn(q, k, v, pv_dtype="bf16")


@pytest.mark.parametrize("capability,refused", [((8, 0), True), ((8, 6), True), ((8, 9), False), ((9, 0), False)])
def test_fp8_needs_sm89(capability, refused):
    desc = ArrayDesc((1, 2, 256, 64), contiguous_strides((1, 2, 256, 64)), "float16")
    if refused:
        with pytest.raises(ValueError, match=rf"pv_dtype='fp8' needs FP8 tensor cores.*sm_{capability[0]}"):
            make_plan(desc, desc, desc, capability=capability, pv_dtype="fp8")
    else:
        plan = make_plan(desc, desc, desc, capability=capability, pv_dtype="fp8")
        assert plan.buffers["v_fp8"].dtype == "uint8" and plan.buffers["v_fp8"].shape == (256 * 64 * 2,)
    make_plan(desc, desc, desc, capability=capability)  # the default mode runs everywhere
