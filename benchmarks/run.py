"""The benchmark suite of the speed targets: sparse_sageattn (torch and JAX) against SDPA flash, SDPA cuDNN, compiled
FlexAttention with the identical block mask and sageattention 1.0.6, and the JAX call against
`jax.nn.dot_product_attention(implementation="cudnn")`, on one GPU, in one process.

On the lent GPU (device tool, carry .whl, timeout_s 600), from the repo root -- one call, about 8 minutes:

    bash benchmarks/run_gpu.sh --quick

Here, without a GPU: `python benchmarks/run.py --quick --dry-run` lists the configurations and the time estimate
(`--dry-run` alone: the full grid). Afterwards, on any machine: `python benchmarks/plot.py RESULTS.json` (PNGs)
and `python benchmarks/report.py RESULTS.json --readme README.md` (the targets, the README table).

Every configuration (N, head dim, mask, causal, dtype, batch and heads) records per system: the median time
(triton.testing.do_bench, warm-up excluded, inputs rotated over N_SETS random sets, end to end: quantization and
block lists included), dense-equivalent and effective TOPS, peak extra device memory of one call, and cosine /
relative L1 against the float64 reference (sparse_sageattn.reference) on sampled rows of two heads. For this
package also a kernel-only breakdown (each launch of the core plan timed alone) and the memory bound.
Masks: random block masks with exactly round(density * Kb) live key blocks in every row (density 1: no mask), or
the causal sliding window + sink of `sparse_sageattn.torch.union_mask` (its `density` is the share of the dense
causal work it leaves). The JAX peer runs on NHD inputs (Flax's layout), next to our JAX call on the same NHD
arrays (`sparse_sageattn_jax_nhd`); a shape it refuses is recorded as `unsupported`, not as an error.
The results file <out>/<gpu>-<date>[-tag].json is rewritten after every configuration, so a run stopped by its
time budget or a kill keeps what it measured. Configurations run in order of the targets they serve; one whose
estimate would pass --budget-s is skipped and listed as such.

`--smoke` runs a tiny grid on whatever is there (CPU: the Triton interpreter and JAX's CPU path); it checks the
plumbing, its times mean nothing.
"""
import argparse
import dataclasses
import datetime
import functools
import json
import math
import os
import platform
import subprocess
import sys
import time

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # torch and JAX share the GPU

import numpy as np  # noqa: E402

PROCESS_START = time.monotonic()

BATCH, HEADS = 2, 32  # the sweep's shape; the target rows below name their own
SEQ_LENS = (1024, 2048, 4096, 8192, 16384, 32768)
HEAD_DIMS = (64, 128)
DENSITIES = (1.0, 0.5, 0.25, 0.1)
DTYPES = ("float16", "bfloat16")
BLOCK_M, BLOCK_N = 128, 64  # sparse_sageattn's mask blocks; FlexAttention gets the same
N_SETS = 2  # random input sets the timed calls rotate over
REF_ROWS = 64  # accuracy: batch 0, heads 0 and H/2, REF_ROWS sampled query rows plus the first and last
JAX_GROUP = 4  # calls per timed group (see time_group)
QUICK_BUDGET_S = 480  # a device command may run 600 s: install, plots and the report need the rest
WINDOW, SINK = 1024, 4  # the causal sliding window + sink of the B=2 H=32 rows (P2)
SHORT = dict(batch=8, heads=HEADS, kv_heads=HEADS)  # P6: B=8 N=2048 causal hd128
LONG_GQA = dict(batch=1, heads=32, kv_heads=8)  # B=1 N=32k, 4 query heads per kv head, bf16
LONG_N, LONG_WINDOW = 32768, 4096

# Systems in run order. DENSE_ONLY ones run at density 1 only (the peers take no block mask; FP8 is P4's, dense).
OURS, OURS_JAX, FLEX = "sparse_sageattn", "sparse_sageattn_jax", "flex_attention"
OURS_FP8 = "sparse_sageattn_fp8"  # the torch call with pv_dtype="fp8" (P4)
SDPA_FLASH, SDPA_CUDNN, SAGE = "sdpa_flash", "sdpa_cudnn", "sageattention_1.0.6"
# The JAX pair: our JAX call and jax.nn.dot_product_attention(implementation="cudnn"), both on the same NHD arrays
OURS_JAX_NHD, JAX_CUDNN = "sparse_sageattn_jax_nhd", "jax_cudnn"
SYSTEMS = (OURS, OURS_JAX, OURS_FP8, FLEX, SDPA_CUDNN, SDPA_FLASH, SAGE, OURS_JAX_NHD, JAX_CUDNN)
JAX_PEER = (OURS_JAX_NHD, JAX_CUDNN)
DENSE_ONLY = (OURS_FP8, SDPA_CUDNN, SDPA_FLASH, SAGE) + JAX_PEER
WINDOW_SYSTEMS = (OURS, OURS_JAX, FLEX)  # P2's: the peer that takes the identical mask
# What the memory bound allows one call beyond its output: the int8 copies of q and k, their scales, the block
# lists, for bf16 inputs the fp16 copy of V the attention reads, and the Gluon kernel's TMA descriptors (256
# bytes a program) (names of the core plan's buffers; a plan holds those it uses).
MEMORY_BOUND_BUFFERS = ("q_int8", "k_int8", "q_scale", "k_scale", "block_counts", "block_indices", "v_fp16",
                        "descriptor_scratch")
ITEMSIZE = {"int8": 1, "uint8": 1, "int32": 4, "float32": 4, "float16": 2, "bfloat16": 2}  # numpy has no bfloat16

