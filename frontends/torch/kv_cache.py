"""An INT8 KV cache for PyTorch: K kept quantized as it grows, attention reading it as it is.

    cache = Int8KVCache(batch, heads_kv, capacity, head_dim, dtype=torch.bfloat16, device="cuda")
    cache.append(k_prompt, v_prompt)         # first fill: fixes K's smoothing vector (the prompt keys' mean)
    out = sparse_sageattn(q, k_prompt, v_prompt, is_causal=True)   # prefill attention: the plain call
    for step in ...:
        cache.append(k_new, v_new)           # quantizes only the new tokens' blocks, in place
        out = cache.attend(q_new, is_causal=True)

Per token and kv head the cache holds D int8 keys and D values, in q's dtype (v_format="native": 0.75x a bf16
cache's K+V bytes) or in FP8 e4m3 with a power-of-two scale per 64-key block and channel (v_format="e4m3":
0.51x), plus one fp32 scale per 64 keys and fixed 64-token full-precision tails. The core kernels
(core_kernels/kv_cache/) say what each array holds. Both ops are torch custom ops (`sparse_sageattn::kv_cache_append`
and `kv_cache_append_e4m3` mutate the cache arrays), so torch.compile and CUDA graphs take them; append also
checks on the host, before any launch, that the tokens fit (rows advance together, so the host knows the longest
row).
"""
import torch

from sparse_sageattn.core_kernels import kv_cache

from ._launch import DTYPES, PlanOp, capability, describe, sm_count
from .attention import check_device, check_tensors


def _make_append_plan(k, v, arrays, tensor_layout, first_fill):
    cache = {name: describe(t) for name, t in arrays.items()}
    plan = kv_cache.make_append_plan(describe(k), describe(v), cache, tensor_layout, first_fill)
    check_device("Int8KVCache.append", k)
    return plan


def _append_plan(k: torch.Tensor, v: torch.Tensor, k_int8: torch.Tensor, k_scale: torch.Tensor,
                 k_mean: torch.Tensor, k_tail: torch.Tensor, v_cache: torch.Tensor, lens: torch.Tensor,
                 tensor_layout: str, first_fill: bool):
    arrays = dict(k_int8=k_int8, k_scale=k_scale, k_mean=k_mean, k_tail=k_tail, v_cache=v_cache, lens=lens)
    return _make_append_plan(k, v, arrays, tensor_layout, first_fill)


def _append_e4m3_plan(k: torch.Tensor, v: torch.Tensor, k_int8: torch.Tensor, k_scale: torch.Tensor,
                      k_mean: torch.Tensor, k_tail: torch.Tensor, v_cache: torch.Tensor, v_exp: torch.Tensor,
                      v_tail: torch.Tensor, lens: torch.Tensor, tensor_layout: str, first_fill: bool):
    arrays = dict(k_int8=k_int8, k_scale=k_scale, k_mean=k_mean, k_tail=k_tail, v_cache=v_cache, v_exp=v_exp,
                  v_tail=v_tail, lens=lens)
    return _make_append_plan(k, v, arrays, tensor_layout, first_fill)


def _attend_plan(q: torch.Tensor, mask_id: torch.Tensor | None, k: torch.Tensor, v: torch.Tensor,
                 kv_lens: torch.Tensor, k_scale: torch.Tensor, k_mean: torch.Tensor, v_exp: torch.Tensor | None,
                 is_causal: bool, tensor_layout: str, sm_scale: float | None, return_lse: bool):
    cache = {"k_int8": describe(k), "v_cache": describe(v), "lens": describe(kv_lens), "k_scale": describe(k_scale),
             "k_mean": describe(k_mean)}
    if v_exp is not None:
        cache["v_exp"] = describe(v_exp)
    plan = kv_cache.make_attend_plan(describe(q), cache, None if mask_id is None else describe(mask_id), is_causal,
                                     tensor_layout, sm_scale, return_lse, capability(q.device),
                                     num_sms=sm_count(q.device))
    check_device("Int8KVCache.attend", q)
    return plan


