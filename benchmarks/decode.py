"""Decode attention: a few queries against a long KV cache, where attention is bound by reading K and V.

Rows (Nq, Nk, B), bf16, head dim 128, GQA Hq=32 / Hkv=8, HND layout (flags change dtype and layout):
  (1, 32768, 8)     one decode step, batch 8
  (16, 32768, 8)    16 queries at once (speculative decoding / chunked prefill tail)
  (1, 131072, 1)    one step on a 128k cache
  window+sink       (1, 131072, 1) with union_mask(1, Nk, window=--window, sink=--sink): does the time follow the
                    live fraction? Recorded: the live fraction (live key blocks / key blocks of the mask row), the
                    time, and live fraction x the dense time of the same shape (third row).

Systems:
  sparse_sageattn          sparse_sageattn(q, k, v, mask, is_causal=True): bottom-right causal, the decode
                           semantics (a no-op at Nq=1, kept so that the call is the one a decoder makes)
  sparse_sageattn_kv_lens  the same with kv_lens=full((B,), Nk) (valid keys per batch row of a preallocated
                           cache), if the installed sparse_sageattn takes that keyword; else skipped with a note
  sparse_sageattn_int8_cache  Int8KVCache.attend(q, mask, is_causal=True) over a cache filled with the row's
                           K and V (one append, not timed): INT8 K, V in its dtype, no pass over K. Also recorded:
                           the cache's bytes against the bf16 K+V bytes, and the ms of appending one token (the
                           mean of APPEND_CALLS calls between two synchronizations; SMOKE_CALLS on CPU)
  sparse_sageattn_jax_int8_cache  sparse_sageattn.jax's cache_attend under jax.jit over the same cache arrays
                           (dlpack), timed like the JAX call; its output is compared bitwise with the torch cache's
  sparse_sageattn_e4m3_cache, sparse_sageattn_jax_e4m3_cache  the same two with Int8KVCache(v_format="e4m3"): V in
                           FP8 e4m3 too (accuracy at the e4m3 floor, below the INT8 contract's bounds)
  sparse_sageattn_jax      sparse_sageattn.jax under jax.jit on the same bits (dlpack), timed as benchmarks/run.py
                           times JAX (groups of JAX_GROUP calls ending in block_until_ready); its output is
                           compared bitwise with the torch call's
  sdpa_flash, sdpa_cudnn   torch SDPA with that backend forced, enable_gqa=True, is_causal=False. SDPA's
                           is_causal is top-left aligned (query i sees keys j <= i), which for Nq < Nk would hide
                           almost the whole cache. At Nq=1 non-causal is exactly the decode semantics; at Nq=16 it
                           lets the 16 queries also see the <= 15 keys after their own positions: 120 of 524288
                           pairs per head, negligible work (torch.nn.attention.bias.causal_lower_right would be
                           exact). A backend that refuses the shape is recorded as "unsupported". On the window
                           row the peers get the live blocks' keys gathered beforehand (a compacted cache: the
                           same keys ours sees through its mask).

Per row and system: median ms (triton.testing.do_bench, warm-up excluded, inputs rotated over N_SETS random sets;
K with a per-channel offset, as tests/attention_cases.py draws it), K+V bytes of the inputs and TB/s (K+V bytes /
time), ours / peer, and cosine / relative L1 against the float64 sparse_sageattn.reference.attention on batch
rows 0 and B-1, query heads 0 and Hq-1 (with their kv heads), every query row. Then, outside the timed phase,
ours' kernels per call from torch.profiler (CUDA only). Results: <out>/decode-<gpu>-<date>.json, rewritten after
every row; a table last.

    python benchmarks/decode.py [--out DIR] [--layout NHD] [--window 8192] [--sink 256]     (GPU)
    python benchmarks/decode.py --targets [RESULTS.json]     the targets (and their verdicts from a results file)
    TRITON_INTERPRET=1 python benchmarks/decode.py --smoke --out /tmp/decode_smoke
        tiny shapes (fp16, hd64, Hq=4, Hkv=2) that check the plumbing; on CPU through the Triton interpreter and
        JAX's CPU path, SDPA's math backend as the peer, a few perf_counter calls instead of do_bench
"""
import argparse
import dataclasses
import datetime
import inspect
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # torch and JAX share the GPU

import numpy as np  # noqa: E402

from run import JAX_GROUP, SMOKE_CALLS, environment, results_path, time_group, time_ms, write_json  # noqa: E402

HEADS_Q, HEADS_KV, HEAD_DIM, DTYPE = 32, 8, 128, "bfloat16"
SHAPES = ((1, 32768, 8), (16, 32768, 8), (1, 131072, 1))  # (Nq, Nk, B)
WINDOW, SINK = 8192, 256
SMOKE = dict(heads_q=4, heads_kv=2, head_dim=64, dtype="float16", shapes=((1, 256, 2), (16, 256, 2), (1, 512, 1)),
             window=128, sink=64)
