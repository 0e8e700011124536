"""The sharded paths on several GPUs of one host: bitwise equality with one GPU, no collective, timing.

On a machine of 2+ GPUs (device kind nvidia-h100-x2 or larger), from the repo root:

    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \
      && PYTHONPATH=/tmp/site python3 benchmarks/multi_gpu.py          # carry .whl; results under $OUT

JAX: `sharded_sparse_sageattn` with q, k, v and the mask sharded over batch, then over heads, on a mesh of all
GPUs; the gathered result must equal the one-GPU result bitwise, the compiled HLO must hold no collective, and
the sharded call's time must be within 10% of one GPU running one local shard.
PyTorch: one process per GPU under torch.distributed (NCCL); each rank runs `sparse_sageattn` on its local heads
(a strided view, no copy), the ranks all-gather, and rank 0 compares with its own full one-GPU result bitwise.
NVLink multicast stays off (NCCL_NVLS_ENABLE=0 etc.): it can take a shared host's GPUs down.
"""
import datetime
import json
import os
import statistics
import sys
import time

for _var, _value in (("NCCL_NVLS_ENABLE", "0"), ("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1"),
                     ("NVSHMEM_DISABLE_NVLS", "1"), ("XLA_PYTHON_CLIENT_PREALLOCATE", "false")):
    os.environ[_var] = _value

import numpy as np  # noqa: E402

BATCH, HEADS_Q, HEADS_KV, N, HEAD_DIM = 8, 16, 8, 8192, 128  # NHD, GQA 2; B and Hkv divisible by 2, 4, 8
COLLECTIVES = ("all-gather", "all-reduce", "all-to-all", "reduce-scatter", "collective-permute")


