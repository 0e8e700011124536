"""Bad input: a ValueError/TypeError naming the argument, raised before any launch."""
import pytest
import torch

from sparse_sageattn import sparse_sageattn


def qkv(b=1, hq=2, hkv=2, nq=128, nk=128, d=64, dtype=torch.float16, device="cpu"):
    return (torch.randn(b, hq, nq, d).to(device, dtype), torch.randn(b, hkv, nk, d).to(device, dtype),
            torch.randn(b, hkv, nk, d).to(device, dtype))


def bad_calls():
    q, k, v = qkv()
    yield "rank", ValueError, r"q must have 4 dimensions", lambda: sparse_sageattn(q[0], k, v)
    yield "batch", ValueError, r"k has batch 2, q has 1", lambda: sparse_sageattn(q, *qkv(b=2)[1:])
    yield "head_dim", ValueError, r"v has head_dim 32, q has 64", lambda: sparse_sageattn(q, k, qkv(d=32)[2])
    yield "keys", ValueError, r"v has 64 keys, k has 128", lambda: sparse_sageattn(q, k, qkv(nk=64)[2])
    yield "gqa", ValueError, r"q's 2 heads must be a multiple of k's and v's 3 heads", \
        lambda: sparse_sageattn(q, *qkv(hkv=3)[1:])
    yield "dtype", TypeError, r"q must be float16 or bfloat16, got float32", lambda: sparse_sageattn(q.float(), k, v)
    yield "mixed", TypeError, r"q, k and v must share one dtype, got q float16 and v bfloat16", \
        lambda: sparse_sageattn(q, k, v.bfloat16())
    yield "head_dim_value", ValueError, r"head_dim must be a multiple of 8 between 8 and 256", \
        lambda: sparse_sageattn(*qkv(d=36))
    yield "head_dim_large", ValueError, r"head_dim must be a multiple of 8", lambda: sparse_sageattn(*qkv(d=264))
    yield "mask_shape", ValueError, r"mask_id of shape \(3, 2\) is not broadcastable to .* = \(1, 2, 1, 2\)", \
        lambda: sparse_sageattn(q, k, v, torch.ones(3, 2, dtype=torch.bool))
    yield "mask_rank", ValueError, r"mask_id of shape \(1, 1, 1, 1, 1\) is not broadcastable", \
        lambda: sparse_sageattn(q, k, v, torch.ones(1, 1, 1, 1, 1, dtype=torch.bool))
    yield "mask_float", TypeError, r"mask_id must be a bool or integer array .* got float32", \
        lambda: sparse_sageattn(q, k, v, torch.ones(1, 2))
    yield "mask_device", ValueError, r"mask_id must be on q's device cpu, got meta", \
        lambda: sparse_sageattn(q, k, v, torch.ones(1, 2, dtype=torch.bool, device="meta"))
    yield "device", ValueError, r"q, k and v must be on one device, got q on cpu and k on meta", \
        lambda: sparse_sageattn(q, k.to("meta"), v)
    yield "kv_lens_dtype", TypeError, r"kv_lens must be an int32 array .* got int64", \
        lambda: sparse_sageattn(q, k, v, kv_lens=torch.tensor([5]))
    yield "kv_lens_shape", ValueError, r"kv_lens must have shape \(B,\) = \(1,\), got \(2,\)", \
        lambda: sparse_sageattn(q, k, v, kv_lens=torch.tensor([5, 6], dtype=torch.int32))
    yield "kv_lens_device", ValueError, r"kv_lens must be on q's device cpu, got meta", \
        lambda: sparse_sageattn(q, k, v, kv_lens=torch.ones(1, dtype=torch.int32, device="meta"))
    yield "kv_lens_type", TypeError, r"kv_lens must be a torch.Tensor, got list", \
        lambda: sparse_sageattn(q, k, v, kv_lens=[5])
    yield "layout", ValueError, r"tensor_layout must be 'HND' or 'NHD', got 'BHSD'", \
        lambda: sparse_sageattn(q, k, v, tensor_layout="BHSD")
    yield "last_dim", ValueError, r"k must be contiguous in its last dimension", \
        lambda: sparse_sageattn(q, torch.randn(1, 2, 64, 128).half().transpose(2, 3), v)
    yield "is_causal", TypeError, r"is_causal must be a bool", lambda: sparse_sageattn(q, k, v, is_causal="yes")
    yield "sm_scale", ValueError, r"sm_scale must be a positive finite number", \
        lambda: sparse_sageattn(q, k, v, sm_scale=float("nan"))
    yield "not_tensor", TypeError, r"k must be a torch.Tensor, got list", lambda: sparse_sageattn(q, [1], v)


@pytest.mark.parametrize("name,error,message,call", list(bad_calls()), ids=[c[0] for c in bad_calls()])
def test_bad_input_raises_before_launch(name, error, message, call):
    with pytest.raises(error, match=message):
        call()
