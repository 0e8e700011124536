"""The torch frontend (real kernels under the Triton interpreter) and the JAX CPU path agree within the
contract's bounds on shared inputs: same bits in, outputs with cosine >= 0.9999 and relative L1 <= 0.02 of each
other, the same empty rows, lse within a few hundredths. (Bitwise parity of the two kernel launchers is the GPU
test tests/parity/test_gpu_parity.py.)"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from sparse_sageattn import sparse_sageattn as torch_attention
from sparse_sageattn.core_kernels import INTERPRETED
from sparse_sageattn.jax import sparse_sageattn as jax_attention
from sparse_sageattn.reference import assert_close

pytestmark = pytest.mark.skipif(not INTERPRETED, reason="the torch side runs on CPU only through the interpreter")

CPU = jax.devices("cpu")[0]

# (batch, heads_q, heads_kv, n_q, n_k, head_dim, layout, mask shape or None, is_causal, k_offset, smooth_k)
CASES = {
    "plain": (1, 2, 2, 200, 300, 64, "HND", None, False, 0.0, True),
    "nhd_gqa_causal": (2, 4, 2, 300, 200, 128, "NHD", None, True, 0.0, True),
    "mqa_head_mask": (1, 4, 1, 256, 320, 96, "HND", (4, 2, 5), False, 0.0, True),
    "batch_mask_causal_ragged": (2, 2, 2, 129, 450, 40, "HND", (2, 1, 2, 8), True, 0.0, True),
    "block_mask_2d_nq_gt_nk": (1, 2, 1, 384, 192, 64, "NHD", (3, 3), True, 0.0, True),
    "k_channel_offset": (1, 2, 2, 256, 512, 128, "HND", None, False, 20.0, True),
    "no_smoothing": (1, 2, 2, 200, 200, 64, "HND", (1, 1, 2, 4), False, 0.0, False),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_torch_interpreter_and_jax_cpu_path_agree(case):
    batch, heads_q, heads_kv, n_q, n_k, head_dim, layout, mask_shape, is_causal, k_offset, smooth_k = case
    rng = np.random.default_rng(n_q * 31 + n_k)

    def rand(heads, n):
        shape = (batch, heads, n, head_dim) if layout == "HND" else (batch, n, heads, head_dim)
        return rng.standard_normal(shape, dtype=np.float32)

    q, k, v = rand(heads_q, n_q), rand(heads_kv, n_k) + k_offset * rng.standard_normal(head_dim), rand(heads_kv, n_k)
    q, k, v = (x.astype(np.float16) for x in (q, k, v))
    mask = None if mask_shape is None else rng.random(mask_shape) < 0.6
    kwargs = dict(is_causal=is_causal, tensor_layout=layout, smooth_k=smooth_k, return_lse=True)

    t_out, t_lse = torch_attention(*(torch.from_numpy(x) for x in (q, k, v)),
                                   None if mask is None else torch.from_numpy(mask), **kwargs)
    j_out, j_lse = jax_attention(*(jax.device_put(jnp.asarray(x), CPU) for x in (q, k, v)),
                                 None if mask is None else jax.device_put(jnp.asarray(mask), CPU), **kwargs)
    assert_close(np.asarray(j_out, np.float32), np.asarray(j_lse), t_out.float().numpy(), t_lse.numpy(), layout)
