"""`sparse_sageattn` for JAX: describe the arrays, get the core plan, hand it to the executor (_launch.py).

The call is jitted with the mode arguments static and the arrays (mask_id included) traced. On CUDA the
executor lowers the core plan into one `jax_triton.triton_call` per launch -- the same kernels, scalars and
constexprs as the torch frontend, so the same bits; on every other backend the pure-JAX path of cpu_path.py
(same semantics, a correctness path). `jax.vmap` folds mapped axes into the batch (one launch), `jax.grad`
is refused.
"""
import dataclasses
import functools

import jax
import jax.numpy as jnp

from sparse_sageattn.core_kernels import attention

from . import cpu_path
from ._launch import PlanOp, describe, fold_batch, sm_count

_NO_GRAD = (
    "sparse_sageattn: the backward pass is not available yet; jax.grad / jax.vjp / jax.jvp cannot differentiate "
    "through it (apply jax.lax.stop_gradient to q, k and v if no gradient should flow through attention)"
)


@dataclasses.dataclass(frozen=True)
class _Options:
    """The static (hashable) arguments of one call, after validation."""
    is_causal: bool
    tensor_layout: str
    sm_scale: float | None
    smooth_k: bool
    return_lse: bool
    pv_dtype: str


def _plan(descs, options: _Options, capability=None):
    return attention.make_plan(descs["q"], descs["k"], descs["v"], descs.get("mask_id"), options.is_causal,
                               options.tensor_layout, options.sm_scale, options.smooth_k, options.return_lse,
                               capability, pv_dtype=options.pv_dtype, kv_lens=descs.get("kv_lens"),
                               num_sms=None if capability is None else sm_count())


def _pure_jax(*arrays, names, options):
    named = dict(zip(names, arrays))
    return cpu_path.attention(named["q"], named["k"], named["v"], named.get("mask_id"), named.get("kv_lens"),
                              **dataclasses.asdict(options))


def _fold_mask(mask, batched, axis_size, batch):
    """A block mask for the folded batch of axis_size*batch, still broadcastable (numpy rules)."""
    mask_shape = mask.shape[1:] if batched else mask.shape
    mask4 = (1,) * (4 - len(mask_shape)) + tuple(mask_shape)
    if not batched and mask4[0] == 1:
        return mask  # broadcasts over the folded batch as it did over the batch
    mask = mask.reshape((axis_size,) + mask4 if batched else (1,) + mask4)
    mask = jnp.broadcast_to(mask, (axis_size, batch) + mask4[1:])
    return mask.reshape((axis_size * batch,) + mask4[1:])


def _fold(names, axis_size, in_batched, *arrays):
    batch = arrays[0].shape[1] if in_batched[0] else arrays[0].shape[0]
    return [_fold_mask(x, batched, axis_size, batch) if name == "mask_id" else fold_batch(x, batched, axis_size)
            for name, x, batched in zip(names, arrays, in_batched)]


# Without return_lse the plan's lse is a one-element slot nobody reads: only out is returned.
_attention = PlanOp("sparse_sageattn_kernels", ("q", "k", "v", "mask_id", "kv_lens"), _plan, _pure_jax, _fold,
                    _NO_GRAD, n_returned=lambda options: 2 if options.return_lse else 1)


@functools.partial(jax.jit, static_argnames=("options",))
def _forward(arrays, options: _Options):
    return _attention(arrays, options)


def sparse_sageattn(q, k, v, mask_id=None, is_causal=False, tensor_layout="HND", *, kv_lens=None, sm_scale=None,
                    smooth_k=True, return_lse=False, pv_dtype="fp16"):
    """Block-sparse INT8 attention with SageAttention V1 numerics, for JAX (eager or under jax.jit).

    Args:
      q: (B, Hq, Nq, D) for tensor_layout "HND", (B, Nq, Hq, D) for "NHD"; float16 or bfloat16.
      k, v: the same layout with Hkv heads and Nk keys; Hq must be a multiple of Hkv (GQA / MQA).
        D: a multiple of 8 up to 256 (64 and 128 are the fast paths).
      mask_id: bool or integer array broadcastable to (B, Hq, ceil(Nq/128), ceil(Nk/64)); nonzero computes a
        (128 query x 64 key) block, 0 skips it. Mask heads are query heads. None computes every block.
        Traced under jit (its values may change without recompiling).
      is_causal: query i sees key j iff j <= i + Nk - Nq (bottom-right aligned); combined with mask_id.
      kv_lens: optional int32 array (B,): batch row b has kv_lens[b] valid keys (a preallocated cache); keys at
        or past it never contribute and are never read, and causal aligns to it (j <= i + kv_lens[b] - Nq).
        Traced under jit; values are clamped to [0, Nk].
      sm_scale: softmax scale, default 1/sqrt(D).
      smooth_k: subtract K's mean over the keys before quantization (exact under softmax).
      return_lse: also return the float32 log-sum-exp (B, Hq, Nq) of the scaled logits (natural log).
      pv_dtype: "fp16" (default, SageAttention V1: P and V in fp16) or "fp8" (SageAttention2-style: P in e4m3
        with the static scale 448, V in e4m3 scaled per channel, fp32 accumulation across key blocks). On CUDA
        "fp8" needs compute capability 8.9 or newer (Ada, Hopper) and is refused on older GPUs.
      is_causal, tensor_layout, sm_scale, smooth_k, return_lse and pv_dtype are static under jit.

    Returns:
      out with q's dtype and layout, or (out, lse). Rows that see no key are zeros with lse -inf.

    On CUDA the core Triton kernels run through jax-triton (bitwise equal to the torch frontend); on every other
    backend a pure-JAX path with the same semantics runs. jax.vmap folds mapped axes into the batch; jax.grad
    raises NotImplementedError (no backward yet).
    """
    arrays = {name: x for name, x in (("q", q), ("k", k), ("v", v), ("mask_id", mask_id), ("kv_lens", kv_lens))
              if x is not None or name in ("q", "k", "v")}
    for name, x in arrays.items():
        if not isinstance(x, jax.Array):
            raise TypeError(f"sparse_sageattn: {name} must be a jax.Array, got {type(x).__name__}")
    attention.validate(*(describe(arrays[n]) if n in arrays else None for n in ("q", "k", "v", "mask_id")),
                       is_causal, tensor_layout, sm_scale, smooth_k, return_lse, pv_dtype,
                       describe(kv_lens) if kv_lens is not None else None)
    options = _Options(is_causal, tensor_layout, None if sm_scale is None else float(sm_scale), smooth_k,
                       return_lse, pv_dtype)
    outputs = _forward(arrays, options=options)
    return outputs if return_lse else outputs[0]
