"""Child process of test_kv_cache.py: lower the jitted INT8 KV cache ops for CUDA on a machine without a GPU.

Needs a compiling process, like lower_cuda.py (TRITON_INTERPRET unset, JAX_PLATFORMS=cpu,
SPARSE_SAGEATTN_COMPUTE_CAPABILITY and SPARSE_SAGEATTN_SM_COUNT set by the parent). For each case it prints one
JSON line: the case, and either the error or what the lowered module holds -- the StableHLO ops, the Triton custom
calls, the operands they alias to their outputs, the entry's parameters aliased to its outputs (donation) -- and
the launches of the plan, with the cache's array count and whether a launch takes e4m3 values (V_E4M3).
"""
import json
import os
import re
import sys

import jax
import jax.numpy as jnp

from sparse_sageattn.core_kernels import INTERPRETED
from sparse_sageattn.jax import Int8KVCache, cache_append, cache_attend
from sparse_sageattn.jax._launch import compute_capability, describe
from sparse_sageattn.jax.kv_cache import (_APPENDS, _AppendOptions, _attend, _attend_arrays, _AttendOptions,
                                          init_cache)

BATCH, HEADS_KV, HEADS_Q, CAPACITY = 2, 2, 8, 1024
# (op, dtype, head_dim, layout, n (new tokens or queries), options): append's first fill and a later append
# (each dtype, layout and head-dim tile once), attention over the cache for one and for 16 queries, causal or
# with a block mask; each with native and with e4m3 values.
CASES = [
    (op, dtype, head_dim, layout, n, dict(options, v_format=v_format))
    for v_format in ("native", "e4m3")
    for op, dtype, head_dim, layout, n, options in (
        ("append", "bfloat16", 128, "HND", 300, dict(first_fill=True)),
        ("append", "float16", 64, "NHD", 1, dict(first_fill=False)),
        ("attend", "bfloat16", 128, "HND", 1, dict(is_causal=True, return_lse=True)),
        ("attend", "float16", 64, "NHD", 16, dict(is_causal=False, return_lse=False, mask=True)),
    )
]


def spec(layout, heads, n, head_dim, dtype):
    shape = (BATCH, heads, n, head_dim) if layout == "HND" else (BATCH, n, heads, head_dim)
    return jax.ShapeDtypeStruct(shape, jnp.dtype(dtype))


def summary(text):
    main = re.search(r"func\.func public @main\((.*?)\)\s*->", text, re.S).group(1)
    return {"ops": sorted(set(re.findall(r"stablehlo\.[a-z_]+", text))),
            "triton_calls": text.count("@triton_kernel_call("),
            "operand_aliases": len(re.findall(r"#stablehlo\.output_operand_alias<", text)),
            "donated": main.count("tf.aliasing_output")}


def lower(case):
    op, dtype, head_dim, layout, n, options = case
    cache = jax.eval_shape(lambda: init_cache(BATCH, HEADS_KV, CAPACITY, head_dim, dtype, options["v_format"]))
    if op == "append":
        cache = Int8KVCache(**cache.arrays, filled=not options["first_fill"])
        k = v = spec(layout, HEADS_KV, n, head_dim, dtype)

        def step(cache, k, v):
            return cache_append(cache, k, v, layout)

        text = jax.jit(step, donate_argnums=0).trace(cache, k, v).lower(lowering_platforms=("cuda",)).as_text()
        arrays = {"k": k, "v": v, **cache.arrays}
        plan = _APPENDS[cache.v_format].plan_fn({name: describe(x) for name, x in arrays.items()},
                                                _AppendOptions(layout, options["first_fill"]), compute_capability())
    else:
        q = spec(layout, HEADS_Q, n, head_dim, dtype)
        mask = jax.ShapeDtypeStruct((HEADS_Q, 1, CAPACITY // 64), jnp.bool_) if options.get("mask") else None

        def step(cache, q, mask):
            return cache_attend(cache, q, mask, options["is_causal"], layout, return_lse=options["return_lse"])

        text = jax.jit(step).trace(cache, q, mask).lower(lowering_platforms=("cuda",)).as_text()
        arrays = {"q": q, **({} if mask is None else {"mask_id": mask}), **_attend_arrays(cache)}
        plan = _attend.plan_fn({name: describe(x) for name, x in arrays.items()},
                               _AttendOptions(options["is_causal"], layout, None, options["return_lse"]),
                               compute_capability())
    return {**summary(text), "launches": [step.name for step in plan.launches],
            "aliased_writes": sum(o in plan.aliases for step in plan.launches for o in step.outputs),
            "cache_arrays": len(cache.arrays), "v_e4m3": any(step.constexprs.get("V_E4M3") for step in plan.launches)}


def main():
    assert not INTERPRETED, "lowering needs a compiling process: unset TRITON_INTERPRET"
    assert os.environ.get("SPARSE_SAGEATTN_COMPUTE_CAPABILITY"), "set SPARSE_SAGEATTN_COMPUTE_CAPABILITY"
    assert os.environ.get("SPARSE_SAGEATTN_SM_COUNT"), "set SPARSE_SAGEATTN_SM_COUNT"
    print(json.dumps({"total": len(CASES)}), flush=True)
    for case in CASES:
        try:
            result = lower(case)
        except Exception as e:  # report every failing case, not only the first
            result = {"error": f"{type(e).__name__}: {e}"[-2000:]}
        print(json.dumps({"case": case, **result}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
