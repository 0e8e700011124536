"""Cross-framework parity on a GPU: for identical inputs the torch and JAX frontends launch the same core kernels
with the same scalars and constexprs, so out and lse must be bitwise identical.

torch and JAX share the GPU in this process: JAX must not preallocate (set before JAX starts). The inputs are
made once in numpy and the same bits are handed to both frameworks.

    python -m pytest -q tests/parity -m gpu
"""
import functools
import os

os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from sparse_sageattn import sparse_sageattn as torch_attention  # noqa: E402
from sparse_sageattn.jax import CAPABILITY_ENV, sharded_sparse_sageattn  # noqa: E402
from sparse_sageattn.jax import cache_append, cache_attend, init_cache  # noqa: E402
from sparse_sageattn.jax import sparse_sageattn as jax_attention  # noqa: E402
from sparse_sageattn.torch.kv_cache import Int8KVCache  # noqa: E402

pytestmark = pytest.mark.gpu

DTYPES = {"float16": (np.float16, torch.float16, np.int16), "bfloat16": (jnp.bfloat16, torch.bfloat16, np.int16)}


@pytest.fixture(autouse=True)
def device_capability(monkeypatch):
    monkeypatch.delenv(CAPABILITY_ENV, raising=False)  # both frontends must pick the card's launch table entry


def inputs(seed, batch, heads_q, heads_kv, n_q, n_k, head_dim, layout, dtype, mask_shape=None, density=0.5):
    """numpy q, k, v of `dtype` and a numpy bool mask (or None)."""
    rng = np.random.default_rng(seed)

    def rand(heads, n):
        shape = (batch, heads, n, head_dim) if layout == "HND" else (batch, n, heads, head_dim)
        return rng.standard_normal(shape, dtype=np.float32).astype(DTYPES[dtype][0])

    q, k, v = rand(heads_q, n_q), rand(heads_kv, n_k), rand(heads_kv, n_k)
    mask = None if mask_shape is None else rng.random(mask_shape) < density
    return q, k, v, mask


def to_torch(x):
    if x is None:
        return None
    if x.dtype == jnp.bfloat16:  # torch cannot read ml_dtypes' bfloat16: move the bits
        return torch.from_numpy(x.view(np.int16)).view(torch.bfloat16).cuda()
    return torch.from_numpy(x).cuda()


def to_jax(x):
    return None if x is None else jax.device_put(jnp.asarray(x), jax.devices("gpu")[0])


def bits(x):
    """The raw bits of a torch tensor or JAX array (1, 2 or 4 bytes an element), as a numpy integer array."""
    if isinstance(x, torch.Tensor):
        x = x.cpu()
        return x.view({1: torch.int8, 2: torch.int16, 4: torch.int32}[x.element_size()]).numpy()
    x = np.asarray(x)
    return x.view({1: np.int8, 2: np.int16, 4: np.int32}[x.dtype.itemsize])


def assert_bitwise(case, **kwargs):
    q, k, v, mask = case
    t_out, t_lse = torch_attention(*map(to_torch, (q, k, v, mask)), return_lse=True, **kwargs)
    j_out, j_lse = jax_attention(*map(to_jax, (q, k, v, mask)), return_lse=True, **kwargs)
    assert tuple(j_out.shape) == tuple(t_out.shape) and tuple(j_lse.shape) == tuple(t_lse.shape)
    for name, t, j in (("out", t_out, j_out), ("lse", t_lse, j_lse)):
        t_bits, j_bits = bits(t), bits(j)
        differ = np.flatnonzero(t_bits.ravel() != j_bits.ravel())
        assert differ.size == 0, f"{name}: {differ.size} of {t_bits.size} elements differ, first at {differ[:5]}"
    return j_out, j_lse


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["HND", "NHD"])
@pytest.mark.parametrize("head_dim", [64, 96, 128])
@pytest.mark.parametrize("is_causal", [False, True])
def test_layouts_head_dims_causal(dtype, layout, head_dim, is_causal):
    case = inputs(head_dim, 2, 4, 4, 1024, 1024, head_dim, layout, dtype)
    assert_bitwise(case, is_causal=is_causal, tensor_layout=layout)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mask_shape", [
    "Qb Kb", "Hq Qb Kb", "1 Hq Qb Kb", "B 1 Qb Kb", "B Hq Qb Kb", "1 1 1 Kb", "Qb 1", "1",
])
def test_mask_broadcast_shapes(dtype, mask_shape):
    batch, heads, n_q, n_k = 2, 4, 1000, 1500
    dims = {"B": batch, "Hq": heads, "Qb": 8, "Kb": 24, "1": 1}
    shape = tuple(dims[d] for d in mask_shape.split())
    assert_bitwise(inputs(len(shape), batch, heads, heads, n_q, n_k, 64, "HND", dtype, shape), is_causal=True)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("heads_q,heads_kv", [(8, 2), (8, 1)])