BLOCK_N = 64  # sparse_sageattn's key block
N_SETS = 2
K_OFFSET = 2.0  # scale of K's per-channel offset
PROFILED_CALLS = 10
TARGET_RATIO = 1.6  # ours <= 1.6x SDPA flash at each of the three dense rows

OURS, OURS_KV_LENS, OURS_JAX = "sparse_sageattn", "sparse_sageattn_kv_lens", "sparse_sageattn_jax"
OURS_INT8 = "sparse_sageattn_int8_cache"
OURS_JAX_INT8 = "sparse_sageattn_jax_int8_cache"
OURS_E4M3 = "sparse_sageattn_e4m3_cache"
OURS_JAX_E4M3 = "sparse_sageattn_jax_e4m3_cache"
APPEND_CALLS = 200  # one-token appends timed per row (each grows the cache: not a do_bench loop)
# Per V format of the INT8 cache: (torch system, JAX system, attention's bytes over the bf16 K+V bytes (INT8 K;
# V in its dtype, or e4m3 plus one exponent byte per 64 values), time limit against SDPA flash at Nq=1, memory
# limit against the bf16 cache's K+V)
CACHE_FORMATS = {
    "native": (OURS_INT8, OURS_JAX_INT8, 3 / 4, 0.8, 0.76),  # >= 1.25x faster
    "e4m3": (OURS_E4M3, OURS_JAX_E4M3, (2 + 1 / 64) / 4, 1 / 1.7, 0.51),  # >= 1.7x faster
}
OURS_JAX_KV_LENS = "sparse_sageattn_jax_kv_lens"  # if the JAX frontend takes kv_lens too
SDPA_FLASH, SDPA_CUDNN, SDPA_MATH = "sdpa_flash", "sdpa_cudnn", "sdpa_math"


@dataclasses.dataclass(frozen=True)
class Row:
    n_q: int
    n_k: int
    batch: int
    window: int | None = None  # with sink: the window+sink block mask
    sink: int = 0

    @property
    def name(self):
        return f"nq{self.n_q}_nk{self.n_k}_b{self.batch}" + ("_window_sink" if self.window else "")

    @property
    def label(self):
        return f"{self.n_q}x{self.n_k} B={self.batch}" + (" win+sink" if self.window else "")


def make_rows(shapes, window, sink):
    n_q, n_k, batch = shapes[-1]
    return [Row(*s) for s in shapes] + [Row(n_q, n_k, batch, window, sink)]


def kv_bytes(row, heads_kv, head_dim, itemsize):
    return 2 * row.batch * heads_kv * row.n_k * head_dim * itemsize


def supports_kv_lens(fn):
    return "kv_lens" in inspect.signature(fn).parameters


def first_and_last(n):
    return sorted({0, n - 1})


