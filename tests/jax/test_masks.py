"""The JAX mask builders: the same masks as sparse_sageattn.masks (tested element by element in
tests/test_masks.py), as bool arrays, constants under jit, and a StreamingLLM-style mask through the pure-JAX
path against the float64 reference."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparse_sageattn import masks as np_masks
from sparse_sageattn import jax as sj
from sparse_sageattn.reference import assert_close, attention

from mask_cases import BUILDERS

CPU = jax.devices("cpu")[0]


@pytest.mark.parametrize("name,args,kwargs", BUILDERS, ids=[b[0] for b in BUILDERS])
def test_same_as_the_definition(name, args, kwargs):
    got = getattr(sj, name)(*args, **kwargs, device=CPU)
    assert got.dtype == jnp.bool_ and got.devices() == {CPU}
    np.testing.assert_array_equal(np.asarray(got), getattr(np_masks, name)(*args, **kwargs))


def test_constant_under_jit():
    @jax.jit
    def count(x):
        return sj.union_mask(x.shape[0], x.shape[0], window=128, sink=4).sum()

    assert int(count(jnp.zeros(700))) == int(np_masks.union_mask(700, 700, window=128, sink=4).sum())


def test_bad_argument_named():
    with pytest.raises(ValueError, match="window"):
        sj.sliding_window_mask(10, 10, 0)


@pytest.mark.parametrize("n_q,n_k", [(384, 384), (200, 450)])
def test_streaming_mask_through_the_cpu_path(n_q, n_k):
    rng = np.random.default_rng(n_q)
    q, k, v = (rng.standard_normal((1, 2, n, 64)).astype(np.float16) for n in (n_q, n_k, n_k))
    mask = sj.union_mask(n_q, n_k, window=100, sink=4, device=CPU)
    out, lse = sj.sparse_sageattn(*(jax.device_put(x, CPU) for x in (q, k, v)), mask, True, return_lse=True)
    ref_out, ref_lse = attention(q.astype(np.float64), k.astype(np.float64), v.astype(np.float64),
                                 np.asarray(mask), True)
    assert_close(np.asarray(out, np.float64), np.asarray(lse), ref_out, ref_lse)
