"""Child process of test_attention_sm90_compile.py: compile the Gluon attention kernel (attention/kernel_sm90.py)
for sm_90 on a machine without a GPU, one variant per case, through the real plan.

Needs a compiling process (TRITON_INTERPRET unset). Per case: make_plan(..., capability=(9, 0),
attention_override={"kernel": "gluon_sm90", ...}) from ArrayDescs -- the refused variants instead re-bound to
the Gluon kernel with dataclasses.replace (Launch re-checks every parameter name and order), so that the kernel's
own static_asserts are what refuse them --, then triton.compile(GluonASTSource) with the launch's argument types and
constexprs (ptxas runs too: Triton ships it). Prints one JSON line per case: what the PTX holds (wgmma kinds,
setmaxnreg values, mbarrier / TMA / descriptor counts, global scratch), registers, spills, shared memory, warps; or
the error. Also one
line per refused variant (PV_FP8, padded head dim): the error it must raise.
"""
import dataclasses
import json
import os
import re
import sys
import time

from triton import compile as triton_compile
from triton.backends.compiler import GPUTarget
from triton.experimental.gluon._runtime import GluonASTSource

from sparse_sageattn.core_kernels import INTERPRETED, ArrayDesc, contiguous_strides
from sparse_sageattn.core_kernels.attention import make_plan
from sparse_sageattn.core_kernels.attention.kernel_sm90 import attention_sm90_kernel

POINTER_TYPES = {"float16": "*fp16", "bfloat16": "*bf16", "float32": "*fp32", "int8": "*i8", "uint8": "*u8",
                 "int32": "*i32", "bool": "*i1"}
# (v dtype, head_dim, is_causal, return_lse, smooth_k, mask, key_blocks_per_step, layout[, odd v row stride[,
# kv_lens]]): both
# dtypes x both head dims x causal on/off x lse (shifted and not) on/off, one and two key blocks a step, a mask,
# GQA, NHD, and V rows with an odd stride (STRIDE_ALIGN 1: fp16 V then takes the loader's register path).
CASES = [
    ("float16", 128, False, False, True, False, 2, "HND"),
    ("float16", 128, True, True, True, False, 2, "HND"),
    ("float16", 64, False, True, False, True, 2, "NHD"),
    ("float16", 64, True, False, True, False, 1, "HND"),
    ("bfloat16", 128, False, True, True, True, 2, "NHD"),
    ("bfloat16", 128, True, False, True, False, 1, "HND"),
    ("bfloat16", 64, True, True, False, False, 2, "HND"),
    ("bfloat16", 64, False, False, True, False, 1, "NHD"),
    ("float16", 128, True, True, True, True, 1, "HND"),
    ("float16", 64, False, True, True, False, 2, "HND", True),
    ("float16", 128, True, True, True, False, 2, "HND", False, True),  # kv_lens: V cut at a batch row's keys
    ("bfloat16", 64, False, False, True, True, 1, "NHD", False, True),
]
# Must be refused at compile time: (v dtype, head_dim, pv_dtype, expected text of the static_assert)
REFUSED = [
    ("float16", 128, "fp8", "PV_FP8 is not supported"),
    ("float16", 96, "fp16", "HEAD_DIM must equal HEAD_DIM_PAD"),
]


