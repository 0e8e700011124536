"""The one static table of launch configurations, shared by every frontend.

Keyed by (compute capability, head_dim tile, dtype of q/k/v). Lookup falls back from the exact capability to
its major version and then to DEFAULT, so an unknown GPU (or the interpreter, capability None) still launches.
No autotuning happens on the call path: a plan picks its entry from here and nothing else. An attention entry
names its kernel variant (attention/plan.py: ATTENTION_KERNELS). The block sizes are the contract's
(contract.py), not tuning knobs.
"""
from dataclasses import dataclass, replace

ROWS_PER_CHUNK = 2048  # keys summed by one channel-sums program of sums_and_lists_kernel
SUMS_TILE_ROWS = 64
KB_TILE = 128  # key blocks compacted per step of a block-list program


KERNEL_VARIANTS = ("triton",)


@dataclass(frozen=True)
class KernelConfig:
    num_warps: int
    num_stages: int


@dataclass(frozen=True)
class AttentionConfig(KernelConfig):
    # List entries (64-key blocks) one iteration consumes: 1, or 2 gathered into one 128-key tile (one Q.K^T of
    # N=128 and one softmax rescale per 128 keys). H100, kernel only (benchmarks/NOTES.md): 2 is 1.07-1.16x
    # faster at hd128 and 0.99-1.06x at hd64, so sm_90 takes it for both; sm_80 and hd256 are unmeasured.
    key_blocks_per_step: int = 1
    kernel: str = "triton"  # the variant: a key of attention/plan.py's ATTENTION_KERNELS

    def __post_init__(self):
        if self.key_blocks_per_step not in (1, 2):
            raise ValueError(f"key_blocks_per_step must be 1 or 2, got {self.key_blocks_per_step!r}")
        if self.kernel not in KERNEL_VARIANTS:
            raise ValueError(f"kernel must be one of {KERNEL_VARIANTS}, got {self.kernel!r}")


@dataclass(frozen=True)
class LaunchConfigs:
    attention: AttentionConfig
    quantize: KernelConfig  # Q and K share it: num_warps sets both tiles' layouts, hence reduction orders
    sums_and_lists: KernelConfig


_SIMPLE = KernelConfig(num_warps=4, num_stages=1)
DEFAULT = LaunchConfigs(
    attention=AttentionConfig(num_warps=4, num_stages=2),
    quantize=_SIMPLE, sums_and_lists=_SIMPLE,
)


def _configs(attention_warps: int, attention_stages: int, key_blocks_per_step: int = 1) -> LaunchConfigs:
    return LaunchConfigs(AttentionConfig(attention_warps, attention_stages, key_blocks_per_step), _SIMPLE, _SIMPLE)


# (capability, head_dim tile, dtype) -> configs; capability is major*10 + minor, or the major alone as a fallback.
TABLE = {
    (9, 64, "float16"): _configs(4, 3, 2),
    (9, 64, "bfloat16"): _configs(4, 3, 2),
    (9, 128, "float16"): _configs(8, 3, 2),
    (9, 128, "bfloat16"): _configs(8, 3, 2),
    (9, 256, "float16"): _configs(8, 2),
    (9, 256, "bfloat16"): _configs(8, 2),
    (8, 64, "float16"): _configs(4, 3),
    (8, 64, "bfloat16"): _configs(4, 3),
    (8, 128, "float16"): _configs(8, 2),
    (8, 128, "bfloat16"): _configs(8, 2),
    (8, 256, "float16"): _configs(8, 1),
    (8, 256, "bfloat16"): _configs(8, 1),
}


PREDICT_POOL = _SIMPLE


def predict_select(kb_pad: int) -> KernelConfig:
    """The selection kernel holds a few values per key block of a row in registers: more warps for long rows."""
    return KernelConfig(num_warps=min(16, max(4, kb_pad // 256)), num_stages=1)


def lookup(capability, head_dim_pad: int, dtype: str, attention_override=None) -> LaunchConfigs:
    """capability: (major, minor) or None (interpreter).

    attention_override: a mapping of AttentionConfig fields (e.g. {"key_blocks_per_step": 2}) replacing the
    entry's. Only benchmarks and tests pass it, through `make_plan`, to try a variant before the table adopts
    it; frontends never do, so what users run is the table alone.
    """
    entry = _table_entry(capability, head_dim_pad, dtype)
    if attention_override:
        entry = replace(entry, attention=replace(entry.attention, **attention_override))
    return entry


def _table_entry(capability, head_dim_pad, dtype):
    if capability is None:
        return DEFAULT
    major, minor = capability
    for key in ((major * 10 + minor, head_dim_pad, dtype), (major, head_dim_pad, dtype)):
        if key in TABLE:
            return TABLE[key]
    return DEFAULT
