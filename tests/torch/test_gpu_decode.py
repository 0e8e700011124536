"""GPU-only checks of short-query calls (the split-KV kernel) and kv_lens at decoding sizes: accuracy against the
float64 reference (bf16, GQA 32/8, up to 128k keys), keys past kv_lens never read (they hold NaN), run-to-run
determinism, CUDA-graph replay and torch.compile of a static-cache decode step; the INT8 KV cache in both V
formats."""
import pytest
import torch

from sparse_sageattn import sparse_sageattn
from sparse_sageattn.reference import assert_close, attention, e4m3_cache_values
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


def int8_cache_step(cache, q, k_new, v_new):
    cache.append(k_new, v_new)
    return cache.attend(q, is_causal=True)


@pytest.mark.parametrize("v_format", ["native", "e4m3"])
def test_int8_cache_at_decoding_sizes_against_reference(v_format):
    """A 32k-token prompt into an INT8 cache, 3 one-token appends, then Nq=1 and Nq=16 attention (bf16, GQA 32/8):
    the contract's bounds against the float64 reference over every appended key and the values the cache holds
    (e4m3 values: reference.e4m3_cache_values)."""
    from sparse_sageattn.torch.kv_cache import Int8KVCache

    q, k, v, _ = cache(21, 2, 32, 8, 16, 32768 + 3)
    kv = Int8KVCache(2, 8, 33024, 128, torch.bfloat16, "cuda", v_format)
    kv.append(k[:, :, :32768], v[:, :, :32768])
    for i in range(32768, 32771):
        kv.append(k[:, :, i:i + 1], v[:, :, i:i + 1])
    held = v  # the values the cache holds, against whose reference it is judged (check reads kv heads 0 and 1)
    if v_format == "e4m3":
        held = torch.from_numpy(e4m3_cache_values(v[:, :2].double().cpu().numpy())).float().cuda()
    for n_q in (1, 16):
        out, lse = kv.attend(q[:, :, :n_q], is_causal=True, return_lse=True)
        check(q[:, :, :n_q], k, held, None, True, None, out, lse)


@pytest.mark.parametrize("v_format", ["native", "e4m3"])
def test_int8_cache_decode_step_replays_in_a_cuda_graph(v_format):
    """append + attend captured once and replayed: the same bits as the same steps run eagerly on a twin cache
    (the host's token count does not advance under replay; the device's lens does)."""
    from sparse_sageattn.torch.kv_cache import Int8KVCache

    q, k, v, _ = cache(23, 4, 32, 8, 1, 4096)
    graphed, eager = (Int8KVCache(4, 8, 8192, 128, torch.bfloat16, "cuda", v_format) for _ in range(2))
    for kv in (graphed, eager):
        kv.append(k, v)
    gen = torch.Generator(device="cuda").manual_seed(24)
    k_new = torch.randn(4, 8, 1, 128, generator=gen, device="cuda").to(k.dtype)
    v_new = torch.randn(4, 8, 1, 128, generator=gen, device="cuda").to(k.dtype)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        int8_cache_step(graphed, q, k_new, v_new)  # warm-up: compile outside the capture
        int8_cache_step(eager, q, k_new, v_new)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = int8_cache_step(graphed, q, k_new, v_new)  # recorded, not run
    for _ in range(3):
        k_new.copy_(torch.randn(k_new.shape, generator=gen, device="cuda"))
        v_new.copy_(torch.randn(v_new.shape, generator=gen, device="cuda"))
        q.copy_(torch.randn(q.shape, generator=gen, device="cuda"))
        graph.replay()
        expected = int8_cache_step(eager, q, k_new, v_new)
        torch.cuda.synchronize()
        assert torch.equal(captured, expected)
    assert graphed.lens.tolist() == eager.lens.tolist() == [4096 + 4] * 4
    for name, t in graphed.arrays.items():
        assert torch.equal(t, eager.arrays[name]), name


@pytest.mark.parametrize("v_format", ["native", "e4m3"])
def test_int8_cache_bitwise_deterministic(v_format):
    from sparse_sageattn.torch.kv_cache import Int8KVCache

    q, k, v, _ = cache(25, 8, 32, 8, 1, 32768)
    outs = []
    for _ in range(2):
        kv = Int8KVCache(8, 8, 32768, 128, torch.bfloat16, "cuda", v_format)
        kv.append(k, v)
        outs.append((kv.attend(q, is_causal=True), *kv.arrays.values()))
    assert all(torch.equal(a, b) for a, b in zip(*outs))
