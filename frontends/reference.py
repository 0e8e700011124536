"""Float64 numpy reference of the sparse_sageattn contract: exact attention, no quantization.

The tests, the demo and the benchmarks compare the kernels against it.
"""
import numpy as np

from sparse_sageattn.core_kernels.contract import BLOCK_M, BLOCK_N, E4M3_MAX


def to_bhnd(x, layout):
    x = np.asarray(x, dtype=np.float64)
    return x if layout == "HND" else x.transpose(0, 2, 1, 3)


def valid_keys(batch, n_k, kv_lens=None):
    """int (B, 1, 1, 1): the keys that exist per batch row, kv_lens clamped to [0, Nk] (all Nk without it)."""
    lens = np.full(batch, n_k) if kv_lens is None else np.clip(np.asarray(kv_lens, np.int64), 0, n_k)
    return lens.reshape(batch, 1, 1, 1)


def visible_pairs(batch, heads_q, n_q, n_k, mask_id=None, is_causal=False, rows=None, kv_lens=None):
    """bool (B, Hq, len(rows), Nk): the block mask expanded to elements, the keys that exist (kv_lens) and the
    causal rule j <= i + n - Nq, n = Nk or kv_lens[b]."""
    rows = np.arange(n_q) if rows is None else np.asarray(rows)
    n_qb, n_kb = -(-n_q // BLOCK_M), -(-n_k // BLOCK_N)
    if mask_id is None:
        blocks = np.ones((batch, heads_q, n_qb, n_kb), dtype=bool)
    else:
        blocks = np.broadcast_to(np.asarray(mask_id) != 0, (batch, heads_q, n_qb, n_kb))
    pairs = np.repeat(blocks[:, :, rows // BLOCK_M], BLOCK_N, axis=3)[..., :n_k]
    n_valid = valid_keys(batch, n_k, kv_lens)
    keys = np.arange(n_k)[None, None, None, :]
    pairs = pairs & (keys < n_valid)
    if is_causal:
        pairs = pairs & (keys <= rows[None, None, :, None] + (n_valid - n_q))
    return pairs


def _existing(k, v, kv_lens):
    """k, v (B, H, Nk, D) with the keys past kv_lens zeroed: they may hold anything, NaN included."""
    if kv_lens is None:
        return k, v
    exists = np.arange(k.shape[2])[None, None, :, None] < valid_keys(k.shape[0], k.shape[2], kv_lens)
    return np.where(exists, k, 0.0), np.where(exists, v, 0.0)


def attention(q, k, v, mask_id=None, is_causal=False, tensor_layout="HND", sm_scale=None, rows=None, kv_lens=None):
    """Returns (out, lse) in float64, out in q's layout; only the query `rows` (all by default).

    Rows that see no key: zeros and lse -inf. kv_lens: valid keys per batch row (None: all).
    """
    q, k, v = (to_bhnd(x, tensor_layout) for x in (q, k, v))
    k, v = _existing(k, v, kv_lens)
    batch, heads_q, n_q, head_dim = q.shape
    if rows is not None:
        q = q[:, :, rows]
    group = heads_q // k.shape[1]
    k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)
    scale = 1.0 / np.sqrt(head_dim) if sm_scale is None else sm_scale
    logits = np.einsum("bhid,bhjd->bhij", q, k) * scale
    visible = visible_pairs(batch, heads_q, n_q, k.shape[2], mask_id, is_causal, rows, kv_lens)
    logits = np.where(visible, logits, -np.inf)
    row_max = logits.max(axis=-1, keepdims=True, initial=-np.inf)
    row_max = np.where(np.isfinite(row_max), row_max, 0.0)
    weights = np.exp(logits - row_max)
    total = weights.sum(axis=-1, keepdims=True)
    out = np.einsum("bhij,bhjd->bhid", weights / np.where(total == 0, 1.0, total), v)
    with np.errstate(divide="ignore"):
        lse = np.where(total[..., 0] == 0, -np.inf, np.log(total[..., 0]) + row_max[..., 0])
    return (out if tensor_layout == "HND" else out.transpose(0, 2, 1, 3)), lse



def round_e4m3(x):
    """float64 -> the nearest FP8 e4m3 value (ties to even), saturating at +-448; NaN stays NaN."""
    x = np.clip(np.asarray(x, np.float64), -E4M3_MAX, E4M3_MAX)
    _, exponent = np.frexp(x)  # |x| = m * 2**exponent, m in [0.5, 1)
    step = np.exp2(np.maximum(exponent, -5) - 4.0)  # 4 significant bits; subnormals: a uniform 2**-9 grid
    return np.round(x / step) * step  # np.round rounds half to even


def e4m3_cache_values(v, block=BLOCK_N):
    """float64 V (..., N, D) -> what an e4m3 KV cache holds of it, dequantized: per block of `block` keys and
    channel, scaled by the smallest power of two 2**e (e >= -126) that brings max|v| to at most 448, rounded to
    e4m3 and scaled back. The error floor of the cache's e4m3 values, against which its attention is judged."""
    v = np.asarray(v, np.float64)
    n = v.shape[-2]
    pad = -n % block
    blocks = np.pad(v, [(0, 0)] * (v.ndim - 2) + [(0, pad), (0, 0)]).reshape(*v.shape[:-2], -1, block, v.shape[-1])
    amax = np.abs(blocks).max(axis=-2, keepdims=True)
    exponent = np.maximum(np.ceil(np.log2(np.where(amax > 0, amax, 1.0) / E4M3_MAX)), -126.0)
    exponent = np.where(amax > 0, exponent, -126.0)
    scale = np.exp2(exponent)
    out = round_e4m3(blocks / scale) * scale
    return out.reshape(*v.shape[:-2], n + pad, v.shape[-1])[..., :n, :]


def fp8_pv_attention(q, k, v, mask_id=None, is_causal=False, tensor_layout="HND", sm_scale=None, rows=None,
                     kv_lens=None):
    """attention() with only the FP8 P.V mode's two roundings, the rest float64: P (scaled by its row maximum)
    times 448, and V scaled per channel by 448 / max|V| over the keys, both rounded to e4m3. What the format
    alone costs: the error floor of pv_dtype="fp8", against which the kernels' FP8 accuracy is judged."""
    q, k, v = (to_bhnd(x, tensor_layout) for x in (q, k, v))
    k, v = _existing(k, v, kv_lens)
    batch, heads_q, n_q, head_dim = q.shape
    if rows is not None:
        q = q[:, :, rows]
    amax = np.abs(v).max(axis=2, keepdims=True)
    v_scale = amax / E4M3_MAX
    v_e4m3 = round_e4m3(v / np.where(amax > 0, v_scale, 1.0))
    group = heads_q // k.shape[1]
    k, v_e4m3, v_scale = (np.repeat(x, group, axis=1) for x in (k, v_e4m3, v_scale))
    scale = 1.0 / np.sqrt(head_dim) if sm_scale is None else sm_scale
    logits = np.einsum("bhid,bhjd->bhij", q, k) * scale
    logits = np.where(visible_pairs(batch, heads_q, n_q, k.shape[2], mask_id, is_causal, rows, kv_lens), logits,
                      -np.inf)
    row_max = logits.max(axis=-1, keepdims=True, initial=-np.inf)
    weights = np.exp(logits - np.where(np.isfinite(row_max), row_max, 0.0))
    total = weights.sum(axis=-1, keepdims=True)
    acc = np.einsum("bhij,bhjd->bhid", round_e4m3(weights * E4M3_MAX), v_e4m3) * (v_scale / E4M3_MAX)
    out = acc / np.where(total == 0, 1.0, total)
    return out if tensor_layout == "HND" else out.transpose(0, 2, 1, 3)


def cosine(a, b):
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-300))