_APPENDS = {
    "native": PlanOp("sparse_sageattn::kv_cache_append", _append_plan, ("k", "v", *kv_cache.cache_arrays("native")),
                     0, mutates=kv_cache.cache_arrays("native")),
    "e4m3": PlanOp("sparse_sageattn::kv_cache_append_e4m3", _append_e4m3_plan,
                   ("k", "v", *kv_cache.cache_arrays("e4m3")), 0, mutates=kv_cache.cache_arrays("e4m3")),
}
_attend = PlanOp("sparse_sageattn::kv_cache_attend", _attend_plan,
                 ("q", "mask_id", "k", "v", "kv_lens", "k_scale", "k_mean", "v_exp"), 2,
                 lambda *args: 2 if args[-1] else 1)


class Int8KVCache:
    """One layer's INT8 KV cache of `capacity` tokens (a multiple of 64) per batch row; v_format "native" keeps V
    in `dtype`, "e4m3" in FP8 (core_kernels.kv_cache.V_FORMATS).

    arrays: name -> tensor (core_kernels.kv_cache.cache_arrays(v_format)), updated in place by `append`; `lens`
    (int32, (B,), on the device) counts each row's tokens. Rows advance together (every append adds n tokens to each).
    `tokens` is the host's count, which append checks against the capacity; a replayed CUDA graph advances
    `lens` but not `tokens`, and tokens past the capacity are then dropped on the device (lens stops there).
    """

    def __init__(self, batch, heads_kv, capacity, head_dim, dtype=torch.float16, device="cuda", v_format="native"):
        if dtype not in (torch.float16, torch.bfloat16):
            raise TypeError(f"Int8KVCache: dtype must be torch.float16 or torch.bfloat16, got {dtype}")
        buffers = kv_cache.cache_buffers(batch, heads_kv, capacity, head_dim, str(dtype).removeprefix("torch."),
                                         v_format)
        self.arrays = {name: torch.full(buf.shape, buf.fill, dtype=DTYPES[buf.dtype], device=device)
                       for name, buf in buffers.items()}
        self.capacity = capacity
        self.v_format = v_format
        self.tokens = 0  # the tokens every row holds (host side: what the next append may add)

    @property
    def lens(self) -> torch.Tensor:
        return self.arrays["lens"]

    @property
    def nbytes(self) -> int:
        """Bytes of every array of the cache, scales, smoothing vector and tail included."""
        return sum(t.numel() * t.element_size() for t in self.arrays.values())

    def append(self, k, v, tensor_layout="HND"):
        """Write k, v ((B, Hkv, n, D) for "HND", (B, n, Hkv, D) for "NHD", the cache's dtype) after each row's
        tokens. The first append fixes K's smoothing vector: the mean of its keys. Inputs are not modified."""
        check_tensors("Int8KVCache.append", {"k": k, "v": v})
        n_new = k.shape[2] if tensor_layout == "HND" else k.shape[1] if tensor_layout == "NHD" else 0
        if self.tokens + n_new > self.capacity:
            raise ValueError(f"Int8KVCache.append: {n_new} new tokens do not fit: the cache holds {self.tokens} of "
                             f"{self.capacity}")
        _APPENDS[self.v_format](k, v, *self.arrays.values(), tensor_layout, self.tokens == 0)
        self.tokens += n_new

    def attend(self, q, mask_id=None, is_causal=False, tensor_layout="HND", *, sm_scale=None, return_lse=False):
        """sparse_sageattn of q ((B, Hq, Nq, D) or (B, Nq, Hq, D), Nq <= 128) over the cached tokens: mask_id,
        is_causal (aligned to each row's length), sm_scale and return_lse as in sparse_sageattn."""
        tensors = {"q": q} if mask_id is None else {"q": q, "mask_id": mask_id}
        check_tensors("Int8KVCache.attend", tensors)
        if sm_scale is not None and not isinstance(sm_scale, bool) and isinstance(sm_scale, (int, float)):
            sm_scale = float(sm_scale)
        a = self.arrays
        outputs = _attend(q, mask_id, a["k_int8"], a["v_cache"], a["lens"], a["k_scale"], a["k_mean"], a.get("v_exp"),
                          is_causal, tensor_layout, sm_scale, return_lse)
        return tuple(outputs) if return_lse else outputs[0]
