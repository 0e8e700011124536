"""The INT8 KV cache (core_kernels/kv_cache/, frontends/torch/kv_cache.py): what append writes, checked against
the appended tokens themselves, and attention over the cache against the float64 reference of the same keys and
values (for e4m3 values: of the values the cache holds, reference.e4m3_cache_values). Interpreter on CPU, the
compiled kernels on a GPU."""
import numpy as np
import pytest
import torch

from sparse_sageattn.core_kernels.contract import BLOCK_N
from sparse_sageattn.reference import (COS_MIN, E4M3_MAX, LSE_ABS_MAX, REL_L1_MAX, attention, cosine, e4m3_cache_values,
                                       rel_l1)
from sparse_sageattn.torch import sparse_sageattn
from sparse_sageattn.torch.kv_cache import Int8KVCache

from qkv_cases import make_qkv, random_mask


def fill(device, dtype=torch.float16, batch=2, heads_kv=2, capacity=256, head_dim=64, chunks=(100, 1, 63, 2),
         layouts=None, seed=0, k_offset=2.0, v_format="native", v_scales=None):
    """A cache filled by appends of `chunks` tokens (the first one fixes the mean), and all keys / values
    appended, (B, Hkv, n, D) float32. v_scales: a factor for each chunk's values (later values larger than a
    block's earlier ones)."""
    cache = Int8KVCache(batch, heads_kv, capacity, head_dim, dtype, device, v_format)
    keys, values = [], []
    for i, n in enumerate(chunks):
        layout = (layouts or ["HND"] * len(chunks))[i]
        _, k, v = make_qkv(seed + i, batch, heads_kv, heads_kv, 1, n, head_dim, layout, device, dtype, k_offset)
        if v_scales is not None:
            v = v * v_scales[i]
        k_given, v_given = k.clone(), v.clone()
        cache.append(k, v, tensor_layout=layout)
        assert torch.equal(k, k_given) and torch.equal(v, v_given)  # inputs are never modified
        if layout == "NHD":
            k, v = k.transpose(1, 2), v.transpose(1, 2)
        keys.append(k.float())
        values.append(v.float())
    return cache, torch.cat(keys, 2), torch.cat(values, 2)


def dequantized(cache, n):
    a = cache.arrays
    scale = torch.repeat_interleave(a["k_scale"], BLOCK_N, dim=2)[:, :, :n, None]
    return a["k_int8"][:, :, :n].float() * scale + a["k_mean"][:, :, None], scale


def e4m3_tokens(v_cache):
    """An e4m3 cache's values (B, Hkv, C/64, D, 64), each block transposed, as (B, Hkv, C, D) (a copy)."""
    batch, heads, blocks, head_dim, _ = v_cache.shape
    return v_cache.transpose(-1, -2).reshape(batch, heads, blocks * BLOCK_N, head_dim)


def fill_past(v_cache, n, bits):
    """Set an e4m3 cache's values at tokens n and after to `bits`, in place."""
    block, row = divmod(n, BLOCK_N)
    by_token = v_cache.transpose(-1, -2)  # a view: (B, Hkv, C/64, 64, D)
    by_token[:, :, block, row:] = bits
    by_token[:, :, block + 1:] = bits


def e4m3_values(cache, n):
    """An e4m3 cache's first n values, dequantized (float64), and each value's exponent."""
    a = cache.arrays
    exponent = torch.repeat_interleave(a["v_exp"].double(), BLOCK_N, dim=2)[:, :, :n]
    return e4m3_tokens(a["v_cache"])[:, :, :n].view(torch.float8_e4m3fn).double() * torch.exp2(exponent), exponent


