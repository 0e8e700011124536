"""Predicted block masks: the density predict_mask chooses, the accuracy of attention under it against
dense attention, and the speedup at that density.

Inputs with real attention structure, synthetic (not a model): `local_global` of tests/predict_cases.py, the
inputs the GPU tests calibrate on -- every query shares a positional code with nearby keys (fading over tens to
thousands of positions) and a direction with the first 16 keys (a sink). Random normal inputs have no structure
to predict: any mask loses accuracy in proportion to what it drops.

Per (N, causal, option): predict_mask's density among the blocks causality allows; cosine and relative L1 of
sparse_sageattn under the predicted mask and of dense sparse_sageattn (mask None) against the float64 dense
attention (sampled rows of two heads); median times (triton.testing.do_bench) of predict_mask, attention under
its mask, the two together, dense sparse_sageattn and dense SDPA (cuDNN backend).

    python benchmarks/predict.py [--smoke] [--out DIR]      (GPU; --smoke: tiny sizes, CPU through the interpreter)
"""
import argparse
import datetime
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # predict_cases: the shared inputs

SEQ_LENS = (8192, 16384)
OPTIONS = (dict(cdf_threshold=0.95), dict(cdf_threshold=0.99), dict(topk=0.2))
REF_ROWS = 64


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny sizes (CPU: the Triton interpreter)")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = p.parse_args(argv)

    import torch
    on_gpu = torch.cuda.is_available()
    if not on_gpu:
        if not args.smoke:
            print("no CUDA device: only --smoke runs here", file=sys.stderr)
            return 2
        os.environ["TRITON_INTERPRET"] = "1"  # before the kernels' import
    import triton
    import triton.testing

    import predict_cases
    from run import environment, results_path, write_json
    from sparse_sageattn import masks, sparse_sageattn
    from sparse_sageattn.reference import attention, cosine, rel_l1
    from sparse_sageattn.torch import predict_mask

    device = "cuda" if on_gpu else "cpu"
    batch, heads, head_dim = (1, 2, 64) if args.smoke else (1, 16, 128)
    seq_lens = (512,) if args.smoke else SEQ_LENS

    def timed_ms(fn):
        if not on_gpu:
            fn()
            return float("nan")
        return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")

    meta = environment(torch, triton, device)
    meta.update(date=datetime.date.today().isoformat(), batch=batch, heads=heads, head_dim=head_dim,
                dtype="float16", inputs="tests/predict_cases.py local_global (synthetic local + global structure)",
                ref_rows=REF_ROWS, argv=sys.argv[1:])
    records = []
    header = (f"{'N':>6} {'causal':>6} {'option':>20} {'density':>8} {'cos pred':>9} {'cos dense':>9} "
              f"{'predict':>8} {'attn':>8} {'both':>8} {'dense':>8} {'cuDNN':>8} {'vs dense':>8} {'vs cuDNN':>8}")
    print(f"{meta['gpu']} | torch {meta['torch']} | triton {meta['triton']}\n{header}", flush=True)
    for n in seq_lens:
        q, k, v = predict_cases.local_global(n, batch, heads, n, head_dim)
        tq, tk, tv = (torch.from_numpy(x).to(device) for x in (q, k, v))
        ref_heads = sorted({0, heads // 2})
        rows = np.unique(np.r_[0, n - 1, np.random.default_rng(n).integers(0, n, REF_ROWS)])
        for causal in (False, True):
            ref, _ = attention(q[:, ref_heads], k[:, ref_heads], v[:, ref_heads], is_causal=causal, rows=rows)

            def accuracy(out):
                got = out[:, ref_heads][:, :, rows].double().cpu().numpy()
                return cosine(got, ref), rel_l1(got, ref)

            with torch.no_grad():
                dense_out = sparse_sageattn(tq, tk, tv, is_causal=causal)
                dense_cos, dense_l1 = accuracy(dense_out)
                t_dense = timed_ms(lambda: sparse_sageattn(tq, tk, tv, is_causal=causal))
                t_cudnn = float("nan")
                if on_gpu:
                    from torch.nn.attention import SDPBackend, sdpa_kernel
                    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                        t_cudnn = timed_ms(lambda: torch.nn.functional.scaled_dot_product_attention(
                            tq, tk, tv, is_causal=causal))
                allowed = masks.causal_mask(n, n) if causal else np.ones((-(-n // 128), -(-n // 64)), bool)
                for option in OPTIONS:
                    mask = predict_mask(tq, tk, is_causal=causal, **option)
                    density = float(mask.bool().cpu().numpy().sum() / (allowed.sum() * batch * heads))
                    cos, l1 = accuracy(sparse_sageattn(tq, tk, tv, mask, is_causal=causal))
                    t_predict = timed_ms(lambda: predict_mask(tq, tk, is_causal=causal, **option))
                    t_attn = timed_ms(lambda: sparse_sageattn(tq, tk, tv, mask, is_causal=causal))
                    t_both = timed_ms(lambda: sparse_sageattn(
                        tq, tk, tv, predict_mask(tq, tk, is_causal=causal, **option), is_causal=causal))
                    record = dict(n=n, causal=causal, option=option, density=density, cosine=cos, rel_l1=l1,
                                  dense_cosine=dense_cos, dense_rel_l1=dense_l1, predict_ms=t_predict,
                                  attention_ms=t_attn, predict_and_attention_ms=t_both, dense_ms=t_dense,
                                  sdpa_cudnn_ms=t_cudnn, speedup_vs_dense=t_dense / t_both,
                                  speedup_vs_cudnn=t_cudnn / t_both)
                    records.append(record)
                    label = ",".join(f"{key}={value}" for key, value in option.items())
                    print(f"{n:>6} {str(causal):>6} {label:>20} {density:>8.3f} {cos:>9.5f} {dense_cos:>9.5f} "
                          f"{t_predict:>8.3f} {t_attn:>8.3f} {t_both:>8.3f} {t_dense:>8.3f} {t_cudnn:>8.3f} "
                          f"{record['speedup_vs_dense']:>7.2f}x {record['speedup_vs_cudnn']:>7.2f}x", flush=True)
    os.makedirs(args.out, exist_ok=True)
    path = results_path(args.out, meta["gpu"], "predict", meta["date"])
    write_json(path, dict(schema=1, meta=meta, records=records))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