# Estimate model. Guesses from the peers' published numbers, ours from the 2026-11-25 H100 run; correct
# them from a run's meta.timing.
RATE_TOPS = {OURS: 400, OURS_JAX: 380, OURS_FP8: 450, FLEX: 400, SDPA_CUDNN: 580, SDPA_FLASH: 340, SAGE: 410,
             OURS_JAX_NHD: 380, JAX_CUDNN: 560}
STARTUP_S = 25  # imports, CUDA and JAX start
FLEX_FIRST_COMPILE_S = 25  # the first torch.compile in the process (2026-11-25 run.log: ~25 s)
FLEX_COMPILE_S = 10  # each new (N, head dim, dtype, causal), dynamic=False (that log: 5-14 s)
# Triton compiles of the core kernels (lengths are not specialised): the attention kernel per (head dim, dtype,
# causal), the quantize/sums kernels per (head dim, dtype), block lists per (mask or not, causal). jax-triton
# compiles the same kernels again, outside Triton's cache.
ATTENTION_COMPILE_S = 3
QUANTIZE_COMPILE_S = 3
BLOCK_LISTS_COMPILE_S = 1
JAX_TRACE_S = 1.5  # each new shape: a jit trace and an XLA compile (the Triton kernels are cached by signature)
JAX_CUDNN_COMPILE_S = 3  # each new shape: XLA compile and cuDNN graph build (guess)
SAGE_COMPILE_S = 4
REF_S_PER_KEY = 4e-5  # float64 numpy reference, two heads x ~66 rows, per key


@dataclasses.dataclass(frozen=True)
class Config:
    n: int
    head_dim: int
    density: float  # random mask: live share of every row's key blocks (1: no mask); window: share of causal work
    causal: bool
    dtype: str
    systems: tuple
    breakdown: bool  # time each launch of the plan alone
    batch: int = BATCH
    heads: int = HEADS
    kv_heads: int = HEADS
    window: int = 0  # > 0: the causal sliding window + sink mask instead of a random one
    sink: int = 0

    @property
    def mask(self):
        return f"window{self.window}+sink{self.sink}" if self.window else "random"

    def label(self):
        mask = f"win{self.window}+sink{self.sink} d={self.density:.3f}" if self.window else f"d={self.density:g}"
        shape = "" if (self.batch, self.heads, self.kv_heads) == (BATCH, HEADS, HEADS) else (
            f" B={self.batch} H={self.heads}" + (f"/{self.kv_heads}" if self.kv_heads != self.heads else ""))
        return (f"hd{self.head_dim} N={self.n} {mask} {'causal' if self.causal else 'full'} "
                f"{'fp16' if self.dtype == 'float16' else 'bf16'}{shape}")

    def key(self):
        return dict(n=self.n, head_dim=self.head_dim, density=self.density, causal=self.causal, dtype=self.dtype,
                    mask=self.mask, window=self.window, sink=self.sink, batch=self.batch, heads=self.heads,
                    kv_heads=self.kv_heads)


def block_pair_counts(n, causal):
    """(Qb, Kb) int64 numpy: visible (query, key) pairs inside each 128x64 block (Nq = Nk = n, a multiple of 128)."""
    n_qb, n_kb = n // BLOCK_M, n // BLOCK_N
    if not causal:
        return np.full((n_qb, n_kb), BLOCK_M * BLOCK_N, dtype=np.int64)
    first_row = np.arange(n_qb, dtype=np.int64)[:, None] * BLOCK_M
    first_key = np.arange(n_kb, dtype=np.int64)[None, :] * BLOCK_N
    counts = np.zeros((n_qb, n_kb), dtype=np.int64)
    for r in range(BLOCK_M):  # query row first_row + r sees keys <= itself
        counts += np.clip(first_row + r + 1 - first_key, 0, BLOCK_N)
    return counts


@functools.lru_cache(maxsize=None)
def window_density(n, window, sink):
    """Visible pairs of the causal window + sink mask over those of dense causal attention."""
    from sparse_sageattn import masks  # numpy: the one definition behind sparse_sageattn.torch's builders

    live = masks.union_mask(n, n, window=window, sink=sink) & masks.causal_mask(n, n)
    counts = block_pair_counts(n, True)
    return round(float((counts * live).sum() / counts.sum()), 4)


def window_config(n, head_dim, dtype, systems, breakdown, window=WINDOW, sink=SINK, **shape):
    """A causal sliding window + sink configuration (its density computed from the mask)."""
    return Config(n, head_dim, window_density(n, window, sink), True, dtype, tuple(systems), breakdown,
                  window=window, sink=sink, **shape)


def _systems(density, causal, flex_causal=True, jax_peer=False):
    names = [s for s in SYSTEMS if (density == 1.0 or s not in DENSE_ONLY) and (jax_peer or s not in JAX_PEER)]
    if causal and not flex_causal:
        names.remove(FLEX)
    return tuple(names)


def _without(names, *drop):
    return tuple(s for s in names if s not in drop)


def _priority(c: Config):
    """Lower runs first: the N=8k sweep points of P1-P5 (fp16 every density, bf16 dense), the window + sink and
    B=8 N=2048 rows (P2, P6), the rest of N=8k, N=16k, the N=32k rows, then the other lengths."""
    sweep = (c.batch, c.heads, c.kv_heads) == (BATCH, HEADS, HEADS)
    if sweep and c.n == 8192 and not c.window and not c.causal and (c.dtype == "float16" or c.density == 1.0):
        tier = 0
    elif (c.window and c.n == 8192) or (c.n == 2048 and c.batch == SHORT["batch"]):
        tier = 1
    elif c.n == 8192:
        tier = 2
    elif c.n == 16384:
        tier = 3
    elif c.n == LONG_N:
        tier = 4
    else:
        tier = 5
    return tier, c.dtype != "float16", -c.head_dim, c.window > 0, c.causal, -c.density


