"""fp32 -> FP8 e4m3 (float8e4nv): round to nearest even, saturate at +-448, NaN stays NaN.

On the GPU that is one `cvt.rn.satfinite.e4m3x2.f32`. The Triton 3.6 interpreter's cast rounds half up, drops
the carry into the exponent (7.98 becomes 4.0, not 8.0) and turns NaN into 256, so under the interpreter
(SOFTWARE_ROUNDING) the e4m3 bits are computed here in integer arithmetic, as the hardware rounds, and
bitcast. The same bits on CPU and GPU, and no extra instructions in the compiled kernels.
"""
import triton
import triton.language as tl

from .. import contract

E4M3_MAX = tl.constexpr(contract.E4M3_MAX)
_E4M3_MIN_NORMAL = tl.constexpr(0.015625)  # 2**-6; below it the grid is uniform, 2**-9 apart
_SUBNORMAL_MAGIC = tl.constexpr(24576.0)  # 1.5 * 2**14: fp32 values near it are 2**-9 apart


@triton.jit
def _e4m3_bits(x):
    """The e4m3 bits (int32, 0..255) of x (fp32), computed without a float8 cast."""
    x_clamped = tl.minimum(tl.maximum(tl.where(x != x, 0.0, x), -E4M3_MAX), E4M3_MAX)  # NaN: set below
    bits = x_clamped.to(tl.int32, bitcast=True)
    # normal range: keep 3 of fp32's 23 mantissa bits; adding 0x7FFFF plus the kept lsb rounds half to even
    rounded = bits + 0x7FFFF + ((bits >> 20) & 1)
    normal_code = ((((rounded >> 23) & 0xFF) - 120) << 3) | ((rounded >> 20) & 7)  # exponent bias 127 -> 7
    # subnormal range: fp32 addition rounds to the 2**-9 grid (ties to even) around the magic number
    subnormal_code = (tl.abs((x_clamped + _SUBNORMAL_MAGIC) - _SUBNORMAL_MAGIC) * 512.0).to(tl.int32)
    code = tl.where(tl.abs(x_clamped) < _E4M3_MIN_NORMAL, subnormal_code, normal_code)
    code = code | ((bits >> 24) & 0x80)  # the sign
    return tl.where(x != x, 0x7F, code)


@triton.jit
def pow2(e):
    """2**e as fp32 for integer (int32) e in [-126, 127], from its bits: exact, the scale of an e4m3 KV cache's
    values (kv_cache/append.py)."""
    return ((e + 127) << 23).to(tl.float32, bitcast=True)


@triton.jit
def to_e4m3(x, SOFTWARE_ROUNDING: tl.constexpr):
    if SOFTWARE_ROUNDING:
        return _e4m3_bits(x).to(tl.uint8).to(tl.float8e4nv, bitcast=True)
    return x.to(tl.float8e4nv, fp_downcast_rounding="rtne")
