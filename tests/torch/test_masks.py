"""The torch mask builders: the same masks as sparse_sageattn.masks (tested element by element in
tests/test_masks.py), as bool tensors on the requested device, and a StreamingLLM-style mask through the kernels
against the float64 reference."""
import numpy as np
import pytest
import torch

from sparse_sageattn import masks as np_masks
from sparse_sageattn import sparse_sageattn
from sparse_sageattn import torch as sst
from sparse_sageattn.reference import assert_close, attention

from mask_cases import BUILDERS



@pytest.mark.parametrize("name,args,kwargs", BUILDERS, ids=[b[0] for b in BUILDERS])
def test_same_as_the_definition(device, name, args, kwargs):
    got = getattr(sst, name)(*args, **kwargs, device=device)
    assert got.dtype == torch.bool and got.device.type == device
    np.testing.assert_array_equal(got.cpu().numpy(), getattr(np_masks, name)(*args, **kwargs))


def test_bad_argument_named():
    with pytest.raises(ValueError, match="window"):
        sst.sliding_window_mask(10, 10, 0)


@pytest.mark.parametrize("n_q,n_k", [(384, 384), (200, 450)])
def test_streaming_mask_through_the_kernels(device, n_q, n_k):
    gen = torch.Generator().manual_seed(n_q)
    q, k, v = (torch.randn(1, 2, n, 64, generator=gen).to(device, torch.float16) for n in (n_q, n_k, n_k))
    mask = sst.union_mask(n_q, n_k, window=100, sink=4, device=device)
    out, lse = sparse_sageattn(q, k, v, mask, is_causal=True, return_lse=True)
    ref_out, ref_lse = attention(*(x.float().cpu().numpy() for x in (q, k, v)), mask.cpu().numpy(), True)
    assert_close(out.float().cpu().numpy(), lse.cpu().numpy(), ref_out, ref_lse)
