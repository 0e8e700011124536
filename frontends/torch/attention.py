"""`sparse_sageattn` for PyTorch: describe the tensors, get the core plan, hand it to the executor (_launch.py).
No arithmetic here.

Under `torch.compile(fullgraph=True)` the call is the custom op `sparse_sageattn::forward` (an opaque
`torch.library.custom_op` with a fake implementation); eager calls take the executor's cached direct launches.
CUDA graphs capture both.
"""
import torch

from sparse_sageattn.core_kernels import INTERPRETED, attention

from ._launch import PlanOp, capability, describe, sm_count


def check_tensors(op: str, tensors: dict):
    """TypeError unless every argument is a tensor."""
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")


def check_device(op: str, q: torch.Tensor):
    """CPU tensors need the interpreter: a clear error instead of a launch that cannot run."""
    if q.device.type == "cpu" and not INTERPRETED:
        raise RuntimeError(f"{op}: the kernels run on CUDA tensors; CPU tensors run only through the Triton "
                           "interpreter: set TRITON_INTERPRET=1 before importing sparse_sageattn")


def _plan(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask_id: torch.Tensor | None,
          kv_lens: torch.Tensor | None, is_causal: bool, tensor_layout: str, sm_scale: float | None, smooth_k: bool,
          return_lse: bool, pv_dtype: str):
    plan = attention.make_plan(describe(q), describe(k), describe(v), None if mask_id is None else describe(mask_id),
                               is_causal, tensor_layout, sm_scale, smooth_k, return_lse, capability(q.device),
                               pv_dtype=pv_dtype, kv_lens=None if kv_lens is None else describe(kv_lens),
                               num_sms=sm_count(q.device))
    check_device("sparse_sageattn", q)
    return plan


def _n_returned(q, k, v, mask_id, kv_lens, is_causal, tensor_layout, sm_scale, smooth_k, return_lse, pv_dtype):
    return 2 if return_lse else 1  # without return_lse the lse is a one-element slot nobody reads


_forward = PlanOp("sparse_sageattn::forward", _plan, ("q", "k", "v", "mask_id", "kv_lens"),
                  len(attention.OUTPUTS), _n_returned)


def sparse_sageattn(q, k, v, mask_id=None, is_causal=False, tensor_layout="HND", *, kv_lens=None, sm_scale=None,
                    smooth_k=True, return_lse=False, pv_dtype="fp16"):
    """Block-sparse INT8 attention with SageAttention V1 numerics.

    Args:
      q: (B, Hq, Nq, D) for tensor_layout "HND", (B, Nq, Hq, D) for "NHD"; float16 or bfloat16.
      k, v: the same layout with Hkv heads and Nk keys; Hq must be a multiple of Hkv (GQA / MQA).
        Any strides with a contiguous last dim are used without a copy. D: a multiple of 8 up to 256
        (64 and 128 are the fast paths).
      mask_id: bool or integer tensor broadcastable to (B, Hq, ceil(Nq/128), ceil(Nk/64)); nonzero computes a
        (128 query x 64 key) block, 0 skips it. Mask heads are query heads. None computes every block.
      is_causal: query i sees key j iff j <= i + Nk - Nq (bottom-right aligned); combined with mask_id.
      kv_lens: optional int32 tensor (B,) on q's device: batch row b has kv_lens[b] valid keys (a preallocated
        cache); keys at or past it never contribute and are never read, and causal aligns to it
        (j <= i + kv_lens[b] - Nq). Values are clamped to [0, Nk] on the device.
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
    if not (isinstance(q, torch.Tensor) and isinstance(k, torch.Tensor) and isinstance(v, torch.Tensor)
            and (mask_id is None or isinstance(mask_id, torch.Tensor))
            and (kv_lens is None or isinstance(kv_lens, torch.Tensor))):
        optional = {name: t for name, t in (("mask_id", mask_id), ("kv_lens", kv_lens)) if t is not None}
        check_tensors("sparse_sageattn", {"q": q, "k": k, "v": v, **optional})
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        raise NotImplementedError(
            "sparse_sageattn: the backward pass is not available yet; q, k and v must not require grad "
            "(call it under torch.no_grad() or torch.inference_mode())"
        )
    if sm_scale is not None and not isinstance(sm_scale, bool) and isinstance(sm_scale, (int, float)):
        sm_scale = float(sm_scale)
    outputs = _forward(q, k, v, mask_id, kv_lens, is_causal, tensor_layout, sm_scale, smooth_k, return_lse, pv_dtype)
    return tuple(outputs) if return_lse else outputs[0]
