"""The torch and JAX mask builders give the same masks, bit for bit (pure index arithmetic: CPU is enough)."""
import jax
import numpy as np
import pytest

from sparse_sageattn import jax as sj
from sparse_sageattn import torch as sst

CASES = [
    ("causal_mask", (1000, 1000), {}),
    ("causal_mask", (129, 4097), {}),
    ("sliding_window_mask", (4097, 4097, 1024), {}),
    ("sliding_window_mask", (700, 300, 100), {"lookahead": 37}),
    ("sink_mask", (2048, 2048, 4), {}),
    ("sink_mask", (300, 301, 130), {"global_queries": True}),
    ("union_mask", (8192, 8192), {"window": 1000, "sink": 4}),
    ("union_mask", (1, 5000), {"causal": True, "window": 64, "lookahead": 3, "sink": 65, "global_queries": True}),
]


@pytest.mark.parametrize("name,args,kwargs", CASES)
def test_torch_and_jax_builders_agree(name, args, kwargs):
    from_torch = getattr(sst, name)(*args, **kwargs).numpy()
    from_jax = np.asarray(getattr(sj, name)(*args, **kwargs, device=jax.devices("cpu")[0]))
    assert from_torch.dtype == from_jax.dtype == np.bool_
    np.testing.assert_array_equal(from_torch, from_jax)
