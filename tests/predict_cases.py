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


def local_global(seed, batch, heads, n, head_dim, sink=16, strength=1.7, noise=0.5):
    """Synthetic inputs with real attention structure (not a model): local -- q_i and k_j share a positional
    code whose dot product sum_m cos(w_m (i - j)) peaks at i == j and fades over tens to thousands of positions
    (wavelengths 64..4096) -- and global -- every query shares a direction with the first `sink` keys."""
    rng = np.random.default_rng(seed)
    omegas = 2 * np.pi / np.geomspace(4096, 64, head_dim // 2)
    angles = np.arange(n)[:, None] * omegas[None, :]
    code = strength * np.concatenate([np.cos(angles), np.sin(angles)], axis=1)
    shared = 0.8 * rng.standard_normal(head_dim)
    q = code + noise * rng.standard_normal((batch, heads, n, head_dim)) + shared
    k = code + noise * rng.standard_normal((batch, heads, n, head_dim))
    k[:, :, :sink] += 2 * shared
    v = rng.standard_normal((batch, heads, n, head_dim))
    return [x.astype(np.float16) for x in (q, k, v)]