def target_rows(dense_systems, short_dtypes=DTYPES):
    """The rows beyond the B=2 H=32 sweep: B=8 N=2048 causal hd128 (P6) and B=1 N=32k GQA bf16, causal dense
    (P1, the JAX peer) and causal window 4096 + sink (P2). `dense_systems(dtype)`: the systems of a dense row."""
    rows = [Config(2048, 128, 1.0, True, dtype, dense_systems(dtype), True, **SHORT) for dtype in short_dtypes]
    rows.append(Config(LONG_N, 128, 1.0, True, "bfloat16", _without(dense_systems("bfloat16"), SAGE, OURS_FP8),
                       True, **LONG_GQA))
    rows.append(window_config(LONG_N, 128, "bfloat16", WINDOW_SYSTEMS, True, window=LONG_WINDOW, **LONG_GQA))
    return rows


def full_grid():
    """Every N, head dim, density, causality and dtype with every system (the JAX peer on the bf16 dense rows), the
    causal window + sink at N 8k-32k, and the target rows."""
    configs = [Config(n, hd, d, causal, dtype, _systems(d, causal, jax_peer=dtype == "bfloat16"),
                      d == 1.0 or n == 8192)
               for dtype in DTYPES for n in SEQ_LENS for hd in HEAD_DIMS for causal in (False, True)
               for d in DENSITIES]
    configs += [window_config(n, hd, dtype, WINDOW_SYSTEMS, n == 8192)
                for dtype in DTYPES for n in (8192, 16384, 32768) for hd in HEAD_DIMS]
    configs += target_rows(lambda dtype: _systems(1.0, True, jax_peer=dtype == "bfloat16"))
    return sorted(configs, key=_priority)


def quick_grid():
    """The targets' points in one device call. N=8k: fp16 every head dim, density and causality with FlexAttention
    (P1-P5); bf16 the same, with the JAX peer on the dense rows and FlexAttention on hd128 non-causal only (each
    shape costs it a compile); the causal window + sink (fp16 both head dims, bf16 hd128). B=8 N=2048 causal (P6).
    fp16 N=16k non-causal with FlexAttention, dense causal without. The B=1 N=32k GQA rows. sageattention and
    SDPA flash serve no target: they run on the fp16 N=8k dense rows only."""
    configs = []
    for dtype in DTYPES:
        for hd in HEAD_DIMS:
            for causal in (False, True):
                for d in DENSITIES:
                    names = _systems(d, causal, jax_peer=dtype == "bfloat16")
                    if dtype == "bfloat16":
                        names = _without(names, SAGE, SDPA_FLASH, *(() if hd == 128 and not causal else (FLEX,)))
                    configs.append(Config(8192, hd, d, causal, dtype, names, True))
    configs += [window_config(8192, hd, dtype, WINDOW_SYSTEMS, True)
                for dtype, hd in (("float16", 128), ("float16", 64), ("bfloat16", 128))]
    for hd in HEAD_DIMS:
        for causal, densities in ((False, DENSITIES), (True, (1.0,))):
            configs += [Config(16384, hd, d, causal, "float16",
                               _without(_systems(d, causal, flex_causal=False), SAGE, SDPA_FLASH), d == 1.0)
                        for d in densities]
    configs += target_rows(lambda dtype: (OURS, OURS_JAX, SDPA_CUDNN) + (JAX_PEER if dtype == "bfloat16" else ()))
    return sorted(configs, key=_priority)


def smoke_grid():
    """Tiny shapes, every system: random masks; with GQA (2 query heads on 1) the causal window + sink, and the JAX
    peer at B=2 (on CPU its cuDNN call is recorded as unsupported)."""
    small = dict(batch=1, heads=2, kv_heads=2)
    configs = [Config(256, 64, d, causal, "float16", _systems(d, causal), True, **small)
               for causal in (False, True) for d in (1.0, 0.5)]
    configs.append(window_config(384, 64, "float16", WINDOW_SYSTEMS, True, window=64, sink=4, batch=1, heads=2,
                                 kv_heads=1))
    configs.append(Config(256, 64, 1.0, True, "float16", (OURS_JAX, SDPA_FLASH) + JAX_PEER, False, batch=2, heads=2,
                          kv_heads=1))
    return configs


def filter_grid(configs, seq_lens=None, head_dims=None, dtypes=None, systems=None):
    kept = []
    for c in configs:
        if (seq_lens and c.n not in seq_lens) or (head_dims and c.head_dim not in head_dims) or (
                dtypes and c.dtype not in dtypes):
            continue
        names = tuple(s for s in c.systems if not systems or s in systems)
        if names:
            kept.append(dataclasses.replace(c, systems=names))
    return kept


# ---- work: what a configuration computes ----------------------------------------------------------------------

def dense_equiv_ops(c: Config):
    """4·B·H·N²·D, halved when causal (the convention of the peers' numbers: TOPS on half the work)."""
    return 4 * c.batch * c.heads * c.n * c.n * c.head_dim / (2 if c.causal else 1)


def effective_ops(c: Config, mask):
    """4·D·(visible pairs): the work a kernel that skips dead blocks and masks the diagonal does. `mask`: None or
    a torch bool mask broadcastable to (B, H, Qb, Kb)."""
    counts = block_pair_counts(c.n, c.causal)
    if mask is None:
        pairs = c.batch * c.heads * int(counts.sum())
    else:
        import torch

        live = mask.expand(c.batch, c.heads, *mask.shape[-2:])
        pairs = int((torch.from_numpy(counts).to(mask.device) * live).sum())
    return 4 * c.head_dim * pairs


