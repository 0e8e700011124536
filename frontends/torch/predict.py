"""`predict_mask` for PyTorch: a SpargeAttn-style block mask predicted from q and k by the core kernels.

Under `torch.compile(fullgraph=True)` the call is the custom op `sparse_sageattn::predict_mask` (an opaque
`torch.library.custom_op` with a fake implementation); eager calls take the executor's cached direct launches;
CUDA graphs capture both. No host synchronization.
"""
import torch

from sparse_sageattn.core_kernels import predict

from ._launch import PlanOp, describe
from .attention import check_device, check_tensors


def _plan(q: torch.Tensor, k: torch.Tensor, cdf_threshold: float | None, topk: float | None, is_causal: bool,
          tensor_layout: str, sm_scale: float | None):
    plan = predict.make_plan(describe(q), describe(k), cdf_threshold, topk, is_causal, tensor_layout, sm_scale)
    check_device("predict_mask", q)
    return plan


_predict = PlanOp("sparse_sageattn::predict_mask", _plan, ("q", "k"), len(predict.OUTPUTS))


def _as_float(x):
    return float(x) if not isinstance(x, bool) and isinstance(x, (int, float)) else x


def predict_mask(q, k, *, cdf_threshold=None, topk=None, is_causal=False, tensor_layout="HND", sm_scale=None):
    """A block mask for sparse_sageattn predicted from mean-pooled q and k blocks.

    Per (batch, query head, 128-query block): the scores of its mean query against the mean of every 64-key
    block (times sm_scale), a softmax over the key blocks it may see, and the most probable key blocks kept --
    the fewest whose probability mass reaches `cdf_threshold`, or the top `topk` fraction of them (give exactly
    one). The sink (key block 0) and the diagonal blocks (the query block's own positions, bottom-right aligned)
    are always kept; with `is_causal` blocks entirely above the diagonal are never kept nor counted.

    Args:
      q, k: as for sparse_sageattn (v is not needed); GQA query heads read their kv head's pooled keys.
      cdf_threshold, topk: a number in (0, 1]; exactly one of them.
      is_causal: pass what you will pass to sparse_sageattn.
      sm_scale: default 1/sqrt(D).

    Returns:
      int8 (B, Hq, ceil(Nq/128), ceil(Nk/64)) on q's device, 1 = compute the block: a `mask_id`.
    """
    check_tensors("predict_mask", {"q": q, "k": k})
    # A mask is not differentiable: detach so that inputs requiring grad need no autograd rule.
    (mask,) = _predict(q.detach(), k.detach(), _as_float(cdf_threshold), _as_float(topk), is_causal, tensor_layout,
                       _as_float(sm_scale))
    return mask
