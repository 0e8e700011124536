"""Inputs and expectations shared by the torch and JAX predict_mask tests (numpy only)."""
import numpy as np

from sparse_sageattn import masks

MIN_MARGIN = 1e-4


def structured(seed, batch, heads, n, head_dim, rows, layout="HND", noise=0.3):
    """fp16 numpy (B, H, N, D) or (B, N, H, D): every block of `rows` rows one random vector plus noise."""
    rng = np.random.default_rng(seed)
    base = np.repeat(rng.standard_normal((batch, heads, -(-n // rows), head_dim)), rows, axis=2)[:, :, :n]
    x = (base + noise * rng.standard_normal((batch, heads, n, head_dim))).astype(np.float16)
    return x if layout == "HND" else np.ascontiguousarray(x.transpose(0, 2, 1, 3))


CASES = [  # (heads_q, heads_kv, n_q, n_k, layout, options)
    (4, 2, 300, 700, "HND", dict(cdf_threshold=0.5, is_causal=True)),
    (4, 2, 300, 700, "NHD", dict(cdf_threshold=0.9)),
    (2, 2, 700, 300, "HND", dict(cdf_threshold=0.7, is_causal=True)),  # Nq > Nk: first blocks see nothing
    (4, 1, 300, 700, "HND", dict(topk=0.3)),
    (4, 2, 256, 1000, "NHD", dict(topk=0.5, is_causal=True, sm_scale=0.3)),
]


def forced_and_allowed(n_q, n_k, is_causal):
    """From the static builders, independently of predict: the diagonal (a window of 1 is the pair j == p) and
    sink blocks, and the blocks a causal query block may see."""
    diagonal = masks.sliding_window_mask(n_q, n_k, 1) | masks.sink_mask(n_q, n_k, 1)
    allowed = masks.causal_mask(n_q, n_k) if is_causal else np.ones_like(diagonal)
    return diagonal & allowed, allowed
