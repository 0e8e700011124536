"""predict_mask (JAX) on its pure-JAX path (what every non-CUDA backend runs) against the float64 selection
rule, the same cases as the torch tests; plus jit, vmap, grad and errors. The CUDA path is compiled by
test_lowering.py and compared bitwise with torch in tests/parity (GPU)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparse_sageattn.jax import predict_mask
from sparse_sageattn.reference import predicted_mask

import predict_cases as cases  # noqa: E402
CASES, MIN_MARGIN, forced_and_allowed, structured = (cases.CASES, cases.MIN_MARGIN, cases.forced_and_allowed,
                                                     cases.structured)


CPU = jax.devices("cpu")[0]


def on_cpu(*arrays):
    return [jax.device_put(jnp.asarray(a), CPU) for a in arrays]


@pytest.mark.parametrize("dtype", [np.float16, jnp.bfloat16])
@pytest.mark.parametrize("case", CASES)
def test_matches_reference(case, dtype):
    heads_q, heads_kv, n_q, n_k, layout, options = case
    q = structured(n_q, 2, heads_q, n_q, 64, 128, layout).astype(dtype)
    k = structured(n_k, 2, heads_kv, n_k, 64, 64, layout).astype(dtype)
    mask = np.asarray(predict_mask(*on_cpu(q, k), tensor_layout=layout, **options))
    ref, margin = predicted_mask(q, k, tensor_layout=layout, **options)
    assert margin.min() > MIN_MARGIN
    assert mask.dtype == np.int8
    np.testing.assert_array_equal(mask.astype(bool), ref)


def test_forced_causal_monotone_and_topk_ties():
    n_q, n_k = 700, 300
    rng = np.random.default_rng(0)
    q, k = (rng.standard_normal((1, 2, n, 64)).astype(np.float16) for n in (n_q, n_k))
    forced, allowed = forced_and_allowed(n_q, n_k, True)
    previous = np.zeros_like(allowed)
    for threshold in (0.1, 0.5, 0.9, 1.0):
        mask = np.asarray(predict_mask(*on_cpu(q, k), cdf_threshold=threshold, is_causal=True)).astype(bool)
        assert (mask >= forced).all() and not (mask & ~allowed).any() and (mask >= previous).all()
        previous = mask
    mask = np.asarray(predict_mask(*on_cpu(np.zeros_like(q), k), topk=0.5, is_causal=True)).astype(bool)
    n_keep = np.ceil(np.float32(0.5) * allowed.sum(axis=1).astype(np.float32))
    expected = (np.arange(allowed.shape[1])[None, :] < n_keep[:, None]) & allowed | forced
    np.testing.assert_array_equal(mask, np.broadcast_to(expected, mask.shape))


def test_jit_vmap_grad_and_empty():
    q, k = on_cpu(structured(1, 2, 4, 300, 64, 128), structured(2, 2, 2, 500, 64, 64))
    eager = predict_mask(q, k, topk=0.4)
    assert (jax.jit(lambda q, k: predict_mask(q, k, topk=0.4))(q, k) == eager).all()
    stacked = jax.vmap(lambda q: predict_mask(q, k, topk=0.4))(jnp.stack([q, q[::-1]]))
    assert stacked.shape == (2,) + eager.shape and (stacked[0] == eager).all()
    assert (stacked[1] == predict_mask(q[::-1], k, topk=0.4)).all()
    grad = jax.grad(lambda q: jnp.sum(predict_mask(q, k, topk=0.4) * q.astype(jnp.float32).sum()))(q)
    assert grad.shape == q.shape  # the mask itself carries no gradient, and differentiating does not fail
    assert predict_mask(q[:, :, :0], k, topk=0.5).shape == (2, 4, 0, 8)


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(), ValueError, "exactly one of cdf_threshold and topk"),
    (dict(cdf_threshold=0.0), ValueError, "cdf_threshold"),
    (dict(topk=2), ValueError, "topk"),
    (dict(topk=0.5, is_causal=None), TypeError, "is_causal"),
])
def test_errors_name_the_argument(kwargs, error, match):
    q = jnp.zeros((1, 2, 128, 64), jnp.float16)
    with pytest.raises(error, match=match):
        predict_mask(q, q, **kwargs)
    with pytest.raises(TypeError, match="k must be a jax.Array"):
        predict_mask(q, np.zeros((1, 2, 128, 64), np.float16), topk=0.5)
