"""The constants of the sparse_sageattn contract, each defined once: kernels, plans, frontends, the float64
reference and the mask builders all read them from here. Plain Python: importing it compiles nothing."""
import math

BLOCK_M = 128  # query rows per block: Q's quantization granularity and the mask's row block
BLOCK_N = 64  # key rows per block: K's quantization granularity and the mask's column block

LOG2E = 1.4426950408889634  # scores run in the log2 domain: sm_scale * log2(e) is folded into Q's scale
LN2 = math.log(2.0)  # and the lse comes back to the natural log
E4M3_MAX = 448.0  # largest finite FP8 e4m3 value: the static scale of P and the per-channel target of V (FP8 P.V)

FLOAT_DTYPES = ("float16", "bfloat16")
MASK_DTYPES = ("bool", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64")
PV_DTYPES = ("fp16", "fp8")
FP8_MIN_CAPABILITY = (8, 9)  # e4m3 tensor-core MMAs: Ada, Hopper and newer
MAX_HEAD_DIM = 256

# (batch, head, sequence) axes of a 4-D q/k/v/out array in each tensor_layout; the head dim is always axis 3.
LAYOUT_AXES = {"HND": (0, 1, 2), "NHD": (0, 2, 1)}
LAYOUTS = tuple(LAYOUT_AXES)


def layout_axes(tensor_layout: str):
    """(batch axis, head axis, sequence axis) of `tensor_layout` (validated by the caller)."""
    return LAYOUT_AXES[tensor_layout]


def bhnd_shape(batch, heads, n, head_dim, tensor_layout: str):
    """The 4-D shape of a (batch, heads, n, head_dim) array in `tensor_layout`."""
    return (batch, heads, n, head_dim) if tensor_layout == "HND" else (batch, n, heads, head_dim)


def cdiv(a, b):
    return (a + b - 1) // b
