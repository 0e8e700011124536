"""Child process of test_sharding.py: 8 fake CPU devices (XLA_FLAGS must be set before JAX starts).

Runs sharded_sparse_sageattn on a (2, 4) mesh -- batch over "data", heads over "model" -- and prints one JSON
line per case: how far out and lse are from the unsharded call, the output sharding, and the collectives
found in the compiled HLO. A control (a sum over the sharded batch) must show an all-reduce, or the search is blind.
"""
import json

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from sparse_sageattn.jax import sharded_sparse_sageattn, sparse_sageattn

COLLECTIVES = ("all-gather", "all-reduce", "all-to-all", "collective-permute", "reduce-scatter")


def difference(a, b):
    """max |a - b| / max |b| over finite entries (0: equal); the non-finite entries must match exactly."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape and np.array_equal(a[~np.isfinite(b)], b[~np.isfinite(b)], equal_nan=True)
    finite = np.isfinite(b)
    return float(np.abs(a[finite] - b[finite]).max(initial=0.0) / max(np.abs(b[finite]).max(initial=0.0), 1e-30))


def collectives(jitted, *args):
    text = jitted.lower(*args).compile().as_text()
    return [c for c in COLLECTIVES if c in text]


def main():
    assert len(jax.devices()) == 8, jax.devices()
    rng = np.random.default_rng(0)
    for axis_type in (AxisType.Explicit, AxisType.Auto):
        mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=(axis_type, axis_type))
        for layout, heads_kv, mask_shape, is_causal, lens in (("HND", 4, (8, 3, 4), True, None),
                                                              ("NHD", 8, (2, 1, 3, 4), False, None),
                                                              ("HND", 4, None, True, (200, 123))):
            def shape(heads, n):
                return (2, heads, n, 64) if layout == "HND" else (2, n, heads, 64)

            q_np = rng.standard_normal(shape(8, 300)).astype(np.float16)
            k_np, v_np = (rng.standard_normal(shape(heads_kv, 200)).astype(np.float16) for _ in range(2))
            mask = None if mask_shape is None else jnp.asarray(rng.random(mask_shape) < 0.6)
            spec = P("data", "model") if layout == "HND" else P("data", None, "model")
            q, k, v = (jax.device_put(x, NamedSharding(mesh, spec)) for x in (q_np, k_np, v_np))

            kv_lens = None if lens is None else jnp.asarray(lens, jnp.int32)

            def sharded(q, k, v, mask):
                return sharded_sparse_sageattn(mesh, q, k, v, mask, is_causal, layout, batch_axis="data",
                                               head_axis="model", kv_lens=kv_lens, return_lse=True)

            jitted = jax.jit(sharded)
            out, lse = jitted(q, k, v, mask)
            eager_out, _ = sharded(q, k, v, mask)
            ref_out, ref_lse = sparse_sageattn(*(jnp.asarray(x) for x in (q_np, k_np, v_np)), mask, is_causal,
                                               layout, kv_lens=kv_lens, return_lse=True)
            print(json.dumps({
                "case": [str(axis_type), layout, heads_kv, mask_shape, is_causal, lens],
                "out_diff": difference(out, ref_out), "lse_diff": difference(lse, ref_lse),
                "eager_diff": difference(eager_out, ref_out),
                "out_spec": str(out.sharding.spec), "devices": len(out.sharding.device_set),
                "collectives": collectives(jitted, q, k, v, mask),
            }), flush=True)
    control = jax.device_put(jnp.ones((8, 4)), NamedSharding(jax.make_mesh((8,), ("data",)), P("data")))
    print(json.dumps({"control_collectives": collectives(jax.jit(jnp.sum), control)}), flush=True)


if __name__ == "__main__":
    main()
