"""A/B of attention-kernel variants: the table's entry against AttentionConfig fields given to make_plan's
attention_override (e.g. key_blocks_per_step=2). Kernel only: the plan's other launches run once to fill the
buffers, then the attention launch alone (--whole-plan: all of the plan's launches, in a row) is timed per
variant (do_bench median, L2 flushed), in the order
A B ... B A and averaged, so clock drift does not favour one side. Also printed: TOPS over the computed blocks
(live blocks x 128 x 64 pairs, 4*D ops each), and each variant's output against the first variant's
(max |diff|) and against the float64 reference on sampled rows of batch 0, head 0 (cosine, relative L1).
A variant with tree=base is planned and compiled from another source tree's core_kernels (--baseline-root, e.g.
a copy of main; tree=NAME from --tree NAME=ROOT), so a change to the kernel source is timed against the code it
replaces in one process.

GPU:  python benchmarks/attention_ab.py --variant key_blocks_per_step=2
      (variants: repeatable, fields comma separated, e.g. --variant key_blocks_per_step=2,num_stages=2;
      pv_dtype=fp8 selects make_plan's FP8 P.V mode, whose accuracy is printed but not held to the INT8 bounds)
      python benchmarks/attention_ab.py --baseline-root /tmp/main --variant tree=base
      ncu --kernel-name regex:attention_kernel python benchmarks/attention_ab.py --launch-once --seq-lens 8192 ...
CPU:  TRITON_INTERPRET=1 python benchmarks/attention_ab.py --smoke --variant key_blocks_per_step=2
      (tiny sizes through the interpreter: accuracy only, no timing)
"""
import argparse
import json

import numpy as np
import torch
import triton

import sparse_sageattn.core_kernels as core_kernels
from sparse_sageattn.core_kernels import INTERPRETED
from sparse_sageattn.core_kernels.contract import BLOCK_M, BLOCK_N
from sparse_sageattn.reference import COS_MIN, REL_L1_MAX, attention, cosine, rel_l1
from sparse_sageattn.torch import _launch
from source_tree import attention_make_plan, load_core_kernels

# half / tenth: a random mask keeping that share of the blocks, not causal
MASK_DENSITY = {"half": 0.5, "tenth": 0.1}
MASKS = ("dense", "causal", "half", "tenth")


def parse_variant(text):
    """"key_blocks_per_step=2,pv_dtype=fp8,tree=base" -> {"key_blocks_per_step": 2, "pv_dtype": "fp8", "tree": "base"}
    (integers as ints, other values, such as kernel=gluon_sm90, as strings)."""
    fields = dict(item.split("=", 1) for item in text.split(",")) if text else {}
    return {k: v if k in PLAN_FIELDS or not v.lstrip("-").isdigit() else int(v) for k, v in fields.items()}


PLAN_FIELDS = ("pv_dtype", "tree")  # variant fields that are not AttentionConfig fields


