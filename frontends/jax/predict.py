"""`predict_mask` for JAX: a SpargeAttn-style block mask predicted from q and k.

As for attention, the executor (_launch.py) picks per backend inside the jitted function:
  cuda     the core predict plan, one jax_triton.triton_call per launch -- the torch frontend's kernels and
           scalars, so the same bits.
  default  `_pure_jax` below: the same rule by sorting (a correctness path; fp32, not bitwise the kernels').
vmap folds mapped axes into the batch. q and k pass through stop_gradient: a mask has no gradient.
"""
import dataclasses
import functools

import jax
import jax.numpy as jnp

from sparse_sageattn.core_kernels import predict
from sparse_sageattn.core_kernels.contract import BLOCK_M, BLOCK_N

from ._launch import PlanOp, describe


@dataclasses.dataclass(frozen=True)
class _PredictOptions:
    cdf_threshold: float | None
    topk: float | None
    is_causal: bool
    tensor_layout: str
    sm_scale: float | None


def _plan(descs, options: _PredictOptions, capability=None):
    return predict.make_plan(descs["q"], descs["k"], **dataclasses.asdict(options))


def _pool(x, rows):
    """fp32 (B, H, N, D) -> (B, H, ceil(N/rows), D): each block's mean over the rows it has."""
    n = x.shape[2]
    n_blocks = -(-n // rows)
    padded = jnp.pad(x, ((0, 0), (0, 0), (0, n_blocks * rows - n), (0, 0)))
    sums = padded.reshape(*x.shape[:2], n_blocks, rows, x.shape[3]).sum(axis=3)
    counts = jnp.minimum(n - jnp.arange(n_blocks) * rows, rows).astype(jnp.float32)
    return sums / counts[:, None]


def _pure_jax(q, k, *, cdf_threshold, topk, is_causal, tensor_layout, sm_scale):
    if tensor_layout == "NHD":
        q, k = q.transpose(0, 2, 1, 3), k.transpose(0, 2, 1, 3)
    heads_q, n_q, head_dim = q.shape[1:]
    n_k = k.shape[2]
    scale = 1.0 / head_dim ** 0.5 if sm_scale is None else sm_scale
    pooled_k = jnp.repeat(_pool(k.astype(jnp.float32), BLOCK_N), heads_q // k.shape[1], axis=1)
    scores = jnp.einsum("bhqd,bhkd->bhqk", _pool(q.astype(jnp.float32), BLOCK_M), pooled_k) * jnp.float32(scale)
    n_qb, n_kb = scores.shape[2:]
    first_pos = jnp.arange(n_qb)[:, None] * BLOCK_M + n_k - n_q
    last_pos = jnp.minimum(jnp.arange(n_qb)[:, None] * BLOCK_M + BLOCK_M, n_q) - 1 + n_k - n_q
    first_key = jnp.arange(n_kb)[None, :] * BLOCK_N
    candidate = jnp.ones((n_qb, n_kb), bool)
    if is_causal:
        candidate = first_key <= last_pos
    diagonal = (first_key + BLOCK_N - 1 >= first_pos) & (first_key <= last_pos)
    forced = candidate & (diagonal | (first_key == 0))

    p = jax.nn.softmax(jnp.where(candidate, scores, -jnp.inf), axis=-1, where=candidate)
    p = jnp.where(candidate, p, -1.0)  # non-candidates rank last
    order = jnp.argsort(-p, axis=-1, stable=True)  # probability descending, then index ascending
    ranked = jnp.take_along_axis(p, order, axis=-1)
    if topk is not None:
        n_keep = jnp.ceil(jnp.float32(topk) * jnp.sum(candidate, axis=-1).astype(jnp.float32))
        keep_ranked = jnp.arange(n_kb) < n_keep[..., None]
    else:
        before = jnp.cumsum(jnp.maximum(ranked, 0.0), axis=-1) - jnp.maximum(ranked, 0.0)
        keep_ranked = before < jnp.float32(cdf_threshold)
    keep = jnp.take_along_axis(keep_ranked & (ranked >= 0.0), jnp.argsort(order, axis=-1), axis=-1)
    return (keep | forced).astype(jnp.int8)


def _default(q, k, *, names, options):
    return (_pure_jax(q, k, **dataclasses.asdict(options)),)


_predict = PlanOp("sparse_sageattn_predict", ("q", "k"), _plan, _default)  # the caller stops gradients


@functools.partial(jax.jit, static_argnames=("options",))
def _forward(q, k, options: _PredictOptions):
    (mask,) = _predict({"q": jax.lax.stop_gradient(q), "k": jax.lax.stop_gradient(k)}, options)
    return mask


def predict_mask(q, k, *, cdf_threshold=None, topk=None, is_causal=False, tensor_layout="HND", sm_scale=None):
    """A block mask for sparse_sageattn predicted from mean-pooled q and k blocks (eager or under jax.jit).

    Per (batch, query head, 128-query block): the scores of its mean query against the mean of every 64-key
    block (times sm_scale), a softmax over the key blocks it may see, and the most probable key blocks kept --
    the fewest whose probability mass reaches `cdf_threshold`, or the top `topk` fraction of them (give exactly
    one). The sink (key block 0) and the diagonal blocks (the query block's own positions, bottom-right aligned)
    are always kept; with `is_causal` blocks entirely above the diagonal are never kept nor counted.

    Args:
      q, k: as for sparse_sageattn (v is not needed); traced under jit.
      cdf_threshold, topk: a number in (0, 1]; exactly one of them. Static under jit, like the others.
      is_causal: pass what you will pass to sparse_sageattn.
      sm_scale: default 1/sqrt(D).

    Returns:
      int8 (B, Hq, ceil(Nq/128), ceil(Nk/64)), 1 = compute the block: a `mask_id`. On CUDA the core kernels
      compute it (bitwise equal to the torch frontend); elsewhere a pure-JAX path applies the same rule.
    """
    for name, x in (("q", q), ("k", k)):
        if not isinstance(x, jax.Array):
            raise TypeError(f"predict_mask: {name} must be a jax.Array, got {type(x).__name__}")
    predict.validate(describe(q), describe(k), cdf_threshold, topk, is_causal, tensor_layout, sm_scale)
    as_float = (lambda x: None if x is None else float(x))
    options = _PredictOptions(as_float(cdf_threshold), as_float(topk), is_causal, tensor_layout, as_float(sm_scale))
    return _forward(q, k, options=options)
