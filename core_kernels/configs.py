"""The one static table of launch configurations, shared by every frontend.

Keyed by (compute capability, head_dim tile, dtype of q/k/v). Lookup falls back from the exact capability to
its major version and then to DEFAULT, so an unknown GPU (or the interpreter, capability None) still launches.
No autotuning happens on the call path: a plan picks its entry from here and nothing else. The block sizes are
the contract's (contract.py), not tuning knobs.

An entry lists attention candidates in order of preference; the plan takes the first whose `pv_dtypes` hold the
call's and whose kernel variant (attention/plan.py: ATTENTION_KERNELS) states no reason to refuse the call
(e.g. the Gluon kernel refuses a padded head dim). The last candidate of every entry is a plain Triton one
that takes every call.
"""
from dataclasses import dataclass, replace

ROWS_PER_CHUNK = 2048  # keys summed by one channel-sums program of sums_and_lists_kernel
SUMS_TILE_ROWS = 64
KB_TILE = 128  # key blocks compacted per step of a block-list program

KERNEL_VARIANTS = ("triton", "gluon_sm90")


@dataclass(frozen=True)
class KernelConfig:
    num_warps: int
    num_stages: int


@dataclass(frozen=True)
class AttentionConfig(KernelConfig):
    # List entries (64-key blocks) one iteration consumes: 1, or 2 gathered into one 128-key tile (one Q.K^T of
    # N=128 and one softmax rescale per 128 keys).
    key_blocks_per_step: int = 1
    kernel: str = "triton"  # the variant: a key of attention/plan.py's ATTENTION_KERNELS
    pv_dtypes: tuple = ("fp16", "fp8")  # the P.V modes this entry serves
    maxnreg: int | None = None  # a register cap at launch: what lets a warp-specialized kernel's setmaxnreg work

    def __post_init__(self):
        if self.key_blocks_per_step not in (1, 2):
            raise ValueError(f"key_blocks_per_step must be 1 or 2, got {self.key_blocks_per_step!r}")
        if self.kernel not in KERNEL_VARIANTS:
            raise ValueError(f"kernel must be one of {KERNEL_VARIANTS}, got {self.kernel!r}")


@dataclass(frozen=True)
class SplitKVConfig(KernelConfig):
    """The split-KV kernel (attention/split_kv.py) for calls of at most SPLIT_KV_MAX_QUERIES queries a head."""
    # Splits of each block list: as many as keep B * Hkv * head groups * splits within programs_per_sm programs
    # an SM (at least one), at most max_splits, and never more than there are key blocks.
    programs_per_sm: int = 8
    max_splits: int = 64
    # Warps for a tile of 16 rows (one query per head of a small kv group: one MMA row tile) when the whole grid
    # then fits one wave, narrow_resident_per_sm programs of that width an SM (None: always num_warps). Fewer
    # warps a program let more programs reside on an SM: a grid of a few hundred programs then runs in one wave
    # instead of one and a fraction; a grid of several waves either way keeps num_warps, which then streams faster.
    narrow_num_warps: int | None = None
    narrow_resident_per_sm: int = 4  # 2 warps of the split-KV kernel: <= 255 registers, 4 CTAs an SM (sm_90)

    def warps(self, block_rows: int, programs: int, sms: int) -> int:
        narrow = (self.narrow_num_warps is not None and block_rows == 16
                  and programs <= self.narrow_resident_per_sm * sms)
        return self.narrow_num_warps if narrow else self.num_warps


_SIMPLE = KernelConfig(num_warps=4, num_stages=1)


@dataclass(frozen=True)
class LaunchConfigs:
    attention: tuple  # AttentionConfig candidates, preferred first
    quantize: KernelConfig  # Q and K share it: num_warps sets both tiles' layouts, hence reduction orders
    sums_and_lists: KernelConfig
    # H200, bf16 hd128 GQA 32/8, split-KV launch alone (benchmarks/NOTES.md): 4 warps over 8 (1.1-1.8x); 3 stages
    # over 2 1.09-1.10x at (Nq, Nk) = (16, 32k) and (1, 128k), 0.92x at (1, 32k); 8 programs an SM over 4 1.08x at
    # (1, 32k), 1.03x at (16, 32k)
    split_kv: SplitKVConfig = SplitKVConfig(num_warps=4, num_stages=3)
    # The same kernel over an INT8 KV cache, V as given / in e4m3 (H200, split-KV launch alone, bf16 hd128 GQA
    # 32/8; benchmarks/NOTES.md): with V as given 3 stages, and 2 warps for 16 rows 1.23x at (1, 128k) (512
    # programs: one wave of 2-warp programs, 1.29 of 4-warp ones), 0.94x at (1, 32k) (1088 programs: several
    # waves either way, so 4 warps there); with e4m3 V 2 stages over 3 1.21x at (1, 32k), equal at (16, 32k),
    # and 2 warps for 16 rows 1.43x at (1, 128k), 0.98x at (1, 32k). Both at most one wave of 2-warp programs
    # (programs_per_sm = narrow_resident_per_sm): at (1, 32k, 8) 8 splits (512 programs, 2 warps) over 17 (1088,
    # 4 warps) 1.07x with V as given, 1.21x in e4m3; at (16, 32k, 8) 8 over 17 1.11x / 1.15x; (1, 128k) keeps 64.
    split_kv_int8: SplitKVConfig = SplitKVConfig(num_warps=4, num_stages=3, programs_per_sm=4, narrow_num_warps=2)
    split_kv_e4m3: SplitKVConfig = SplitKVConfig(num_warps=4, num_stages=2, programs_per_sm=4, narrow_num_warps=2)
    combine: KernelConfig = _SIMPLE