def exact_density_mask(density, batch, heads, n, generator, device):
    """(B, H, Qb, Kb) bool with max(1, round(density·Kb)) live key blocks, uniformly placed, in every row."""
    import torch

    n_qb, n_kb = n // BLOCK_M, n // BLOCK_N
    keep = max(1, round(density * n_kb))
    order = torch.rand(batch, heads, n_qb, n_kb, generator=generator, device=device).argsort(dim=-1)
    return order < keep


def causal_mask_mod(b, h, q_idx, kv_idx):
    return q_idx >= kv_idx


def flex_block_mask(mask, n, causal):
    """The same computation for flex_attention: a BlockMask of (128, 64) blocks. Live blocks wholly visible are
    full blocks (no mask_mod call); those crossing the causal diagonal are partial with the causal mask_mod.

    Not sparse_sageattn.torch.to_flex_block_mask: its mask_mod also looks blocks up in mask_id so that eager
    flex_attention is right too; the compiled peer needs only the causal rule, the fastest BlockMask a Flex user
    would write for this mask."""
    import torch
    from torch.nn.attention.flex_attention import BlockMask

    mask = mask.reshape((1,) * (4 - mask.dim()) + tuple(mask.shape))  # (B, H, Qb, Kb); sizes 1 broadcast
    n_qb, n_kb = n // BLOCK_M, n // BLOCK_N
    first_row = torch.arange(n_qb, device=mask.device)[:, None] * BLOCK_M
    first_key = torch.arange(n_kb, device=mask.device)[None, :] * BLOCK_N
    if causal:
        whole = first_key + BLOCK_N - 1 <= first_row
        seen = first_key <= first_row + BLOCK_M - 1
    else:
        whole = seen = torch.ones(n_qb, n_kb, dtype=torch.bool, device=mask.device)

    def lists(live):
        live = live.to(torch.int8)
        return (live.sum(-1, dtype=torch.int32),
                live.argsort(dim=-1, descending=True, stable=True).to(torch.int32))

    return BlockMask.from_kv_blocks(*lists(mask & seen & ~whole), *lists(mask & whole), BLOCK_SIZE=(BLOCK_M, BLOCK_N),
                                    mask_mod=causal_mask_mod if causal else None)


# ---- the estimate -----------------------------------------------------------------------------------------------

def _point_s(ms):
    """Wall of one timed system: first call, memory call, do_bench (estimate 5, warm-up, repetitions)."""
    return (8 * ms + max(25, 3 * ms) + max(100, 10 * ms)) / 1e3 + 0.05


class Estimator:
    """Seconds per configuration: timed calls plus the compiles a configuration is the first to need."""

    def __init__(self):
        self.seen = set()

    def _first(self, key):
        new = key not in self.seen
        self.seen.add(key)
        return new

    def config_s(self, c: Config):
        live = c.density * (0.5 if c.causal else 1.0)
        work = dense_equiv_ops(c) * (2 if c.causal else 1) * live
        seconds = REF_S_PER_KEY * c.n + 0.05
        shape = (c.n, c.head_dim, c.dtype, c.batch, c.heads, c.kv_heads)
        for name in c.systems:
            ms = work / (RATE_TOPS[name] * 1e12) * 1e3 + 0.03
            seconds += _point_s(ms)
            if name in (OURS, OURS_JAX, OURS_FP8, OURS_JAX_NHD):
                seconds += (ATTENTION_COMPILE_S * self._first((name, c.head_dim, c.dtype, c.causal))
                            + QUANTIZE_COMPILE_S * self._first((name, c.head_dim, c.dtype))
                            + BLOCK_LISTS_COMPILE_S * self._first((name, c.density < 1, c.causal)))
            if name == OURS:
                seconds += _point_s(ms)  # ms_group
                if c.breakdown:
                    seconds += 4 * _point_s(0.1)
            elif name in (OURS_JAX, OURS_JAX_NHD):
                seconds += JAX_TRACE_S * self._first((name, shape, c.causal, c.density < 1))
            elif name == JAX_CUDNN:
                seconds += JAX_CUDNN_COMPILE_S * self._first((name, shape, c.causal))
            elif name == FLEX:
                if self._first((FLEX, shape, c.causal)):
                    seconds += FLEX_FIRST_COMPILE_S if self._first(FLEX) else FLEX_COMPILE_S
            elif name == SAGE:
                seconds += SAGE_COMPILE_S * self._first((SAGE, c.head_dim, c.dtype, c.causal))
        return seconds


def estimate_total(configs):
    est = Estimator()
    return STARTUP_S + sum(est.config_s(c) for c in configs)


# ---- measuring (needs torch; CUDA for real numbers) ----------------------------------------------------------------

def environment(torch, triton, device):
    """GPU name, driver and package versions for a results file."""
    from importlib import metadata

    info = dict(python=platform.python_version(), torch=torch.__version__, triton=triton.__version__,
                numpy=np.__version__, device=device)
    for dist in ("jax", "jaxlib", "jax-triton", "sageattention"):
        try:
            info[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            info[dist] = None
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, capability=f"{props.major}.{props.minor}", sm_count=props.multi_processor_count,
                    memory_gib=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version())
        try:
            info["driver"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=30).stdout.strip().splitlines()[0]
        except (OSError, subprocess.SubprocessError, IndexError):
            info["driver"] = None
    else:
        info.update(gpu=f"CPU ({platform.machine()})", driver=None)
    return info


SMOKE_CALLS = 3  # wall-clock calls per median where there are no CUDA events (smoke runs)


def time_ms(fn, arg_sets, first_ms, cuda):
    """Median ms of fn(*args), args rotating over arg_sets; warm-up and repetitions scale with the call."""
    turn = [0]

    def step():
        turn[0] = (turn[0] + 1) % len(arg_sets)
        fn(*arg_sets[turn[0]])

    if not cuda:  # smoke runs: no CUDA events; a few wall-clock calls
        times = []
        for _ in range(SMOKE_CALLS):
            start = time.perf_counter()
            step()
            times.append((time.perf_counter() - start) * 1e3)
        return float(np.median(times))
    import triton.testing

    return triton.testing.do_bench(step, warmup=max(25, 3 * first_ms), rep=max(100, 10 * first_ms),
                                   return_mode="median")


