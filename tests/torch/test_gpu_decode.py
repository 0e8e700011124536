"""GPU-only checks of short-query calls (the split-KV kernel) and kv_lens at decoding sizes: accuracy against the
float64 reference (bf16, GQA 32/8, up to 128k keys), keys past kv_lens never read (they hold NaN), run-to-run
determinism, CUDA-graph replay and torch.compile of a static-cache decode step."""
import numpy as np
import pytest
import torch

from sparse_sageattn import sparse_sageattn
from sparse_sageattn.reference import assert_close, attention
from sparse_sageattn.torch import union_mask

pytestmark = pytest.mark.gpu


def cache(seed, batch, heads_q, heads_kv, n_q, n_k, head_dim=128, dtype=torch.bfloat16, kv_lens=None):
    """q, k, v (HND) with K offset per channel; with kv_lens the keys past each row's count are NaN."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    q = torch.randn(batch, heads_q, n_q, head_dim, generator=gen, device="cuda").to(dtype)
    k = torch.randn(batch, heads_kv, n_k, head_dim, generator=gen, device="cuda")
    k = (k + 2.0 * torch.randn(head_dim, generator=gen, device="cuda")).to(dtype)
    v = torch.randn(batch, heads_kv, n_k, head_dim, generator=gen, device="cuda").to(dtype)
    lens = None
    if kv_lens is not None:
        lens = torch.tensor(kv_lens, dtype=torch.int32, device="cuda")
        for b, n_valid in enumerate(kv_lens):
            k[b, :, n_valid:] = float("nan")
            v[b, :, n_valid:] = float("nan")
    return q, k, v, lens


def check(q, k, v, mask, is_causal, kv_lens, out, lse, heads=slice(0, 8)):
    """The reference on a slice of query heads (and their kv heads) keeps 128k-key checks cheap."""
    group = q.shape[1] // k.shape[1]
    kv_heads = slice(heads.start // group, -(-heads.stop // group))
    ref_out, ref_lse = attention(q[:, heads].float().cpu().numpy(), k[:, kv_heads].float().cpu().numpy(),
                                 v[:, kv_heads].float().cpu().numpy(),
                                 None if mask is None else mask.cpu().numpy(), is_causal,
                                 kv_lens=None if kv_lens is None else kv_lens.cpu().numpy())
    assert torch.isfinite(out).all()
    assert_close(out[:, heads].float().cpu().numpy(), lse[:, heads].cpu().numpy(), ref_out, ref_lse)


@pytest.mark.parametrize("batch,n_q,n_k,kv_lens", [
    (8, 1, 32768, None),
    (8, 16, 32768, (32768, 30000, 1, 64, 4097, 20000, 32767, 0)),  # ragged, one empty row
    (1, 1, 131072, None),
    (2, 48, 9000, (9000, 5000)),
])
def test_decode_sizes_against_reference(batch, n_q, n_k, kv_lens):
    q, k, v, lens = cache(n_q + n_k, batch, 32, 8, n_q, n_k, kv_lens=kv_lens)
    out, lse = sparse_sageattn(q, k, v, is_causal=True, kv_lens=lens, return_lse=True)
    check(q, k, v, None, True, lens, out, lse)


def test_decode_window_and_sink_mask():
    n_k = 131072
    q, k, v, _ = cache(7, 1, 32, 8, 1, n_k)
    mask = union_mask(1, n_k, window=8192, sink=256).cuda()
    out, lse = sparse_sageattn(q, k, v, mask, is_causal=True, return_lse=True)
    check(q, k, v, mask, True, None, out, lse)


def test_decode_bitwise_deterministic():
    q, k, v, lens = cache(3, 8, 32, 8, 1, 32768, kv_lens=(32768, 1000, 5, 32000, 7, 8, 9, 10))
    first = sparse_sageattn(q, k, v, is_causal=True, kv_lens=lens, return_lse=True)
    for _ in range(3):
        again = sparse_sageattn(q, k, v, is_causal=True, kv_lens=lens, return_lse=True)
        assert all(torch.equal(a, b) for a, b in zip(first, again))


def decode_step(q, k_cache, v_cache, kv_lens):
    return sparse_sageattn(q, k_cache, v_cache, is_causal=True, kv_lens=kv_lens)


def test_static_cache_decode_step_replays_in_a_cuda_graph():
    """A preallocated cache and kv_lens: each step writes one token and advances kv_lens in place, then replays."""
    q, k, v, lens = cache(11, 4, 32, 8, 1, 8192, kv_lens=(1000, 2000, 3000, 4000))
    k.nan_to_num_(0.0)
    v.nan_to_num_(0.0)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        decode_step(q, k, v, lens)  # warm-up: compile outside the capture
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = decode_step(q, k, v, lens)
    gen = torch.Generator(device="cuda").manual_seed(12)
    for _ in range(3):
        rows = torch.arange(4, device="cuda")
        k[rows, :, lens.long()] = torch.randn(4, 8, 128, generator=gen, device="cuda").to(k.dtype)
        v[rows, :, lens.long()] = torch.randn(4, 8, 128, generator=gen, device="cuda").to(v.dtype)
        lens += 1
        q.copy_(torch.randn(q.shape, generator=gen, device="cuda"))
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(captured, decode_step(q, k, v, lens))


def test_static_cache_decode_step_compiles_once():
    import torch._dynamo.utils as dynamo_utils

    torch._dynamo.reset()
    dynamo_utils.counters.clear()
    compiled = torch.compile(decode_step, fullgraph=True)
    q, k, v, lens = cache(13, 2, 32, 8, 1, 4096, kv_lens=(100, 200))
    k.nan_to_num_(0.0)
    v.nan_to_num_(0.0)
    for _ in range(3):
        assert torch.equal(compiled(q, k, v, lens), decode_step(q, k, v, lens))
        lens += 517
    assert dynamo_utils.counters["stats"]["unique_graphs"] == 1


def test_prefill_into_a_static_cache_with_kv_lens():
    """Longer queries (the table's attention kernel, Gluon on sm_90 hd128) with kv_lens: causal aligns to it."""
    q, k, v, lens = cache(17, 2, 8, 2, 1024, 4096, kv_lens=(1024, 3000))
    out, lse = sparse_sageattn(q, k, v, is_causal=True, kv_lens=lens, return_lse=True)
    check(q, k, v, None, True, lens, out, lse)