def rel_l1(a, ref):
    a, ref = np.asarray(a, np.float64), np.asarray(ref, np.float64)
    return float(np.abs(a - ref).sum() / max(np.abs(ref).sum(), 1e-300))


# The contract's accuracy bounds for INT8 attention against the exact result (SageAttention V1 numerics).
COS_MIN = 0.9999
REL_L1_MAX = 0.02
LSE_ABS_MAX = 0.05  # the lse inherits the INT8 logit error: a few hundredths of a logit at most


def assert_close(out, lse, ref_out, ref_lse, tensor_layout="HND"):
    """Assert the contract's bounds: out's cosine and relative L1, the same empty rows (lse -inf, out zeros), and
    the lse of the other rows. All arguments are numpy arrays; out in `tensor_layout`, lse (B, Hq, N)."""
    out, ref_out = np.asarray(out, np.float64), np.asarray(ref_out, np.float64)
    lse, ref_lse = np.asarray(lse), np.asarray(ref_lse)
    assert out.shape == ref_out.shape and lse.shape == ref_lse.shape
    assert np.isfinite(out).all()
    assert cosine(out, ref_out) >= COS_MIN, f"cosine {cosine(out, ref_out):.6f} < {COS_MIN}"
    assert rel_l1(out, ref_out) <= REL_L1_MAX, f"relative L1 {rel_l1(out, ref_out):.4f} > {REL_L1_MAX}"
    empty_rows = np.isneginf(ref_lse)
    assert np.array_equal(np.isneginf(lse), empty_rows)
    assert not to_bhnd(out, tensor_layout)[empty_rows].any()
    assert np.abs(lse[~empty_rows] - ref_lse[~empty_rows]).max(initial=0.0) <= LSE_ABS_MAX


