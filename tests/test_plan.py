"""The launch plan's shape, framework-free: three launches per attention call, and the rules every launch keeps
(core_kernels/alignment.py): no int argument specialized, arguments ordered inputs, scalars, outputs, constexprs."""
import pytest

from sparse_sageattn.core_kernels import ArrayDesc, configs, make_plan, make_predict_plan
from sparse_sageattn.core_kernels.plan import contiguous_strides


def desc(shape, dtype="float16"):
    return ArrayDesc(shape, contiguous_strides(shape), dtype)


def attention_plan(mask=False, is_causal=False, smooth_k=True, return_lse=False, pv_dtype="fp16", heads_q=4,
                   heads_kv=2, n_q=300, n_k=2500):
    q, kv = desc((2, heads_q, n_q, 64)), desc((2, heads_kv, n_k, 64))
    mask_id = desc((heads_q, -(-n_q // 128), -(-n_k // 64)), "bool") if mask else None
    return make_plan(q, kv, kv, mask_id, is_causal, "HND", None, smooth_k, return_lse, pv_dtype=pv_dtype)


MODES = [dict(), dict(mask=True, is_causal=True, return_lse=True), dict(smooth_k=False, return_lse=True),
         dict(mask=True, smooth_k=False), dict(pv_dtype="fp8"), dict(smooth_k=False, pv_dtype="fp8")]


@pytest.mark.parametrize("mode", MODES)
def test_three_launches_split_by_program_id(mode):
    plan = attention_plan(**mode)
    assert [step.name for step in plan.launches] == ["sums_and_lists", "quantize", "attention"]
    sums_and_lists, quantize, _ = plan.launches
    chunks, n_qb, n_kb = -(-2500 // configs.ROWS_PER_CHUNK), -(-300 // configs.BLOCK_M), -(-2500 // configs.BLOCK_N)
    fp8 = mode.get("pv_dtype") == "fp8"
    # K's sums and (FP8 P.V) V's maxima share the chunk programs
    chunk_programs = 2 * 2 * chunks if mode.get("smooth_k", True) or fp8 else 0
    lists = 4 if mode.get("mask") else 1  # a (Hq, Qb, Kb) mask: one list per head, shared over the batch
    scalars = dict(zip(sums_and_lists.kernel.arg_names[len(sums_and_lists.inputs):], sums_and_lists.scalars))
    assert scalars["chunk_programs"] == chunk_programs
    assert sums_and_lists.grid == (chunk_programs + lists * n_qb,)
    scalars = dict(zip(quantize.kernel.arg_names[len(quantize.inputs):], quantize.scalars))
    assert scalars["k_programs"] == 2 * 2 * n_kb and scalars["q_programs"] == 2 * 4 * n_qb
    assert quantize.grid == (2 * 2 * n_kb * (2 if fp8 else 1) + 2 * 4 * n_qb,)  # V blocks after Q's (FP8)
    assert (plan.buffers["v_fp8"].shape == (2 * 2 * n_kb * 64 * 64,)) == fp8


def all_launches():
    plans = [attention_plan(**mode) for mode in MODES]
    plans.append(make_predict_plan(desc((1, 4, 300, 64)), desc((1, 2, 700, 64)), topk=0.5))
    return [step for plan in plans for step in plan.launches]


@pytest.mark.parametrize("step", all_launches(), ids=lambda step: step.name)
def test_launch_rules(step):
    kernel = step.kernel
    # a JITFunction keeps do_not_specialize; the interpreter's function keeps the decorator's arguments
    unspecialized = set(getattr(kernel, "kwargs", {}).get("do_not_specialize") or kernel.do_not_specialize)
    names = kernel.arg_names
    n_in, n_scalars, n_out = len(step.inputs), len(step.scalars), len(step.outputs)
    assert set(names[n_in + n_scalars + n_out:]) == set(step.constexprs)  # passed by keyword, any order
    for name, value in zip(names[n_in:n_in + n_scalars], step.scalars):
        assert isinstance(value, float) or name in unspecialized, name
    assert all(name.endswith("_ptr") for name in names[:n_in] + names[n_in + n_scalars:n_in + n_scalars + n_out])