def make_inputs(seed=0):
    """fp16 numpy q, k, v (NHD) and a (B, Hq, Qb, Kb) bool block mask at density 0.5."""
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((BATCH, N, HEADS_Q, HEAD_DIM), dtype=np.float32).astype(np.float16)
    k = rng.standard_normal((BATCH, N, HEADS_KV, HEAD_DIM), dtype=np.float32).astype(np.float16)
    v = rng.standard_normal((BATCH, N, HEADS_KV, HEAD_DIM), dtype=np.float32).astype(np.float16)
    mask = rng.random((BATCH, HEADS_Q, N // 128, N // 64)) < 0.5
    return q, k, v, mask


def median_ms(fn, reps=20):
    fn()  # compile / warm up
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def jax_part():
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec as P

    from sparse_sageattn.jax import sharded_sparse_sageattn, sparse_sageattn

    devices = jax.devices()
    n_dev = len(devices)
    q, k, v, mask = make_inputs()
    full = [jax.device_put(jnp.asarray(x), devices[0]) for x in (q, k, v, mask)]
    single = jax.jit(lambda q, k, v, m: sparse_sageattn(q, k, v, m, True, "NHD", return_lse=True))
    ref_out, ref_lse = (np.asarray(x) for x in single(*full))
    rows = []
    for split, shape, kwargs in (("batch", (n_dev, 1), dict(batch_axis="data")),
                                 ("heads", (1, n_dev), dict(head_axis="model"))):
        mesh = jax.make_mesh(shape, ("data", "model"), devices=devices)
        sharded = jax.jit(lambda q, k, v, m, mesh=mesh, kwargs=kwargs: sharded_sparse_sageattn(
            mesh, q, k, v, m, True, "NHD", return_lse=True, **kwargs))
        # Inputs placed as the wrapper shards them, so the timing holds no transfer.
        spec = [None] * 4
        spec[0], spec[2] = kwargs.get("batch_axis"), kwargs.get("head_axis")
        specs = [P(*spec)] * 3 + [P(spec[0], spec[2], None, None)]
        arrays = [jax.device_put(jnp.asarray(x), NamedSharding(mesh, s)) for x, s in zip((q, k, v, mask), specs)]
        hlo = sharded.lower(*arrays).compile().as_text()
        found = [c for c in COLLECTIVES if c in hlo]
        out, lse = sharded(*arrays)
        bitwise = (np.array_equal(np.asarray(out).view(np.int16), ref_out.view(np.int16))
                   and np.array_equal(np.asarray(lse).view(np.int32), ref_lse.view(np.int32)))
        t_sharded = median_ms(lambda: jax.block_until_ready(sharded(*arrays)))
        # One GPU doing what each device does in the sharded call: one local shard.
        b, h = BATCH // shape[0], HEADS_Q // shape[1]
        local = [jax.device_put(jnp.asarray(x), devices[0]) for x in (
            q[:b, :, :h], k[:b, :, :HEADS_KV // shape[1]], v[:b, :, :HEADS_KV // shape[1]], mask[:b, :h])]
        t_local = median_ms(lambda: jax.block_until_ready(single(*local)))
        rows.append(dict(framework="jax", split=split, devices=n_dev, bitwise_equal=bitwise, collectives=found,
                         sharded_ms=t_sharded, one_gpu_local_shard_ms=t_local,
                         within_10_percent=t_sharded <= 1.10 * t_local))
    return rows


def _torch_rank(rank, world, result_path):
    import torch
    import torch.distributed as dist

    from sparse_sageattn import sparse_sageattn

    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", rank=rank, world_size=world)
    q, k, v, mask = (torch.from_numpy(x).cuda() for x in make_inputs())
    hq, hkv = HEADS_Q // world, HEADS_KV // world  # GQA groups are contiguous: kv heads split alike
    local = [q[:, :, rank * hq:(rank + 1) * hq], k[:, :, rank * hkv:(rank + 1) * hkv],
             v[:, :, rank * hkv:(rank + 1) * hkv], mask[:, rank * hq:(rank + 1) * hq]]
    out = sparse_sageattn(*local, True, "NHD")
    gathered = [torch.empty_like(out) for _ in range(world)]
    dist.all_gather(gathered, out.contiguous())
    if rank == 0:
        single = sparse_sageattn(q, k, v, mask, True, "NHD")
        bitwise = torch.equal(torch.cat(gathered, dim=2).view(torch.int16), single.view(torch.int16))
        with open(result_path, "w") as f:
            json.dump(dict(framework="torch", split="heads", devices=world, bitwise_equal=bool(bitwise)), f)
    dist.barrier()
    dist.destroy_process_group()


def torch_part(world):
    import torch.multiprocessing as mp

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29533")
    result_path = "/tmp/sparse_sageattn_torch_multi_gpu.json"
    mp.spawn(_torch_rank, args=(world, result_path), nprocs=world, join=True)
    with open(result_path) as f:
        return [json.load(f)]


def main():
    import jax
    import torch
    import triton

    world = torch.cuda.device_count()
    if world < 2:
        sys.exit(f"needs 2 or more GPUs, found {world}")
    rows = jax_part() + torch_part(world)
    result = dict(gpu=torch.cuda.get_device_name(), devices=world, date=datetime.date.today().isoformat(),
                  torch=torch.__version__, triton=triton.__version__, jax=jax.__version__,
                  shape=dict(batch=BATCH, heads_q=HEADS_Q, heads_kv=HEADS_KV, n=N, head_dim=HEAD_DIM,
                             layout="NHD", dtype="float16", causal=True, mask_density=0.5),
                  rows=rows)
    out_dir = os.environ.get("OUT") or os.path.join(os.path.dirname(__file__), "results")
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"multi_gpu-{result['gpu'].replace(' ', '_')}x{world}-{result['date']}.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    print(f"{'framework':<8}{'split':<7}{'bitwise':<9}{'collectives':<14}{'sharded ms':>11}{'local ms':>10}")
    for r in rows:
        print(f"{r['framework']:<8}{r['split']:<7}{str(r['bitwise_equal']):<9}{str(r.get('collectives', '-')):<14}"
              f"{r.get('sharded_ms', float('nan')):>11.3f}{r.get('one_gpu_local_shard_ms', float('nan')):>10.3f}")
    ok = all(r["bitwise_equal"] and not r.get("collectives") and r.get("within_10_percent", True) for r in rows)
    print("PASS" if ok else "FAIL")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