def assert_close_fp8(out, ref_out, floor_out):
    """The bounds of pv_dtype="fp8": its error may be the e4m3 floor (`floor_out`, from fp8_pv_attention) plus what
    the INT8 attention is allowed on its own. Independent errors add their squared norms: 1 - cosine adds
    (COS_MIN's budget on top of the floor's), relative L1 adds in quadrature (REL_L1_MAX's)."""
    out, ref_out = np.asarray(out, np.float64), np.asarray(ref_out, np.float64)
    assert out.shape == ref_out.shape and np.isfinite(out).all()
    cos_min = cosine(floor_out, ref_out) - (1.0 - COS_MIN)
    rel_l1_max = float(np.hypot(rel_l1(floor_out, ref_out), REL_L1_MAX))
    assert cosine(out, ref_out) >= cos_min, f"cosine {cosine(out, ref_out):.6f} < {cos_min:.6f}"
    assert rel_l1(out, ref_out) <= rel_l1_max, f"relative L1 {rel_l1(out, ref_out):.4f} > {rel_l1_max:.4f}"


def predicted_mask(q, k, cdf_threshold=None, topk=None, is_causal=False, tensor_layout="HND", sm_scale=None):
    """The predict_mask selection rule in float64 (core_kernels/predict/kernels.py states it), by sorting.

    Returns (mask, margin): bool (B, Hq, Qb, Kb), and float64 (B, Hq, Qb): how far each query block's closest
    decision was from flipping -- the smaller of |mass before a rank - cdf_threshold| and of the relative
    probability gap between the last kept and the first dropped block (ranking decisions only, inf where none;
    forced blocks are added after). Kernels computing in fp32 must agree with the mask on the rows whose margin
    is well above fp32 rounding (1e-4, say).
    """
    q, k = to_bhnd(q, tensor_layout), to_bhnd(k, tensor_layout)
    batch, heads_q, n_q, head_dim = q.shape
    n_k = k.shape[2]
    n_qb, n_kb = -(-n_q // BLOCK_M), -(-n_k // BLOCK_N)

    def pool(x, rows, n_blocks):
        padded = np.pad(x, ((0, 0), (0, 0), (0, n_blocks * rows - x.shape[2]), (0, 0)))
        counts = np.minimum(x.shape[2] - np.arange(n_blocks) * rows, rows)
        return padded.reshape(*x.shape[:2], n_blocks, rows, head_dim).sum(axis=3) / counts[:, None]

    pooled_k = np.repeat(pool(k, BLOCK_N, n_kb), heads_q // k.shape[1], axis=1)
    scale = 1.0 / np.sqrt(head_dim) if sm_scale is None else sm_scale
    scores = np.einsum("bhqd,bhkd->bhqk", pool(q, BLOCK_M, n_qb), pooled_k) * scale
    first_pos = np.arange(n_qb) * BLOCK_M + n_k - n_q
    last_pos = np.minimum(np.arange(n_qb) * BLOCK_M + BLOCK_M, n_q) - 1 + n_k - n_q
    first_key = np.arange(n_kb) * BLOCK_N
    candidate = np.ones((n_qb, n_kb), bool)
    if is_causal:
        candidate = first_key[None, :] <= last_pos[:, None]
    diagonal = (first_key[None, :] + BLOCK_N - 1 >= first_pos[:, None]) & (first_key[None, :] <= last_pos[:, None])
    forced = candidate & (diagonal | (first_key == 0)[None, :])

    mask = np.zeros((batch, heads_q, n_qb, n_kb), bool)
    margin = np.full((batch, heads_q, n_qb), np.inf)
    for b, h, i in np.ndindex(batch, heads_q, n_qb):
        cols = np.flatnonzero(candidate[i])
        if cols.size == 0:
            continue
        s = scores[b, h, i, cols]
        p = np.exp(s - s.max())
        p = p / p.sum()
        order = np.lexsort((cols, -p))  # probability descending, then index ascending
        ranked = p[order]
        if topk is not None:
            n_keep = int(np.ceil(np.float32(topk) * np.float32(cols.size)))  # as the kernel rounds it
        else:
            before = np.concatenate(([0.0], np.cumsum(ranked)[:-1]))
            n_keep = int(np.sum(before < cdf_threshold))
            margin[b, h, i] = np.abs(before - cdf_threshold).min()
        if 0 < n_keep < cols.size:
            margin[b, h, i] = min(margin[b, h, i], (ranked[n_keep - 1] - ranked[n_keep]) / ranked[n_keep - 1])
        mask[b, h, i, cols[order[:n_keep]]] = True
    return mask | forced, margin