def time_group(fn, arg_sets, first_ms, wait, sync, cuda, group=JAX_GROUP):
    """Median ms per call of groups of `group` calls ending in a host wait (`wait(last output)`). JAX runs on
    XLA's stream, which torch's CUDA events (do_bench's clock) do not see, so JAX is timed this way: the events
    then bracket finished work, and the host dispatch of one call overlaps the previous one's kernels. Our torch
    call is timed the same way too (`ms_group`), so that the JAX/torch ratio compares like with like. `sync()`
    (a torch sync) first lets do_bench's L2 flush (on torch's stream) finish before the group starts."""
    def calls(*_):
        sync()
        for j in range(group):
            out = fn(*arg_sets[j % len(arg_sets)])
        wait(out)

    return time_ms(calls, [()], first_ms * group, cuda) / group


class Bench:
    """Runs the configurations on one device and appends records. All framework imports happen here."""

    def __init__(self, device):
        import torch
        import triton
        import triton.testing

        self.torch, self.triton = torch, triton
        self.device = device
        self.cuda = device == "cuda"
        self.shape_key, self.sets, self.jax_sets, self.jax_nhd_sets = None, None, None, None
        self.flex = self.jax = self.jax_fn = self.jax_cudnn_fn = self.sageattn = None
        self.import_errors = {}
        self._setup_flex()
        self._setup_jax()
        self._setup_sage()

    # -- systems -------------------------------------------------------------------------------------------------
    def _setup_flex(self):
        torch = self.torch
        from torch.nn.attention.flex_attention import flex_attention

        # One compile per shape is the point of dynamic=False; the default limit (8) would turn the rest eager
        # (which ignores the block mask and materialises N² scores). Fail instead of falling back.
        for name, value in (("recompile_limit", 4096), ("accumulated_recompile_limit", 4096),
                            ("fail_on_recompile_limit_hit", True)):
            if hasattr(torch._dynamo.config, name):
                setattr(torch._dynamo.config, name, value)
        self.flex = torch.compile(flex_attention, dynamic=False)

    def _setup_jax(self):
        try:
            import jax

            from sparse_sageattn.jax import sparse_sageattn as jax_sparse_sageattn
        except Exception as e:  # a missing JAX only removes its columns
            for name in (OURS_JAX,) + JAX_PEER:
                self.import_errors[name] = f"{type(e).__name__}: {e}"
            return
        self.jax = jax
        self.jax_fn = jax.jit(jax_sparse_sageattn, static_argnames=("is_causal", "tensor_layout"))
        # What a Flax user would call: NHD arrays, the cuDNN flash kernel, is_causal, GQA through fewer kv heads
        self.jax_cudnn_fn = jax.jit(jax.nn.dot_product_attention, static_argnames=("is_causal", "implementation"))

    def _setup_sage(self):
        try:
            from sageattention import sageattn
        except Exception as e:
            self.import_errors[SAGE] = f"{type(e).__name__}: {e}"
            return
        self.sageattn = sageattn

    def versions(self):
        return environment(self.torch, self.triton, self.device)

    # -- helpers ---------------------------------------------------------------------------------------------------
    def sync(self):
        if self.cuda:
            self.torch.cuda.synchronize()

    def _inputs(self, c: Config):
        """N_SETS random (q, k, v) sets for this shape, the same on every visit (seeded by the shape)."""
        key = (c.n, c.head_dim, c.dtype, c.batch, c.heads, c.kv_heads)
        if key != self.shape_key:
            torch = self.torch
            self.sets = self.jax_sets = self.jax_nhd_sets = None
            if self.cuda:
                torch.cuda.empty_cache()
            gen = torch.Generator(device=self.device).manual_seed(c.n * 1000 + c.head_dim * 10 + DTYPES.index(c.dtype))
            shapes = [(c.batch, h, c.n, c.head_dim) for h in (c.heads, c.kv_heads, c.kv_heads)]
            dtype = getattr(torch, c.dtype)
            self.sets = [tuple(torch.randn(shape, generator=gen, device=self.device, dtype=dtype) for shape in shapes)
                         for _ in range(N_SETS)]
            if self.jax is not None:
                self.jax_sets = [tuple(self._to_jax(t) for t in s) for s in self.sets]
            self.shape_key = key
        return self.sets

    def _nhd_sets(self):
        """The JAX input sets of this shape in NHD (B, N, H, D), copied once per shape: what a Flax model holds."""
        if self.jax_nhd_sets is None:
            jnp = self.jax.numpy
            self.jax_nhd_sets = [tuple(jnp.transpose(x, (0, 2, 1, 3)).block_until_ready() for x in s)
                                 for s in self.jax_sets]
        return self.jax_nhd_sets

    def _to_jax(self, t):
        jax = self.jax
        try:
            return jax.dlpack.from_dlpack(t)  # shares torch's memory: the same inputs, no copy
        except Exception:  # a dlpack mismatch between the two: copy the bits through the host
            bits = jax.numpy.asarray(t.view(self.torch.int16).cpu().numpy())
            return jax.lax.bitcast_convert_type(bits, jax.numpy.dtype(c_dtype_name(t)))

    def extra_memory(self, fn, args):
        """Peak device memory one call allocates beyond what was allocated before it and the output it returns."""
        if not self.cuda:
            return None
        torch = self.torch
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        out = fn(*args)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base - out.numel() * out.element_size()

    def _first_call(self, fn, args, block):
        start = time.perf_counter()
        out = fn(*args)
        block(out)
        return out, (time.perf_counter() - start) * 1e3

    # -- one configuration -----------------------------------------------------------------------------------------
    def _mask(self, c: Config, seed):
        """None (dense), the causal window + sink (Qb, Kb) shared by every head, or a random (B, H, Qb, Kb) mask."""
        if c.window:
            from sparse_sageattn.torch import causal_mask, union_mask

            return (union_mask(c.n, c.n, window=c.window, sink=c.sink, device=self.device)
                    & causal_mask(c.n, c.n, device=self.device))
        if c.density == 1.0:
            return None
        gen = self.torch.Generator(device=self.device).manual_seed(seed)
        return exact_density_mask(c.density, c.batch, c.heads, c.n, gen, self.device)

    def run_config(self, c: Config, seed):
        torch = self.torch
        from sparse_sageattn import reference

        sets = self._inputs(c)
        mask = self._mask(c, seed)
        work = dict(dense_equiv_ops=dense_equiv_ops(c), effective_ops=effective_ops(c, mask))
        work["live_fraction"] = work["effective_ops"] / (4 * c.batch * c.heads * c.n * c.n * c.head_dim)

        # The float64 reference on sampled rows of two query heads of batch 0 (and their kv heads), from input set 0.
        rng = np.random.default_rng(seed)
        rows = np.unique(np.r_[0, c.n - 1, rng.integers(0, c.n, REF_ROWS)])
        heads = ref_heads(c.heads)
        kv_heads = [h // (c.heads // c.kv_heads) for h in heads]
        q, k, v = (x[:1, h].float().cpu().numpy() for x, h in zip(sets[0], (heads, kv_heads, kv_heads)))
        ref_mask = None if mask is None else (mask[:1, heads] if mask.dim() == 4 else mask).cpu().numpy()
        ref_out, _ = reference.attention(q, k, v, ref_mask, c.causal, rows=rows)
        heads_t = torch.tensor(heads, device=self.device)
        rows_t = torch.tensor(rows, device=self.device)

        def accuracy(sample):
            return dict(cosine=reference.cosine(sample, ref_out), rel_l1=reference.rel_l1(sample, ref_out))

        def torch_sample(out):
            return out[:1].index_select(1, heads_t).index_select(2, rows_t).double().cpu().numpy()

        records = []
        for name in c.systems:
            record = dict(c.key(), system=name, **work)
            try:
                if name in self.import_errors:
                    raise RuntimeError(f"not importable: {self.import_errors[name]}")
                if name in (OURS_JAX, OURS_JAX_NHD):
                    record.update(self._run_jax(c, mask, rows, heads, accuracy, "NHD" if name == OURS_JAX_NHD
                                                else "HND"))
                elif name == JAX_CUDNN:
                    record.update(self._run_jax_cudnn(c, rows, heads, accuracy))
                else:
                    record.update(self._run_torch(name, c, mask, sets, torch_sample, accuracy))
                if name == OURS_FP8:  # what e4m3 P and V alone cost on these rows: the mode's accuracy floor
                    floor = reference.fp8_pv_attention(q, k, v, ref_mask, c.causal, rows=rows)
                    record.update(floor_cosine=reference.cosine(floor, ref_out),
                                  floor_rel_l1=reference.rel_l1(floor, ref_out))
            except Exception as e:  # one failing system must not lose the rest of the run
                record["error"] = f"{type(e).__name__}: {str(e)[:400]}"
                if self.cuda:
                    torch.cuda.empty_cache()
            if "ms" in record:
                record["dense_equiv_tops"] = work["dense_equiv_ops"] / record["ms"] / 1e9
                record["effective_tops"] = work["effective_ops"] / record["ms"] / 1e9
            records.append(record)
        return records

    def _torch_fn(self, name, c: Config, mask):
        torch = self.torch
        from torch.nn.attention import SDPBackend, sdpa_kernel

        from sparse_sageattn import sparse_sageattn

        causal, gqa = c.causal, c.kv_heads != c.heads
        if name == OURS:
            return lambda q, k, v: sparse_sageattn(q, k, v, mask, causal)
        if name == OURS_FP8:
            return lambda q, k, v: sparse_sageattn(q, k, v, mask, causal, pv_dtype="fp8")
        if name == FLEX:
            full = mask if mask is not None else torch.ones(1, 1, c.n // BLOCK_M, c.n // BLOCK_N, dtype=torch.bool,
                                                            device=self.device)
            block_mask = flex_block_mask(full, c.n, causal)
            # hd64 needs 64-row tiles to divide the (128, 64) blocks (seen on the lent H100)
            options = {"BLOCK_M": 64, "BLOCK_N": 64} if c.head_dim == 64 else None
            return lambda q, k, v: self.flex(q, k, v, block_mask=block_mask, kernel_options=options, enable_gqa=gqa)
        if name in (SDPA_FLASH, SDPA_CUDNN):
            backend = SDPBackend.FLASH_ATTENTION if name == SDPA_FLASH else SDPBackend.CUDNN_ATTENTION

            def sdpa(q, k, v):
                with sdpa_kernel(backend):
                    return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal,
                                                                            enable_gqa=gqa)
            return sdpa
        if name == SAGE:
            return lambda q, k, v: self.sageattn(q, k, v, tensor_layout="HND", is_causal=causal)
        raise ValueError(name)

    def _run_torch(self, name, c: Config, mask, sets, torch_sample, accuracy):
        fn = self._torch_fn(name, c, mask)
        if name == SAGE:
            sets = [(q, k.clone(), v) for q, k, v in sets]  # sageattn 1.0.6 subtracts K's mean in place
        with self.torch.inference_mode():
            out, first_ms = self._first_call(fn, sets[0], lambda _: self.sync())
            result = accuracy(torch_sample(out))
            del out
            start = time.perf_counter()
            result["extra_mem_bytes"] = self.extra_memory(fn, sets[0])
            call_ms = (time.perf_counter() - start) * 1e3
            result["ms"] = time_ms(fn, sets, call_ms, self.cuda)
            result["first_call_s"] = first_ms / 1e3
            if name == OURS:
                result["ms_group"] = time_group(fn, sets, call_ms, lambda _: self.sync(), self.sync, self.cuda)
                result.update(self._plan_facts(c, mask, sets, call_ms))

        return result

    def _jax_sample(self, out, rows, heads, layout):
        """(1, len(heads), len(rows), D) float64 of a JAX output in `layout`."""
        jnp = self.jax.numpy
        if layout == "NHD":
            out = jnp.transpose(out[:1][:, rows][:, :, np.array(heads)], (0, 2, 1, 3))
        else:
            out = out[:1][:, np.array(heads)][:, :, rows]
        return np.asarray(out.astype(jnp.float32)).astype(np.float64)

    def _time_jax(self, fn, sets, result):
        start = time.perf_counter()
        fn(*sets[0]).block_until_ready()
        call_ms = (time.perf_counter() - start) * 1e3
        result.update(ms=time_group(fn, sets, call_ms, lambda o: o.block_until_ready(), self.sync, self.cuda),
                      extra_mem_bytes=None)
        return result

    def _run_jax(self, c: Config, mask, rows, heads, accuracy, layout):
        jnp = self.jax.numpy
        mask_j = None if mask is None else jnp.asarray(mask.cpu().numpy())
        causal = c.causal
        sets = [(q, k, v, mask_j) for q, k, v in (self._nhd_sets() if layout == "NHD" else self.jax_sets)]

        def fn(q, k, v, m):
            return self.jax_fn(q, k, v, m, is_causal=causal, tensor_layout=layout)

        out, first_ms = self._first_call(fn, sets[0], lambda o: o.block_until_ready())
        result = accuracy(self._jax_sample(out, rows, heads, layout))
        del out
        result["first_call_s"] = first_ms / 1e3
        return self._time_jax(fn, sets, result)

    def _run_jax_cudnn(self, c: Config, rows, heads, accuracy):
        """jax.nn.dot_product_attention(implementation="cudnn") on the NHD sets (GQA: its own fewer kv heads). A
        first call that raises (no cuDNN, a shape or dtype it refuses) is recorded as unsupported."""
        causal = c.causal
        sets = self._nhd_sets()

        def fn(q, k, v):
            return self.jax_cudnn_fn(q, k, v, is_causal=causal, implementation="cudnn")

        try:
            out, first_ms = self._first_call(fn, sets[0], lambda o: o.block_until_ready())
        except Exception as e:
            return dict(unsupported=f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:300]}")
        result = accuracy(self._jax_sample(out, rows, heads, "NHD"))
        del out
        result["first_call_s"] = first_ms / 1e3
        return self._time_jax(fn, sets, result)

    def _plan_facts(self, c: Config, mask, sets, call_ms):
        """The issue's memory bound from the core plan's buffers and, if asked, each launch of the plan timed alone
        (buffers allocated once per input set; launched by the torch executor)."""
        torch = self.torch
        from sparse_sageattn.core_kernels import attention
        from sparse_sageattn.torch import _launch

        capability = torch.cuda.get_device_capability() if self.cuda else None
        q, k, v = sets[0]
        plan = attention.make_plan(_launch.describe(q), _launch.describe(k), _launch.describe(v),
                                   None if mask is None else _launch.describe(mask), c.causal, "HND", None, True,
                                   False, capability,
                                   num_sms=torch.cuda.get_device_properties(0).multi_processor_count if self.cuda
                                   else None)  # the frontends' grid

        def nbytes(buf):
            return math.prod(buf.shape) * ITEMSIZE[buf.dtype]

        facts = dict(mem_bound_bytes=sum(nbytes(plan.buffers[n]) for n in MEMORY_BOUND_BUFFERS if n in plan.buffers),
                     plan_scratch_bytes=sum(nbytes(b) for n, b in plan.buffers.items() if n not in plan.outputs))
        if not c.breakdown:
            return facts
        # every buffer then holds what the next launch reads
        envs = [_launch.run(plan, {"q": q, "k": k, "v": v, "mask_id": mask}, self.device) for q, k, v in sets]
        launch = _launch.launch
        self.sync()
        facts["kernels_ms"] = {step.name: time_ms(lambda a, s=step: launch(s, a), [(a,) for a in envs],
                                                  call_ms if step.name == "attention" else 0.1, self.cuda)
                               for step in plan.launches}
        return facts