def attention_step(dtype, head_dim, is_causal, return_lse, smooth_k, with_mask, kbps, layout, odd_v_stride=False,
                   with_kv_lens=False, pv_dtype="fp16", heads_q=4, heads_kv=2, n_q=300, n_k=500, batch=2):
    def desc(heads, n, row_pad=0):
        shape = (batch, heads, n, head_dim) if layout == "HND" else (batch, n, heads, head_dim)
        padded = shape[:3] + (head_dim + row_pad,)  # a view of the first head_dim channels of wider rows
        return ArrayDesc(shape, contiguous_strides(padded), dtype, "cuda:0")

    q, k, v = desc(heads_q, n_q), desc(heads_kv, n_k), desc(heads_kv, n_k, 1 if odd_v_stride else 0)
    mask = None
    if with_mask:
        shape = (heads_q, -(-n_q // 128), -(-n_k // 64))
        mask = ArrayDesc(shape, contiguous_strides(shape), "bool", "cuda:0")
    supported = pv_dtype == "fp16" and head_dim in (64, 128)
    override = {"kernel": "gluon_sm90" if supported else "triton", "key_blocks_per_step": kbps}
    kv_lens = ArrayDesc((batch,), (1,), "int32", "cuda:0") if with_kv_lens else None
    plan = make_plan(q, k, v, mask, is_causal=is_causal, tensor_layout=layout, smooth_k=smooth_k,
                     return_lse=return_lse, capability=(9, 0), pv_dtype=pv_dtype, kv_lens=kv_lens, num_sms=132,
                     attention_override=override)
    step = next(s for s in plan.launches if s.name == "attention")
    if not supported:  # the plan refuses it (choose_attention); bind it anyway: the kernel must refuse it too
        args = {**step.args, "batch": batch}
        step = dataclasses.replace(step, kernel=attention_sm90_kernel, num_warps=4, maxnreg=168,
                                   args={name: args[name] for name in attention_sm90_kernel.arg_names})
    dtypes = {"q": dtype, "k": dtype, "v": dtype, "mask_id": "bool", "kv_lens": "int32"}
    dtypes.update({name: buf.dtype for name, buf in plan.buffers.items()})
    assert step.constexprs["STRIDE_ALIGN"] == (1 if odd_v_stride else 8), step.constexprs
    return step, dtypes


def compile_step(step, dtypes):
    signature, attrs = {}, {}
    names = [p for p in attention_sm90_kernel.arg_names]
    for i, name in enumerate(names):
        value = step.args[name]
        if name in step.constexprs:
            signature[name] = "constexpr"
        elif hasattr(value, "name"):  # a Ref: a pointer, 16-byte aligned as every buffer the executors pass
            signature[name] = POINTER_TYPES[dtypes[value.name]]
            attrs[(i,)] = [["tt.divisibility", 16]]
        else:  # a scalar: never specialized (do_not_specialize), as both launchers pass it
            signature[name] = "i32"
    src = GluonASTSource(attention_sm90_kernel, signature, constexprs=dict(step.constexprs), attrs=attrs)
    return triton_compile(src, target=GPUTarget("cuda", 90, 32), options=step.options)


def evidence(compiled):
    ptx = compiled.asm["ptx"]
    md = compiled.metadata
    wgmma = re.findall(r"wgmma\.mma_async\.sync\.aligned\.(\S+)", ptx)
    return {
        "wgmma_s8": sum(".s32.s8.s8" in w for w in wgmma),
        "wgmma_f16": sum(".f32.f16.f16" in w for w in wgmma),
        "wgmma_other": sorted({w for w in wgmma if ".s8.s8" not in w and ".f16.f16" not in w}),
        "setmaxnreg": sorted({int(r) for r in re.findall(r"setmaxnreg\.(?:inc|dec)\.sync\.aligned\.u32\s+(\d+)", ptx)}),
        "mbarrier": len(re.findall(r"\bmbarrier\.", ptx)),
        "cp_async": len(re.findall(r"\bcp\.async\.(?:ca|cg)\.shared", ptx)),
        "tma_loads": len(re.findall(r"\bcp\.async\.bulk\.tensor\.2d\.shared::cluster\.global", ptx)),
        "tma_loads_4d": len(re.findall(r"\bcp\.async\.bulk\.tensor\.4d\.shared::cluster\.global", ptx)),
        "tensormap_replace": len(re.findall(r"\btensormap\.replace\.tile\.global_address", ptx)),
        "mbarrier_expect_tx": len(re.findall(r"\bmbarrier\.arrive\.expect_tx", ptx)),
        "global_scratch_size": md.global_scratch_size,
        "reqntid": int(m.group(1)) if (m := re.search(r"\.reqntid\s+(\d+)", ptx)) else None,
        "num_warps": md.num_warps, "shared": md.shared,
        "n_regs": getattr(compiled, "n_regs", None), "n_spills": getattr(compiled, "n_spills", None),
        "ptxas_spills": _ptxas_spills(compiled),
    }


def _ptxas_spills(compiled):
    """Spill bytes from the cubin's resource usage, through Triton's own cuobjdump (None if it cannot run)."""
    import subprocess
    import tempfile
    import triton
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    try:
        with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
            f.write(compiled.asm["cubin"])
            f.flush()
            text = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True, timeout=60).stdout
    except Exception:
        return None
    m = re.search(r"REG:(\d+).*?STACK:(\d+).*?SHARED:(\d+).*?LOCAL:(\d+)", text)
    return None if m is None else dict(zip(("reg", "stack", "shared", "local"), map(int, m.groups())))


def main():
    assert not INTERPRETED, "compiling needs a process without TRITON_INTERPRET"
    print(json.dumps({"total": len(CASES), "refused_total": len(REFUSED)}), flush=True)
    for case in CASES:
        t0 = time.time()
        try:
            result = evidence(compile_step(*attention_step(*case)))
        except Exception as e:  # report every failing case, not only the first
            result = {"error": f"{type(e).__name__}: {e}"[-3000:]}
        print(json.dumps({"case": case, "seconds": round(time.time() - t0, 2), **result}), flush=True)
    for dtype, head_dim, pv_dtype, expected in REFUSED:
        try:
            compile_step(*attention_step(dtype, head_dim, False, False, True, False, 2, "HND", pv_dtype=pv_dtype))
            result = {"refused": False}
        except Exception as e:
            result = {"refused": expected in str(e), "error": f"{type(e).__name__}: {e}"[-600:]}
        print(json.dumps({"refused_case": [dtype, head_dim, pv_dtype], **result}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
