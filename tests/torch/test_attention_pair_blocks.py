"""The attention kernel's two-blocks-per-step variant (KEY_BLOCKS_PER_STEP=2) against the float64 reference.

The sm_90 table entries for hd64/hd128 select it; so that every device (the interpreter included) tests it,
these run the torch frontend's launcher on a plan made with make_plan's attention_override. Cases target what
pairing changes: odd and even live / full counts (an odd full block joins
the masked steps, an odd live count ends on a single block), holes in the list, the causal diagonal with
Nq != Nk, a ragged key tail, GQA, and rows that see nothing.
"""
import pytest
import torch

from sparse_sageattn.core_kernels import ArrayDesc
from sparse_sageattn.core_kernels.attention import make_plan
from sparse_sageattn.reference import assert_close, attention

from qkv_cases import make_qkv, random_mask, run_plan as run


def check(q, k, v, mask_id=None, is_causal=False, tensor_layout="HND"):
    out, lse = run(q, k, v, mask_id, is_causal, tensor_layout)
    assert out.shape == q.shape and out.dtype == q.dtype
    ref_out, ref_lse = attention(*(x.float().cpu().numpy() for x in (q, k, v)),
                                 None if mask_id is None else mask_id.cpu().numpy(), is_causal, tensor_layout)
    assert_close(out.float().cpu().numpy(), lse.cpu().numpy(), ref_out, ref_lse, tensor_layout)
    return out, lse


def test_override_is_validated():
    desc = ArrayDesc((1, 1, 256, 64), (16384, 16384, 64, 1), "float16")  # > 64 queries: the attention kernel
    with pytest.raises(ValueError, match="key_blocks_per_step"):
        make_plan(desc, desc, desc, attention_override={"key_blocks_per_step": 3})
    for capability, expected in (((9, 0), 2), ((8, 0), 1), (None, 1)):  # the table: measured on the H100 only
        plan = make_plan(desc, desc, desc, capability=capability)
        assert plan.launches[-1].constexprs["KEY_BLOCKS_PER_STEP"] == expected, capability


@pytest.mark.parametrize("n_k", [64, 128, 448, 512])  # 1, 2, 7, 8 full blocks: odd and even, no mask
def test_dense_full_counts(device, n_k):
    q, k, v = make_qkv(n_k, 1, 2, 2, 128, n_k, 64, device=device)
    check(q, k, v)


@pytest.mark.parametrize("seed", [0, 1])
def test_mask_holes_odd_and_even_live(device, seed):
    heads, n_q, n_k = 4, 256, 640
    q, k, v = make_qkv(seed, 1, heads, heads, n_q, n_k, 64, device=device)
    mask = random_mask(seed, (heads, 2, 10), density=0.5)
    live = mask.sum(-1).flatten()
    assert (live % 2 == 1).any() and (live % 2 == 0).any()
    check(q, k, v, mask.to(device))
    check(q, k, v, mask.to(device), is_causal=True)


@pytest.mark.parametrize("n_q,n_k", [(200, 300), (300, 200), (129, 65), (320, 320), (64, 1000)])
def test_causal_ragged(device, n_q, n_k):
    # 200 x 300: the diagonal leaves odd full counts (1, 3) and a ragged tail block; 320 x 320: an odd live count
    q, k, v = make_qkv(n_q + 3 * n_k, 1, 2, 1, n_q, n_k, 64, device=device)
    check(q, k, v, is_causal=True)


@pytest.mark.parametrize("heads_q,heads_kv", [(4, 2), (4, 1)])
def test_gqa_with_head_mask(device, heads_q, heads_kv):
    q, k, v = make_qkv(heads_kv, 2, heads_q, heads_kv, 256, 330, 64, device=device)
    mask = random_mask(heads_kv, (heads_q, 2, 6), density=0.6).to(device)
    check(q, k, v, mask, is_causal=True)


@pytest.mark.parametrize("head_dim,layout", [(64, "NHD"), (96, "HND"), (128, "HND")])
def test_head_dims(device, head_dim, layout):
    q, k, v = make_qkv(head_dim, 1, 2, 2, 200, 300, head_dim, layout, device)
    check(q, k, v, tensor_layout=layout)
    check(q, k, v, tensor_layout=layout, is_causal=True)


def test_empty_rows(device):
    q, k, v = make_qkv(5, 1, 2, 2, 384, 192, 64, device=device)
    mask = torch.ones(2, 3, 3, dtype=torch.bool)
    mask[0, 1] = False  # head 0, query block 1: no key at all
    out, lse = check(q, k, v, mask.to(device))
    assert torch.isneginf(lse[0, 0, 128:256]).all() and not out[0, 0, 128:256].any()
    out, lse = check(q, k, v, is_causal=True)  # Nq > Nk: the first Nq - Nk queries see no key
    assert torch.isneginf(lse[:, :, :192]).all() and not out[:, :, :192].any()


def test_without_lse_and_against_one_block_steps(device):
    q, k, v = make_qkv(15, 1, 2, 2, 256, 450, 64, device=device)
    mask = random_mask(15, (2, 8), density=0.6).to(device)
    pairs, _ = run(q, k, v, mask, is_causal=True, return_lse=False)
    with_lse, _ = run(q, k, v, mask, is_causal=True)
    assert torch.equal(pairs, with_lse)
    single, _ = run(q, k, v, mask, is_causal=True, override={"key_blocks_per_step": 1})
    # Not bitwise (the fp32 sums run in another order), but the same scores: fp16 rounding apart.
    torch.testing.assert_close(pairs, single, atol=2e-3, rtol=0)