def _config_fields(record):
    """Config(**...) arguments of a record (systems and breakdown do not matter there)."""
    fields = {f.name for f in dataclasses.fields(Config)} - {"systems", "breakdown"}
    return dict({k: record[k] for k in fields if k in record}, systems=(), breakdown=False)


def ref_heads(heads):
    return sorted({0, heads // 2})


def c_dtype_name(t):
    return str(t.dtype).removeprefix("torch.")


# ---- the command ----------------------------------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    grid = p.add_mutually_exclusive_group()
    grid.add_argument("--quick", action="store_true", help="the grid that fits one 10-minute device call")
    grid.add_argument("--smoke", action="store_true", help="a tiny grid that checks the plumbing (CPU too)")
    p.add_argument("--dry-run", action="store_true", help="list the configurations and the estimate; no device")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    p.add_argument("--tag", default="", help="suffix of the results file name (e.g. a part of a split full grid)")
    p.add_argument("--budget-s", type=float, default=None,
                   help=f"skip configurations that would end after this many seconds from the start "
                        f"(default {QUICK_BUDGET_S} for --quick, none otherwise; 0 = none)")

    def ints(s):
        return tuple(int(x) for x in s.split(","))

    p.add_argument("--seq-lens", type=ints, help="keep only these N (comma separated)")
    p.add_argument("--head-dims", type=ints, help="keep only these head dims")
    p.add_argument("--dtypes", type=lambda s: tuple(s.split(",")), help="keep only these dtypes (float16,bfloat16)")
    p.add_argument("--systems", type=lambda s: tuple(s.split(",")), help=f"keep only these of {','.join(SYSTEMS)}")
    args = p.parse_args(argv)
    if args.budget_s is None:
        args.budget_s = QUICK_BUDGET_S if args.quick else 0
    return args


def select_configs(args):
    configs = smoke_grid() if args.smoke else quick_grid() if args.quick else full_grid()
    return filter_grid(configs, args.seq_lens, args.head_dims, args.dtypes, args.systems)


def print_plan(configs, budget_s):
    est = Estimator()
    total = STARTUP_S
    for i, c in enumerate(configs, 1):
        s = est.config_s(c)
        total += s
        print(f"{i:4d} {c.label():<36} {s:6.1f} s  {','.join(c.systems)}{'  +kernels' if c.breakdown else ''}")
    print(f"{len(configs)} configurations, estimated {total / 60:.1f} min"
          + (f" (budget {budget_s / 60:.1f} min)" if budget_s else ""))
    return total


def results_path(out_dir, gpu, tag, date):
    slug = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in gpu).strip("_")
    return os.path.join(out_dir, f"{slug}-{date}{'-' + tag if tag else ''}.json")


def write_json(path, data):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1, allow_nan=True)
    os.replace(tmp, path)


