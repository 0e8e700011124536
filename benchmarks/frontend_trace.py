"""Where the JAX call's time goes against the torch call's: a CUPTI trace (torch.profiler records every kernel of
the process, JAX's included) of CALLS back-to-back torch calls, then CALLS back-to-back jitted JAX calls, on the
same inputs. Per frontend (one CUDA stream each): every kernel's median duration, GPU busy time per call and the
idle time between its kernels. GPU only:

    python benchmarks/frontend_trace.py --configs 8192x128,8192x64,16384x128 --json FILE

B=2, H=32, fp16, dense, not causal; inputs are random normal.
"""
import argparse
import datetime
import json
import os
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import torch
import triton
from torch.profiler import ProfilerActivity, profile

import sparse_sageattn
import sparse_sageattn.jax as sparse_sageattn_jax

CALLS = 8
WARMUP_CALLS = 3


def trace_config(n, head_dim, batch=2, heads=32):
    rng = np.random.default_rng(n + head_dim)
    arrays = [rng.standard_normal((batch, heads, n, head_dim), dtype=np.float32).astype(np.float16)
              for _ in range(3)]
    torch_qkv = [torch.from_numpy(a).cuda() for a in arrays]
    jax_qkv = [jnp.asarray(a) for a in arrays]
    jax_fn = jax.jit(lambda q, k, v: sparse_sageattn_jax.sparse_sageattn(q, k, v))
    for _ in range(WARMUP_CALLS):
        sparse_sageattn.sparse_sageattn(*torch_qkv)
        jax_fn(*jax_qkv).block_until_ready()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(CALLS):
            sparse_sageattn.sparse_sageattn(*torch_qkv)
        torch.cuda.synchronize()  # the torch calls' kernels all end before the first JAX call starts
        outs = [jax_fn(*jax_qkv) for _ in range(CALLS)]
        outs[-1].block_until_ready()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as f:
            events = [e for e in json.load(f)["traceEvents"] if e.get("cat") == "kernel"]
    events.sort(key=lambda e: e["ts"])
    first_stream = events[0]["args"]["stream"]  # torch's calls ran first
    frontends = {}
    for name, on_stream in (("torch", lambda s: s == first_stream), ("jax", lambda s: s != first_stream)):
        kernels = [e for e in events if on_stream(e["args"]["stream"])]
        busy_us = sum(e["dur"] for e in kernels)
        span_us = kernels[-1]["ts"] + kernels[-1]["dur"] - kernels[0]["ts"]
        durations = {}
        for e in kernels:
            durations.setdefault(e["name"], []).append(e["dur"])
        frontends[name] = dict(kernels_per_call=len(kernels) / CALLS, busy_ms_per_call=busy_us / CALLS / 1e3,
                               idle_ms_per_call=(span_us - busy_us) / CALLS / 1e3,
                               kernel_median_ms={k: float(np.median(d)) / 1e3 for k, d in durations.items()})
    return dict(n=n, head_dim=head_dim, batch=batch, heads=heads, calls=CALLS, frontends=frontends)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", default="8192x128,8192x64,16384x128", help="NxD, comma separated")
    p.add_argument("--json")
    args = p.parse_args(argv)
    records = []
    for item in args.configs.split(","):
        n, head_dim = (int(x) for x in item.split("x"))
        r = trace_config(n, head_dim)
        records.append(r)
        t, j = r["frontends"]["torch"], r["frontends"]["jax"]
        print(f"N={n} hd={head_dim}: GPU busy per call torch {t['busy_ms_per_call']:.3f} ms, JAX "
              f"{j['busy_ms_per_call']:.3f} ms ({j['busy_ms_per_call'] / t['busy_ms_per_call']:.3f}x); idle between "
              f"kernels torch {t['idle_ms_per_call']:.3f} ms, JAX {j['idle_ms_per_call']:.3f} ms")
        for kernel, ms in t["kernel_median_ms"].items():
            print(f"    {kernel:<28} torch {ms:8.4f} ms   JAX {j['kernel_median_ms'].get(kernel, float('nan')):8.4f} ms")
    if args.json:
        meta = dict(gpu=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__,
                    jax=jax.__version__, date=datetime.date.today().isoformat())
        with open(args.json, "w") as f:
            json.dump(dict(meta=meta, records=records), f, indent=1)


if __name__ == "__main__":
    main()
