"""Child process of test_lowering.py: lower the jitted JAX function for CUDA on a machine without a GPU.

Needs a compiling (not interpreting) process: TRITON_INTERPRET unset, JAX_PLATFORMS=cpu and
SPARSE_SAGEATTN_COMPUTE_CAPABILITY set by the parent. Lowering runs the full Triton compile of every kernel the
plan launches. For each case it prints one JSON line: the case, and either the error or what the lowered module
holds (the StableHLO ops used and the number of Triton custom calls, which must equal the plan's launches: the
CUDA path does no JAX arithmetic on the data).
"""
import json
import os
import re
import sys

import jax
import jax.numpy as jnp

from sparse_sageattn.core_kernels import INTERPRETED, ArrayDesc, contiguous_strides, predict
from sparse_sageattn.jax import _gluon, predict_mask, sparse_sageattn
from sparse_sageattn.jax._launch import compute_capability
from sparse_sageattn.jax.attention import _Options, _attention

# (dtype, head_dim, layout, heads_q, heads_kv, n_q, n_k, mask dtype or None, is_causal, return_lse, smooth_k,
# pv_dtype): every head-dim tile in both dtypes, and each mode flag on and off in each dtype. The FP8 P.V cases
# lower at capability 90 and must be refused at 80.
CASES = [
    ("float16", 64, "HND", 4, 4, 300, 200, None, False, False, True, "fp16"),
    ("float16", 128, "HND", 4, 2, 300, 500, "bool", True, True, True, "fp16"),
    ("float16", 96, "NHD", 4, 1, 256, 256, "int32", False, True, False, "fp16"),
    ("float16", 40, "NHD", 4, 2, 200, 300, None, True, False, True, "fp16"),
    ("float16", 256, "HND", 2, 2, 130, 70, "bool", True, True, True, "fp16"),
    ("float16", 64, "HND", 2, 1, 1, 77, "int8", False, True, True, "fp16"),  # n_q == 1: jax-triton: constexpr
    ("bfloat16", 64, "HND", 4, 2, 300, 200, "bool", True, True, True, "fp16"),
    ("bfloat16", 128, "NHD", 4, 4, 256, 300, None, False, False, True, "fp16"),
    ("bfloat16", 96, "HND", 4, 4, 200, 200, None, True, False, False, "fp16"),
    ("bfloat16", 40, "HND", 4, 1, 129, 65, "int32", False, True, True, "fp16"),
    ("float16", 128, "HND", 4, 2, 300, 500, "bool", True, True, True, "fp8"),
    ("bfloat16", 64, "NHD", 4, 4, 256, 300, None, False, False, True, "fp8"),
    ("float16", 40, "HND", 4, 1, 129, 65, "int32", False, True, False, "fp8"),
]
# The split-KV kernel (at most 64 queries a head) and kv_lens, on both attention kernels: the cases above and
# a trailing kv_lens flag.
KV_LENS_CASES = [
    ("bfloat16", 128, "HND", 8, 2, 1, 4096, None, True, True, True, "fp16", True),
    ("float16", 64, "NHD", 4, 1, 16, 1000, "bool", True, False, True, "fp16", False),
    ("float16", 128, "HND", 4, 4, 40, 300, "int8", False, True, False, "fp16", True),
    ("bfloat16", 128, "HND", 4, 2, 300, 700, None, True, True, True, "fp16", True),
    ("float16", 96, "NHD", 4, 2, 256, 300, "bool", True, True, True, "fp8", True),
]
# predict_mask: (dtype, head_dim, layout, heads_q, heads_kv, n_q, n_k, options) -- each selection mode, causal or
# not, ragged lengths, and row widths from the smallest key-block tile (16) to the largest (8192 key blocks).
PREDICT_CASES = [
    ("float16", 64, "HND", 4, 2, 300, 700, dict(cdf_threshold=0.9, is_causal=True)),
    ("bfloat16", 128, "NHD", 4, 4, 1, 77, dict(topk=0.25)),
    ("float16", 40, "HND", 2, 1, 4096, 65536, dict(topk=0.1, is_causal=True)),
    ("bfloat16", 256, "HND", 2, 2, 130, 8192 * 64, dict(cdf_threshold=0.5)),
]
ALLOWED_OPS = {"stablehlo.case", "stablehlo.constant", "stablehlo.custom_call", "stablehlo.return"}


