"""GPU checks of the torch executor's eager path (frontends/torch/_launch.py): after the first call of a shape it
launches the cached compiled kernels directly, from one workspace, and must give the bits Triton's own launcher
gives; pointer alignment, options and launch hooks must pick the right path."""
import pytest
import torch
from triton import knobs

from sparse_sageattn import sparse_sageattn
from sparse_sageattn.core_kernels import attention
from sparse_sageattn.torch import _launch

pytestmark = pytest.mark.gpu

CASES = [  # batch, heads_q, heads_kv, n_q, n_k, head_dim, layout, dtype, masked, is_causal, pv_dtype
    (2, 4, 4, 1000, 1000, 128, "HND", torch.float16, False, False, "fp16"),
    (1, 8, 2, 777, 3001, 64, "NHD", torch.bfloat16, True, True, "fp16"),
    (2, 4, 1, 300, 300, 96, "HND", torch.float16, True, False, "fp16"),
    (1, 4, 4, 1024, 2048, 128, "NHD", torch.float16, False, True, "fp8"),
    (4, 32, 8, 1, 5000, 128, "HND", torch.bfloat16, False, True, "fp16"),  # the split-KV kernel and its combine
]


def make_inputs(case, seed):
    batch, heads_q, heads_kv, n_q, n_k, head_dim, layout, dtype, masked, _, _ = case
    gen = torch.Generator(device="cuda").manual_seed(seed)

    def rand(heads, n):
        shape = (batch, heads, n, head_dim) if layout == "HND" else (batch, n, heads, head_dim)
        return torch.randn(shape, generator=gen, device="cuda", dtype=dtype)

    mask = torch.rand(heads_q, -(-n_q // 128), -(-n_k // 64), generator=gen, device="cuda") < 0.6 if masked else None
    return rand(heads_q, n_q), rand(heads_kv, n_k), rand(heads_kv, n_k), mask


def through_triton_launcher(q, k, v, mask, is_causal, layout, pv_dtype):
    plan = attention.make_plan(*map(_launch.describe, (q, k, v)), None if mask is None else _launch.describe(mask),
                               is_causal, layout, None, True, True, _launch.capability(q.device), pv_dtype=pv_dtype,
                               num_sms=_launch.sm_count(q.device))
    env = _launch.run(plan, {"q": q, "k": k, "v": v, "mask_id": mask}, q.device)
    return env["out"], env["lse"]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[3]}x{c[4]}-d{c[5]}-{c[6]}-m{int(c[8])}-{c[10]}")
def test_cached_direct_launch_equals_triton_launcher(case):
    *_, is_causal, pv_dtype = case
    layout = case[6]
    for seed in range(3):  # the first call compiles and fills the cache; the others launch directly
        q, k, v, mask = make_inputs(case, seed)
        out, lse = sparse_sageattn(q, k, v, mask, is_causal, layout, return_lse=True, pv_dtype=pv_dtype)
        ref_out, ref_lse = through_triton_launcher(q, k, v, mask, is_causal, layout, pv_dtype)
        assert torch.equal(out, ref_out) and torch.equal(lse, ref_lse)


def test_eager_calls_after_the_first_skip_triton_launcher(monkeypatch):
    case = CASES[1]
    q, k, v, mask = make_inputs(case, 0)
    sparse_sageattn(q, k, v, mask, True, "NHD")
    calls = []
    kernels = {type(step.kernel) for step in through_triton_plan(q, k, v, mask).launches}
    for cls in kernels:
        run = cls.run
        monkeypatch.setattr(cls, "run", lambda self, *a, _run=run, **kw: calls.append(self) or _run(self, *a, **kw))
    out = sparse_sageattn(q, k, v, mask, True, "NHD")
    assert not calls and torch.isfinite(out).all()
    # a view whose data pointer is not 16-byte aligned is another specialization: compiled (through Triton) anew
    storage = torch.empty(q.numel() + 4, device="cuda", dtype=q.dtype)
    shifted = storage[4:].view(q.shape).copy_(q)
    assert shifted.data_ptr() % 16 != 0
    shifted_out = sparse_sageattn(shifted, k, v, mask, True, "NHD")
    assert calls and torch.equal(shifted_out, out)


def through_triton_plan(q, k, v, mask):
    return attention.make_plan(*map(_launch.describe, (q, k, v)), _launch.describe(mask), True, "NHD",
                               capability=_launch.capability(q.device))


def test_a_launch_hook_sees_every_launch():
    q, k, v, mask = make_inputs(CASES[0], 0)
    expected = sparse_sageattn(q, k, v)
    seen = []

    def hook(metadata):
        seen.append(metadata.get()["name"])

    knobs.runtime.launch_enter_hook.add(hook)
    try:
        out = sparse_sageattn(q, k, v)
    finally:
        knobs.runtime.launch_enter_hook.remove(hook)
    plan = attention.make_plan(*map(_launch.describe, (q, k, v)), capability=_launch.capability(q.device))
    assert seen == [step.kernel.__name__ for step in plan.launches]
    assert torch.equal(out, expected)


def test_a_cached_call_still_refuses_non_bool_flags():
    q, k, v, _ = make_inputs(CASES[0], 0)
    sparse_sageattn(q, k, v, is_causal=True)
    with pytest.raises(TypeError, match="is_causal must be a bool"):
        sparse_sageattn(q, k, v, is_causal=1)


def test_custom_op_and_eager_call_agree():
    q, k, v, mask = make_inputs(CASES[1], 4)
    eager = sparse_sageattn(q, k, v, mask, True, "NHD", return_lse=True)
    op = torch.ops.sparse_sageattn.forward(q, k, v, mask, None, True, "NHD", None, True, True, "fp16")
    assert all(torch.equal(a, b) for a, b in zip(eager, op))


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[3]}x{c[4]}-d{c[5]}-{c[6]}-m{int(c[8])}-{c[10]}")
def test_opcheck_attention_op(case):
    *_, is_causal, pv_dtype = case
    q, k, v, mask = make_inputs(case, 5)
    torch.library.opcheck(torch.ops.sparse_sageattn.forward,
                          (q, k, v, mask, None, is_causal, case[6], None, True, True, pv_dtype))


@pytest.mark.parametrize("n_q", [1, 300])  # the split-KV kernel, the table's attention kernel
def test_opcheck_attention_op_with_kv_lens(n_q):
    q, k, v, _ = make_inputs((2, 8, 2, n_q, 3000, 128, "HND", torch.float16, False, True, "fp16"), 6)
    kv_lens = torch.tensor([3000, 1234], dtype=torch.int32, device="cuda")
    torch.library.opcheck(torch.ops.sparse_sageattn.forward,
                          (q, k, v, None, kv_lens, True, "HND", None, True, True, "fp16"))


def test_opcheck_predict_op():
    q, k, _, _ = make_inputs(CASES[1], 6)
    torch.library.opcheck(torch.ops.sparse_sageattn.predict_mask, (q, k, None, 0.3, True, "NHD", None))
