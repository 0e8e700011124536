"""Float64 numpy reference of the sparse_sageattn contract: exact attention, no quantization.

The tests, the demo and the benchmarks compare the kernels against it.
"""
import numpy as np

BLOCK_M, BLOCK_N = 128, 64


def to_bhnd(x, layout):
    x = np.asarray(x, dtype=np.float64)
    return x if layout == "HND" else x.transpose(0, 2, 1, 3)


def visible_pairs(batch, heads_q, n_q, n_k, mask_id=None, is_causal=False, rows=None):
    """bool (B, Hq, len(rows), Nk): the block mask expanded to elements, and the causal rule j <= i + Nk - Nq."""
    rows = np.arange(n_q) if rows is None else np.asarray(rows)
    n_qb, n_kb = -(-n_q // BLOCK_M), -(-n_k // BLOCK_N)
    if mask_id is None:
        blocks = np.ones((batch, heads_q, n_qb, n_kb), dtype=bool)
    else:
        blocks = np.broadcast_to(np.asarray(mask_id) != 0, (batch, heads_q, n_qb, n_kb))
    pairs = np.repeat(blocks[:, :, rows // BLOCK_M], BLOCK_N, axis=3)[..., :n_k]
    if is_causal:
        pairs = pairs & (np.arange(n_k)[None, :] <= rows[:, None] + (n_k - n_q))
    return pairs


def attention(q, k, v, mask_id=None, is_causal=False, tensor_layout="HND", sm_scale=None, rows=None):
    """Returns (out, lse) in float64, out in q's layout; only the query `rows` (all by default).

    Rows that see no key: zeros and lse -inf.
    """
    q, k, v = (to_bhnd(x, tensor_layout) for x in (q, k, v))
    batch, heads_q, n_q, head_dim = q.shape
    if rows is not None:
        q = q[:, :, rows]
    group = heads_q // k.shape[1]
    k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)
    scale = 1.0 / np.sqrt(head_dim) if sm_scale is None else sm_scale
    logits = np.einsum("bhid,bhjd->bhij", q, k) * scale
    visible = visible_pairs(batch, heads_q, n_q, k.shape[2], mask_id, is_causal, rows)
    logits = np.where(visible, logits, -np.inf)
    row_max = logits.max(axis=-1, keepdims=True, initial=-np.inf)
    row_max = np.where(np.isfinite(row_max), row_max, 0.0)
    weights = np.exp(logits - row_max)
    total = weights.sum(axis=-1, keepdims=True)
    out = np.einsum("bhij,bhjd->bhid", weights / np.where(total == 0, 1.0, total), v)
    with np.errstate(divide="ignore"):
        lse = np.where(total[..., 0] == 0, -np.inf, np.log(total[..., 0]) + row_max[..., 0])
    return (out if tensor_layout == "HND" else out.transpose(0, 2, 1, 3)), lse


def cosine(a, b):
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-300))


def rel_l1(a, ref):
    a, ref = np.asarray(a, np.float64), np.asarray(ref, np.float64)
    return float(np.abs(a - ref).sum() / max(np.abs(ref).sum(), 1e-300))
