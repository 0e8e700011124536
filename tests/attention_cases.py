"""The attention op's case list (numpy only), run by tests/test_attention_paths.py against every path.

A case is what a call needs: shapes, layout, dtype, mask kind and flags. `inputs(case)` draws its random numpy
arrays (never zeros; K with a per-channel offset when the case smooths K, which is what smoothing is for). The interpreter runs fp16 only, so
bf16 cases run where a path can (JAX CPU, CUDA).
"""
from dataclasses import dataclass

import numpy as np

from sparse_sageattn.core_kernels.contract import BLOCK_M, BLOCK_N, bhnd_shape, cdiv


@dataclass(frozen=True)
class Case:
    name: str
    batch: int
    heads_q: int
    heads_kv: int
    n_q: int
    n_k: int
    head_dim: int
    layout: str = "HND"
    dtype: str = "float16"
    mask: str | None = None  # None, "heads" (Hq, Qb, Kb), "batch" (B, 1, Qb, Kb) or "row" (Qb, Kb)
    is_causal: bool = False
    smooth_k: bool = True
    kv_lens: tuple | None = None  # valid keys per batch row; the keys past them are NaN in the inputs

    def __str__(self):
        return self.name


CASES = [
    Case("dense", 1, 2, 2, 256, 320, 64),
    Case("causal_ragged", 1, 2, 1, 200, 300, 64, is_causal=True),
    Case("gqa_heads_mask", 2, 4, 2, 256, 448, 64, mask="heads"),
    Case("batch_mask_causal_nhd", 2, 2, 2, 300, 200, 64, layout="NHD", mask="batch", is_causal=True),
    Case("row_mask_hd128", 1, 2, 2, 129, 513, 128, mask="row", smooth_k=False),
    Case("hd40_nq_gt_nk", 1, 2, 2, 320, 130, 40, is_causal=True),
    Case("bf16_gqa_causal", 1, 4, 1, 256, 256, 64, dtype="bfloat16", is_causal=True, mask="heads"),
    # at most 64 queries a head: the split-KV kernel (a kv group's heads in one tile unless the mask is per head)
    Case("decode_gqa_kv_lens", 2, 8, 2, 1, 700, 128, is_causal=True, kv_lens=(700, 333)),
    Case("decode_heads_mask_nhd", 1, 4, 2, 16, 300, 64, layout="NHD", mask="heads", is_causal=True),
    Case("chunk_batch_mask_empty_row", 2, 4, 4, 40, 200, 64, mask="batch", kv_lens=(0, 130)),
    Case("bf16_decode_mqa", 1, 4, 1, 2, 400, 128, dtype="bfloat16", is_causal=True),
    Case("prefill_kv_lens_causal", 2, 2, 1, 200, 512, 64, is_causal=True, kv_lens=(512, 300)),
]


def inputs(case: Case, seed: int = 0):
    """q, k, v as float32 numpy arrays (cast by the path), and the mask (bool numpy or None). With kv_lens the
    keys past each row's count are NaN: a path that reads them fails."""
    rng = np.random.default_rng([seed, *map(ord, case.name)])

    def rand(heads, n):
        return rng.standard_normal(bhnd_shape(case.batch, heads, n, case.head_dim, case.layout), dtype=np.float32)

    q, k, v = rand(case.heads_q, case.n_q), rand(case.heads_kv, case.n_k), rand(case.heads_kv, case.n_k)
    if case.smooth_k:  # unsmoothed INT8 K is accurate only without such an offset
        k = k + 2.0 * rng.standard_normal(case.head_dim, dtype=np.float32)
    n_qb, n_kb = cdiv(case.n_q, BLOCK_M), cdiv(case.n_k, BLOCK_N)
    shape = {None: None, "heads": (case.heads_q, n_qb, n_kb), "batch": (case.batch, 1, n_qb, n_kb),
             "row": (n_qb, n_kb)}[case.mask]
    mask = None
    if shape is not None:
        mask = rng.random(shape) < 0.6
        mask.reshape(-1)[0] = True  # at least one live block
    if case.kv_lens is not None:
        heads_before_keys = [slice(None)] if case.layout == "HND" else []
        for b, n_valid in enumerate(case.kv_lens):
            past = (b, *heads_before_keys, slice(n_valid, None))
            k[past] = np.nan
            v[past] = np.nan
    return q, k, v, mask
