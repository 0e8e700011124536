"""A/B of split-KV variants at decoding shapes: each launch of the plan timed alone, and the whole call.

For each shape (Nq, Nk, B; bf16, hd128, Hq=32, Hkv=8, causal) and each variant (fields of
configs.SplitKVConfig and "splits", given to make_plan's split_kv_override; the first variant is the table's
choice), the plan's launches run once to fill the buffers, then each launch is timed alone
(triton.testing.do_bench_cudagraph: a replayed graph, so microsecond launches are not host-bound) with the
bytes it must move and its TB/s: sums_and_lists reads K (no such launch over a cache without a mask), split_kv
reads K and V, combine reads the partials.
Then the public call (eager, do_bench) and SDPA flash with enable_gqa on the same tensors, and the call's
output against the table variant's (max |diff|). Inputs: random, K with a per-channel offset, two sets rotated.

--int8-cache: the same over an Int8KVCache filled with K and V (make_attend_plan: the lists launch, the split-KV
launch reading INT8 K and V in its dtype -- or in e4m3 with --v-format e4m3 --, the combine); the call is
Int8KVCache.attend.

GPU:  python benchmarks/split_kv_ab.py --variant num_stages=2 --variant num_warps=8 [--int8-cache [--v-format e4m3]]
      [--out results.json]
"""
import argparse
import datetime
import json

import torch
import triton
import triton.testing

from sparse_sageattn import sparse_sageattn
from sparse_sageattn.core_kernels import kv_cache
from sparse_sageattn.core_kernels.attention import make_plan
from sparse_sageattn.torch import _launch
from sparse_sageattn.torch.kv_cache import Int8KVCache

SHAPES = ((1, 32768, 8), (16, 32768, 8), (1, 131072, 1))
HEADS_Q, HEADS_KV, HEAD_DIM = 32, 8, 128


def parse_variant(text):
    return {k: int(v) for k, v in (item.split("=", 1) for item in text.split(","))} if text else {}


def inputs(seed, n_q, n_k, batch):
    gen = torch.Generator("cuda").manual_seed(seed)
    q = torch.randn(batch, HEADS_Q, n_q, HEAD_DIM, generator=gen, device="cuda").bfloat16()
    k = (torch.randn(batch, HEADS_KV, n_k, HEAD_DIM, generator=gen, device="cuda")
         + 2.0 * torch.randn(HEAD_DIM, generator=gen, device="cuda")).bfloat16()
    v = torch.randn(batch, HEADS_KV, n_k, HEAD_DIM, generator=gen, device="cuda").bfloat16()
    return q, k, v


def launch_bytes(step, plan, arrays):
    k_bytes = arrays["k"].numel() * arrays["k"].element_size()
    v_bytes = sum(arrays[n].numel() * arrays[n].element_size() for n in ("v", "v_exp") if n in arrays)
    if step.name == "sums_and_lists":
        return k_bytes if plan.buffers["k_channel_sums"].shape[0] > 1 else 0  # the K sums (none for a cache)
    if step.name == "split_kv":
        return k_bytes + v_bytes
    return sum(plan.buffers[n].shape[0] * 4 for n in ("partial_out", "partial_lse"))


def filled_cache(k, v, v_format):
    cache = Int8KVCache(k.shape[0], k.shape[1], k.shape[2], k.shape[3], k.dtype, k.device, v_format)
    cache.append(k, v)
    return cache


