"""An `attention_fn` for `flax.nnx.MultiHeadAttention` and `flax.linen.MultiHeadDotProductAttention`.

Flax hands attention_fn (batch, length, heads, head_dim) arrays -- sparse_sageattn's "NHD" layout -- and the
keyword arguments of its own dot_product_attention. linen passes only the keywords named in the signature, so
each is named here. Flax itself is not imported: the adapter only has to accept what Flax passes.
"""
import numpy as np

import jax
import jax.numpy as jnp

from sparse_sageattn.core_kernels.contract import BLOCK_M, BLOCK_N

from .attention import sparse_sageattn

_PREFIX = "sparse_sageattn attention_fn:"


def _block_mask_from_dense(mask, batch, heads, n_q, n_k):
    """A concrete Flax mask (..., Nq, Nk) -> a block mask (b, h, Qb, Kb), or ValueError if some (128 query x 64 key)
    tile is partly masked (the kernels skip or compute whole tiles)."""
    m = np.asarray(mask) != 0
    if m.ndim > 4 or any(s != 1 and s != t for s, t in zip(reversed(m.shape), reversed((batch, heads, n_q, n_k)))):
        raise ValueError(f"{_PREFIX} mask of shape {m.shape} is not broadcastable to (batch, heads, q_length, "
                         f"kv_length) = {(batch, heads, n_q, n_k)}")
    m = m.reshape((1,) * (4 - m.ndim) + m.shape)
    m = np.broadcast_to(m, m.shape[:2] + (n_q, n_k))
    n_qb, n_kb = -(-n_q // BLOCK_M), -(-n_k // BLOCK_N)
    # Edge padding repeats the last row/column, which lies in the same tile: it cannot make a tile mixed.
    m = np.pad(m, ((0, 0), (0, 0), (0, n_qb * BLOCK_M - n_q), (0, n_kb * BLOCK_N - n_k)), mode="edge")
    tiles = m.reshape(m.shape[0], m.shape[1], n_qb, BLOCK_M, n_kb, BLOCK_N)
    live, full = tiles.any(axis=(3, 5)), tiles.all(axis=(3, 5))
    mixed = np.argwhere(live != full)
    if len(mixed):
        b, h, qb, kb = mixed[0]
        raise ValueError(
            f"{_PREFIX} mask is not block-structured: the ({BLOCK_M} query x {BLOCK_N} key) tile at batch {b}, "
            f"head {h}, query block {qb}, key block {kb} is partly masked. Pass causality as is_causal=True and "
            f"block sparsity as block_mask=... (functools.partial) instead of a dense element mask"
        )
    return live


def attention_fn(query, key, value, mask=None, dropout_rng=None, dropout_rate=0.0, broadcast_dropout=True,
                 deterministic=False, dtype=None, precision=None, module=None, is_causal=False, *, block_mask=None,
                 kv_prefix_mask=False, sm_scale=None, smooth_k=True, pv_dtype="fp16"):
    """sparse_sageattn as a Flax attention_fn; bind the block mask with functools.partial.

    Example: `nnx.MultiHeadAttention(..., dtype=jnp.bfloat16,
    attention_fn=functools.partial(attention_fn, block_mask=block_mask))`.

    Args:
      query, key, value: (batch, length, heads, head_dim) as Flax passes them.
      mask: a dense Flax mask broadcastable to (batch, heads, q_length, kv_length). It must be concrete (not a
        jit tracer, since its block structure is checked on the host) and block-structured: every (128 query x
        64 key) tile all True or all False. A causal mask is not block-structured: use is_causal=True.
      dropout_rate: must be 0 unless deterministic (the kernels have no dropout).
      dtype: the computation dtype, float16 or bfloat16 (query's dtype if None); the inputs are cast to it.
      precision, broadcast_dropout, dropout_rng: accepted and unused.
      module: Flax passes it only with sow_weights=True, which is refused: attention weights never exist here.
      is_causal: bottom-right aligned causal attention. nnx passes the module call's is_causal; with linen
        bind it with functools.partial(attention_fn, is_causal=True).
      block_mask: sparse_sageattn's mask_id, broadcastable to (batch, heads, ceil(q_length/128),
        ceil(kv_length/64)); combined with `mask` (both must allow a block).
      kv_prefix_mask: `mask` is a decode cache's (linen's `decode=True` builds one: its cached keys up to the
        current index): per batch row, the queries see a prefix of the keys. It may then be traced; the count of
        keys the last query sees becomes sparse_sageattn's kv_lens (the keys past it are never read). That a
        traced mask is such a prefix cannot be checked: it is what this flag asserts.
      sm_scale, smooth_k, pv_dtype: as in sparse_sageattn.
    """
    del dropout_rng, broadcast_dropout, precision
    if dropout_rate > 0.0 and not deterministic:
        raise ValueError(f"{_PREFIX} attention dropout is not supported (dropout_rate={dropout_rate} with "
                         f"deterministic=False); build the module with dropout_rate=0.0 or call it deterministic")
    if module is not None:
        raise ValueError(f"{_PREFIX} sow_weights is not supported: the kernels never materialise attention weights")
    if query.ndim != 4:
        raise ValueError(f"{_PREFIX} query must be (batch, length, heads, head_dim), got shape {query.shape}")
    compute_dtype = jnp.dtype(dtype if dtype is not None else query.dtype)
    if compute_dtype not in (jnp.float16, jnp.bfloat16):
        raise TypeError(f"{_PREFIX} the kernels compute in float16 or bfloat16, got {compute_dtype}; build the "
                        f"Flax module with dtype=jnp.bfloat16 (or jnp.float16)")
    query, key, value = (x.astype(compute_dtype) for x in (query, key, value))
    kv_lens = None
    if kv_prefix_mask and mask is not None:  # without a mask (linen's init of the cache) every key is seen
        batch, n_q, heads = query.shape[:3]
        visible = jnp.broadcast_to(jnp.asarray(mask) != 0, (batch, heads, n_q, key.shape[1]))
        kv_lens = jnp.sum(visible[:, 0, -1], axis=-1, dtype=jnp.int32)
        mask = None
    if mask is not None:
        if isinstance(mask, jax.core.Tracer):
            raise ValueError(
                f"{_PREFIX} a traced dense mask cannot be checked for block structure; under jit pass causality "
                f"as is_causal=True and block sparsity as block_mask=... (functools.partial) instead of mask"
            )
        batch, n_q, heads = query.shape[:3]
        live = _block_mask_from_dense(mask, batch, heads, n_q, key.shape[1])
        block_mask = live if block_mask is None else jnp.logical_and(jnp.asarray(block_mask) != 0, live)
    if block_mask is not None:
        block_mask = jnp.asarray(block_mask)
    return sparse_sageattn(query, key, value, block_mask, is_causal, "NHD", kv_lens=kv_lens, sm_scale=sm_scale,
                           smooth_k=smooth_k, pv_dtype=pv_dtype)
