"""Bad input: the JAX function raises the same error (type and message) as the torch frontend, before anything
runs. Both frontends get their messages from core_kernels.validate; this checks that each describes its arrays to
it identically. (Devices and strides are torch-only failures: JAX arrays are contiguous and placed by JAX.)"""
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from sparse_sageattn import sparse_sageattn as torch_attention
from sparse_sageattn.jax import sparse_sageattn as jax_attention


def arrays(b=1, hq=2, hkv=2, nq=128, nk=128, d=64, dtype="float16", layout="HND"):
    rng = np.random.default_rng(0)
    shape = (lambda h, n: (b, h, n, d)) if layout == "HND" else (lambda h, n: (b, n, h, d))
    return [(rng.standard_normal(s).astype(np.float32), dtype) for s in (shape(hq, nq), shape(hkv, nk), shape(hkv, nk))]


def to_torch(a):
    if isinstance(a, tuple):
        return torch.from_numpy(a[0]).to(getattr(torch, a[1]))
    return torch.from_numpy(a) if isinstance(a, np.ndarray) else a


def to_jax(a):
    if isinstance(a, tuple):
        return jnp.asarray(a[0], dtype=a[1])
    return jnp.asarray(a) if isinstance(a, np.ndarray) else a


def bad_calls():
    """name -> (positional arrays, keyword arguments); arrays are (float32 data, dtype name) or numpy masks."""
    q, k, v = arrays()
    yield "rank", [(q[0][0], q[1]), k, v], {}
    yield "batch", [q, *arrays(b=2)[1:]], {}
    yield "head_dim", [q, k, arrays(d=32)[2]], {}
    yield "keys", [q, k, arrays(nk=64)[2]], {}
    yield "heads_kv", [q, k, arrays(hkv=1)[2]], {}
    yield "gqa", [q, *arrays(hkv=3)[1:]], {}
    yield "dtype", [(q[0], "float32"), k, v], {}
    yield "mixed", [q, k, (v[0], "bfloat16")], {}
    yield "head_dim_value", arrays(d=36), {}
    yield "head_dim_large", arrays(d=264), {}
    yield "mask_shape", [q, k, v, np.ones((3, 2), bool)], {}
    yield "mask_rank", [q, k, v, np.ones((1, 1, 1, 1, 1), bool)], {}
    yield "mask_float", [q, k, v, np.ones((1, 2), np.float32)], {}
    yield "layout", [q, k, v], {"tensor_layout": "BHSD"}
    yield "nhd_batch", [*arrays(layout="NHD")[:2], arrays(b=3, layout="NHD")[2]], {"tensor_layout": "NHD"}
    yield "nhd_mask", [*arrays(nq=300, layout="NHD"), np.ones((2, 2, 2), bool)], {"tensor_layout": "NHD"}
    yield "is_causal", [q, k, v], {"is_causal": "yes"}
    yield "smooth_k", [q, k, v], {"smooth_k": 1}
    yield "return_lse", [q, k, v], {"return_lse": None}
    yield "sm_scale_nan", [q, k, v], {"sm_scale": float("nan")}
    yield "sm_scale_negative", [q, k, v], {"sm_scale": -0.1}
    yield "sm_scale_type", [q, k, v], {"sm_scale": "0.1"}
    yield "pv_dtype", [q, k, v], {"pv_dtype": "e4m3"}
    yield "kv_lens_dtype", [q, k, v], {"kv_lens": np.array([5.0], np.float32)}
    yield "kv_lens_shape", [q, k, v], {"kv_lens": np.array([5, 6], np.int32)}
    yield "kv_lens_rank", [q, k, v], {"kv_lens": np.array([[5]], np.int32)}


def raised(call):
    with pytest.raises(Exception) as info:
        call()
    return type(info.value), str(info.value)


@pytest.mark.parametrize("name,args,kwargs", list(bad_calls()), ids=[c[0] for c in bad_calls()])
def test_same_error_as_torch(name, args, kwargs):
    torch_error = raised(lambda: torch_attention(*map(to_torch, args), **{n: to_torch(a) for n, a in kwargs.items()}))
    jax_error = raised(lambda: jax_attention(*map(to_jax, args), **{n: to_jax(a) for n, a in kwargs.items()}))
    assert torch_error[0] in (ValueError, TypeError), torch_error
    assert jax_error == torch_error


def test_non_array_inputs_name_the_argument():
    q, k, v = (to_jax(a) for a in arrays())
    with pytest.raises(TypeError, match=r"sparse_sageattn: k must be a jax.Array, got list"):
        jax_attention(q, [1], v)
    with pytest.raises(TypeError, match=r"sparse_sageattn: mask_id must be a jax.Array, got ndarray"):
        jax_attention(q, k, v, np.ones((1, 2), bool))
