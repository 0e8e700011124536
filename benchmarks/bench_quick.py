"""A first, small benchmark on one GPU: sparse_sageattn (torch, end to end) against SDPA flash, SDPA cuDNN,
compiled FlexAttention with the identical (128, 64) block mask, and sageattention 1.0.6 when importable.

B=2, H=32, N=8192, fp16, head dims 64 and 128; dense (causal and not) and random block masks with an exact
per-row density of 0.5 / 0.25 / 0.1. Times are triton.testing.do_bench medians (warm-up excluded) over inputs
rotated between 3 random sets. Writes benchmarks/results/<gpu>-<date>-quick.json (or under $OUT) and prints a
table. The full suite of the speed issue builds on this.
"""
import datetime
import json
import os
import platform

import torch
import triton
import triton.testing
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.flex_attention import BlockMask, flex_attention

from sparse_sageattn import sparse_sageattn

BATCH, HEADS, N = 2, 32, 8192


def exact_density_mask(density, n_qb, n_kb, gen):
    """(B, H, Qb, Kb) bool with round(density * Kb) live key blocks in every query-block row."""
    keep = max(1, round(density * n_kb))
    order = torch.rand(BATCH, HEADS, n_qb, n_kb, generator=gen, device="cuda").argsort(dim=-1)
    return order < keep


def to_block_mask(mask):
    counts = mask.sum(-1, dtype=torch.int32)
    indices = mask.to(torch.int8).argsort(dim=-1, descending=True, stable=True).to(torch.int32)
    return BlockMask.from_kv_blocks(counts, indices, BLOCK_SIZE=(128, 64))


def bench(fn, inputs):
    state = {"i": 0}

    def step():
        state["i"] = (state["i"] + 1) % len(inputs)
        fn(*inputs[state["i"]])

    return triton.testing.do_bench(step, warmup=100, rep=400, return_mode="median")


def main():
    gen = torch.Generator(device="cuda").manual_seed(0)
    flex = torch.compile(flex_attention, dynamic=False)
    try:
        from sageattention import sageattn
    except ImportError:
        sageattn = None
    rows = []
    for head_dim in (64, 128):
        sets = [tuple(torch.randn(BATCH, HEADS, N, head_dim, generator=gen, device="cuda", dtype=torch.float16)
                      for _ in range(3)) for _ in range(3)]
        flex_options = {"BLOCK_M": 64, "BLOCK_N": 64} if head_dim == 64 else None
        for density, causal in ((1.0, False), (1.0, True), (0.5, False), (0.25, False), (0.1, False)):
            mask = None if density == 1.0 else exact_density_mask(density, N // 128, N // 64, gen)
            work = 4 * BATCH * HEADS * N * N * head_dim  # dense-equivalent operations
            systems = {
                "sparse_sageattn": lambda q, k, v: sparse_sageattn(q, k, v, mask, causal),
            }
            if mask is None:
                for name, backend in (("sdpa_flash", SDPBackend.FLASH_ATTENTION),
                                      ("sdpa_cudnn", SDPBackend.CUDNN_ATTENTION)):
                    def run(q, k, v, backend=backend):
                        with sdpa_kernel(backend):
                            return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)
                    systems[name] = run
                if sageattn is not None:
                    systems["sageattention_1.0.6"] = lambda q, k, v: sageattn(q, k, v, is_causal=causal)
            else:
                block_mask = to_block_mask(mask)
                systems["flex_compiled"] = lambda q, k, v: flex(q, k, v, block_mask=block_mask,
                                                                kernel_options=flex_options)
            for name, fn in systems.items():
                ms = bench(fn, sets)
                rows.append(dict(system=name, head_dim=head_dim, density=density, causal=causal, ms=ms,
                                 dense_equiv_tops=work / (2 if causal else 1) / ms / 1e9,
                                 effective_tops=work * density / (2 if causal else 1) / ms / 1e9))
                print(f"hd{head_dim} density {density} causal {causal} {name}: {ms:.3f} ms", flush=True)
    result = dict(
        gpu=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__,
        python=platform.python_version(), date=datetime.date.today().isoformat(),
        shape=dict(batch=BATCH, heads=HEADS, n=N, dtype="float16"), rows=rows,
    )
    name = f"{result['gpu'].replace(' ', '_')}-{result['date']}-quick.json"
    out_dir = os.environ.get("OUT") or os.path.join(os.path.dirname(__file__), "results")
    with open(os.path.join(out_dir, name), "w") as f:
        json.dump(result, f, indent=1)
    print(f"\n{'config':<32}{'system':<22}{'ms':>9}{'TOPS(dense-eq)':>16}")
    for r in rows:
        config = f"hd{r['head_dim']} d={r['density']} {'causal' if r['causal'] else 'full'}"
        print(f"{config:<32}{r['system']:<22}{r['ms']:>9.3f}{r['dense_equiv_tops']:>16.1f}")


if __name__ == "__main__":
    main()
