"""Bitwise A/B of two source trees through their public calls: does a change leave every output bit alone?

`--save FILE --tree DIR` runs CASES through tree DIR's `sparse_sageattn` (torch, and JAX unless --no-jax) and saves
every output and lse; `--compare FILE` runs the same cases through this tree and reports, per case and
frontend, whether out and lse are bitwise equal to the saved ones. Inputs are random (seeded per case, never
zeros) and identical in both runs. A tree is imported from a private copy of its frontends/ and core_kernels/
laid out as the installed package (sparse_sageattn, sparse_sageattn.core_kernels), placed first on sys.path.

GPU:  python benchmarks/bitwise_ab.py --tree /path/to/base --save /tmp/base.pt
      python benchmarks/bitwise_ab.py --tree . --compare /tmp/base.pt
"""
import argparse
import hashlib
import os
import shutil
import sys
import tempfile

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # torch and JAX share the GPU

# (name, dtype, batch, heads_q, heads_kv, n_q, n_k, head_dim, layout, mask, is_causal, return_lse, smooth_k, pv_dtype)
# mask: None, "blocks" (a random (Hq, Qb, Kb) block mask) or "batch" (a random (B, 1, Qb, Kb) one).
CASES = [
    ("dense_hd128", "float16", 2, 8, 8, 2048, 2048, 128, "HND", None, False, True, True, "fp16"),
    ("causal_hd128_bf16", "bfloat16", 2, 8, 8, 2048, 2048, 128, "HND", None, True, True, True, "fp16"),
    ("mask_hd64_gqa", "float16", 2, 8, 2, 1536, 4096, 64, "HND", "blocks", False, True, True, "fp16"),
    ("mask_causal_hd64_nhd", "bfloat16", 2, 8, 4, 1000, 3000, 64, "NHD", "batch", True, True, True, "fp16"),
    ("ragged_hd96", "float16", 1, 4, 1, 300, 777, 96, "HND", "blocks", True, True, False, "fp16"),
    ("hd40_nolse", "float16", 2, 4, 2, 513, 513, 40, "NHD", None, True, False, True, "fp16"),
    ("hd256", "bfloat16", 1, 4, 4, 640, 640, 256, "HND", None, False, True, True, "fp16"),
    ("decode_like", "bfloat16", 4, 32, 8, 16, 8192, 128, "HND", None, True, True, True, "fp16"),
    ("fp8_hd128", "float16", 2, 8, 8, 2048, 2048, 128, "HND", None, False, True, True, "fp8"),
    ("fp8_mask_hd64", "bfloat16", 2, 8, 2, 1024, 2048, 64, "NHD", "blocks", True, True, True, "fp8"),
]


def import_tree(root):
    """Import `sparse_sageattn` from tree `root` (a private copy, first on sys.path)."""
    root = os.path.abspath(root)
    site = os.path.join(tempfile.gettempdir(), "bitwise_ab_" + hashlib.sha256(root.encode()).hexdigest()[:8])
    shutil.rmtree(site, ignore_errors=True)
    shutil.copytree(os.path.join(root, "frontends"), os.path.join(site, "sparse_sageattn"))
    shutil.copytree(os.path.join(root, "core_kernels"), os.path.join(site, "sparse_sageattn", "core_kernels"))
    sys.path.insert(0, site)
    import sparse_sageattn

    assert os.path.dirname(sparse_sageattn.__file__).startswith(site), sparse_sageattn.__file__
    return sparse_sageattn


def inputs(case, torch):
    name, dtype, batch, hq, hkv, n_q, n_k, head_dim, layout, mask, *_ = case
    gen = torch.Generator().manual_seed(int(hashlib.sha256(name.encode()).hexdigest()[:8], 16))

    def rand(heads, n):
        shape = (batch, heads, n, head_dim) if layout == "HND" else (batch, n, heads, head_dim)
        return torch.randn(shape, generator=gen)

    q, k, v = rand(hq, n_q), rand(hkv, n_k), rand(hkv, n_k)
    k = k + 2.0 * torch.randn(head_dim, generator=gen)  # a per-channel offset, what smoothing is for
    n_qb, n_kb = -(-n_q // 128), -(-n_k // 64)
    mask_id = None
    if mask == "blocks":
        mask_id = torch.rand(hq, n_qb, n_kb, generator=gen) < 0.5
    elif mask == "batch":
        mask_id = torch.rand(batch, 1, n_qb, n_kb, generator=gen) < 0.4
    return [x.to(getattr(torch, dtype)) for x in (q, k, v)], mask_id


def run_cases(package, with_jax):
    import torch

    results = {}
    for case in CASES:
        name, _, _, _, _, _, _, _, layout, _, is_causal, return_lse, smooth_k, pv_dtype = case
        (q, k, v), mask_id = inputs(case, torch)
        kwargs = dict(is_causal=is_causal, tensor_layout=layout, smooth_k=smooth_k, return_lse=return_lse,
                      pv_dtype=pv_dtype)
        cuda = [x.cuda() for x in (q, k, v)] + [None if mask_id is None else mask_id.cuda()]
        out = package.sparse_sageattn(*cuda, **kwargs)
        out, lse = out if return_lse else (out, None)
        results[("torch", name)] = (out.cpu(), None if lse is None else lse.cpu())
        if with_jax:
            import jax.numpy as jnp

            from sparse_sageattn.jax import sparse_sageattn as jax_attention

            jax_dtype = jnp.bfloat16 if q.dtype == torch.bfloat16 else jnp.float16
            arrays = [jnp.asarray(x.float().numpy()).astype(jax_dtype) for x in (q, k, v)]
            arrays.append(None if mask_id is None else jnp.asarray(mask_id.numpy()))
            out = jax_attention(*arrays, **kwargs)
            out, lse = out if return_lse else (out, None)
            results[("jax", name)] = tuple(None if x is None else torch.from_numpy(_bits(x)) for x in (out, lse))
    return results


def _bits(x):
    import numpy as np

    return np.asarray(x).view(np.uint16 if x.dtype.itemsize == 2 else np.uint32).astype(np.int64)


def _same(a, b, torch):
    if a is None or b is None:
        return a is None and b is None
    if a.dtype != torch.int64:
        a, b = a.view(torch.int16 if a.element_size() == 2 else torch.int32), \
            b.view(torch.int16 if b.element_size() == 2 else torch.int32)
    return a.shape == b.shape and bool(torch.equal(a, b))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tree", default=".", help="source tree whose sparse_sageattn runs")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--save")
    mode.add_argument("--compare")
    p.add_argument("--no-jax", action="store_true")
    args = p.parse_args(argv)
    package = import_tree(args.tree)
    import torch

    results = run_cases(package, not args.no_jax)
    if args.save:
        torch.save(results, args.save)
        print(f"saved {len(results)} results of {args.tree} to {args.save}")
        return
    saved = torch.load(args.compare)
    different = 0
    print(f"{'frontend':<8} {'case':<24} out   lse")
    for key in sorted(saved):
        if key not in results:
            print(f"{key[0]:<8} {key[1]:<24} missing")
            different += 1
            continue
        same = [_same(a, b, torch) for a, b in zip(saved[key], results[key])]
        different += not all(same)
        print(f"{key[0]:<8} {key[1]:<24} {'same' if same[0] else 'DIFF'}  {'same' if same[1] else 'DIFF'}")
    print(f"{len(saved) - different} of {len(saved)} bitwise equal")
    if different:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