# Queries a head up to which the split-KV kernel serves a call (decoding, speculative and chunked steps): its
# tile packs a kv group's heads, at most 128 rows.
SPLIT_KV_MAX_QUERIES = 64
INTERPRETER_SMS = 2  # the SM count planned for without a GPU: small, so that small tests split
# Each variant's configuration when an override names it and its table entry has none.
VARIANT_DEFAULTS = {
    "triton": AttentionConfig(num_warps=4, num_stages=2),
    # 4 warps = the default partition (one consumer warpgroup); the kernel adds a second consumer warpgroup and
    # a loader, 12 warps in all, and 65536 registers / (12 * 32 threads) = 168 a thread at launch
    "gluon_sm90": AttentionConfig(num_warps=4, num_stages=1, key_blocks_per_step=2, kernel="gluon_sm90",
                                  pv_dtypes=("fp16",), maxnreg=168),
}
DEFAULT = LaunchConfigs(attention=(VARIANT_DEFAULTS["triton"],), quantize=_SIMPLE, sums_and_lists=_SIMPLE)


def _triton(num_warps, num_stages, key_blocks_per_step=1, pv_dtypes=("fp16", "fp8")):
    return AttentionConfig(num_warps, num_stages, key_blocks_per_step, pv_dtypes=pv_dtypes)


_GLUON_SM90 = VARIANT_DEFAULTS["gluon_sm90"]


def _entry(*attention) -> LaunchConfigs:
    return LaunchConfigs(tuple(attention), _SIMPLE, _SIMPLE)


# (capability, head_dim tile, dtype) -> configs; capability is major*10 + minor, or the major alone as a fallback.
# Kernel-only timings behind each entry: benchmarks/NOTES.md. sm_90 hd128 (H200, N=8k): the Gluon kernel
# (P.V in fp16, head dim exactly 128) 1.18-1.23x the former 8-warp pairs entry, 1.03x the 4-warp one-block
# Triton entry that serves padded head dims (1.14-1.16x the 8-warp one); the FP8 P.V mode keeps 8 warps (4:
# 0.67-0.88x). sm_90 hd64: Triton (the Gluon kernel 0.93x, one block a step 0.98x). sm_80 and hd256 unmeasured.
TABLE = {
    (9, 64, "float16"): _entry(_triton(4, 3, 2)),
    (9, 64, "bfloat16"): _entry(_triton(4, 3, 2)),
    (9, 128, "float16"): _entry(_GLUON_SM90, _triton(4, 3, 1, ("fp16",)), _triton(8, 3, 2, ("fp8",))),
    (9, 128, "bfloat16"): _entry(_GLUON_SM90, _triton(4, 3, 1, ("fp16",)), _triton(8, 3, 2, ("fp8",))),
    (9, 256, "float16"): _entry(_triton(8, 2)),
    (9, 256, "bfloat16"): _entry(_triton(8, 2)),
    (8, 64, "float16"): _entry(_triton(4, 3)),
    (8, 64, "bfloat16"): _entry(_triton(4, 3)),
    (8, 128, "float16"): _entry(_triton(8, 2)),
    (8, 128, "bfloat16"): _entry(_triton(8, 2)),
    (8, 256, "float16"): _entry(_triton(8, 1)),
    (8, 256, "bfloat16"): _entry(_triton(8, 1)),
}


PREDICT_POOL = _SIMPLE


def predict_select(kb_pad: int) -> KernelConfig:
    """The selection kernel holds a few values per key block of a row in registers: more warps for long rows."""
    return KernelConfig(num_warps=min(16, max(4, kb_pad // 256)), num_stages=1)


def lookup(capability, head_dim_pad: int, dtype: str, pv_dtype: str = "fp16",
           attention_override=None) -> LaunchConfigs:
    """capability: (major, minor) or None (interpreter).

    attention_override: a mapping of AttentionConfig fields (e.g. {"key_blocks_per_step": 2} or
    {"kernel": "gluon_sm90"}) making the one candidate: the entry's candidate of that kernel variant ("triton"
    unless named) serving pv_dtype, or the variant's default, with those fields replaced. Only benchmarks and tests pass it,
    through `make_plan`, to try a variant before the table adopts it; frontends never do, so what users run is
    the table alone.
    """
    entry = _table_entry(capability, head_dim_pad, dtype)
    if attention_override:
        kernel = attention_override.get("kernel", "triton")
        base = next((c for c in entry.attention if c.kernel == kernel and pv_dtype in c.pv_dtypes), None)
        if base is None:
            base = VARIANT_DEFAULTS[kernel] if kernel in VARIANT_DEFAULTS else AttentionConfig(4, 1, kernel=kernel)
        entry = replace(entry, attention=(replace(base, **attention_override),))
    return entry


def _table_entry(capability, head_dim_pad, dtype):
    if capability is None:
        return DEFAULT
    major, minor = capability
    for key in ((major * 10 + minor, head_dim_pad, dtype), (major, head_dim_pad, dtype)):
        if key in TABLE:
            return TABLE[key]
    return DEFAULT
