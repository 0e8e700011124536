"""`sparse_sageattn` for JAX: describe the arrays, get the core plan, launch its kernels through jax-triton.

The call is jitted with the mode arguments static and the arrays (mask_id included) traced. Inside, a
`lax.platform_dependent` picks per backend:
  cuda     the primitive `sparse_sageattn_kernels`, lowered into one `jax_triton.triton_call` per launch of the
           core plan -- the same kernels, scalars and constexprs as the torch frontend, so the same bits.
           jax_triton is imported only in that lowering: importing this module (and the CPU path) never needs it.
  default  the pure-JAX path of cpu_path.py (same semantics, a correctness path).
Around it: `custom_vmap` folds vmapped axes into the batch (one launch), `custom_vjp` refuses differentiation.
"""
import dataclasses
import functools
import os

import jax
import jax.extend as jex
import jax.numpy as jnp
from jax.interpreters import mlir

from sparse_sageattn.core_kernels import INTERPRETED, ArrayDesc, make_plan, validate
from sparse_sageattn.core_kernels.plan import contiguous_strides

from . import cpu_path

CAPABILITY_ENV = "SPARSE_SAGEATTN_COMPUTE_CAPABILITY"
_NAMES = ("q", "k", "v", "mask_id")
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


def _desc(x) -> ArrayDesc:
    # JAX arrays are row-major contiguous; placement is JAX's business, so every array gets the same device label.
    return ArrayDesc(tuple(x.shape), contiguous_strides(tuple(x.shape)), str(x.dtype))


def _plan(arrays, options: _Options, capability=None):
    descs = [_desc(x) for x in arrays]
    return make_plan(*descs[:3], descs[3] if len(descs) == 4 else None, options.is_causal, options.tensor_layout,
                     options.sm_scale, options.smooth_k, options.return_lse, capability, pv_dtype=options.pv_dtype)


def _compute_capability():
    """(major, minor) to compile for: SPARSE_SAGEATTN_COMPUTE_CAPABILITY ("90", "9.0") or the first GPU's."""
    value = os.environ.get(CAPABILITY_ENV)
    if not value:
        return _device_capability()
    major, dot, minor = value.strip().partition(".")
    if not dot:
        major, minor = major[:-1], major[-1:]
    if not (major.isdigit() and minor.isdigit() and len(minor) == 1):
        raise ValueError(f"sparse_sageattn: {CAPABILITY_ENV} must look like '90' or '9.0', got {value!r}")
    return int(major), int(minor)


@functools.lru_cache(maxsize=None)
def _device_capability():
    major, minor = jax.devices("gpu")[0].compute_capability.split(".")
    return int(major), int(minor)


def _import_jax_triton():
    saved = os.environ.get("TRITON_CACHE_DIR")
    import jax_triton

    # jax_triton sets TRITON_CACHE_DIR="" at import, which breaks every later Triton compile in the process.
    if saved is None:
        os.environ.pop("TRITON_CACHE_DIR", None)
    else:
        os.environ["TRITON_CACHE_DIR"] = saved
    return jax_triton


def _launch_kernels(*arrays, options: _Options):
    """The CUDA path: one triton_call per launch of the core plan, in order. Nothing here computes on data."""
    capability = _compute_capability()
    plan = _plan(arrays, options, capability)
    env = triton_calls(plan, dict(zip(_NAMES, arrays)), capability)
    return [env["out"], env["lse"]]


def triton_calls(plan, env: dict, capability) -> dict:
    """One jax_triton.triton_call per launch of `plan`, in order; returns `env` with the outputs added."""
    if INTERPRETED:
        raise RuntimeError("sparse_sageattn: TRITON_INTERPRET=1 is set, but the JAX CUDA path compiles the kernels "
                           "with jax-triton; unset TRITON_INTERPRET before importing sparse_sageattn")
    jax_triton = _import_jax_triton()
    env = dict(env)
    for step in plan.launches:
        out_shape = [jax.ShapeDtypeStruct(plan.buffers[n].shape, jnp.dtype(plan.buffers[n].dtype))
                     for n in step.outputs]
        outputs = jax_triton.triton_call(
            *(env[n] for n in step.inputs), *step.scalars,
            kernel=step.kernel, out_shape=out_shape, grid=step.grid, name=f"sparse_sageattn_{step.name}",
            num_warps=step.num_warps, num_stages=step.num_stages,
            compute_capability=capability[0] * 10 + capability[1], **step.constexprs,
        )
        env.update(zip(step.outputs, outputs))
    return env


_kernels_p = jex.core.Primitive("sparse_sageattn_kernels")
_kernels_p.multiple_results = True


@_kernels_p.def_abstract_eval
def _kernels_abstract_eval(*avals, options):
    plan = _plan(avals, options)
    return [jax.core.ShapedArray(plan.buffers[n].shape, jnp.dtype(plan.buffers[n].dtype)) for n in ("out", "lse")]


mlir.register_lowering(
    _kernels_p,
    lambda ctx, *args, options: mlir.lower_fun(
        functools.partial(_launch_kernels, options=options), multiple_results=True)(ctx, *args),
    platform="cuda",
)


