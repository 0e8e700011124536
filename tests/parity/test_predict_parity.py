"""predict_mask on a GPU: the torch and JAX frontends launch the same core kernels with the same scalars, so the
predicted masks must be bitwise identical (marked gpu). Inputs and converters: test_gpu_parity.py's.

    python -m pytest -q tests/parity/test_predict_parity.py -m gpu
"""
import importlib.util
import os
from pathlib import Path

os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from sparse_sageattn.jax import CAPABILITY_ENV  # noqa: E402
from sparse_sageattn.jax import predict_mask as jax_predict  # noqa: E402
from sparse_sageattn.torch import predict_mask as torch_predict  # noqa: E402

_spec = importlib.util.spec_from_file_location("gpu_parity", Path(__file__).with_name("test_gpu_parity.py"))
parity = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(parity)

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def device_capability(monkeypatch):
    monkeypatch.delenv(CAPABILITY_ENV, raising=False)  # both frontends must pick the card's launch table entry


def assert_bitwise(q, k, **options):
    t_mask = torch_predict(parity.to_torch(q), parity.to_torch(k), **options).cpu().numpy()
    j_mask = np.asarray(jax_predict(parity.to_jax(q), parity.to_jax(k), **options))
    jitted = np.asarray(jax.jit(lambda q, k: jax_predict(q, k, **options))(parity.to_jax(q), parity.to_jax(k)))
    assert t_mask.dtype == j_mask.dtype == np.int8 and t_mask.shape == j_mask.shape
    differ = np.flatnonzero(t_mask.ravel() != j_mask.ravel())
    assert differ.size == 0, f"{differ.size} of {t_mask.size} mask entries differ, first at {differ[:5]}"
    assert np.array_equal(jitted, j_mask)
    return t_mask


@pytest.mark.parametrize("dtype", parity.DTYPES)
@pytest.mark.parametrize("layout", ["HND", "NHD"])
@pytest.mark.parametrize("options", [dict(cdf_threshold=0.9), dict(cdf_threshold=0.5, is_causal=True),
                                     dict(topk=0.2), dict(topk=0.05, is_causal=True, sm_scale=0.05)])
def test_modes_layouts_dtypes(dtype, layout, options):
    q, k, _, _ = parity.inputs(7, 2, 8, 2, 3000, 5000, 128, layout, dtype)
    mask = assert_bitwise(q, k, tensor_layout=layout, **options)
    assert 0 < mask.mean() < 1


@pytest.mark.parametrize("dtype", parity.DTYPES)
@pytest.mark.parametrize("n_q,n_k,head_dim", [(1, 1, 64), (77, 5000, 40), (1500, 1000, 96), (32768, 32768, 64),
                                              (256, 8192 * 64, 128)])
def test_lengths_and_head_dims(dtype, n_q, n_k, head_dim):
    q, k, _, _ = parity.inputs(n_q + n_k, 1, 4, 1, n_q, n_k, head_dim, "HND", dtype)
    assert_bitwise(q, k, cdf_threshold=0.8, is_causal=n_q <= n_k)