class Bench:
    """Measures the rows on one device; every framework import happens here."""

    def __init__(self, device, heads_q, heads_kv, head_dim, dtype, layout, jax_enabled=True):
        import torch
        import triton
        import triton.testing

        from sparse_sageattn import sparse_sageattn

        self.torch, self.triton, self.ours = torch, triton, sparse_sageattn
        self.device, self.cuda = device, device == "cuda"
        self.heads_q, self.heads_kv, self.head_dim = heads_q, heads_kv, head_dim
        self.dtype, self.layout = getattr(torch, dtype), layout
        self.group = JAX_GROUP if self.cuda else 1  # calls per timed group (run.py's time_group)
        self.peer = SDPA_FLASH if self.cuda else SDPA_MATH
        self.kv_lens = supports_kv_lens(sparse_sageattn)
        self.notes = []
        if not self.kv_lens:
            self.notes.append(f"{OURS_KV_LENS}: skipped, the installed sparse_sageattn has no kv_lens keyword")
        if not self.cuda:
            self.notes.append(f"no CUDA: the peer is SDPA's math backend ({SDPA_MATH}), {SDPA_CUDNN} is tried and "
                              f"refuses CPU tensors, times are {SMOKE_CALLS} perf_counter calls (plumbing only)")
        self.shape_key = self.sets = self.jax_sets = None
        self.jax = self.jax_fn = None
        self.jax_kv_lens = False
        if jax_enabled:
            self._setup_jax()
        else:
            self.notes.append(f"{OURS_JAX}: skipped (--no-jax)")

    def _setup_jax(self):
        try:
            import jax

            from sparse_sageattn.jax import sparse_sageattn as jax_attention
        except Exception as e:  # a missing JAX removes only its column
            self.notes.append(f"{OURS_JAX}: not importable: {type(e).__name__}: {e}")
            return
        self.jax = jax
        self.jax_fn = jax.jit(jax_attention, static_argnames=("is_causal", "tensor_layout"))
        self.jax_kv_lens = supports_kv_lens(jax_attention)

    # -- helpers -------------------------------------------------------------------------------------------------
    def sync(self):
        if self.cuda:
            self.torch.cuda.synchronize()

    def shape(self, batch, heads, n):
        return (batch, heads, n, self.head_dim) if self.layout == "HND" else (batch, n, heads, self.head_dim)

    def hnd(self, x):
        return x if self.layout == "HND" else x.transpose(1, 2)

    @property
    def seq_axis(self):
        return 2 if self.layout == "HND" else 1

    def inputs(self, row):
        """N_SETS random (q, k, v) sets of this shape (the same on every visit) and their JAX views."""
        key = (row.n_q, row.n_k, row.batch)
        if key != self.shape_key:
            torch = self.torch
            self.sets = self.jax_sets = None
            if self.cuda:
                torch.cuda.empty_cache()
            gen = torch.Generator(device=self.device).manual_seed(row.n_q * 1_000_003 + row.n_k * 17 + row.batch)

            def rand(*shape):
                return torch.randn(shape, generator=gen, device=self.device, dtype=self.dtype)

            self.sets = []
            for _ in range(N_SETS):
                q = rand(*self.shape(row.batch, self.heads_q, row.n_q))
                k = rand(*self.shape(row.batch, self.heads_kv, row.n_k)).add_(K_OFFSET * rand(self.head_dim))
                v = rand(*self.shape(row.batch, self.heads_kv, row.n_k))
                self.sets.append((q, k, v))
            if self.jax is not None:
                self.jax_sets = [tuple(self.to_jax(t) for t in s) for s in self.sets]
            self.shape_key = key
        return self.sets, self.jax_sets

    def to_jax(self, t):
        jax = self.jax
        try:
            return jax.dlpack.from_dlpack(t)  # shares torch's memory: the same bits
        except Exception:  # through the host, bit for bit
            bits = jax.numpy.asarray(t.view(self.torch.int16).cpu().numpy())
            return jax.lax.bitcast_convert_type(bits, jax.numpy.dtype(str(t.dtype).removeprefix("torch.")))

    def first_calls(self, fn, args, wait):
        """The first call's output and ms (compiles included), and the ms of a second call (what sizes the
        warm-up and repetitions of the timing)."""
        times = []
        for _ in range(2):
            start = time.perf_counter()
            out = fn(*args)
            wait(out)
            times.append((time.perf_counter() - start) * 1e3)
        return out, times[0], times[1]

    # -- one row -------------------------------------------------------------------------------------------------
    def mask(self, row):
        """(1, Kb) bool window+sink mask (None for a dense row), and whether it equals the union of its parts."""
        if not row.window:
            return None, None
        from sparse_sageattn.torch import sink_mask, sliding_window_mask, union_mask

        mask = union_mask(row.n_q, row.n_k, window=row.window, sink=row.sink, device=self.device)
        parts = sliding_window_mask(row.n_q, row.n_k, row.window, device=self.device) | sink_mask(
            row.n_q, row.n_k, row.sink, device=self.device)
        return mask, bool(self.torch.equal(mask, parts))

    def references(self, row, sets, mask):
        """float64 reference outputs (sampled batch rows, sampled query heads, every query row) for is_causal
        True and False (and, causal, over what an e4m3 cache holds of the values), from input set 0; and a function
        turning an HND output into the same sample."""
        torch = self.torch
        from sparse_sageattn import reference

        batch_rows, heads = first_and_last(row.batch), first_and_last(self.heads_q)
        group = self.heads_q // self.heads_kv
        rows_t = torch.tensor(batch_rows, device=self.device)
        heads_t = torch.tensor(heads, device=self.device)
        q, k, v = (self.hnd(x).index_select(0, rows_t) for x in sets[0])
        mask_np = None if mask is None else mask.cpu().numpy()

        def slice_np(x, h):
            return x[:, h:h + 1].double().cpu().numpy()

        held = {"e4m3": reference.e4m3_cache_values}  # what an e4m3 cache holds of the values
        refs = {}
        for causal, values in ((True, "given"), (False, "given"), (True, "e4m3")):
            refs[causal, values] = np.concatenate(
                [reference.attention(slice_np(q, h), slice_np(k, h // group),
                                     held.get(values, np.asarray)(slice_np(v, h // group)), mask_np, causal)[0]
                 for h in heads], axis=1)

        def sample(out_hnd):
            return out_hnd.index_select(0, rows_t).index_select(1, heads_t).double().cpu().numpy()

        def accuracy(got, causal=True, values="given"):
            """Against the reference over the values as given, or ("e4m3") over what an e4m3 cache holds."""
            ref = refs[causal, values]
            return dict(cosine=reference.cosine(got, ref), rel_l1=reference.rel_l1(got, ref))

        return sample, accuracy, dict(batch_rows=batch_rows, heads_q=heads, heads_kv=[h // group for h in heads])

    def run_row(self, row):
        torch = self.torch
        sets, jax_sets = self.inputs(row)
        mask, mask_matches_parts = self.mask(row)
        itemsize = sets[0][1].element_size()
        full_bytes = kv_bytes(row, self.heads_kv, self.head_dim, itemsize)
        n_kb = -(-row.n_k // BLOCK_N)
        live_blocks = n_kb if mask is None else int(mask[0].sum())
        record = dict(row=row.name, label=row.label, n_q=row.n_q, n_k=row.n_k, batch=row.batch,
                      heads_q=self.heads_q, heads_kv=self.heads_kv, head_dim=self.head_dim,
                      dtype=str(self.dtype).removeprefix("torch."), layout=self.layout, ours_is_causal=True,
                      sdpa_is_causal=False, window=row.window, sink=row.sink, kv_bytes=full_bytes,
                      q_bytes=sets[0][0].numel() * itemsize, key_blocks=n_kb, live_key_blocks=live_blocks,
                      live_fraction=live_blocks / n_kb, live_kv_bytes=full_bytes * live_blocks / n_kb,
                      peer=self.peer, systems={})
        if mask is not None:
            record["mask_equals_window_or_sink"] = mask_matches_parts
        sample, accuracy, sampled = self.references(row, sets, mask)
        record["reference_sample"] = sampled
        systems = record["systems"]
        kv_lens = torch.full((row.batch,), row.n_k, dtype=torch.int32, device=self.device)
        ours = self.ours
        layout = self.layout

        def run_ours(name, fn):
            try:
                with torch.inference_mode():
                    out, first_ms, call_ms = self.first_calls(fn, sets[0], lambda _: self.sync())
                    result = dict(status="ok", first_call_s=first_ms / 1e3,
                                  **accuracy(sample(self.hnd(out))), kv_bytes=full_bytes)
                    result["ms"] = time_ms(fn, sets, call_ms, self.cuda)
                    if name == OURS:  # timed like JAX too, for the JAX / torch ratio
                        result["ms_group"] = time_group(fn, sets, call_ms, lambda _: self.sync(), self.sync, self.cuda,
                                                        self.group)
                systems[name] = result
                return out
            except Exception as e:  # one failing system must not lose the others
                systems[name] = dict(status="error", error=f"{type(e).__name__}: {str(e)[:400]}")
                return None

        run_ours.systems = systems

        out_ours = run_ours(OURS, lambda q, k, v: ours(q, k, v, mask, True, layout))
        if self.kv_lens:
            out_kv = run_ours(OURS_KV_LENS, lambda q, k, v: ours(q, k, v, mask, True, layout, kv_lens=kv_lens))
            if out_kv is not None and out_ours is not None:
                systems[OURS_KV_LENS]["bitwise_equal_to_plain"] = bool(torch.equal(out_kv, out_ours))
        else:
            systems[OURS_KV_LENS] = dict(status="skipped", reason="sparse_sageattn has no kv_lens keyword")
        for v_format in CACHE_FORMATS:
            self._run_int8_cache(row, mask, sets, jax_sets, run_ours, sample, accuracy, full_bytes, v_format)

        if self.jax is not None:
            systems[OURS_JAX] = self._run_jax(row, mask, jax_sets, sample, accuracy, out_ours, full_bytes)
            if self.jax_kv_lens:
                systems[OURS_JAX_KV_LENS] = self._run_jax(row, mask, jax_sets, sample, accuracy, out_ours,
                                                          full_bytes, with_kv_lens=True)

        # Peers: on the window row, the live blocks' keys gathered into a compacted cache.
        peer_sets = sets
        if mask is not None:
            blocks = mask[0].nonzero().flatten()
            keys = (blocks[:, None] * BLOCK_N + torch.arange(BLOCK_N, device=self.device)).flatten()
            keys = keys[keys < row.n_k]
            peer_sets = [(q, k.index_select(self.seq_axis, keys), v.index_select(self.seq_axis, keys))
                         for q, k, v in sets]
            record["peer_keys"] = int(keys.numel())
        peer_bytes = 2 * peer_sets[0][1].numel() * itemsize
        from torch.nn.attention import SDPBackend
        backends = {SDPA_FLASH: SDPBackend.FLASH_ATTENTION, SDPA_CUDNN: SDPBackend.CUDNN_ATTENTION,
                    SDPA_MATH: SDPBackend.MATH}
        for name in (self.peer, SDPA_CUDNN):
            systems[name] = self._run_sdpa(backends[name], peer_sets, sample, accuracy, peer_bytes)
        del peer_sets

        for result in systems.values():
            if "ms" in result:
                result["tb_s"] = result["kv_bytes"] / result["ms"] / 1e9
                if mask is not None and result["kv_bytes"] == full_bytes:
                    result["live_tb_s"] = record["live_kv_bytes"] / result["ms"] / 1e9
        ours_ms = systems[OURS].get("ms")
        record["ratios"] = {name: ours_ms / r["ms"] for name, r in systems.items()
                            if ours_ms and name.startswith("sdpa") and "ms" in r}
        if OURS_JAX in systems and "ms" in systems[OURS_JAX] and "ms_group" in systems[OURS]:
            record["jax_over_torch_group"] = systems[OURS_JAX]["ms"] / systems[OURS]["ms_group"]
        record["jax_bitwise_equal"] = systems.get(OURS_JAX, {}).get("bitwise_equal_to_torch")
        return record

    def _run_int8_cache(self, row, mask, sets, jax_sets, run_ours, sample, accuracy, full_bytes, v_format):
        torch = self.torch
        name, jax_name, read_fraction = CACHE_FORMATS[v_format][:3]
        try:
            from sparse_sageattn.torch.kv_cache import Int8KVCache
        except ImportError:
            self.notes.append(f"{name}: skipped, the installed sparse_sageattn has no Int8KVCache")
            return
        append_calls = APPEND_CALLS if self.cuda else SMOKE_CALLS
        capacity = -(-(row.n_k + append_calls) // BLOCK_N) * BLOCK_N
        if mask is not None:  # the mask's key blocks are the cache's: none past the row's keys
            mask = torch.nn.functional.pad(mask, (0, capacity // BLOCK_N - mask.shape[-1]))
        caches = {}
        with torch.inference_mode():
            for _, k, v in sets:
                caches[id(k)] = Int8KVCache(row.batch, self.heads_kv, capacity, self.head_dim, self.dtype,
                                            self.device, v_format)
                caches[id(k)].append(k, v, self.layout)
        layout = self.layout
        out_torch = run_ours(name, lambda q, k, v: caches[id(k)].attend(q, mask, True, layout))
        cache = caches[id(sets[0][1])]
        record = run_ours.systems[name]
        if v_format == "e4m3" and out_torch is not None:  # its own contract: the reference of the values it holds
            record["vs_held_values"] = accuracy(sample(self.hnd(out_torch)), values="e4m3")
        read_bytes = int(full_bytes * read_fraction)  # what attention reads
        if self.jax is not None:  # before the appends below change the cache
            run_ours.systems[jax_name] = self._run_jax_int8_cache(row, mask, sets, jax_sets, caches, out_torch,
                                                                 accuracy, read_bytes, v_format)
        if record.get("status") == "ok":
            record["kv_bytes"] = read_bytes
            record["cache_bytes"] = cache.nbytes
            record["cache_over_bf16_kv"] = cache.nbytes / full_bytes
            q, k, v = sets[0]
            k_new = k.narrow(self.seq_axis, 0, 1).contiguous()
            v_new = v.narrow(self.seq_axis, 0, 1).contiguous()
            with torch.inference_mode():
                cache.append(k_new, v_new, layout)  # warm-up (compiles)
                self.sync()
                start = time.perf_counter()
                for _ in range(append_calls - 1):
                    cache.append(k_new, v_new, layout)
                self.sync()
            record["append_one_token_ms"] = (time.perf_counter() - start) * 1e3 / (append_calls - 1)
        del caches

    def _run_jax_int8_cache(self, row, mask, sets, jax_sets, caches, out_torch, accuracy, nbytes, v_format):
        jax = self.jax
        try:
            from sparse_sageattn.jax import Int8KVCache, cache_attend
        except ImportError:
            return dict(status="skipped", reason="the installed sparse_sageattn.jax has no Int8KVCache")
        mask_j = None if mask is None else jax.numpy.asarray(mask.cpu().numpy())
        layout = self.layout
        jax_caches = {id(jk): Int8KVCache(**{n: self.to_jax(a) for n, a in caches[id(k)].arrays.items()},
                                          filled=True)
                      for (_, k, _), (_, jk, _) in zip(sets, jax_sets)}
        attend = jax.jit(lambda cache, q: cache_attend(cache, q, mask_j, True, layout))

        def fn(q, k, v):
            return attend(jax_caches[id(k)], q)

        return self._time_jax(row, fn, jax_sets, accuracy, out_torch, nbytes, v_format)

    def _run_jax(self, row, mask, jax_sets, sample, accuracy, out_torch, nbytes, with_kv_lens=False):
        jax = self.jax
        jnp = jax.numpy
        extra = {}
        if with_kv_lens:
            extra["kv_lens"] = jnp.full((row.batch,), row.n_k, dtype=jnp.int32)
        mask_j = None if mask is None else jnp.asarray(mask.cpu().numpy())
        layout = self.layout

        def fn(q, k, v):
            return self.jax_fn(q, k, v, mask_j, is_causal=True, tensor_layout=layout, **extra)

        return self._time_jax(row, fn, jax_sets, accuracy, out_torch, nbytes)

    def _time_jax(self, row, fn, jax_sets, accuracy, out_torch, nbytes, v_format="native"):
        """A JAX system's record: first call, accuracy on the sampled rows, bits against the torch output, and
        time_group's ms."""
        layout = self.layout
        try:
            out, first_ms, call_ms = self.first_calls(fn, jax_sets[0], lambda o: o.block_until_ready())
            out_np = np.asarray(out)
            got = out_np.astype(np.float32)
            if layout == "NHD":
                got = got.transpose(0, 2, 1, 3)
            batch_rows, heads = first_and_last(row.batch), first_and_last(self.heads_q)
            sampled = got[batch_rows][:, heads].astype(np.float64)
            result = dict(status="ok", first_call_s=first_ms / 1e3, **accuracy(sampled), kv_bytes=nbytes)
            if v_format == "e4m3":
                result["vs_held_values"] = accuracy(sampled, values="e4m3")
            if out_torch is not None:
                torch_bits = out_torch.view(self.torch.int16).cpu().numpy()
                result["bitwise_equal_to_torch"] = bool(np.array_equal(out_np.view(np.int16), torch_bits))
                if not result["bitwise_equal_to_torch"]:
                    torch_hnd = self.hnd(out_torch).float().cpu().numpy()
                    result["max_abs_diff_to_torch"] = float(np.abs(got - torch_hnd).max())
            del out
            result["ms"] = time_group(fn, jax_sets, call_ms, lambda o: o.block_until_ready(), self.sync, self.cuda,
                                      self.group)
            return result
        except Exception as e:
            return dict(status="error", error=f"{type(e).__name__}: {str(e)[:400]}")

    def _run_sdpa(self, backend, sets, sample, accuracy, nbytes):
        torch = self.torch
        from torch.nn.attention import sdpa_kernel

        hnd = self.hnd

        def fn(q, k, v):
            with sdpa_kernel(backend):
                return torch.nn.functional.scaled_dot_product_attention(hnd(q), hnd(k), hnd(v), is_causal=False,
                                                                        enable_gqa=True)

        try:
            with torch.inference_mode():
                out, first_ms, call_ms = self.first_calls(fn, sets[0], lambda _: self.sync())
                result = dict(status="ok", first_call_s=first_ms / 1e3, **accuracy(sample(out), causal=False),
                              kv_bytes=nbytes)
                result["ms"] = time_ms(fn, sets, call_ms, self.cuda)
            return result
        except Exception as e:  # the backend refuses this shape / device
            return dict(status="unsupported", error=f"{type(e).__name__}: {str(e)[:400]}")

    def kernels_us(self, row):
        """Device µs per call of each kernel of our torch call (torch.profiler, PROFILED_CALLS calls)."""
        torch = self.torch
        from torch.autograd import DeviceType
        from torch.profiler import ProfilerActivity, profile

        sets, _ = self.inputs(row)
        mask, _ = self.mask(row)

        def fn(q, k, v):
            return self.ours(q, k, v, mask, True, self.layout)

        with torch.inference_mode():
            fn(*sets[0])
            self.sync()
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for i in range(PROFILED_CALLS):
                    fn(*sets[i % len(sets)])
                self.sync()
        return {e.key: e.self_device_time_total / PROFILED_CALLS for e in prof.key_averages()
                if e.device_type == DeviceType.CUDA and e.self_device_time_total > 0}


# ---- summaries ----------------------------------------------------------------------------------------------------

def add_proportional(records):
    """On a masked row, per system of ours: the dense row's time of the same shape, live fraction x that time,
    and the measured time over it (1 = time follows the live fraction)."""
    dense = {(r["n_q"], r["n_k"], r["batch"]): r for r in records if not r["window"]}
    for r in records:
        base = dense.get((r["n_q"], r["n_k"], r["batch"]))
        if not r["window"] or base is None:
            continue
        r["proportional"] = {}
        for name, result in r["systems"].items():
            dense_ms = base["systems"].get(name, {}).get("ms")
            if name.startswith(OURS) and "ms" in result and dense_ms:
                scaled = r["live_fraction"] * dense_ms
                r["proportional"][name] = dict(dense_ms=dense_ms, live_fraction_x_dense_ms=scaled,
                                               ms=result["ms"], over_proportional=result["ms"] / scaled)


TARGETS_TEXT = (f"ours (sparse_sageattn, torch) <= {TARGET_RATIO}x the SDPA flash time, medians on the same inputs, "
                f"at each of the three dense rows (Nq, Nk, B) = " + ", ".join(map(str, SHAPES))
                + "; at the Nq=1 rows the INT8 cache's attend " + ", ".join(
                    f"with {v_format} V <= {limit:.3f}x (>= {1 / limit:.2f}x faster) and its memory <= {memory}x "
                    "the bf16 K+V bytes" for v_format, (_, _, _, limit, memory) in CACHE_FORMATS.items()))


def target_verdicts(records):
    verdicts = []
    for r in records:
        if r["window"]:
            continue
        ours, peer = r["systems"].get(OURS, {}).get("ms"), r["systems"].get(r["peer"], {}).get("ms")
        ratio = ours / peer if ours and peer else None
        verdicts.append(dict(row=r["row"], label=r["label"], peer=r["peer"], ours_ms=ours, peer_ms=peer,
                             ratio=ratio, limit=TARGET_RATIO,
                             verdict="NO DATA" if ratio is None else "PASS" if ratio <= TARGET_RATIO else "MISS"))
        for v_format, (name, _, _, limit, memory_limit) in CACHE_FORMATS.items():
            cached = r["systems"].get(name, {})
            if r["n_q"] != 1 or "ms" not in cached:
                continue
            ratio = cached["ms"] / peer if peer else None
            memory = cached["cache_over_bf16_kv"]
            verdicts.append(dict(row=f"{r['row']}_{v_format}", label=f"{r['label']} {v_format}", peer=r["peer"],
                                 ours_ms=cached["ms"], peer_ms=peer, ratio=ratio, limit=limit, memory=memory,
                                 verdict="NO DATA" if ratio is None else "PASS"
                                 if ratio <= limit and memory <= memory_limit else "MISS"))
    return verdicts


def print_targets(data=None):
    print("Target: " + TARGETS_TEXT)
    if data is None:
        return
    gpu = data["meta"].get("gpu")
    for v in data.get("targets") or target_verdicts(data["records"]):
        detail = "" if v["ratio"] is None else f" {v['ours_ms']:.3f} / {v['peer_ms']:.3f} ms = {v['ratio']:.2f}x"
        print(f"  {v['label']:<22} {v['verdict']:<7}{detail} ({v['peer']}, {gpu})")


def fmt(value, spec, missing="—"):
    return missing if value is None else format(value, spec)


def print_table(records, peer):
    head = (f"{'row':<22} {'Nq':>3} {'Nk':>7} {'B':>2} {'ours ms':>8} {peer + ' ms':>14} {'ratio':>6} "
            f"{'TB/s':>6} {'cosine':>8} {'cuDNN ms':>9} {'JAX ms':>8} {'JAX==torch':>10} {'kv_lens ms':>10} "
            f"{'target':>7}")
    cache_head = (f"{'row':<22} {'V':>6} {'cache ms':>8} {'/peer':>6} {'TB/s':>6} {'cosine':>8} {'memory':>7} "
                  f"{'append ms':>9} {'JAX ms':>8} {'==torch':>7} {'target':>7}")
    print(head)
    verdicts = {v["row"]: v["verdict"] for v in target_verdicts(records)}
    for r in records:
        s = r["systems"]

        def get(name, key):
            return s.get(name, {}).get(key)

        bitwise = r.get("jax_bitwise_equal")
        print(f"{r['label']:<22} {r['n_q']:>3} {r['n_k']:>7} {r['batch']:>2} {fmt(get(OURS, 'ms'), '8.3f'):>8} "
              f"{fmt(get(peer, 'ms'), '.3f'):>14} {fmt(r['ratios'].get(peer), '.2f'):>6} "
              f"{fmt(get(OURS, 'tb_s'), '.2f'):>6} {fmt(get(OURS, 'cosine'), '.5f'):>8} "
              f"{fmt(get(SDPA_CUDNN, 'ms'), '.3f'):>9} {fmt(get(OURS_JAX, 'ms'), '.3f'):>8} "
              f"{'—' if bitwise is None else str(bitwise):>10} {fmt(get(OURS_KV_LENS, 'ms'), '.3f'):>10} "
              f"{verdicts.get(r['row'], '')}")
    print(cache_head)
    for r in records:
        s = r["systems"]
        for v_format, (name, jax_name, _, _, _) in CACHE_FORMATS.items():
            cached, jax_cached = s.get(name, {}), s.get(jax_name, {})
            peer_ms = s.get(peer, {}).get("ms")
            ratio = cached["ms"] / peer_ms if "ms" in cached and peer_ms else None
            print(f"{r['label']:<22} {v_format:>6} {fmt(cached.get('ms'), '.3f'):>8} {fmt(ratio, '.2f'):>6} "
                  f"{fmt(cached.get('tb_s'), '.2f'):>6} {fmt(cached.get('cosine'), '.5f'):>8} "
                  f"{fmt(cached.get('cache_over_bf16_kv'), '.3f'):>7} {fmt(cached.get('append_one_token_ms'), '.3f'):>9} "
                  f"{fmt(jax_cached.get('ms'), '.3f'):>8} {str(jax_cached.get('bitwise_equal_to_torch')):>7} "
                  f"{verdicts.get(r['row'] + '_' + v_format, '-'):>7}")


# ---- the command --------------------------------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny shapes that check the plumbing (CPU too)")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    p.add_argument("--layout", choices=("HND", "NHD"), default="HND")
    p.add_argument("--dtype", choices=("bfloat16", "float16"), default=None,
                   help=f"default {DTYPE} ({SMOKE['dtype']} with --smoke: the interpreter runs fp16 only)")
    p.add_argument("--window", type=int, default=None, help=f"window+sink row: window keys (default {WINDOW})")
    p.add_argument("--sink", type=int, default=None, help=f"window+sink row: sink keys (default {SINK})")
    p.add_argument("--no-jax", action="store_true", help="skip the JAX frontend")
    p.add_argument("--no-kernels", action="store_true", help="skip the torch.profiler kernel breakdown")
    p.add_argument("--targets", nargs="?", const="", metavar="RESULTS.json",
                   help="print the targets (with a results file: the verdicts in it) and exit")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.targets is not None:
        print_targets(json.loads(Path(args.targets).read_text()) if args.targets else None)
        return 0
    import torch

    cuda = torch.cuda.is_available()
    if not cuda:
        if not args.smoke:
            print("no CUDA device: only --smoke runs here", file=sys.stderr)
            return 2
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before the kernels' import
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import triton


    device = "cuda" if cuda else "cpu"
    size = SMOKE if args.smoke else dict(heads_q=HEADS_Q, heads_kv=HEADS_KV, head_dim=HEAD_DIM, dtype=DTYPE,
                                         shapes=SHAPES, window=WINDOW, sink=SINK)
    dtype = args.dtype or size["dtype"]
    window = size["window"] if args.window is None else args.window
    sink = size["sink"] if args.sink is None else args.sink
    rows = make_rows(size["shapes"], window, sink)
    bench = Bench(device, size["heads_q"], size["heads_kv"], size["head_dim"], dtype, args.layout,
                  jax_enabled=not args.no_jax)

    meta = environment(torch, triton, device)
    if bench.jax is not None:
        meta["jax"] = bench.jax.__version__
        meta["jax_backend"] = bench.jax.default_backend()
    meta.update(date=datetime.date.today().isoformat(), argv=sys.argv[1:] if argv is None else list(argv),
                smoke=args.smoke, heads_q=size["heads_q"], heads_kv=size["heads_kv"], head_dim=size["head_dim"],
                dtype=dtype, layout=args.layout, window=window, sink=sink, n_sets=N_SETS, k_offset=K_OFFSET,
                timing="triton.testing.do_bench median" if cuda else f"median of {SMOKE_CALLS} perf_counter calls",
                jax_group=bench.group, peer=bench.peer, kv_lens_supported=bench.kv_lens,
                jax_kv_lens_supported=bench.jax_kv_lens, notes=bench.notes)
    os.makedirs(args.out, exist_ok=True)
    name = os.path.basename(results_path(args.out, meta["gpu"], "", meta["date"]))  # <gpu>-<date>.json
    path = os.path.join(args.out, "decode-" + name)
    data = dict(schema=1, meta=meta, records=[], targets=[])
    print(f"{meta['gpu']} | torch {meta['torch']} | triton {meta['triton']} | jax {meta.get('jax')} | "
          f"{dtype} {args.layout} Hq={size['heads_q']} Hkv={size['heads_kv']} D={size['head_dim']} -> {path}",
          flush=True)
    for note in bench.notes:
        print(f"  note: {note}", flush=True)

    start = time.monotonic()
    for row in rows:
        record = bench.run_row(row)
        data["records"].append(record)
        cells = " | ".join(f"{name} {r['ms']:.3f}" if "ms" in r else f"{name} {r['status']}"
                           for name, r in record["systems"].items())
        print(f"[{time.monotonic() - start:5.0f}s] {row.label:<22} {cells}", flush=True)
        write_json(path, data)
    if cuda and not args.no_kernels:  # after every timed call: the profiler stays out of the timings
        for row, record in zip(rows, data["records"]):
            try:
                record["kernels_us"] = bench.kernels_us(row)
            except Exception as e:
                record["kernels_error"] = f"{type(e).__name__}: {str(e)[:400]}"
    add_proportional(data["records"])
    data["targets"] = target_verdicts(data["records"])
    data["meta"]["elapsed_s"] = round(time.monotonic() - start, 1)
    write_json(path, data)

    errors = [(r["label"], name, s["error"]) for r in data["records"] for name, s in r["systems"].items()
              if s["status"] in ("error", "unsupported")]
    for label, name, err in errors:
        print(f"{'unsupported' if name.startswith('sdpa') else 'error'}: {name} at {label}: {err[:200]}")
    for r in data["records"]:
        for name, p in r.get("proportional", {}).items():
            print(f"{r['label']}: live fraction {r['live_fraction']:.4f}; {name} {p['ms']:.3f} ms against "
                  f"live fraction x dense {p['live_fraction_x_dense_ms']:.3f} ms ({p['over_proportional']:.2f}x)")
    print(f"wrote {path}")
    print_targets(data)
    print_table(data["records"], bench.peer)
    return 0


if __name__ == "__main__":
    sys.exit(main())