def _fold_batch(x, batched, axis_size, keep_unbatched):
    """x with the vmapped axis (leading, if batched) merged into its batch axis: (A, B, ...) -> (A*B, ...)."""
    if not batched:
        if keep_unbatched:
            return x
        x = jnp.broadcast_to(x, (axis_size,) + x.shape)
    return x.reshape((axis_size * x.shape[1],) + x.shape[2:])


def _fold_mask(mask, batched, axis_size, batch):
    """A block mask for the folded batch of axis_size*batch, still broadcastable (numpy rules)."""
    mask_shape = mask.shape[1:] if batched else mask.shape
    mask4 = (1,) * (4 - len(mask_shape)) + tuple(mask_shape)
    if not batched and mask4[0] == 1:
        return mask  # broadcasts over the folded batch as it did over the batch
    mask = mask.reshape((axis_size,) + mask4 if batched else (1,) + mask4)
    mask = jnp.broadcast_to(mask, (axis_size, batch) + mask4[1:])
    return mask.reshape((axis_size * batch,) + mask4[1:])


@functools.lru_cache(maxsize=None)
def _attention_fn(options: _Options, has_mask: bool):
    """f(q, k, v[, mask_id]) -> (out, lse) or (out,), batched by folding and refusing differentiation."""
    n_outputs = 2 if options.return_lse else 1

    def kernels(*arrays):
        return tuple(_kernels_p.bind(*arrays, options=options)[:n_outputs])

    def pure_jax(q, k, v, mask_id=None):
        return cpu_path.attention(q, k, v, mask_id, **dataclasses.asdict(options))

    @jax.custom_batching.custom_vmap
    def attention(*arrays):
        return jax.lax.platform_dependent(*arrays, cuda=kernels, default=pure_jax)

    @attention.def_vmap
    def _vmap_rule(axis_size, in_batched, q, k, v, *mask):
        batch = q.shape[1] if in_batched[0] else q.shape[0]
        folded = [_fold_batch(x, b, axis_size, False) for x, b in zip((q, k, v), in_batched)]
        if has_mask:
            folded.append(_fold_mask(mask[0], in_batched[3], axis_size, batch))
        outputs = attention(*folded)
        return tuple(o.reshape((axis_size, batch) + o.shape[1:]) for o in outputs), (True,) * n_outputs

    @jax.custom_vjp
    def differentiable(*arrays):
        return attention(*arrays)

    def _refuse(*_):
        raise NotImplementedError(_NO_GRAD)

    differentiable.defvjp(_refuse, _refuse)
    return differentiable


@functools.partial(jax.jit, static_argnames=("options",))
def _forward(q, k, v, mask_id, options: _Options):
    arrays = (q, k, v) if mask_id is None else (q, k, v, mask_id)
    plan = _plan(arrays, options)
    if not plan.launches:  # an empty problem: zeros with lse -inf (or an empty output), nothing to compute
        fills = [jnp.full(plan.buffers[n].shape, plan.buffers[n].fill, jnp.dtype(plan.buffers[n].dtype))
                 for n in ("out", "lse")]
        return tuple(fills[:2 if options.return_lse else 1])
    return _attention_fn(options, mask_id is not None)(*arrays)


def sparse_sageattn(q, k, v, mask_id=None, is_causal=False, tensor_layout="HND", *, sm_scale=None, smooth_k=True,
                    return_lse=False, pv_dtype="fp16"):
    """Block-sparse INT8 attention with SageAttention V1 numerics, for JAX (eager or under jax.jit).

    Args:
      q: (B, Hq, Nq, D) for tensor_layout "HND", (B, Nq, Hq, D) for "NHD"; float16 or bfloat16.
      k, v: the same layout with Hkv heads and Nk keys; Hq must be a multiple of Hkv (GQA / MQA).
        D: a multiple of 8 up to 256 (64 and 128 are the fast paths).
      mask_id: bool or integer array broadcastable to (B, Hq, ceil(Nq/128), ceil(Nk/64)); nonzero computes a
        (128 query x 64 key) block, 0 skips it. Mask heads are query heads. None computes every block.
        Traced under jit (its values may change without recompiling).
      is_causal: query i sees key j iff j <= i + Nk - Nq (bottom-right aligned); combined with mask_id.
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
    arrays = {"q": q, "k": k, "v": v} if mask_id is None else {"q": q, "k": k, "v": v, "mask_id": mask_id}
    for name, x in arrays.items():
        if not isinstance(x, jax.Array):
            raise TypeError(f"sparse_sageattn: {name} must be a jax.Array, got {type(x).__name__}")
    validate(_desc(q), _desc(k), _desc(v), None if mask_id is None else _desc(mask_id), is_causal, tensor_layout,
             sm_scale, smooth_k, return_lse, pv_dtype)
    options = _Options(is_causal, tensor_layout, None if sm_scale is None else float(sm_scale), smooth_k,
                       return_lse, pv_dtype)
    outputs = _forward(q, k, v, mask_id, options=options)
    return outputs if return_lse else outputs[0]