def lower(case):
    (dtype, head_dim, layout, heads_q, heads_kv, n_q, n_k, mask_dtype, is_causal, return_lse, smooth_k,
     pv_dtype) = case[:12]
    has_kv_lens = len(case) > 12 and case[12]

    def spec(heads, n):
        shape = (2, heads, n, head_dim) if layout == "HND" else (2, n, heads, head_dim)
        return jax.ShapeDtypeStruct(shape, jnp.dtype(dtype))

    arrays = {"q": spec(heads_q, n_q), "k": spec(heads_kv, n_k), "v": spec(heads_kv, n_k)}
    if mask_dtype is not None:
        arrays["mask_id"] = jax.ShapeDtypeStruct((heads_q, -(-n_q // 128), -(-n_k // 64)), jnp.dtype(mask_dtype))
    if has_kv_lens:
        arrays["kv_lens"] = jax.ShapeDtypeStruct((2,), jnp.int32)

    def f(arrays):
        return sparse_sageattn(arrays["q"], arrays["k"], arrays["v"], arrays.get("mask_id"), is_causal=is_causal,
                               tensor_layout=layout, kv_lens=arrays.get("kv_lens"), smooth_k=smooth_k,
                               return_lse=return_lse, pv_dtype=pv_dtype)

    _gluon.COMPILED.clear()
    text = jax.jit(f).trace(arrays).lower(lowering_platforms=("cuda",)).as_text()
    options = _Options(is_causal, layout, None, smooth_k, return_lse, pv_dtype)
    plan = _attention.plan(tuple(arrays), tuple(arrays.values()), options, compute_capability())
    (attention,) = [step for step in plan.launches if step.name in ("attention", "split_kv")]
    # what the Gluon adapter launched: the compiled warp count, the register cap, the PTX's instructions
    gluon = [dict(warps=warps, maxnreg=maxnreg, reqntid=re.findall(r"\.reqntid (\d+)", ptx),
                  setmaxnreg=sorted(set(re.findall(r"setmaxnreg\.(?:inc|dec)\.sync\.aligned\.u32\s+(\d+)", ptx))),
                  wgmma=sorted(set(re.findall(r"wgmma\.mma_async\.sync\.aligned\.\w+\.(\w+\.\w+\.\w+)", ptx))))
             for warps, maxnreg, ptx in _gluon.COMPILED.values()]
    # the Gluon kernel's descriptor scratch: the last result of its call, after the kernel's own outputs
    scratch = plan.buffers[attention.global_scratch].shape[0] if attention.global_scratch else None
    calls = [line for line in text.splitlines() if "@triton_kernel_call" in line]
    last_results = [re.findall(r"tensor<([0-9x]+)x(\w+)>", line.rsplit("->", 1)[-1])[-1] for line in calls]
    return {"ops": sorted(set(re.findall(r"stablehlo\.[a-z_]+", text))),
            "scratch": scratch, "last_results": last_results,
            "triton_calls": text.count("@triton_kernel_call("), "launches": [step.name for step in plan.launches],
            "attention_kernel": attention.kernel.__name__, "attention_maxnreg": attention.maxnreg, "gluon": gluon}


def lower_predict(case):
    dtype, head_dim, layout, heads_q, heads_kv, n_q, n_k, options = case
    shapes = [(1, heads, n, head_dim) if layout == "HND" else (1, n, heads, head_dim)
              for heads, n in ((heads_q, n_q), (heads_kv, n_k))]
    args = [jax.ShapeDtypeStruct(shape, jnp.dtype(dtype)) for shape in shapes]

    def f(q, k):
        return predict_mask(q, k, tensor_layout=layout, **options)

    text = jax.jit(f).trace(*args).lower(lowering_platforms=("cuda",)).as_text()
    plan = predict.make_plan(*(ArrayDesc(s, contiguous_strides(s), dtype) for s in shapes), tensor_layout=layout,
                             **options)
    return {"ops": sorted(set(re.findall(r"stablehlo\.[a-z_]+", text))),
            "triton_calls": text.count("@triton_kernel_call("), "launches": [step.name for step in plan.launches]}


def main():
    assert not INTERPRETED, "lowering needs a compiling process: unset TRITON_INTERPRET"
    assert os.environ.get("SPARSE_SAGEATTN_COMPUTE_CAPABILITY"), "set SPARSE_SAGEATTN_COMPUTE_CAPABILITY"
    assert os.environ.get("SPARSE_SAGEATTN_SM_COUNT"), "set SPARSE_SAGEATTN_SM_COUNT"
    print(json.dumps({"total": len(CASES) + len(KV_LENS_CASES) + len(PREDICT_CASES)}), flush=True)
    for lower_one, cases in ((lower, CASES + KV_LENS_CASES), (lower_predict, PREDICT_CASES)):
        for case in cases:
            try:
                result = lower_one(case)
            except Exception as e:  # report every failing case, not only the first
                result = {"error": f"{type(e).__name__}: {e}"[-2000:]}
            print(json.dumps({"case": case, "kind": lower_one.__name__, **result}), flush=True)
    assert "TRITON_CACHE_DIR" not in os.environ or os.environ["TRITON_CACHE_DIR"], "jax_triton's cache dir leaked"
    return 0


if __name__ == "__main__":
    sys.exit(main())
