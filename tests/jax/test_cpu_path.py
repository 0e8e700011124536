"""The JAX function's pure-JAX path (what every non-CUDA backend runs) against the float64 reference of the
contract, with the core bounds, plus jit, vmap and grad behaviour. Arrays are placed on the CPU device, so on a
GPU machine too this checks the CPU path."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparse_sageattn.jax import sparse_sageattn
from sparse_sageattn.reference import REL_L1_MAX, assert_close, assert_close_fp8, attention, fp8_pv_attention, rel_l1

CPU = jax.devices("cpu")[0]


def make_qkv(seed, batch, heads_q, heads_kv, n_q, n_k, head_dim, layout="HND", dtype=np.float16, k_offset=0.0):
    """numpy q, k, v (k with an optional per-channel offset, what smoothing is for)."""
    rng = np.random.default_rng(seed)

    def rand(heads, n):
        shape = (batch, heads, n, head_dim) if layout == "HND" else (batch, n, heads, head_dim)
        return rng.standard_normal(shape, dtype=np.float32)

    q, k, v = rand(heads_q, n_q), rand(heads_kv, n_k), rand(heads_kv, n_k)
    k = k + k_offset * rng.standard_normal(head_dim, dtype=np.float32)
    return tuple(x.astype(dtype) for x in (q, k, v))


def random_mask(seed, shape, density=0.6, dtype=bool):
    return (np.random.default_rng(seed).random(shape) < density).astype(dtype)


def on_cpu(*arrays):
    return [None if a is None else jax.device_put(jnp.asarray(a), CPU) for a in arrays]


def check(q, k, v, mask_id=None, is_causal=False, tensor_layout="HND", sm_scale=None, smooth_k=True):
    """Run the JAX function on the CPU device; assert the contract's bounds against the reference."""
    out, lse = sparse_sageattn(*on_cpu(q, k, v, mask_id), is_causal, tensor_layout, sm_scale=sm_scale,
                               smooth_k=smooth_k, return_lse=True)
    assert out.shape == q.shape and out.dtype == q.dtype and lse.dtype == jnp.float32
    ref_out, ref_lse = attention(*(np.asarray(x, np.float64) for x in (q, k, v)), mask_id, is_causal,
                                 tensor_layout, sm_scale)
    assert_close(np.asarray(out, np.float64), np.asarray(lse), ref_out, ref_lse, tensor_layout)
    return out, lse


@pytest.mark.parametrize("dtype", [np.float16, jnp.bfloat16])
@pytest.mark.parametrize("layout", ["HND", "NHD"])
@pytest.mark.parametrize("head_dim", [8, 40, 64, 96, 128, 256])
def test_head_dims_layouts_dtypes(layout, head_dim, dtype):
    check(*make_qkv(head_dim, 1, 2, 2, 200, 300, head_dim, layout, dtype), tensor_layout=layout)


@pytest.mark.parametrize("heads_q,heads_kv", [(4, 4), (4, 2), (4, 1)])
@pytest.mark.parametrize("layout", ["HND", "NHD"])
def test_gqa_with_head_mask(heads_q, heads_kv, layout):
    q, k, v = make_qkv(heads_kv, 2, heads_q, heads_kv, 256, 320, 64, layout)
    check(q, k, v, random_mask(heads_q + heads_kv, (heads_q, 2, 5)), tensor_layout=layout)  # mask heads: query heads


@pytest.mark.parametrize("n_q,n_k", [(1, 1), (1, 77), (77, 1), (129, 65), (300, 200), (200, 300), (64, 1000)])
@pytest.mark.parametrize("is_causal", [False, True])
def test_ragged_lengths(n_q, n_k, is_causal):
    check(*make_qkv(n_q * 7 + n_k, 1, 2, 1, n_q, n_k, 64), is_causal=is_causal)


@pytest.mark.parametrize("mask_shape", [
    "Qb Kb", "Hq Qb Kb", "1 Hq Qb Kb", "B 1 Qb Kb", "B Hq Qb Kb", "1 1 1 Kb", "Qb 1", "1",
])
def test_mask_broadcast_shapes(mask_shape):
    batch, heads, n_q, n_k = 2, 3, 300, 250
    dims = {"B": batch, "Hq": heads, "Qb": 3, "Kb": 4, "1": 1}
    mask = random_mask(len(mask_shape), tuple(dims[d] for d in mask_shape.split()), density=0.5)
    mask.reshape(-1)[0] = True  # at least one live block, or the comparison is between zeros
    check(*make_qkv(1, batch, heads, heads, n_q, n_k, 64), mask, is_causal=True)