def run_shape(shape, variants, int8_cache=False, v_format="native"):
    n_q, n_k, batch = shape
    sets = [inputs(seed, n_q, n_k, batch) for seed in (1, 2)]
    q, k, v = sets[0]
    caches = [filled_cache(k_, v_, v_format) for _, k_, v_ in sets] if int8_cache else None
    capability = torch.cuda.get_device_capability()
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    rows, reference = [], None
    for over in variants:
        if int8_cache:
            a = caches[0].arrays
            descs = {n: _launch.describe(a[n]) for n in kv_cache.attend_arrays(v_format)}
            plan = kv_cache.make_attend_plan(_launch.describe(q), descs, None, True, "HND", None, False, capability,
                                             num_sms=sms, split_kv_override=over or None)
            arrays = {"q": q, "k": a["k_int8"], "v": a["v_cache"], "kv_lens": a["lens"], "k_scale": a["k_scale"],
                      "k_mean": a["k_mean"], **({"v_exp": a["v_exp"]} if "v_exp" in a else {})}
        else:
            plan = make_plan(*(_launch.describe(x) for x in (q, k, v)), None, True, "HND", None, True, False,
                             capability, num_sms=sms, split_kv_override=over or None)
            arrays = {"q": q, "k": k, "v": v}
        env = _launch.run(plan, arrays, q.device)
        out = env["out"].float()
        reference = out if reference is None else reference
        launches = {}
        for step in plan.launches:
            ms = triton.testing.do_bench_cudagraph(lambda: _launch.launch(step, env))
            launches[step.name] = dict(ms=ms, tbps=launch_bytes(step, plan, arrays) / ms / 1e9,
                                       **{c: step.constexprs[c] for c in ("SPLITS", "BLOCK_ROWS", "HEADS_PER_PROGRAM")
                                          if c in step.constexprs}, num_warps=step.num_warps,
                                       num_stages=step.num_stages)
        rows.append(dict(variant=over, launches=launches, kernels_ms=sum(x["ms"] for x in launches.values()),
                         max_diff=float((out - reference).abs().max())))
    i = [0]

    def ours():
        i[0] += 1
        if int8_cache:
            return caches[i[0] % 2].attend(sets[i[0] % 2][0], is_causal=True)
        return sparse_sageattn(*sets[i[0] % 2], is_causal=True)

    def flash():
        i[0] += 1
        qq, kk, vv = sets[i[0] % 2]
        with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.FLASH_ATTENTION):
            return torch.nn.functional.scaled_dot_product_attention(qq, kk, vv, enable_gqa=True)

    call_ms, flash_ms = triton.testing.do_bench(ours), triton.testing.do_bench(flash)
    return dict(shape=dict(n_q=n_q, n_k=n_k, batch=batch), variants=rows, call_ms=call_ms, flash_ms=flash_ms,
                kv_bytes=2 * k.numel() * k.element_size())  # bf16 K + V: what flash reads


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", action="append", default=[], help="split_kv_override fields, e.g. num_stages=2")
    parser.add_argument("--int8-cache", action="store_true", help="attention over an Int8KVCache of K and V")
    parser.add_argument("--v-format", choices=kv_cache.V_FORMATS, default="native", help="the cache's V format")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args(argv)
    variants = [{}] + [parse_variant(v) for v in args.variant]
    results = dict(gpu=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__,
                   date=datetime.date.today().isoformat(), variants=variants,
                   int8_cache=args.int8_cache, v_format=args.v_format if args.int8_cache else None,
                   shapes=[run_shape(shape, variants, args.int8_cache, args.v_format) for shape in SHAPES])
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
    print(f"{'Nq':>3} {'Nk':>7} {'B':>2} {'variant':<28} {'sums ms':>8} {'TB/s':>5} {'split ms':>8} {'TB/s':>5} "
          f"{'comb ms':>7} {'splits':>6} {'diff':>8}")
    for shape in results["shapes"]:
        s = shape["shape"]
        for row in shape["variants"]:
            lau = row["launches"]
            comb = lau.get("combine", {}).get("ms", 0.0)
            sums = lau.get("sums_and_lists", dict(ms=0.0, tbps=0.0))  # none over a cache without a mask
            print(f"{s['n_q']:>3} {s['n_k']:>7} {s['batch']:>2} {json.dumps(row['variant']):<28} "
                  f"{sums['ms']:8.4f} {sums['tbps']:5.2f} "
                  f"{lau['split_kv']['ms']:8.4f} {lau['split_kv']['tbps']:5.2f} {comb:7.4f} "
                  f"{lau['split_kv']['SPLITS']:>6} {row['max_diff']:8.1e}")
        print(f"    call {shape['call_ms']:.4f} ms, SDPA flash {shape['flash_ms']:.4f} ms "
              f"({shape['kv_bytes'] / shape['flash_ms'] / 1e9:.2f} TB/s): "
              f"ratio {shape['call_ms'] / shape['flash_ms']:.2f}")


if __name__ == "__main__":
    main()
