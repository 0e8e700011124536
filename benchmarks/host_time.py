"""Host time per call at small shapes, where the GPU work is negligible: what one attention layer costs the CPU.

Per shape (B, H, N, D), fp16, non-causal, no mask, q = k = v shapes, random inputs:
  sparse_sageattn        the eager torch call (the executor's cached direct launches)
  sparse_sageattn_graph  the same call captured in a CUDA graph, replayed
  sdpa                   torch.nn.functional.scaled_dot_product_attention, eager (the backend torch picks)
  sparse_sageattn_jax    the jitted JAX call
Two numbers each, medians over ROUNDS rounds:
  host_us  the loop of CALLS calls without a wait, divided by CALLS: the host's cost per call (CALLS is small
           enough that the launch queue never fills, so the GPU does not throttle the loop);
  wall_us  CALLS calls and a device wait, divided by CALLS: host and GPU together.
The JAX call's host_us is its dispatch (no wait); its wall_us ends in block_until_ready.

GPU:  python benchmarks/host_time.py [--out benchmarks/results]   (writes host_time-<gpu>-<date>.json)
"""
import argparse
import datetime
import json
import os
import platform
import statistics
import time

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # torch and JAX share the GPU

import torch  # noqa: E402
import triton  # noqa: E402

from sparse_sageattn import sparse_sageattn  # noqa: E402

SHAPES = ((1, 8, 512, 128), (4, 16, 1024, 64))
CALLS = 100  # x 3 launches: well under the GPU's launch queue
ROUNDS = 7
WARMUP = 20


def per_call_us(call, wait, calls=CALLS, rounds=ROUNDS):
    host, wall = [], []
    for _ in range(rounds):
        wait()
        start = time.perf_counter()
        for _ in range(calls):
            call()
        launched = time.perf_counter()
        wait()
        done = time.perf_counter()
        host.append((launched - start) / calls * 1e6)
        wall.append((done - start) / calls * 1e6)
    return dict(host_us=statistics.median(host), wall_us=statistics.median(wall))


def torch_rows(shape):
    q, k, v = (torch.randn(shape, device="cuda", dtype=torch.float16) for _ in range(3))
    rows = {}
    with torch.inference_mode():
        for _ in range(WARMUP):
            sparse_sageattn(q, k, v)
        rows["sparse_sageattn"] = per_call_us(lambda: sparse_sageattn(q, k, v), torch.cuda.synchronize)
        graph = torch.cuda.CUDAGraph()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            sparse_sageattn(q, k, v)
        torch.cuda.current_stream().wait_stream(stream)
        with torch.cuda.graph(graph):
            sparse_sageattn(q, k, v)
        for _ in range(WARMUP):
            graph.replay()
        rows["sparse_sageattn_graph"] = per_call_us(graph.replay, torch.cuda.synchronize)
        sdpa = torch.nn.functional.scaled_dot_product_attention
        for _ in range(WARMUP):
            sdpa(q, k, v)
        rows["sdpa"] = per_call_us(lambda: sdpa(q, k, v), torch.cuda.synchronize)
    return rows, (q, k, v)


def jax_row(q, k, v):
    import jax
    import numpy as np

    from sparse_sageattn.jax import sparse_sageattn as jax_attention

    arrays = [jax.numpy.asarray(x.float().cpu().numpy()).astype(jax.numpy.float16) for x in (q, k, v)]
    fn = jax.jit(jax_attention)
    last = []

    def call():
        last[:] = [fn(*arrays)]

    def wait():
        if last:
            last[0].block_until_ready()

    for _ in range(WARMUP):
        call()
    wait()
    row = per_call_us(call, wait)
    row["out_finite"] = bool(np.isfinite(np.asarray(last[0].astype(jax.numpy.float32))).all())
    return row


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    p.add_argument("--no-jax", action="store_true")
    args = p.parse_args(argv)
    gpu = torch.cuda.get_device_name()
    records = []
    for shape in SHAPES:
        rows, qkv = torch_rows(shape)
        if not args.no_jax:
            rows["sparse_sageattn_jax"] = jax_row(*qkv)
        records.append(dict(shape=list(shape), dtype="float16", **rows))
    meta = dict(gpu=gpu, date=datetime.date.today().isoformat(), torch=torch.__version__, triton=triton.__version__,
                python=platform.python_version(), calls=CALLS, rounds=ROUNDS, cpu=platform.processor() or None)
    if not args.no_jax:
        import jax

        meta["jax"] = jax.__version__
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"host_time-{gpu.replace(' ', '_')}-{meta['date']}.json")
    with open(path, "w") as f:
        json.dump(dict(meta=meta, records=records), f, indent=1)
    print(f"{gpu}  torch {torch.__version__}  triton {triton.__version__}  -> {path}")
    print(f"{'shape':<20} {'system':<24} {'host us':>9} {'wall us':>9}")
    for r in records:
        for system in ("sparse_sageattn", "sparse_sageattn_graph", "sdpa", "sparse_sageattn_jax"):
            if system in r:
                print(f"{str(tuple(r['shape'])):<20} {system:<24} {r[system]['host_us']:9.1f} "
                      f"{r[system]['wall_us']:9.1f}")
        ratio = r["sparse_sageattn"]["host_us"] / r["sdpa"]["host_us"]
        print(f"{'':<20} {'eager host / sdpa host':<24} {ratio:9.2f}")


if __name__ == "__main__":
    main()