@pytest.mark.parametrize("dtype", [bool, np.int8, np.uint8, np.int32])
def test_mask_dtypes(dtype):
    mask = random_mask(3, (2, 2, 4), density=0.5).astype(dtype) * dtype(3)  # any nonzero counts
    check(*make_qkv(3, 1, 2, 2, 256, 256, 64), mask)


def test_fully_masked_rows_and_causal_empty_rows():
    q, k, v = make_qkv(5, 1, 2, 2, 384, 192, 64)
    mask = np.ones((2, 3, 3), dtype=bool)
    mask[0, 1] = False  # head 0, query block 1: no key at all
    out, lse = check(q, k, v, mask)
    assert np.isneginf(lse[0, 0, 128:256]).all() and not out[0, 0, 128:256].any()
    out, lse = check(q, k, v, is_causal=True)  # Nq > Nk: the first Nq - Nk queries see no key
    assert np.isneginf(lse[:, :, :192]).all() and not out[:, :, :192].any()


def test_all_zero_blocks():
    q, k, v = make_qkv(6, 1, 2, 2, 256, 256, 64)
    q[:, :, :128] = 0  # a whole quantization block of zeros: scale 0, never 0/0
    k[:, :, 64:128] = 0
    v[:, :, :64] = 0
    check(q, k, v)
    check(q, k, v, smooth_k=False)


def test_sm_scale():
    check(*make_qkv(8, 1, 2, 2, 200, 200, 64), sm_scale=0.05)


@pytest.mark.parametrize("dtype", [np.float16, jnp.bfloat16])
def test_smoothing_matters_for_k_with_channel_offsets(dtype):
    q, k, v = make_qkv(9, 1, 2, 2, 256, 512, 128, dtype=dtype, k_offset=20.0)
    check(q, k, v)  # smoothed, and the lse corrected for the shift: within the normal bounds
    ref, _ = attention(*(np.asarray(x, np.float64) for x in (q, k, v)))
    err_smooth = rel_l1(sparse_sageattn(*on_cpu(q, k, v)), ref)
    err_plain = rel_l1(sparse_sageattn(*on_cpu(q, k, v), smooth_k=False), ref)
    assert err_plain > 2 * err_smooth
    assert err_plain > REL_L1_MAX


def test_empty_sequences():
    out, lse = sparse_sageattn(*on_cpu(*make_qkv(10, 1, 2, 2, 0, 100, 64)), return_lse=True)
    assert out.shape == (1, 2, 0, 64) and lse.shape == (1, 2, 0)
    q, k, v = make_qkv(10, 1, 2, 2, 100, 0, 64)
    out, lse = sparse_sageattn(*on_cpu(q, k, v), return_lse=True)
    assert out.shape == q.shape and not out.any() and np.isneginf(lse).all()


def test_nan_reaches_only_the_affected_block():
    q, k, v = make_qkv(11, 1, 2, 2, 256, 256, 64)
    q[0, 1, 130, 5] = np.nan
    out = np.asarray(sparse_sageattn(*on_cpu(q, k, v)))
    assert np.isnan(out[0, 1, 128:256]).all()  # the quantization block of the NaN
    assert np.isfinite(out[0, 1, :128]).all() and np.isfinite(out[0, 0]).all()


def test_default_mask_computes_every_block():
    q, k, v = on_cpu(*make_qkv(12, 1, 2, 2, 300, 700, 64))
    assert np.array_equal(sparse_sageattn(q, k, v), sparse_sageattn(q, k, v, jnp.ones((3, 11), bool)))


def test_jit_traces_the_mask_and_matches_eager():
    q, k, v = on_cpu(*make_qkv(13, 2, 4, 2, 300, 260, 64))
    masks = [jnp.asarray(random_mask(s, (4, 3, 5))) for s in range(2)]
    f = jax.jit(lambda q, k, v, m: sparse_sageattn(q, k, v, m, True, return_lse=True))
    for mask in masks:
        out, lse = f(q, k, v, mask)
        eager_out, eager_lse = sparse_sageattn(q, k, v, mask, True, return_lse=True)
        assert np.array_equal(out, eager_out) and np.array_equal(lse, eager_lse)
    assert f._cache_size() == 1  # a new mask value is not a new compilation
    assert not np.array_equal(f(q, k, v, masks[0])[0], f(q, k, v, masks[1])[0])