@pytest.mark.parametrize("n_q,n_k", [(1, 1), (77, 5000), (1000, 1500), (1500, 1000), (129, 65)])
def test_gqa_and_ragged_lengths(dtype, heads_q, heads_kv, n_q, n_k):
    mask_shape = (heads_q, -(-n_q // 128), -(-n_k // 64))
    case = inputs(n_q + n_k, 1, heads_q, heads_kv, n_q, n_k, 128, "NHD", dtype, mask_shape, density=0.7)
    assert_bitwise(case, is_causal=n_q <= n_k, tensor_layout="NHD")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("smooth_k", [True, False])
def test_odd_head_dim_smoothing_and_sm_scale(dtype, smooth_k):
    case = inputs(3, 1, 4, 2, 700, 900, 40, "HND", dtype, (4, 6, 15))
    assert_bitwise(case, smooth_k=smooth_k, sm_scale=0.07)


@pytest.mark.parametrize("dtype", DTYPES)
def test_fully_masked_rows(dtype):
    q, k, v, _ = inputs(4, 1, 2, 2, 384, 192, 64, "HND", dtype)
    mask = np.ones((2, 3, 3), bool)
    mask[0, 1] = False
    out, lse = assert_bitwise((q, k, v, mask))
    assert np.isneginf(np.asarray(lse[0, 0, 128:256])).all()
    assert_bitwise((q, k, v, None), is_causal=True)  # Nq > Nk: the first Nq - Nk rows see nothing


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout,head_dim,heads_q,heads_kv,n_q,n_k,mask_shape", [
    ("HND", 128, 4, 2, 1000, 1500, (4, 8, 24)),
    ("NHD", 64, 4, 4, 2048, 2048, None),
    ("HND", 40, 4, 1, 129, 65, (1, 2)),
])
def test_fp8_pv_mode(dtype, layout, head_dim, heads_q, heads_kv, n_q, n_k, mask_shape):
    case = inputs(head_dim, 2, heads_q, heads_kv, n_q, n_k, head_dim, layout, dtype, mask_shape)
    assert_bitwise(case, is_causal=True, tensor_layout=layout, pv_dtype="fp8")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("is_causal", [False, True])
def test_long_sequences(dtype, is_causal):
    n = 16384
    case = inputs(5, 1, 4, 2, n, n, 128, "HND", dtype, (n // 128, n // 64), density=0.3)
    assert_bitwise(case, is_causal=is_causal)


@pytest.mark.parametrize("dtype", DTYPES)
def test_jit_vmap_and_sharding_keep_the_bits(dtype):
    """No timing: the JAX call under jit (new mask values, no recompilation), vmap (folded into one launch) and
    the shard_map wrapper on a one-GPU mesh give the eager call's bits, run after run."""
    q, k, v, _ = inputs(6, 2, 4, 2, 1000, 1200, 64, "NHD", dtype)
    masks = np.random.default_rng(6).random((3, 2, 1, 8, 19)) < 0.6
    qj, kj, vj = map(to_jax, (q, k, v))

    def f(q, k, v, m):
        return jax_attention(q, k, v, m, True, "NHD", return_lse=True)

    jitted = jax.jit(f)
    eager = [assert_bitwise((q, k, v, m), is_causal=True, tensor_layout="NHD") for m in masks]
    for m, (out, lse) in zip(masks, eager):
        j_out, j_lse = jitted(qj, kj, vj, to_jax(m))
        assert np.array_equal(bits(j_out), bits(out)) and np.array_equal(bits(j_lse), bits(lse))
        again = jitted(qj, kj, vj, to_jax(m))
        assert np.array_equal(bits(again[0]), bits(out))
    assert jitted._cache_size() == 1
    v_out, v_lse = jax.jit(jax.vmap(f, in_axes=(None, None, None, 0)))(qj, kj, vj, to_jax(masks))
    for i, (out, lse) in enumerate(eager):
        assert np.array_equal(bits(v_out[i]), bits(out)) and np.array_equal(bits(v_lse[i]), bits(lse))
    mesh = jax.make_mesh((1, 1), ("data", "model"), devices=jax.devices("gpu")[:1])
    s_out, s_lse = sharded_sparse_sageattn(mesh, qj, kj, vj, to_jax(masks[0]), True, "NHD", batch_axis="data",
                                           head_axis="model", return_lse=True)
    assert np.array_equal(bits(s_out), bits(eager[0][0])) and np.array_equal(bits(s_lse), bits(eager[0][1]))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_q,n_k,heads_q,heads_kv,mask_shape,kv_lens", [
    (1, 32768, 32, 8, None, None),  # split-KV, a kv group's heads in one tile
    (16, 20000, 32, 8, None, (20000, 7, 12345, 0)),  # kv_lens, one empty row
    (1, 9000, 8, 2, (8, 1, 141), None),  # a mask per head: one head per program
    (48, 3000, 8, 2, (1, 1), (3000, 2999, 64, 65)),
    (700, 4000, 8, 2, None, (4000, 2500, 1, 3999)),  # kv_lens on the table's attention kernel
])
def test_split_kv_and_kv_lens(dtype, n_q, n_k, heads_q, heads_kv, mask_shape, kv_lens):
    case = inputs(8, 4, heads_q, heads_kv, n_q, n_k, 128, "HND", dtype, mask_shape)
    lens = None if kv_lens is None else np.asarray(kv_lens, np.int32)
    for kwargs in (dict(is_causal=True), dict(is_causal=False, smooth_k=False)):
        t_out, t_lse = torch_attention(*map(to_torch, case), kv_lens=to_torch(lens), return_lse=True, **kwargs)
        j_out, j_lse = jax_attention(*map(to_jax, case), kv_lens=to_jax(lens), return_lse=True, **kwargs)
        for name, t, j in (("out", t_out, j_out), ("lse", t_lse, j_lse)):
            assert np.array_equal(bits(t), bits(j)), name


