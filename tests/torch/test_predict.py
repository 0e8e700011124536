"""predict_mask (torch) against the float64 selection rule, at small sizes.

Without a GPU the real kernels run through the Triton interpreter (fp16). Exact equality with the reference is
only meaningful where no decision sits within fp32 rounding of flipping: inputs are block-structured (each block
a random vector plus noise, so pooled scores are well spread) and every comparison asserts the reference's
margin first -- deterministic seeds, so nothing here can be flaky.
"""

import numpy as np
import pytest
import torch

from sparse_sageattn import sparse_sageattn
from sparse_sageattn.core_kernels import ArrayDesc, predict
from sparse_sageattn.reference import assert_close, attention, predicted_mask
from sparse_sageattn.torch import predict_mask

import predict_cases as cases  # noqa: E402
CASES, MIN_MARGIN, forced_and_allowed, structured = (cases.CASES, cases.MIN_MARGIN, cases.forced_and_allowed,
                                                     cases.structured)


def run(q, k, device, **kwargs):
    return predict_mask(torch.from_numpy(q).to(device), torch.from_numpy(k).to(device), **kwargs).cpu().numpy()


@pytest.mark.parametrize("case", CASES)
def test_matches_reference(device, case):
    heads_q, heads_kv, n_q, n_k, layout, options = case
    q = structured(n_q, 2, heads_q, n_q, 64, 128, layout)
    k = structured(n_k, 2, heads_kv, n_k, 64, 64, layout)
    mask = run(q, k, device, tensor_layout=layout, **options)
    ref, margin = predicted_mask(q, k, tensor_layout=layout, **options)
    assert margin.min() > MIN_MARGIN, "the inputs leave a decision within rounding: choose others"
    assert mask.dtype == np.int8 and mask.shape == ref.shape
    np.testing.assert_array_equal(mask.astype(bool), ref)
    assert 0 < ref.mean() < 1  # the case does select


@pytest.mark.parametrize("n_q,n_k,is_causal", [(300, 700, True), (700, 300, True), (129, 1000, False)])
def test_forced_blocks_and_causality_and_threshold_monotone(device, n_q, n_k, is_causal):
    """Unstructured inputs (ties and near-ties allowed): the guarantees hold whatever the scores."""
    gen = torch.Generator().manual_seed(n_q + n_k)
    q = torch.randn(1, 2, n_q, 64, generator=gen).half().numpy()
    k = torch.randn(1, 2, n_k, 64, generator=gen).half().numpy()
    forced, allowed = forced_and_allowed(n_q, n_k, is_causal)
    previous = np.zeros_like(allowed)
    for threshold in (0.1, 0.5, 0.9, 1.0):
        mask = run(q, k, device, cdf_threshold=threshold, is_causal=is_causal).astype(bool)
        assert (mask >= forced).all(), "a diagonal or sink block was dropped"
        assert not (mask & ~allowed).any(), "a block above the causal diagonal was kept"
        assert (mask >= previous).all(), "a higher threshold dropped a block"
        previous = mask


@pytest.mark.parametrize("topk", [0.01, 0.25, 0.5, 1.0])
def test_topk_count_and_ties_by_index(device, topk):
    """All-zero q: every candidate has the same probability, so ties rank by index and the kept set is exactly
    the first ceil(topk * candidates) blocks (fp32 product, as the kernel) plus the forced ones."""
    n_q, n_k = 300, 1000
    q = np.zeros((1, 2, n_q, 64), np.float16)
    k = structured(3, 1, 2, n_k, 64, 64)
    forced, allowed = forced_and_allowed(n_q, n_k, True)
    mask = run(q, k, device, topk=topk, is_causal=True).astype(bool)
    n_keep = np.ceil(np.float32(topk) * allowed.sum(axis=1).astype(np.float32))
    expected = (np.arange(allowed.shape[1])[None, :] < n_keep[:, None]) & allowed | forced
    np.testing.assert_array_equal(mask, np.broadcast_to(expected, mask.shape))


def test_empty_inputs(device):
    q = torch.zeros(1, 2, 0, 64, dtype=torch.float16, device=device)
    k = torch.zeros(1, 2, 100, 64, dtype=torch.float16, device=device)
    mask = predict_mask(q, k, topk=0.5)
    assert mask.shape == (1, 2, 0, 2) and mask.dtype == torch.int8
    mask = predict_mask(k, q, topk=0.5)
    assert mask.shape == (1, 2, 1, 0)


def test_mask_feeds_sparse_sageattn(device):
    q = structured(5, 1, 2, 256, 64, 128)
    k = structured(6, 1, 2, 512, 64, 64)
    v = np.random.default_rng(7).standard_normal(k.shape).astype(np.float16)
    tq, tk, tv = (torch.from_numpy(x).to(device) for x in (q, k, v))
    mask = predict_mask(tq, tk, cdf_threshold=0.8, is_causal=True)
    out, lse = sparse_sageattn(tq, tk, tv, mask, is_causal=True, return_lse=True)
    ref_out, ref_lse = attention(q, k, v, mask.cpu().numpy(), is_causal=True)
    assert_close(out.float().cpu().numpy(), lse.cpu().numpy(), ref_out, ref_lse)


def test_requires_grad_inputs_are_fine(device):
    q = torch.randn(1, 2, 128, 64, dtype=torch.float16, device=device, requires_grad=True)
    k = torch.randn(1, 2, 128, 64, dtype=torch.float16, device=device, requires_grad=True)
    assert predict_mask(q, k, topk=1.0).all()


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(), ValueError, "exactly one of cdf_threshold and topk"),
    (dict(cdf_threshold=0.5, topk=0.5), ValueError, "exactly one"),
    (dict(cdf_threshold=0.0), ValueError, "cdf_threshold must be a number in"),
    (dict(cdf_threshold=1.5), ValueError, "cdf_threshold"),
    (dict(topk=True), ValueError, "topk"),
    (dict(topk="0.5"), ValueError, "topk"),
    (dict(topk=0.5, is_causal=1), TypeError, "is_causal"),
    (dict(topk=0.5, tensor_layout="BHND"), ValueError, "tensor_layout"),
    (dict(topk=0.5, sm_scale=-1.0), ValueError, "sm_scale"),
])
def test_errors_name_the_argument(device, kwargs, error, match):
    q = torch.zeros(1, 2, 128, 64, dtype=torch.float16, device=device)
    with pytest.raises(error, match=match):
        predict_mask(q, q, **kwargs)


def test_errors_on_tensors(device):
    q = torch.zeros(1, 2, 128, 64, dtype=torch.float16, device=device)
    with pytest.raises(TypeError, match="k must be a torch.Tensor"):
        predict_mask(q, q.numpy() if device == "cpu" else None, topk=0.5)
    with pytest.raises(TypeError, match="k must be float16 or bfloat16"):
        predict_mask(q, q.float(), topk=0.5)
    with pytest.raises(TypeError, match="q, k and v must share one dtype"):
        predict_mask(q, q.bfloat16(), topk=0.5)
    with pytest.raises(ValueError, match="multiple of k's"):
        predict_mask(q, torch.zeros(1, 3, 128, 64, dtype=torch.float16, device=device), topk=0.5)
    too_long = ArrayDesc((1, 1, 8192 * 64 + 1, 64), (0, 0, 64, 1), "float16")
    with pytest.raises(ValueError, match="k may hold at most 524288 keys"):
        predict.validate(too_long, too_long, None, 0.5, False, "HND", None)