def _progress(i, total, c, records, elapsed, estimate):
    cells = []
    for r in records:
        cells.append(f"{r['system'].replace('sparse_sageattn', 'ours')} "
                     + (f"{r['ms']:.3f}" if "ms" in r else "unsupported" if "unsupported" in r else "ERR"))
    line = f"[{i}/{total} {elapsed:5.0f}s/{estimate:4.0f}s] {c.label():<34} " + " | ".join(cells)
    print(line, flush=True)


def main(argv=None):
    args = parse_args(argv)
    configs = select_configs(args)
    estimate = print_plan(configs, args.budget_s) if args.dry_run else estimate_total(configs)
    if args.dry_run:
        return 0
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not args.smoke:
        print("no CUDA device: only --smoke and --dry-run run here", file=sys.stderr)
        return 2
    batch, heads = (configs[0].batch, configs[0].heads) if args.smoke and configs else (BATCH, HEADS)
    bench = Bench(device)
    meta = bench.versions()
    date = datetime.date.today().isoformat()
    grid_name = "smoke" if args.smoke else "quick" if args.quick else "full"
    meta.update(date=date, grid=grid_name, argv=sys.argv[1:], batch=batch, heads=heads, n_sets=N_SETS,
                jax_group=JAX_GROUP, ref_heads=ref_heads(heads), ref_rows=REF_ROWS, budget_s=args.budget_s,
                estimate_s=round(estimate), import_errors=bench.import_errors)
    os.makedirs(args.out, exist_ok=True)
    path = results_path(args.out, meta["gpu"], args.tag, date)
    data = dict(schema=1, meta=meta, records=[], skipped=[])
    print(f"{meta['gpu']} | torch {meta['torch']} | triton {meta['triton']} | jax {meta['jax']} | "
          f"{len(configs)} configurations ({grid_name}), estimated {estimate / 60:.1f} min -> {path}", flush=True)
    for name, err in bench.import_errors.items():
        print(f"  {name} unavailable: {err}", flush=True)
    est = Estimator()
    predicted = 0.0  # estimated seconds of the configurations run so far: scales the rest by reality
    try:
        for i, c in enumerate(configs, 1):
            seen = set(est.seen)
            need = est.config_s(c)
            elapsed = time.monotonic() - PROCESS_START
            slowdown = max(1.0, (elapsed - STARTUP_S) / predicted) if predicted > 60 else 1.0
            if args.budget_s and elapsed + need * slowdown > args.budget_s:
                data["skipped"].append(dict(c.key(), systems=list(c.systems), reason="time budget",
                                            estimate_s=round(need * slowdown, 1)))
                est.seen = seen  # its compiles did not happen: a later configuration still pays them
                continue
            records = bench.run_config(c, seed=i)
            predicted += need
            data["records"].extend(records)
            _progress(i, len(configs), c, records, time.monotonic() - PROCESS_START, estimate)
            data["meta"]["elapsed_s"] = round(time.monotonic() - PROCESS_START, 1)
            write_json(path, data)
    except KeyboardInterrupt:  # `timeout -s INT` from run_gpu.sh: keep what was measured
        data["meta"]["interrupted"] = True
        print("interrupted: writing what was measured", flush=True)
    data["meta"]["elapsed_s"] = round(time.monotonic() - PROCESS_START, 1)
    write_json(path, data)
    if data["skipped"]:
        print(f"{len(data['skipped'])} configurations skipped for the time budget (listed in the results file)")
    errors = [r for r in data["records"] if "error" in r]
    unsupported = [r for r in data["records"] if "unsupported" in r]
    for r in errors[:10]:
        print(f"error: {r['system']} {Config(**_config_fields(r)).label()}: {r['error'][:200]}")
    for r in unsupported[:10]:
        print(f"unsupported: {r['system']} {Config(**_config_fields(r)).label()}: {r['unsupported'][:200]}")
    print(f"wrote {path} ({len(data['records'])} records, {len(errors)} errors, {len(unsupported)} unsupported, "
          f"{data['meta']['elapsed_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
