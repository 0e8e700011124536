"""Inputs and a plan runner shared by the torch attention tests (tests/torch/test_attention*.py)."""
import torch

from sparse_sageattn.core_kernels.attention import make_plan
from sparse_sageattn.torch import _launch

PAIRS = {"key_blocks_per_step": 2}


def make_qkv(seed, batch, heads_q, heads_kv, n_q, n_k, head_dim, layout="HND", device="cpu",
             dtype=torch.float16, k_offset=0.0):
    gen = torch.Generator().manual_seed(seed)

    def rand(heads, n):
        shape = (batch, heads, n, head_dim) if layout == "HND" else (batch, n, heads, head_dim)
        return torch.randn(shape, generator=gen)

    q, k, v = rand(heads_q, n_q), rand(heads_kv, n_k), rand(heads_kv, n_k)
    k = k + k_offset * torch.randn(head_dim, generator=gen)  # a per-channel offset: what smoothing is for
    return tuple(x.to(device=device, dtype=dtype) for x in (q, k, v))


def random_mask(seed, shape, density=0.6, dtype=torch.bool):
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=gen) < density).to(dtype)


def _desc(t):
    return None if t is None else _launch.describe(t)


def run_plan(q, k, v, mask_id=None, is_causal=False, tensor_layout="HND", return_lse=True, override=PAIRS,
             pv_dtype="fp16", kv_lens=None, split_kv_override=None):
    """The torch executor on a plan made with make_plan's attention_override (or split_kv_override): variants no
    table entry selects yet. Returns (out, lse)."""
    capability = torch.cuda.get_device_capability(q.device) if q.device.type == "cuda" else None
    plan = make_plan(_desc(q), _desc(k), _desc(v), _desc(mask_id), is_causal, tensor_layout, None, True, return_lse,
                     capability, pv_dtype=pv_dtype, kv_lens=_desc(kv_lens),
                     attention_override=None if split_kv_override is not None else override,
                     split_kv_override=split_kv_override)
    if split_kv_override is None:
        (step,) = [s for s in plan.launches if s.name == "attention"]
        assert step.constexprs["KEY_BLOCKS_PER_STEP"] == (override or {}).get("key_blocks_per_step", 1)
    else:
        (step,) = [s for s in plan.launches if s.name == "split_kv"]
        assert step.constexprs["SPLITS"] == split_kv_override.get("splits", step.constexprs["SPLITS"])
    arrays = _launch.run(plan, {"q": q, "k": k, "v": v, "mask_id": mask_id, "kv_lens": kv_lens}, q.device)
    return arrays["out"], arrays["lse"]
