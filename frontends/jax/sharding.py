"""sparse_sageattn over a device mesh, q, k and v sharded over batch and heads, with no collective.

Every (batch, query head) is independent and needs only its own kv head (GQA groups are contiguous runs of
query heads, so a contiguous shard of kv heads serves exactly the matching shard of query heads) and the whole
sequence. `shard_map` therefore runs the unchanged call on each device's shard. The sequence axes must not be
sharded: K's mean, the softmax and the causal alignment span all keys.
"""
import math

import jax
from jax.sharding import NamedSharding, PartitionSpec as P

from sparse_sageattn.core_kernels import attention
from sparse_sageattn.core_kernels.contract import layout_axes

from ._launch import describe
from .attention import sparse_sageattn


def _axis_size(mesh, axis):
    if axis is None:
        return 1
    names = axis if isinstance(axis, tuple) else (axis,)
    return math.prod(mesh.shape[n] for n in names)


def sharded_sparse_sageattn(mesh, q, k, v, mask_id=None, is_causal=False, tensor_layout="HND", *, batch_axis=None,
                            head_axis=None, kv_lens=None, sm_scale=None, smooth_k=True, return_lse=False,
                            pv_dtype="fp16"):
    """sparse_sageattn with the batch split over mesh axis `batch_axis` and the heads over `head_axis`.

    Args:
      mesh: a jax.sharding.Mesh.
      batch_axis, head_axis: mesh axis names (or tuples of names, or None for unsplit). B must be divisible by
        the size of batch_axis and the kv head count Hkv by the size of head_axis.
      the rest: as sparse_sageattn. A mask_id dimension of size 1 is replicated, a full-size one is split
        like the batch / heads it indexes; kv_lens is split like the batch.

    Returns out (sharded like q) or (out, lse), lse split over batch and heads. Works eagerly and under jax.jit;
    inputs already placed as P(batch_axis, head_axis) ("HND") or P(batch_axis, None, head_axis) ("NHD") move
    nowhere.
    """
    for name, x in {"q": q, "k": k, "v": v, "mask_id": mask_id, "kv_lens": kv_lens}.items():
        if x is not None and not isinstance(x, jax.Array):
            raise TypeError(f"sparse_sageattn: {name} must be a jax.Array, got {type(x).__name__}")
    attention.validate(describe(q), describe(k), describe(v), None if mask_id is None else describe(mask_id),
                       is_causal, tensor_layout, sm_scale, smooth_k, return_lse, pv_dtype,
                       None if kv_lens is None else describe(kv_lens))
    b_axis, h_axis, _ = layout_axes(tensor_layout)
    for arg, axis, dim, what in (("batch_axis", batch_axis, q.shape[b_axis], "batch"),
                                 ("head_axis", head_axis, k.shape[h_axis], "kv head count")):
        if dim % _axis_size(mesh, axis) != 0:
            raise ValueError(f"sparse_sageattn: the {what} {dim} is not divisible by the {_axis_size(mesh, axis)} "
                             f"devices of {arg}={axis!r}")
    spec = [None] * 4
    spec[b_axis], spec[h_axis] = batch_axis, head_axis
    in_specs = [P(*spec)] * 3
    arrays = [q, k, v]
    if mask_id is not None:
        mask_id = mask_id.reshape((1,) * (4 - mask_id.ndim) + mask_id.shape)
        in_specs.append(P(batch_axis if mask_id.shape[0] != 1 else None,
                          head_axis if mask_id.shape[1] != 1 else None, None, None))
        arrays.append(mask_id)
    if kv_lens is not None:
        in_specs.append(P(batch_axis))
        arrays.append(kv_lens)
    out_specs = (P(*spec), P(batch_axis, head_axis, None)) if return_lse else P(*spec)

    def local(q, k, v, *optional):
        named = dict(zip([n for n, x in (("mask_id", mask_id), ("kv_lens", kv_lens)) if x is not None], optional))
        return sparse_sageattn(q, k, v, named.get("mask_id"), is_causal, tensor_layout, kv_lens=named.get("kv_lens"),
                               sm_scale=sm_scale, smooth_k=smooth_k, return_lse=return_lse, pv_dtype=pv_dtype)

    if any(t == jax.sharding.AxisType.Explicit for t in mesh.axis_types):
        # Explicit mesh axes make shard_map demand inputs placed exactly as in_specs (a no-op when they are).
        arrays = [jax.reshard(x, NamedSharding(mesh, spec)) for x, spec in zip(arrays, in_specs)]
    # check_vma=False: the CUDA primitive has no varying-axes rule; every output is per-shard by construction.
    shard = jax.shard_map(local, mesh=mesh, in_specs=tuple(in_specs), out_specs=out_specs, check_vma=False)
    return shard(*arrays)
