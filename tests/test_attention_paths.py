"""One case list (tests/attention_cases.py), every path that computes the attention op, the same bounds.

Paths: the torch call (Triton interpreter without a GPU, the GPU with one; cases of at most 64 queries a head
take the split-KV kernel), the plain kernel's two-key-blocks step (KEY_BLOCKS_PER_STEP=2, through a plan
override, for every case), the FP8 P.V mode (its own, e4m3-floor bound), the JAX
pure-JAX path on the CPU device, and the JAX CUDA path (GPU only). Each is checked against the float64
reference of the contract (sparse_sageattn.reference).
"""
import numpy as np
import pytest
import torch

from sparse_sageattn import sparse_sageattn
from sparse_sageattn.reference import assert_close, assert_close_fp8, attention, fp8_pv_attention

from attention_cases import CASES, inputs
from qkv_cases import run_plan


PATHS = ["torch", "torch_pairs", "torch_fp8", "jax_cpu", "jax_cuda"]
INTERPRETER_DTYPES = ("float16",)  # the Triton interpreter has no bfloat16


def torch_inputs(case, arrays, device):
    q, k, v, mask = arrays
    dtype = getattr(torch, case.dtype)
    tensors = [torch.from_numpy(x).to(device, dtype) for x in (q, k, v)]
    kv_lens = None if case.kv_lens is None else torch.tensor(case.kv_lens, dtype=torch.int32, device=device)
    return tensors + [None if mask is None else torch.from_numpy(mask).to(device), kv_lens]


def run_path(path, case, arrays, device):
    """(out, lse) of one path as float64 numpy."""
    flags = dict(is_causal=case.is_causal, tensor_layout=case.layout, smooth_k=case.smooth_k, return_lse=True)
    if path.startswith("torch"):
        if device == "cpu" and case.dtype not in INTERPRETER_DTYPES:
            pytest.skip("the Triton interpreter has no bfloat16")
        q, k, v, mask, kv_lens = torch_inputs(case, arrays, device)
        if path == "torch_pairs":
            assert case.smooth_k, "run_plan smooths K"
            out, lse = run_plan(q, k, v, mask, case.is_causal, case.layout, kv_lens=kv_lens)
        else:
            out, lse = sparse_sageattn(q, k, v, mask, pv_dtype="fp8" if path == "torch_fp8" else "fp16",
                                       kv_lens=kv_lens, **flags)
        return out.double().cpu().numpy(), lse.double().cpu().numpy()
    import jax
    import jax.numpy as jnp

    from sparse_sageattn.jax import sparse_sageattn as jax_attention

    if path == "jax_cuda" and device == "cpu":
        pytest.skip("needs a CUDA GPU")
    device = jax.devices("cpu" if path == "jax_cpu" else "gpu")[0]
    q, k, v, mask = arrays
    dtype = jnp.dtype(case.dtype)
    placed = [jax.device_put(jnp.asarray(x).astype(dtype), device) for x in (q, k, v)]
    placed.append(None if mask is None else jax.device_put(jnp.asarray(mask), device))
    kv_lens = None if case.kv_lens is None else jax.device_put(jnp.asarray(case.kv_lens, jnp.int32), device)
    out, lse = jax_attention(*placed, kv_lens=kv_lens, **flags)
    return np.asarray(out.astype(jnp.float32), np.float64), np.asarray(lse, np.float64)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_case_on_path(case, path, device):
    if path == "torch_pairs" and not case.smooth_k:
        pytest.skip("the override runner smooths K")
    arrays = inputs(case)
    out, lse = run_path(path, case, arrays, device)
    assert out.shape == arrays[0].shape
    # the reference sees the inputs as the paths do: rounded to the case's dtype
    q, k, v = (torch.from_numpy(x).to(getattr(torch, case.dtype)).double().numpy() for x in arrays[:3])
    mask = arrays[3]
    ref_out, ref_lse = attention(q, k, v, mask, case.is_causal, case.layout, kv_lens=case.kv_lens)
    if path == "torch_fp8":
        assert_close_fp8(out, ref_out, fp8_pv_attention(q, k, v, mask, case.is_causal, case.layout,
                                                        kv_lens=case.kv_lens))
    else:
        assert_close(out, lse, ref_out, ref_lse, case.layout)