@pytest.mark.parametrize("v_format", ["native", "e4m3"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_int8_kv_cache(dtype, v_format):
    """The torch Int8KVCache and the JAX one, fed the same tokens (a 300-token prompt, then 1, 1 and 17 more, both
    layouts), hold the same arrays, with the same bits, after each append, and attention over them (1 and 16
    queries, causal) gives the same out and lse bits; so do decode steps jitted with the cache donated (updated in
    place). Values native or e4m3 (growing from one append to the next: a block's exponents are set again)."""
    batch, heads_kv, heads_q, head_dim, capacity = 2, 2, 8, 128, 1024
    np_dtype, torch_dtype, _ = DTYPES[dtype]
    rng = np.random.default_rng(9)
    offset = 2.0 * rng.standard_normal(head_dim, dtype=np.float32)  # what K's smoothing vector is for
    torch_cache = Int8KVCache(batch, heads_kv, capacity, head_dim, torch_dtype, device="cuda", v_format=v_format)
    with jax.default_device(jax.devices("gpu")[0]):
        jax_cache = init_cache(batch, heads_kv, capacity, head_dim, np_dtype, v_format)
    assert tuple(jax_cache.arrays) == tuple(torch_cache.arrays)
    for i, (n, layout) in enumerate(((300, "HND"), (1, "NHD"), (1, "HND"), (17, "NHD"))):
        shape = (batch, heads_kv, n, head_dim) if layout == "HND" else (batch, n, heads_kv, head_dim)
        k = (rng.standard_normal(shape, dtype=np.float32) + offset).astype(np_dtype)
        v = (rng.standard_normal(shape, dtype=np.float32) * 2.0 ** i).astype(np_dtype)
        torch_cache.append(to_torch(k), to_torch(v), layout)
        jax_cache = cache_append(jax_cache, to_jax(k), to_jax(v), layout)
        for name, t in torch_cache.arrays.items():
            assert np.array_equal(bits(t), bits(getattr(jax_cache, name))), f"{name} after appending {n}"
    for n_q, layout in ((1, "HND"), (16, "NHD")):
        shape = (batch, heads_q, n_q, head_dim) if layout == "HND" else (batch, n_q, heads_q, head_dim)
        q = rng.standard_normal(shape, dtype=np.float32).astype(np_dtype)
        t_out, t_lse = torch_cache.attend(to_torch(q), is_causal=True, tensor_layout=layout, return_lse=True)
        j_out, j_lse = cache_attend(jax_cache, to_jax(q), is_causal=True, tensor_layout=layout, return_lse=True)
        for name, t, j in (("out", t_out, j_out), ("lse", t_lse, j_lse)):
            assert np.array_equal(bits(t), bits(j)), f"{name} of {n_q} queries"

    @functools.partial(jax.jit, donate_argnums=0)
    def step(cache, k, v, q):
        cache = cache_append(cache, k, v)
        return cache, cache_attend(cache, q, is_causal=True, return_lse=True)

    for _ in range(3):
        k, v = (rng.standard_normal((batch, heads_kv, 1, head_dim), dtype=np.float32).astype(np_dtype)
                for _ in range(2))
        q = rng.standard_normal((batch, heads_q, 1, head_dim), dtype=np.float32).astype(np_dtype)
        torch_cache.append(to_torch(k), to_torch(v))
        t_out, t_lse = torch_cache.attend(to_torch(q), is_causal=True, return_lse=True)
        donated = jax_cache
        jax_cache, (j_out, j_lse) = step(jax_cache, to_jax(k), to_jax(v), to_jax(q))
        assert all(a.is_deleted() for a in donated.arrays.values())
        for name, t in torch_cache.arrays.items():
            assert np.array_equal(bits(t), bits(getattr(jax_cache, name))), f"{name} after a jitted step"
        assert np.array_equal(bits(t_out), bits(j_out)) and np.array_equal(bits(t_lse), bits(j_lse))
    assert int(jax_cache.lens[0]) == 322 and step._cache_size() == 1
