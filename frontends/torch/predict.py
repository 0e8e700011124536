"""`predict_mask` for PyTorch: a SpargeAttn-style block mask predicted from q and k by the core kernels.

Registered as the custom op `sparse_sageattn::predict_mask` (a `torch.library.triton_op`), so it traces into
`torch.compile(fullgraph=True)` and CUDA graphs like the attention op. No host synchronization.
"""
import torch
from torch.library import triton_op

from sparse_sageattn.core_kernels import make_predict_plan, validate_predict

from .attention import _desc, check_inputs, execute


@triton_op("sparse_sageattn::predict_mask", mutates_args=())
def _predict(q: torch.Tensor, k: torch.Tensor, cdf_threshold: float | None, topk: float | None, is_causal: bool,
             tensor_layout: str, sm_scale: float | None) -> torch.Tensor:
    plan = make_predict_plan(_desc(q), _desc(k), cdf_threshold, topk, is_causal, tensor_layout, sm_scale)
    return execute(plan, {"q": q, "k": k}, q.device)["mask"]


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
    check_inputs("predict_mask", {"q": q, "k": k}, lambda: validate_predict(
        _desc(q), _desc(k), cdf_threshold, topk, is_causal, tensor_layout, sm_scale))
    as_float = (lambda x: None if x is None else float(x))
    # A mask is not differentiable: detach so that inputs requiring grad need no autograd rule.
    return _predict(q.detach(), k.detach(), as_float(cdf_threshold), as_float(topk), is_causal, tensor_layout,
                    as_float(sm_scale))