def run_config(n, head_dim, mask_kind, variants, trees, batch, heads, device, timed, launch_once=False,
               whole_plan=False):
    gen = torch.Generator(device).manual_seed(n + head_dim)
    q, k, v = (torch.randn(batch, heads, n, head_dim, generator=gen, device=device, dtype=torch.float16)
               for _ in range(3))
    n_qb, n_kb = -(-n // BLOCK_M), -(-n // BLOCK_N)
    mask = (torch.rand(n_qb, n_kb, generator=gen, device=device) < MASK_DENSITY[mask_kind]
            if mask_kind in MASK_DENSITY else None)
    causal = mask_kind == "causal"
    capability = torch.cuda.get_device_capability(device) if device == "cuda" else None
    num_sms = torch.cuda.get_device_properties(device).multi_processor_count if device == "cuda" else None
    descs = [_launch.describe(q), _launch.describe(k), _launch.describe(v),
             None if mask is None else _launch.describe(mask)]
    plans = []
    for over in variants:
        make_plan = attention_make_plan(trees[over.get("tree", "current")])
        plans.append(make_plan(*descs, causal, "HND", None, True, False, capability,
                               pv_dtype=over.get("pv_dtype", "fp16"), num_sms=num_sms,
                               attention_override={f: x for f, x in over.items() if f not in PLAN_FIELDS}))
    variant_arrays = []  # each variant's buffers, filled by its own plan's launches (pv_dtype changes them)
    for plan in plans:
        arrays = _launch.run(plan, {"q": q, "k": k, "v": v, "mask_id": mask}, device)  # compiles; the attention
        # output of each variant is kept for the comparison
        variant_arrays.append(arrays)
    if launch_once:
        return []
    steps = [next(s for s in p.launches if s.name == "attention") for p in plans]
    timed_launches = [p.launches if whole_plan else (step,) for p, step in zip(plans, steps)]
    counts = variant_arrays[0]["block_counts"].view(-1, n_qb, 2)  # one list per (batch, head) the mask tells
    live = counts[..., 0].sum().item() * (batch * heads // counts.shape[0])
    ops = 4 * head_dim * live * BLOCK_M * BLOCK_N

    outs, times = [a["out"] for a in variant_arrays], [[] for _ in steps]
    if timed:
        for i in list(range(len(steps))) + list(reversed(range(len(steps)))):
            times[i].append(triton.testing.do_bench(
                lambda launches=timed_launches[i], a=variant_arrays[i]: [_launch.launch(s, a) for s in launches],
                warmup=25, rep=100, return_mode="median"))
    rows = np.unique(np.linspace(0, n - 1, 64).astype(int))
    ref, _ = attention(*(x[:1, :1].float().cpu().numpy() for x in (q, k, v)),
                       None if mask is None else mask.cpu().numpy(), causal, rows=rows)
    results = []
    for over, step, out, ms in zip(variants, steps, outs, times):
        sample = out[:1, :1, rows].float().cpu().numpy()
        ms = sum(ms) / len(ms) if ms else None
        results.append(dict(n=n, head_dim=head_dim, mask=mask_kind, variant=over, num_warps=step.num_warps,
                            num_stages=step.num_stages, ms=ms, tops=ops / ms / 1e9 if ms else None,
                            max_diff_vs_first=(out.float() - outs[0].float()).abs().max().item(),
                            cosine=cosine(sample, ref), rel_l1=rel_l1(sample, ref)))
    return results


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variant", action="append", default=[], metavar="FIELD=INT[,FIELD=INT]",
                   help="attention_override fields of a variant to compare with the table's entry (repeatable)")
    p.add_argument("--seq-lens", default="8192,16384")
    p.add_argument("--head-dims", default="64,128")
    p.add_argument("--masks", default=",".join(MASKS))
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--smoke", action="store_true", help="tiny sizes (CPU, interpreter): plumbing and accuracy")
    p.add_argument("--json", help="also write the records here")
    p.add_argument("--baseline-root", help="source tree whose core_kernels the tree=base variants use")
    p.add_argument("--tree", action="append", default=[], metavar="NAME=ROOT",
                   help="another source tree, used by the tree=NAME variants (repeatable)")
    p.add_argument("--launch-once", action="store_true",
                   help="run each variant's launches once and stop (nothing timed or checked): a target for ncu")
    p.add_argument("--whole-plan", action="store_true",
                   help="time every launch of each variant's plan (K sums and lists, quantization, attention) in a "
                        "row, not the attention launch alone: for a change that moves work between launches")
    args = p.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() and not INTERPRETED else "cpu"
    if device == "cpu" and not (args.smoke and INTERPRETED):
        p.error("without a GPU only --smoke runs, under TRITON_INTERPRET=1")
    if args.smoke:
        args.seq_lens, args.head_dims, args.batch, args.heads = "320", "64", 1, 2
    variants = [{}] + [parse_variant(v) for v in args.variant]
    trees = {"current": core_kernels}
    if args.baseline_root:
        trees["base"] = load_core_kernels(args.baseline_root)
    for item in args.tree:
        name, root = item.split("=", 1)
        trees[name] = load_core_kernels(root)
    if any(v.get("tree", "current") not in trees for v in variants):
        p.error(f"a variant names a tree not given (--baseline-root for base, --tree NAME=ROOT): {sorted(trees)}")
    if device == "cuda":
        print(torch.cuda.get_device_name(), "triton", triton.__version__)
    records = []
    for n in (int(x) for x in args.seq_lens.split(",")):
        for head_dim in (int(x) for x in args.head_dims.split(",")):
            for mask_kind in args.masks.split(","):
                results = run_config(n, head_dim, mask_kind, variants, trees, args.batch, args.heads, device,
                                     timed=device == "cuda", launch_once=args.launch_once,
                                     whole_plan=args.whole_plan)
                for r in results:
                    name = ",".join(f"{k}={v}" for k, v in r["variant"].items()) or "table"
                    timing = (f"{r['ms']:8.3f} ms {r['tops']:6.1f} TOPS x{results[0]['ms'] / r['ms']:.3f}"
                              if r["ms"] else "untimed")
                    print(f"N={n:<6} hd={head_dim:<4} {mask_kind:<7} {name:<34} w{r['num_warps']} "
                          f"s{r['num_stages']}  {timing}  max|diff|={r['max_diff_vs_first']:.2e}  "
                          f"cos={r['cosine']:.6f} relL1={r['rel_l1']:.4f}", flush=True)
                records += results
    if args.json:
        with open(args.json, "w") as f:
            json.dump(records, f, indent=1)
    bad = [r for r in records if r["variant"].get("pv_dtype", "fp16") == "fp16"
           and not (r["cosine"] >= COS_MIN and r["rel_l1"] <= REL_L1_MAX)]
    if bad:
        raise SystemExit(f"{len(bad)} records outside the contract's bounds")


if __name__ == "__main__":
    main()
