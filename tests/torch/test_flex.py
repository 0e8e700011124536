"""FlexAttention interop: mask_id -> BlockMask -> mask_id round trips, BlockMasks made by FlexAttention itself,
refusals, and flex_attention running our BlockMask against the float64 reference and against sparse_sageattn.

flex_attention without torch.compile evaluates the mask_mod everywhere (block lists unused); compiled, it walks
the block lists and skips the mask_mod on full blocks -- both are checked.
"""
import numpy as np
import pytest
import torch
from torch.nn.attention.flex_attention import AuxRequest, BlockMask, create_block_mask, flex_attention

from sparse_sageattn import masks, sparse_sageattn
from sparse_sageattn.reference import assert_close, attention
from sparse_sageattn.torch import from_flex_block_mask, to_flex_block_mask

pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")


def random_mask(seed, shape, density=0.5):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) < density


def any_per_block(pairs, q_block=128, kv_block=64):
    n_q, n_k = pairs.shape
    padded = np.zeros((-(-n_q // q_block) * q_block, -(-n_k // kv_block) * kv_block), dtype=bool)
    padded[:n_q, :n_k] = pairs
    return padded.reshape(padded.shape[0] // q_block, q_block, -1, kv_block).any(axis=(1, 3))


@pytest.mark.parametrize("shape", [(3, 5), (2, 3, 5), (2, 2, 3, 5), (1, 5), (3, 1), (2, 1, 3, 5)])
@pytest.mark.parametrize("dtype", [torch.bool, torch.int32])
def test_round_trip(shape, dtype):
    mask = random_mask(sum(shape), shape).to(dtype) * (7 if dtype == torch.int32 else 1)
    block_mask = to_flex_block_mask(mask, 300, 300)
    assert block_mask.BLOCK_SIZE == (128, 64) and block_mask.seq_lengths == (300, 300)
    lead = ((1, 1) + shape[:-2])[-2:]
    expected = torch.broadcast_to(mask != 0, (*lead, 3, 5))
    assert torch.equal(block_mask.to_dense().bool(), expected)
    got = from_flex_block_mask(block_mask)
    assert got.dtype == torch.bool and torch.equal(got, expected)


@pytest.mark.parametrize("n_q,n_k", [(300, 200), (200, 700), (256, 256)])
def test_causal_round_trip_needs_keep_partial(n_q, n_k):
    mask = random_mask(n_q, (2, -(-n_q // 128), -(-n_k // 64)), 0.7)
    block_mask = to_flex_block_mask(mask, n_q, n_k, is_causal=True)
    expected = mask & torch.from_numpy(masks.causal_mask(n_q, n_k))
    assert torch.equal(block_mask.to_dense().bool()[0], expected)
    full = torch.from_numpy(masks.causal_full_mask(n_q, n_k))
    assert torch.equal(BlockMask.from_kv_blocks(block_mask.full_kv_num_blocks,
                                                block_mask.full_kv_indices).to_dense().bool()[0], mask & full)
    with pytest.raises(ValueError, match="partial blocks"):
        from_flex_block_mask(block_mask)
    assert torch.equal(from_flex_block_mask(block_mask, keep_partial=True)[0], expected)


def alternating(b, h, q_idx, kv_idx):
    return (q_idx // 128 + kv_idx // 128) % 2 == 0


@pytest.mark.parametrize("block_size", [(128, 64), (128, 128)])
def test_block_mask_made_by_flex(block_size):
    """A mask_mod that is constant on 128x128 tiles gives only full blocks: accepted whatever the mask_mod."""
    block_mask = create_block_mask(alternating, 1, 1, 256, 384, device="cpu", BLOCK_SIZE=block_size)
    pairs = (np.arange(256)[:, None] // 128 + np.arange(384)[None, :] // 128) % 2 == 0
    np.testing.assert_array_equal(from_flex_block_mask(block_mask)[0, 0].numpy(), any_per_block(pairs))


def test_128x128_partial_blocks_under_noop_split_and_cropped():
    """Whole 128-key blocks of a noop BlockMask become pairs of 64-key blocks, cut at ceil(kv_len / 64)."""
    live = random_mask(3, (1, 2, 3, 3))
    counts = live.sum(-1, dtype=torch.int32)
    indices = torch.argsort(live.int(), dim=-1, descending=True, stable=True).int()
    block_mask = BlockMask.from_kv_blocks(counts, indices, BLOCK_SIZE=(128, 128), seq_lengths=(300, 300))
    assert torch.equal(from_flex_block_mask(block_mask), live.repeat_interleave(2, dim=-1)[..., :5])


@pytest.mark.parametrize("block_size", [(128, 64), (128, 128)])
def test_refuses_partial_blocks_under_a_mask_mod(block_size):
    def causal(b, h, q_idx, kv_idx):
        return kv_idx <= q_idx

    block_mask = create_block_mask(causal, 1, 1, 300, 300, device="cpu", BLOCK_SIZE=block_size)
    with pytest.raises(ValueError, match="partial blocks under the mask_mod 'causal'"):
        from_flex_block_mask(block_mask)
    kept = from_flex_block_mask(block_mask, keep_partial=True)[0, 0].numpy()
    np.testing.assert_array_equal(kept, masks.causal_mask(300, 300))


@pytest.mark.parametrize("call,error,words", [
    (lambda: to_flex_block_mask([[True]], 10, 10), TypeError, "mask_id"),
    (lambda: to_flex_block_mask(torch.ones(1, 1), 10, 10), TypeError, "mask_id"),
    (lambda: to_flex_block_mask(torch.ones(4, 5, dtype=torch.bool), 300, 300), ValueError, "mask_id"),
    (lambda: to_flex_block_mask(torch.ones(1, 1, 1, 3, 5, dtype=torch.bool), 300, 300), ValueError, "mask_id"),
    (lambda: to_flex_block_mask(torch.ones(3, 5, dtype=torch.bool), 0, 300), ValueError, "q_len"),
    (lambda: to_flex_block_mask(torch.ones(3, 5, dtype=torch.bool), 300, 2.5), TypeError, "kv_len"),
    (lambda: to_flex_block_mask(torch.ones(3, 5, dtype=torch.bool), 300, 300, is_causal=1), TypeError,
     "is_causal"),
    (lambda: from_flex_block_mask(torch.ones(3, 5)), TypeError, "block_mask"),
    (lambda: from_flex_block_mask(create_block_mask(alternating, 1, 1, 256, 256, device="cpu", BLOCK_SIZE=64)),
     ValueError, "BLOCK_SIZE"),
])
def test_bad_arguments(call, error, words):
    with pytest.raises(error, match=words):
        call()


CASES = [  # n_q, n_k, heads_q, heads_kv, is_causal
    (300, 200, 4, 2, True),
    (256, 450, 2, 2, False),
    (200, 700, 2, 1, True),
]


def case_inputs(n_q, n_k, heads_q, heads_kv, seed):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(1, h, n, 64, generator=gen).half() for h, n in
               ((heads_q, n_q), (heads_kv, n_k), (heads_kv, n_k)))
    mask = random_mask(seed, (heads_q, -(-n_q // 128), -(-n_k // 64)))
    mask[0] = False
    mask[0, :, 0] = True  # with is_causal, head 0 then has rows that see no key
    return q, k, v, mask


def reference(q, k, v, mask, is_causal):
    return attention(*(x.double().numpy() for x in (q, k, v)), mask.numpy(), is_causal)


@pytest.mark.parametrize("n_q,n_k,heads_q,heads_kv,is_causal", CASES)
def test_eager_flex_matches_the_reference_and_sparse_sageattn(device, n_q, n_k, heads_q, heads_kv, is_causal):
    q, k, v, mask = case_inputs(n_q, n_k, heads_q, heads_kv, n_q + n_k)
    block_mask = to_flex_block_mask(mask, n_q, n_k, is_causal=is_causal)
    flex_out, aux = flex_attention(q.float(), k.float(), v.float(), block_mask=block_mask,
                                   enable_gqa=heads_q != heads_kv, return_aux=AuxRequest(lse=True))
    flex_lse = aux.lse
    ref_out, ref_lse = reference(q, k, v, mask, is_causal)
    np.testing.assert_allclose(flex_out.numpy(), ref_out, atol=2e-6, rtol=0)
    np.testing.assert_allclose(flex_lse.numpy(), ref_lse, atol=2e-6, rtol=0)
    out, lse = sparse_sageattn(*(x.to(device) for x in (q, k, v, mask)), is_causal, return_lse=True)
    assert_close(out.float().cpu().numpy(), lse.cpu().numpy(), flex_out.numpy(), flex_lse.numpy())


def test_compiled_flex_walks_the_block_lists():
    """Compiled flex_attention (inductor's CPU kernel) skips blocks missing from the lists and the mask_mod on
    full blocks, so a wrong list shows here (CPU compile: no lse)."""
    compiled = torch.compile(flex_attention, dynamic=False)
    for n_q, n_k, heads_q, heads_kv, is_causal in CASES[:2]:
        q, k, v, mask = case_inputs(n_q, n_k, heads_q, heads_kv, n_q)
        out = compiled(q.float(), k.float(), v.float(), block_mask=to_flex_block_mask(mask, n_q, n_k,
                                                                                        is_causal=is_causal),
                       enable_gqa=heads_q != heads_kv)
        np.testing.assert_allclose(out.numpy(), reference(q, k, v, mask, is_causal)[0], atol=2e-6, rtol=0)
