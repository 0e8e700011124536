"""Why every integer argument of our kernels is `do_not_specialize`, and what replaces the lost hints.

Triton's own launcher (torch) marks an int argument divisible by 16 when it is; jax-triton never does. Such a
hint changes which loads get vectorized, hence the register layouts, hence the order of fp32 reductions -- and
the two frontends would stop being bitwise equal. So no int argument is specialized, and divisibility comes from
the plan instead: strides travel in units of STRIDE_ALIGN elements (8, or 1 when a stride is odd), a constexpr
both frontends pass alike, and the multiplication below tells the compiler that rows start on 16 bytes, so
16-byte vector loads happen on either path. (`tl.multiple_of` on a kernel argument is silently dropped.)
"""
import triton
import triton.language as tl


@triton.jit
def _aligned(stride_b, stride_h, stride_n, STRIDE_ALIGN: tl.constexpr):
    """Strides passed in units of STRIDE_ALIGN elements -> strides in elements, known multiples of STRIDE_ALIGN.

    Batch and head strides become int64 (a head can start past 2**31 elements); the sequence stride stays int32
    for the in-tile offsets (the plan bounds it).
    """
    return (tl.cast(stride_b, tl.int64) * STRIDE_ALIGN, tl.cast(stride_h, tl.int64) * STRIDE_ALIGN,
            stride_n * STRIDE_ALIGN)
