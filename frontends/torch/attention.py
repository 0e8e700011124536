"""`sparse_sageattn` for PyTorch: describe the tensors, get the core plan, allocate, launch. No arithmetic here.

Registered as the custom op `sparse_sageattn::forward` through `torch.library.triton_op`, so
`torch.compile(fullgraph=True)` traces into the Triton launches and CUDA graphs capture them.
"""
import functools

import torch
from torch.library import triton_op, wrap_triton

from sparse_sageattn.core_kernels import INTERPRETED, ArrayDesc, make_plan, validate

_DTYPES = {
    "float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32,
    "int8": torch.int8, "uint8": torch.uint8, "int32": torch.int32,
}


def _desc(t: torch.Tensor) -> ArrayDesc:
    return ArrayDesc(tuple(t.shape), tuple(t.stride()), str(t.dtype).removeprefix("torch."), str(t.device))


@functools.lru_cache(maxsize=None)
def _capability(device_index: int):
    return torch.cuda.get_device_capability(device_index)


_cached_plan = functools.lru_cache(maxsize=256)(make_plan)


def _plan(q, k, v, mask_id, is_causal, tensor_layout, sm_scale, smooth_k, return_lse, pv_dtype):
    capability = None if q.device.type != "cuda" or INTERPRETED else _capability(q.device.index)
    descs = (_desc(q), _desc(k), _desc(v), None if mask_id is None else _desc(mask_id))
    # Eager calls repeat their shapes: reuse the plan (host time per call). Traced shapes are SymInts, which
    # neither hash nor repeat.
    static = all(type(n) is int for d in descs if d is not None for n in d.shape + d.strides)
    return (_cached_plan if static else make_plan)(*descs, is_causal, tensor_layout, sm_scale, smooth_k, return_lse,
                                                   capability, pv_dtype=pv_dtype)


def check_inputs(op: str, tensors: dict, validate_call):
    """TypeError unless every argument is a tensor; outside compilation, the plan's validation and the device
    check (CPU tensors need the interpreter). Raised before any launch."""
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if not torch.compiler.is_compiling():
        validate_call()
        if tensors["q"].device.type == "cpu" and not INTERPRETED:
            raise RuntimeError(
                f"{op}: the kernels run on CUDA tensors; CPU tensors run only through the Triton "
                "interpreter: set TRITON_INTERPRET=1 before importing sparse_sageattn"
            )


def execute(plan, arrays: dict, device) -> dict:
    """Allocate plan.buffers on `device` and launch plan.launches in order; returns `arrays` with the buffers."""
    arrays = dict(arrays)
    for name, buf in plan.buffers.items():
        if buf.fill is None:
            arrays[name] = torch.empty(buf.shape, dtype=_DTYPES[buf.dtype], device=device)
        else:
            arrays[name] = torch.full(buf.shape, buf.fill, dtype=_DTYPES[buf.dtype], device=device)
    for step in plan.launches:
        kernel = step.kernel if INTERPRETED else wrap_triton(step.kernel)
        kernel[step.grid](
            *(arrays[n] for n in step.inputs), *step.scalars, *(arrays[n] for n in step.outputs),
            num_warps=step.num_warps, num_stages=step.num_stages, **step.constexprs,
        )
    return arrays


@triton_op("sparse_sageattn::forward", mutates_args=())
def _forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask_id: torch.Tensor | None, is_causal: bool,
             tensor_layout: str, sm_scale: float | None, smooth_k: bool, return_lse: bool,
             pv_dtype: str) -> tuple[torch.Tensor, torch.Tensor]:
    plan = _plan(q, k, v, mask_id, is_causal, tensor_layout, sm_scale, smooth_k, return_lse, pv_dtype)
    arrays = execute(plan, {"q": q, "k": k, "v": v, "mask_id": mask_id}, q.device)
    return arrays["out"], arrays["lse"]


def sparse_sageattn(q, k, v, mask_id=None, is_causal=False, tensor_layout="HND", *, sm_scale=None, smooth_k=True,
                    return_lse=False, pv_dtype="fp16"):
    """Block-sparse INT8 attention with SageAttention V1 numerics.

    Args:
      q: (B, Hq, Nq, D) for tensor_layout "HND", (B, Nq, Hq, D) for "NHD"; float16 or bfloat16.
      k, v: the same layout with Hkv heads and Nk keys; Hq must be a multiple of Hkv (GQA / MQA).
        Any strides with a contiguous last dim are used without a copy. D: a multiple of 8 up to 256
        (64 and 128 are the fast paths).
      mask_id: bool or integer tensor broadcastable to (B, Hq, ceil(Nq/128), ceil(Nk/64)); nonzero computes a
        (128 query x 64 key) block, 0 skips it. Mask heads are query heads. None computes every block.
      is_causal: query i sees key j iff j <= i + Nk - Nq (bottom-right aligned); combined with mask_id.
      sm_scale: softmax scale, default 1/sqrt(D).
      smooth_k: subtract K's mean over the keys before quantization (exact under softmax).
      return_lse: also return the float32 log-sum-exp (B, Hq, Nq) of the scaled logits (natural log).
      pv_dtype: "fp16" (default, SageAttention V1: P and V in fp16) or "fp8" (SageAttention2-style: P in e4m3
        with the static scale 448, V in e4m3 scaled per channel, fp32 accumulation across key blocks). "fp8"
        needs compute capability 8.9 or newer (Ada, Hopper) and is refused on older GPUs.

    Returns:
      out with q's dtype and layout, or (out, lse). Rows that see no key are zeros with lse -inf.
      Inputs are never modified.
    """
    tensors = {"q": q, "k": k, "v": v} if mask_id is None else {"q": q, "k": k, "v": v, "mask_id": mask_id}
    check_inputs("sparse_sageattn", tensors, lambda: validate(
        _desc(q), _desc(k), _desc(v), None if mask_id is None else _desc(mask_id), is_causal, tensor_layout,
        sm_scale, smooth_k, return_lse, pv_dtype))
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        raise NotImplementedError(
            "sparse_sageattn: the backward pass is not available yet; q, k and v must not require grad "
            "(call it under torch.no_grad() or torch.inference_mode())"
        )
    if sm_scale is not None:
        sm_scale = float(sm_scale)
    out, lse = _forward(q, k, v, mask_id, is_causal, tensor_layout, sm_scale, smooth_k, return_lse, pv_dtype)
    return (out, lse) if return_lse else out