def test_vmap_folds_mapped_axes_into_the_batch():
    outer, batch, heads_q, heads_kv = 3, 2, 4, 2
    qkv = [make_qkv(20 + i, batch, heads_q, heads_kv, 200, 300, 64, "NHD") for i in range(outer)]
    q, k, v = (np.stack(xs) for xs in zip(*qkv))
    masks = np.stack([random_mask(30 + i, (batch, 1, 2, 5)) for i in range(outer)])  # a vmapped mask

    def f(q, k, v, m):
        return sparse_sageattn(q, k, v, m, True, "NHD", return_lse=True)

    out, lse = jax.jit(jax.vmap(f))(*on_cpu(q, k, v, masks))
    shared_mask = random_mask(40, (heads_q, 2, 5))
    out_shared = jax.vmap(f, in_axes=(0, None, None, None))(*on_cpu(q, k[0], v[0], shared_mask))[0]
    for i in range(outer):
        one_out, one_lse = f(*on_cpu(q[i], k[i], v[i], masks[i]))
        assert np.array_equal(out[i], one_out)
        # XLA CPU may reassociate the fp32 K-mean reduction when the batch grows: an ulp in the smoothing shift.
        np.testing.assert_allclose(lse[i], one_lse, rtol=1e-6, atol=0)
        assert np.array_equal(out_shared[i], f(*on_cpu(q[i], k[0], v[0], shared_mask))[0])
    # vmap over a non-leading axis, and nested vmap: still one call with everything folded into the batch
    nested = jax.vmap(jax.vmap(lambda q, k, v: sparse_sageattn(q, k, v, tensor_layout="NHD")), in_axes=1,
                      out_axes=1)(*on_cpu(q[:, :, None], k[:, :, None], v[:, :, None]))
    assert np.array_equal(nested[:, :, 0], jax.vmap(lambda q, k, v: sparse_sageattn(q, k, v, tensor_layout="NHD"))(
        *on_cpu(q, k, v)))


def test_grad_says_the_backward_is_not_available():
    q, k, v = on_cpu(*make_qkv(14, 1, 2, 2, 64, 64, 64))
    loss = lambda q: sparse_sageattn(q, k, v).astype(jnp.float32).sum()  # noqa: E731
    with pytest.raises(NotImplementedError, match="backward pass is not available yet"):
        jax.grad(loss)(q)
    with pytest.raises(NotImplementedError, match="backward pass is not available yet"):
        jax.jit(jax.grad(loss))(q)
    # stop_gradient on the inputs is the way around it
    frozen = lambda q: sparse_sageattn(jax.lax.stop_gradient(q), k, v).astype(jnp.float32).sum() + q.sum()  # noqa
    assert jax.grad(frozen)(q).shape == q.shape


@pytest.mark.parametrize("dtype", [np.float16, jnp.bfloat16])
@pytest.mark.parametrize("layout,heads_q,heads_kv,n_q,n_k,is_causal", [
    ("HND", 4, 2, 300, 500, True), ("NHD", 2, 2, 256, 256, False), ("HND", 2, 1, 129, 65, True)])
def test_fp8_pv_mode(dtype, layout, heads_q, heads_kv, n_q, n_k, is_causal):
    """pv_dtype="fp8" rounds P and V to e4m3 as the kernels do: its error is the format's floor plus the INT8
    attention's budget (reference.assert_close_fp8), and the lse does not change."""
    q, k, v = make_qkv(n_q + n_k, 2, heads_q, heads_kv, n_q, n_k, 64, layout, dtype)
    mask = random_mask(n_q, (heads_q, -(-n_q // 128), -(-n_k // 64)))
    out, lse = sparse_sageattn(*on_cpu(q, k, v, mask), is_causal, layout, return_lse=True, pv_dtype="fp8")
    _, lse_fp16 = sparse_sageattn(*on_cpu(q, k, v, mask), is_causal, layout, return_lse=True)
    args = [np.asarray(x, np.float64) for x in (q, k, v)]
    ref_out, _ = attention(*args, mask, is_causal, layout)
    assert_close_fp8(np.asarray(out, np.float64), ref_out, fp8_pv_attention(*args, mask, is_causal, layout))
    assert np.array_equal(np.asarray(lse), np.asarray(lse_fp16))
