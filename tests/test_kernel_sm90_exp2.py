"""The Gluon kernel's exp2 on the FMA units (core_kernels/attention/kernel_sm90.py: _exp2_poly), step for step in
float32 with numpy against float64 2**x. The kernel itself runs only on an sm_90 GPU (its accuracy there is held
to the contract's bounds by the GPU tests); this checks the method and the coefficients it is built on."""
import numpy as np

from sparse_sageattn.core_kernels.attention import kernel_sm90

F32 = np.float32


def _fma(a, b, c):
    # a * b is exact in float64 for float32 a, b; one rounding to float32 after the add, as FFMA rounds once
    return (a.astype(np.float64) * b.astype(np.float64) + c.astype(np.float64)).astype(F32)


def exp2_poly(x):
    """_exp2_poly's operations in order, each rounded to float32 as the GPU rounds it."""
    c0, c1, c2, c3 = (np.full_like(x, F32(getattr(kernel_sm90, f"EXP2_C{i}").value)) for i in range(4))
    x = np.where(np.isnan(x), x, np.maximum(x, F32(-125.0))).astype(F32)  # the NaN-propagating max
    shifted = (x + F32(12582912.0)).astype(F32)
    f = (x - (shifted - F32(12582912.0)).astype(F32)).astype(F32)
    poly = _fma(_fma(_fma(f, c3, c2), f, c1), f, c0)
    bits = poly.view(np.int32).astype(np.int64) + (shifted.view(np.int32).astype(np.int64) << 23)
    return (bits & 0xFFFFFFFF).astype(np.uint32).view(np.int32).view(F32)


def test_relative_error_below_half_an_fp16_ulp_of_p():
    rng = np.random.default_rng(0)
    x = np.concatenate([np.linspace(-125.0, 0.0, 2_000_003), -rng.random(100_000) * 30]).astype(F32)
    rel = np.abs(exp2_poly(x).astype(np.float64) / np.exp2(x.astype(np.float64)) - 1)
    assert rel.max() <= 7.6e-5  # the cubic's own bound; P then rounds to fp16 (half an ulp: 4.9e-4)
    assert rel.max() > 1e-6  # the check sees the approximation (it is not computing exp2 exactly)


def test_the_row_maximum_stays_one_to_fp16_and_tiny_values_stay_tiny():
    one = exp2_poly(np.zeros(1, F32))[0]
    assert abs(one - 1) < 7.6e-5 and np.float16(one) == 1  # the row's largest score: P = 1 in fp16
    tiny = exp2_poly(np.array([-125.0, -126.5, -300.0, -1e30], F32))
    assert np.all(tiny > 0) and np.all(tiny < 2.0 ** -124)  # clamped at 2**-125: nothing next to the row's 1
    assert np.all(np.float16(tiny) == 0)


def test_nan_stays_nan():
    assert np.isnan(exp2_poly(np.array([np.nan], F32))).all()