@pytest.mark.parametrize("dtype", [torch.float16])
def test_append_quantizes_each_block_of_the_tokens(device, dtype):
    cache, keys, values = fill(device, dtype, layouts=["HND", "NHD", "HND", "NHD"])
    n = keys.shape[2]
    a = cache.arrays
    assert a["lens"].tolist() == [n, n] and cache.tokens == n
    # the smoothing vector is the first fill's mean, and stays
    torch.testing.assert_close(a["k_mean"], keys[:, :, :100].mean(2), atol=1e-3, rtol=0)
    deq, scale = dequantized(cache, n)
    # each key within half a step of its block's grid (fp32 slack), with the block's scale set by its max
    assert ((deq - keys).abs() <= scale * (0.5 + 1e-3)).all()
    assert (a["k_int8"][:, :, :n].abs().amax(dim=(2, 3)) <= 127).all()
    full = a["k_int8"][:, :, :n // BLOCK_N * BLOCK_N].abs().reshape(2, 2, n // BLOCK_N, -1).amax(-1)
    assert (full == 127).all()  # a block's largest |k - mean| maps to 127
    assert not a["k_int8"][:, :, n:].any()  # past the last token: zeros (the partial block's rest included)
    assert torch.equal(a["v_cache"][:, :, :n].float(), values)
    # the tail holds the partial block's keys as given
    start = n // BLOCK_N * BLOCK_N
    assert torch.equal(a["k_tail"][:, :, :n - start].float(), keys[:, :, start:])


def test_append_writes_each_row_at_its_own_length(device):
    cache, keys, _ = fill(device, chunks=(70,))
    # row 1 keeps its first 66 tokens (still in the tail's block); the tail past them is never read
    cache.arrays["lens"].copy_(torch.tensor([70, 66], dtype=torch.int32))
    cache.arrays["k_tail"][1, :, 2:] = float("nan")
    _, k, v = make_qkv(9, 2, 2, 2, 1, 5, 64, device=device, k_offset=2.0)
    cache.append(k, v)
    assert cache.arrays["lens"].tolist() == [75, 71]
    deq, scale = dequantized(cache, 75)
    for row, n_old in ((0, 70), (1, 66)):
        expect = torch.cat([keys[row, :, :n_old], k[row].float()], 1)
        assert ((deq[row, :, :n_old + 5] - expect).abs() <= scale[row, :, :n_old + 5] * (0.5 + 1e-3)).all()
    assert not cache.arrays["k_int8"][1, :, 71:].any()
    assert torch.equal(cache.arrays["v_cache"][1, :, 66:71], v[1])


def test_tokens_past_the_capacity_are_dropped(device):
    cache, _, _ = fill(device, chunks=(64,), capacity=128)
    cache.arrays["lens"].copy_(torch.tensor([126, 64], dtype=torch.int32))  # the device knows more than the host
    _, k, v = make_qkv(3, 2, 2, 2, 1, 5, 64, device=device)
    cache.append(k, v)
    assert cache.arrays["lens"].tolist() == [128, 69]
    with pytest.raises(ValueError, match="do not fit"):
        cache.append(*make_qkv(4, 2, 2, 2, 1, 60, 64, device=device)[1:])  # the host's count: 69 + 60 > 128


def test_append_e4m3_holds_each_block_at_its_own_scale(device):
    # each chunk's values 3x the last: a block's exponents must follow values appended after its first ones
    cache, keys, values = fill(device, chunks=(100, 1, 63, 2, 20), layouts=["HND", "NHD", "HND", "NHD", "HND"],
                               v_format="e4m3", v_scales=(1.0, 3.0, 9.0, 27.0, 81.0))
    n = keys.shape[2]
    a = cache.arrays
    assert a["lens"].tolist() == [n, n]
    held, exponent = e4m3_values(cache, n)
    values64 = values.double()
    assert torch.equal(held, torch.from_numpy(e4m3_cache_values(values64.cpu().numpy())).to(held.device))
    # no saturation: each (block, channel)'s exponent is the smallest that brings its max to <= 448
    n_blocks = -(-n // BLOCK_N)
    padded = torch.nn.functional.pad(values64.abs(), (0, 0, 0, n_blocks * BLOCK_N - n))
    amax = padded.reshape(2, 2, n_blocks, BLOCK_N, -1).amax(3)
    e = a["v_exp"][:, :, :n_blocks].double()
    assert (amax / torch.exp2(e) <= E4M3_MAX).all() and (amax / torch.exp2(e - 1) > E4M3_MAX).all()
    assert not e4m3_tokens(a["v_cache"])[:, :, n:].any() and not a["v_exp"][:, :, n_blocks:].any()
    # the tails hold the partial block's keys and values as given
    start = n // BLOCK_N * BLOCK_N
    assert torch.equal(a["v_tail"][:, :, :n - start].float(), values[:, :, start:])
    assert torch.equal(a["k_tail"][:, :, :n - start].float(), keys[:, :, start:])
    # the keys are the native format's
    native, _, _ = fill(device, chunks=(100, 1, 63, 2, 20), layouts=["HND", "NHD", "HND", "NHD", "HND"],
                        v_scales=(1.0, 3.0, 9.0, 27.0, 81.0))
    for name in ("k_int8", "k_scale", "k_mean", "k_tail", "lens"):
        assert torch.equal(a[name], native.arrays[name])


def test_append_e4m3_rows_and_non_finite_values(device):
    cache, _, values = fill(device, chunks=(70,), v_format="e4m3")
    cache.arrays["lens"].copy_(torch.tensor([70, 66], dtype=torch.int32))
    cache.arrays["v_tail"][1, :, 2:] = float("nan")  # row 1's tail past its 66 tokens is never read
    _, k, v = make_qkv(9, 2, 2, 2, 1, 5, 64, device=device)
    v[0, 1, 2, 3] = float("inf")
    cache.append(k, v)
    held, _ = e4m3_values(cache, 75)
    for row, n_old in ((0, 70), (1, 66)):
        expect = torch.cat([values[row, :, :n_old], v[row].float()], 1).double()
        with np.errstate(invalid="ignore"):  # the infinite value's channel: checked apart below
            expect = torch.from_numpy(e4m3_cache_values(expect.cpu().numpy())).to(held.device)
        got = held[row, :, :n_old + 5]
        if row == 0:  # an infinite value is held as NaN (e4m3 has no infinity), its neighbours as before
            assert got[1, 70 + 2, 3].isnan()
            got, expect = got.clone(), expect.clone()
            got[1, 64:, 3] = expect[1, 64:, 3] = 0.0
        assert torch.equal(got, expect)
    assert not e4m3_tokens(cache.arrays["v_cache"])[1, :, 71:].any()


@pytest.mark.parametrize("n_q,heads_q,causal,masked,layout,v_format", [
    (1, 8, True, False, "HND", "native"), (16, 8, True, False, "NHD", "native"), (1, 2, False, True, "HND", "native"),
    (5, 4, True, True, "NHD", "native"), (1, 8, True, False, "HND", "e4m3"), (5, 4, True, True, "NHD", "e4m3")])
def test_attend_matches_the_reference(device, n_q, heads_q, causal, masked, layout, v_format):
    cache, keys, values = fill(device, capacity=640, chunks=(500, 1, 63, 2), v_format=v_format)
    n = keys.shape[2]
    q = make_qkv(7, 2, heads_q, 2, n_q, 1, 64, layout, device)[0]
    mask_id = random_mask(5, (2, heads_q, 1, 640 // BLOCK_N), 0.7).to(device) if masked else None
    out, lse = cache.attend(q, mask_id, causal, layout, return_lse=True)
    # garbage past each row's tokens is never read
    cache.arrays["k_int8"][:, :, n:] = 127
    if v_format == "e4m3":
        fill_past(cache.arrays["v_cache"], n, 0x7F)  # NaN
        cache.arrays["v_exp"][:, :, -(-n // BLOCK_N):] = 100
    else:
        cache.arrays["v_cache"][:, :, n:] = float("nan")
    again, _ = cache.attend(q, mask_id, causal, layout, return_lse=True)
    assert torch.equal(again, out)
    live_mask = None if mask_id is None else mask_id[..., :-(-n // BLOCK_N)]
    if v_format == "e4m3":  # the reference of what the cache holds: its e4m3 values (exact in fp16 here)
        values = torch.from_numpy(e4m3_cache_values(values.double().cpu().numpy())).float().to(values.device)
    k_all, v_all = (x.to(q.dtype) if layout == "HND" else x.to(q.dtype).transpose(1, 2) for x in (keys, values))
    assert torch.equal(v_all.float(), values if layout == "HND" else values.transpose(1, 2))
    ref_out, ref_lse = attention(q.float().cpu().numpy(), k_all.float().cpu().numpy(), v_all.float().cpu().numpy(),
                                 None if live_mask is None else live_mask.cpu().numpy(), causal, layout)
    out, lse = out.float().cpu().numpy(), lse.cpu().numpy()
    empty = np.isneginf(ref_lse)
    assert np.array_equal(np.isneginf(lse), empty)
    # The contract's bounds, or twice the plain call's error on the same keys where it misses them too (several
    # queries of a head share one INT8 block: at D=64 the plain call itself gives cosines of 0.99983-0.99987 here).
    plain_out, plain_lse = sparse_sageattn(q, k_all, v_all, live_mask, causal, layout, return_lse=True)
    plain_out, plain_lse = plain_out.float().cpu().numpy(), plain_lse.cpu().numpy()
    assert cosine(out, ref_out) >= min(COS_MIN, 1.0 - 2.0 * (1.0 - cosine(plain_out, ref_out)))
    assert rel_l1(out, ref_out) <= max(REL_L1_MAX, 2.0 * rel_l1(plain_out, ref_out))
    plain_error = np.abs(plain_lse[~empty] - ref_lse[~empty]).max(initial=0.0)
    assert np.abs(lse[~empty] - ref_lse[~empty]).max(initial=0.0) <= max(LSE_ABS_MAX, 2.0 * plain_error)


def test_errors_name_the_argument(device):
    cache = Int8KVCache(1, 2, 128, 64, torch.float16, device)
    k = torch.zeros(1, 2, 4, 64, dtype=torch.float16, device=device)
    with pytest.raises(TypeError, match="cache's dtype"):
        cache.append(k.float(), k)
    with pytest.raises(ValueError, match="must be \\(B, Hkv, n, D\\)"):
        cache.append(k[:, :1], k[:, :1])
    with pytest.raises(TypeError, match="q must have the cache's dtype"):
        cache.attend(torch.zeros(1, 2, 1, 64, device=device))
    with pytest.raises(ValueError, match="capacity must be a multiple of 64"):
        Int8KVCache(1, 2, 100, 64, torch.float16, device)
    with pytest.raises(ValueError, match="at most 128 queries"):
        cache.attend(torch.zeros(1, 2, 129, 64, dtype=torch.float16, device=device))
    with pytest.raises(ValueError, match="v_format must be one of"):
        Int8KVCache(1, 2, 128, 64, torch.float16, device, v_format="fp8")
    assert cache.tokens == 0 and not cache.arrays["lens"].any()  # nothing ran


@pytest.mark.parametrize("v_format,low,high", [("native", 0.75, 0.752), ("e4m3", 0.5, 0.507)])
def test_memory_against_a_bf16_cache(device, v_format, low, high):
    cache = Int8KVCache(1, 2, 32768, 128, torch.bfloat16, device, v_format)
    bf16_bytes = 2 * 2 * 32768 * 128 * 2  # K and V
    # K's scales, mean and 64-token tail: 0.1%; e4m3 V's exponents (one byte per 64 values) and tail: 0.4% more
    assert low < cache.nbytes / bf16_bytes <= high


def test_custom_ops_pass_opcheck(device):
    """The ops as torch.compile sees them: the schema (append mutates the cache arrays), the fake
    implementations, and dynamic shapes."""
    from sparse_sageattn.torch.kv_cache import _APPENDS, _attend

    for v_format, append in _APPENDS.items():
        cache = Int8KVCache(1, 2, 128, 64, torch.float16, device, v_format)
        _, k, v = make_qkv(1, 1, 2, 2, 1, 70, 64, device=device)
        a = cache.arrays
        torch.library.opcheck(append.custom_op, (k, v, *a.values(), "HND", True))
        cache.append(k, v)
        q = make_qkv(2, 1, 4, 2, 3, 1, 64, device=device)[0]
        torch.library.opcheck(_attend.custom_op, (q, None, a["k_int8"], a["v_cache"], a["lens"], a["k_scale"],
                                                  a["k_mean"], a.get("v_exp"), True, "HND", None, True))
