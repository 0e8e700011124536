"""Demo: causal sliding-window + sink block mask through sparse_sageattn, checked against the float64
reference and timed against dense SDPA. Without a GPU it runs the real kernels through the Triton interpreter
at a small size (the timings then only show that it ran)."""
import os
import time

import numpy as np
import torch

ON_GPU = torch.cuda.is_available()
if not ON_GPU:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # must precede the kernels' import

from sparse_sageattn import sparse_sageattn  # noqa: E402
from sparse_sageattn.reference import attention, cosine, rel_l1  # noqa: E402


def window_and_sink_mask(n, window_keys, sink_blocks=1):
    """(Qb, Kb) bool: each 128-query block sees the key blocks within `window_keys` before it, and the first ones."""
    q_block_start = torch.arange(-(-n // 128))[:, None] * 128
    key_block_end = torch.arange(-(-n // 64))[None, :] * 64 + 64
    return (key_block_end > q_block_start - window_keys) | (torch.arange(-(-n // 64))[None, :] < sink_blocks)


def timed_ms(fn):
    if ON_GPU:
        import triton.testing
        return triton.testing.do_bench(fn, warmup=50, rep=200, return_mode="median")
    fn()
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def main():
    batch, heads, n, head_dim, window = (2, 16, 8192, 128, 1024) if ON_GPU else (1, 2, 1024, 64, 256)
    device = "cuda" if ON_GPU else "cpu"
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(batch, heads, n, head_dim, generator=gen).to(device, torch.float16) for _ in range(3))
    mask_id = window_and_sink_mask(n, window).to(device)
    density = mask_id.float().mean().item()
    with torch.no_grad():
        out, lse = sparse_sageattn(q, k, v, mask_id, is_causal=True, return_lse=True)
    rows = np.unique(np.r_[0, n - 1, np.random.default_rng(0).integers(0, n, 256)])
    ref, ref_lse = attention(*(x.float().cpu().numpy() for x in (q, k, v)), mask_id.cpu().numpy(), True, rows=rows)
    got = out[:, :, rows].float().cpu().numpy()
    finite = np.isfinite(ref_lse)
    print(f"device: {torch.cuda.get_device_name() if ON_GPU else 'CPU (Triton interpreter)'}")
    print(f"shape (B, H, N, D) = {(batch, heads, n, head_dim)}, causal, mask {tuple(mask_id.shape)} "
          f"keeping {density:.0%} of the blocks before the causal rule")
    print(f"accuracy vs float64 reference ({len(rows)} sampled rows): cosine {cosine(got, ref):.6f}, "
          f"relative L1 {rel_l1(got, ref):.4f}, max |lse error| "
          f"{np.abs(lse[:, :, rows].cpu().numpy()[finite] - ref_lse[finite]).max():.4f}")
    t_sparse = timed_ms(lambda: sparse_sageattn(q, k, v, mask_id, is_causal=True))
    t_dense = timed_ms(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True))
    print(f"time: sparse_sageattn {t_sparse:.3f} ms, dense causal SDPA {t_dense:.3f} ms "
          f"({t_dense / t_sparse:.2f}x)")


if __name__ == "__main__":
    main()
