r"""Activation steps that Numba can vectorize: ``tanh`` and ``sigmoid`` in pure arithmetic.

Inside Numba, ``math.tanh`` and ``math.exp`` are calls into the C library, one element at a time:
~95 and ~300 million elements per second on two cores, where a multiply-add loop runs at
billions. So the one transcendental these activations need, ``exp(-y)`` for ``y >= 0``, is written
here the way a vector math library writes it, in operations LLVM turns into SIMD code:

- **range reduction** (Cody and Waite): ``y = n ln 2 + r`` with ``n = round(y / ln 2)`` and
  ``|r| <= ln(2) / 2``, where ``n ln 2`` is subtracted in two parts (``LN2_HI`` has trailing zero
  bits, so ``n * LN2_HI`` is exact for every ``n`` we use);
- ``exp(-r)`` by its Taylor polynomial of degree 13 (the remainder is below ``4e-18``, under a
  thirtieth of an ulp), its tail by Estrin's scheme and its three leading terms by Horner's;
- ``exp(-y) = 2^-n exp(-r)``, with ``2^-n`` built in the exponent bits of a float (two factors
  ``2^-(n//2)`` and ``2^-(n - n//2)``, both normal numbers even where ``exp(-y)`` is subnormal).
  ``n`` itself is rounded by adding ``1.5 * 2^52``: the sum's low bits are ``n``. Bit casts are
  free in SIMD code; a float-to-integer conversion or a table look-up would not vectorize.

``tanh`` then follows Cephes (S. L. Moshier): for ``|z| < 0.625`` a rational function of ``z^2``,
otherwise ``1 - 2e/(1 + e)`` with ``e = exp(-2|z|)``, which never cancels; ``tanh' = sech^2`` is
``1 - tanh^2`` (no cancellation below 0.625) or ``w (2 - w)`` with ``w = 1 - tanh = 2e/(1 + e)``,
accurate at any ``|z|``.
``sigmoid`` uses ``e = exp(-|z|)``: ``1/(1 + e)`` and ``e/(1 + e)``, each exact to rounding.
Checked against 40-digit mpmath references (``tests/test_numba_activations.py``): ``tanh`` within 1 ulp,
``sigmoid`` within 4 ulp.

Higher orders come from the Riccati equations both functions solve, written for Taylor
coefficients ``a_j = y^{(j)} / j!``: if ``y' = c - y^2`` then, for ``m >= 1``,

.. math::  (m + 1)\, a_{m+1} = -\sum_{j=0}^{m} a_j\, a_{m-j}

(``tanh``: ``y = tanh``, ``c = 1``; ``sigmoid``: ``y = sigma - 1/2``, ``c = 1/4``). ``silu = z
sigma(z)`` follows from sigmoid's coefficients ``s_j`` by the product rule, ``a_j = z s_j + s_{j-1}``.
Every order is arithmetic on the rows of a block already in cache: the exponential is evaluated
once per element.

``sin`` and ``cos`` follow fdlibm: ``z = n pi/2 + r`` with ``|r| <= pi/4``, ``pi/2`` in three
33-bit parts (each ``n * part`` exact for ``|n| < 2^20``), then fdlibm's kernel polynomials of
``r`` and the quadrant ``n mod 4``. Beyond ``|z| = 2^19 pi/2``
that reduction loses accuracy: a block holding such a value is evaluated by the C library.
Their coefficients cycle: ``sin^(j) = (sin, cos, -sin, -cos)[j mod 4]``.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

#: activation name -> the kind number the compiled kernels branch on (0: coefficients given)
KINDS = {"tanh": 1, "sigmoid": 2, "silu": 3, "softplus": 4, "sin": 5, "cos": 6}

LOG2E = 1.4426950408889634
LN2_HI = 6.93147180369123816490e-01  # ln 2 rounded to 32 significant bits: n * LN2_HI is exact
LN2_LO = 1.90821492927058770002e-10  # ln 2 - LN2_HI
#: 1 / k!, k = 0..13: exp(-r) = sum_k (-r)^k / k!
EXP_TAYLOR = tuple(1.0 / float(np.prod(np.arange(1, k + 1))) for k in range(14))
SHIFTER = 1.5 * 2.0**52  # y / ln 2 + SHIFTER rounds y / ln 2 to an integer held in the low bits
Y_MAX = 745.5  # exp(-y) rounds to 0 beyond 745.14
# Cephes tanh: tanh(u) = u + u^3 P(u^2) / Q(u^2) for |u| < 0.625, Q monic
TANH_P = (-9.64399179425052238628e-1, -9.92877231001918586564e1, -1.61468768441708447952e3)
TANH_Q = (1.12811678491632931402e2, 2.23548839060100448583e3, 4.84406305325125486048e3)
TANH_SMALL = 0.625


#: the fills' floating-point flags: fused multiply-adds (one rounding where there were two: as
#: accurate or more, and 1.5x faster), but no reassociation, so every formula runs as written.
#: A function inlined into a caller (``inline="always"``) is compiled with the caller's flags.
FILL_FASTMATH = {"contract"}


def _jit(function):
    """Cached, inlined into its callers (and compiled with their flags: :data:`FILL_FASTMATH`)."""
    return numba.njit(fastmath=FILL_FASTMATH, cache=True, nogil=True, error_model="numpy", inline="always")(function)


@intrinsic
def as_int64(typingctx, x):
    """The bits of a float64 as an int64 (no conversion: a bit cast)."""

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(64))

    return types.int64(types.float64), codegen


@intrinsic
def as_float64(typingctx, bits):
    """The float64 whose bits are those of an int64."""

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())

    return types.float64(types.int64), codegen


#: the widest SIMD vectors, in bits, LLVM may use in the kernels' loops (:func:`wide_vectors`)
VECTOR_BITS = 512


@intrinsic
def wide_vectors(typingctx):
    """Let LLVM vectorize the calling kernel's loops with :data:`VECTOR_BITS`-bit vectors.

    On Intel's AVX-512 CPUs LLVM prefers 256-bit vectors by default (its ``prefer-256-bit``
    tuning, from the clock drop of the first AVX-512 parts); the activation steps are bound by
    arithmetic and run 1.2x faster per element with 512 (``docs/performance.md``). The function
    attribute ``"prefer-vector-width"`` changes that for this kernel alone, and for the kernels it
    is inlined into (their vector code is kept): the same operations per element, the same bits.
    Where the CPU has narrower vectors it changes nothing. Called first in every kernel with a loop."""

    def codegen(context, builder, signature, args):
        # llvmlite's FunctionAttributes lists flag attributes only; a "key"="value" one goes in as
        # written. Should a later llvmlite refuse it, the kernel compiles with LLVM's default width.
        try:
            set.add(builder.function.attributes, f'"prefer-vector-width"="{VECTOR_BITS}"')
        except TypeError:
            pass
        return context.get_dummy_value()

    return types.none(), codegen


@_jit
def exp_neg(y):
    """``exp(-y)`` for ``y >= 0``, within an ulp; NaN for NaN."""
    y = Y_MAX if y > Y_MAX else y  # written so that NaN passes
    shifted = y * LOG2E + SHIFTER
    n = shifted - SHIFTER  # round(y / ln 2), as a float
    r = (y - n * LN2_HI) - n * LN2_LO
    c = EXP_TAYLOR
    q = -r
    q2 = q * q
    q4 = q2 * q2
    # the tail c_3 + c_4 q + ... + c_13 q^10 by Estrin's scheme (independent products, a short
    # dependency chain: 1.3x faster than Horner), then the three leading terms by Horner, whose
    # rounding sets the accuracy: the tail's is scaled by |q|^3 < 0.05
    tail_lo = (c[3] + c[4] * q) + (c[5] + c[6] * q) * q2
    tail_mid = (c[7] + c[8] * q) + (c[9] + c[10] * q) * q2
    tail_hi = (c[11] + c[12] * q) + c[13] * q2
    tail = tail_lo + q4 * (tail_mid + q4 * tail_hi)
    p = c[2] + q * tail
    p = c[1] + q * p
    p = c[0] + q * p
    bits = (as_int64(shifted) - as_int64(SHIFTER)) & 2047  # n as an integer (masked: NaN stays NaN via p)
    half = bits >> 1
    return (p * as_float64((1023 - half) << 52)) * as_float64((1023 - (bits - half)) << 52)


@_jit
def tanh_rational(u):
    """``tanh(u)`` for ``|u| < 0.625`` (Cephes' rational function of ``u^2``)."""
    x = u * u
    p, q = TANH_P, TANH_Q
    return u + u * x * (((p[0] * x + p[1]) * x + p[2]) / (((x + q[0]) * x + q[1]) * x + q[2]))


@_jit
def tanh_sech2(z):
    """``(tanh z, sech^2 z)``; both formulas are evaluated and one selected, so loops vectorize."""
    u = abs(z)
    small = tanh_rational(u)
    w = 2.0 * exp_neg(2.0 * u)
    w = w / (1.0 + 0.5 * w)  # 1 - tanh u = 2e / (1 + e), e = exp(-2u): no cancellation
    is_small = u < TANH_SMALL
    t = small if is_small else 1.0 - w
    s = 1.0 - small * small if is_small else w * (2.0 - w)  # (1 - t)(1 + t), one division in all
    return np.copysign(t, z), s


@_jit
def sigmoid_parts(z):
    """``(sigma(z), sigma'(z), sigma(z) - 1/2, exp(-|z|))``, each to full relative accuracy
    (``sigma - 1/2 = tanh(z/2) / 2``: near 0 from the rational ``tanh``, not by cancellation)."""
    e = exp_neg(abs(z))
    upper = 1.0 / (1.0 + e)  # sigma(|z|)
    lower = e * upper  # sigma(-|z|) = 1 - sigma(|z|), without the subtraction
    near_zero = abs(z) < 2.0 * TANH_SMALL
    centred = 0.5 * tanh_rational(0.5 * z) if near_zero else np.copysign(0.5 * (upper - lower), z)
    return (upper if z >= 0 else lower), upper * lower, centred, e


#: 1 / (2k + 1), k = 0..16: atanh(u) / u = sum_k u^(2k) / (2k + 1)
ATANH_SERIES = tuple(1.0 / (2 * k + 1) for k in range(17))


@_jit
def log1p_unit(e):
    """``log(1 + e)`` for ``0 <= e <= 1``: ``2 atanh(u)``, ``u = e / (2 + e) <= 1/3``."""
    u = e / (2.0 + e)
    w = u * u
    c = ATANH_SERIES
    p = c[16]
    for k in range(15, -1, -1):  # Horner (a constant trip count: unrolled)
        p = p * w + c[k]
    return 2.0 * u * p


TWO_OVER_PI = 6.36619772367581382433e-01
PIO2_1 = 1.57079632673412561417e00  # pi/2 in three parts of 33 bits, and the rest (fdlibm)
PIO2_2 = 6.07710050630396597660e-11
PIO2_3 = 2.02226624871116645580e-21
PIO2_3T = 8.47842766036889956997e-32
REDUCTION_MAX = 2.0**19 * 1.5707963267948966
SIN_POLY = (-1.66666666666666324348e-01, 8.33333333332248946124e-03, -1.98412698298579493134e-04,
            2.75573137070700676789e-06, -2.50507602534068634195e-08, 1.58969099521155010221e-10)  # fmt: skip
COS_POLY = (4.16666666666666019037e-02, -1.38888888888741095749e-03, 2.48015872894767294178e-05,
            -2.75573143513906633035e-07, 2.08757232129817482790e-09, -1.13596475577881948265e-11)  # fmt: skip


@_jit
def sin_cos(z):
    """``(sin z, cos z)`` for ``|z| <= REDUCTION_MAX`` (NaN for NaN and the infinities)."""
    shifted = z * TWO_OVER_PI + SHIFTER
    n = shifted - SHIFTER  # round(z / (pi/2))
    r = (((z - n * PIO2_1) - n * PIO2_2) - n * PIO2_3) - n * PIO2_3T
    x = r * r
    p, q = SIN_POLY, COS_POLY
    sine = r + (x * r) * (p[0] + x * (p[1] + x * (p[2] + x * (p[3] + x * (p[4] + x * p[5])))))
    tail = x * (x * (q[0] + x * (q[1] + x * (q[2] + x * (q[3] + x * (q[4] + x * q[5]))))))
    half = 0.5 * x
    w = 1.0 - half
    cosine = w + (((1.0 - w) - half) + tail)
    quadrant = n - 4.0 * np.floor(0.25 * n)  # n mod 4, as a float (selects on floats vectorize)
    odd = quadrant == 1.0 or quadrant == 3.0
    s = cosine if odd else sine
    c = sine if odd else cosine
    s = -s if quadrant >= 2.0 else s
    c = -c if quadrant == 1.0 or quadrant == 2.0 else c
    return s, c


@numba.njit(fastmath=FILL_FASTMATH, cache=True, nogil=True, error_model="numpy")
def _fill_cycle(kind, z, a, order, n, centred):
    """sin (``kind`` 5) or cos (6): ``a_j = (s, c, -s, -c)[j mod 4] / j!``, shifted by one for cos."""
    wide_vectors()
    large = False
    for i in range(n):
        large |= abs(z[i]) > REDUCTION_MAX
    if large:  # the C library's argument reduction (rare: only blocks holding such values)
        for i in range(n):
            a[0, i], centred[i] = math.sin(z[i]), math.cos(z[i])
    else:
        for i in range(n):
            a[0, i], centred[i] = sin_cos(z[i])
    if kind == 6:  # cos: g = cos, g' = -sin
        for i in range(n):
            a[0, i], centred[i] = centred[i], -a[0, i]
    factorial = 1.0
    for j in range(1, order + 1):
        factorial *= j  # exact in float64 up to 22!
        reciprocal = 1.0 / factorial
        sign = 1.0 if j % 4 < 2 else -1.0
        source = centred if j % 2 == 1 else a[0]  # derivatives alternate between g' and g
        for i in range(n):
            a[j, i] = (sign * source[i]) * reciprocal if j > 1 else source[i]


@numba.njit(fastmath=FILL_FASTMATH, cache=True, nogil=True, error_model="numpy")
def fill_block(kind, z, a, order, n, centred):
    """``a[j, :n] = g^(j)(z[:n]) / j!`` for ``j = 0..order``; ``kind`` from :data:`KINDS`;
    ``centred`` ``(>= n,)`` is scratch space (sigmoid's ``sigma - 1/2``)."""
    wide_vectors()
    if kind == 1:
        for i in range(n):
            a[0, i], centred[i] = tanh_sech2(z[i])  # sech^2 -> centred: a[1] may not exist
        if order >= 1:
            for i in range(n):
                a[1, i] = centred[i]
        _riccati(a, 0, a[0], order, n)
        return
    if kind >= 5:
        _fill_cycle(kind, z, a, order, n, centred)
        return
    if kind == 4:  # softplus: rows 1..order hold sigmoid's coefficients 0..order-1, then / j
        for i in range(n):
            sigma, derivative, centred[i], e = sigmoid_parts(z[i])
            a[0, i] = max(z[i], 0.0) + log1p_unit(e)
            if order >= 1:
                a[1, i] = sigma
            if order >= 2:
                a[2, i] = derivative
        _riccati(a, 1, centred, order - 1, n)
        for j in range(2, order + 1):
            for i in range(n):
                a[j, i] = a[j, i] / j
        return
    # sigmoid, and silu from sigmoid's coefficients
    for i in range(n):
        a[0, i], derivative, centred[i], _ = sigmoid_parts(z[i])
        if order >= 1:
            a[1, i] = derivative
    _riccati(a, 0, centred, order, n)
    if kind == 3:  # (z s)_j = z s_j + s_{j-1}, from the top so that s_{j-1} is still there
        for j in range(order, 0, -1):
            for i in range(n):
                a[j, i] = z[i] * a[j, i] + a[j - 1, i]
        for i in range(n):
            a[0, i] = z[i] * a[0, i]


@numba.njit(fastmath=FILL_FASTMATH, cache=True, nogil=True, error_model="numpy")
def fill_low(kind, z, value, slope, order):
    """``value = g(z)`` and, for ``order`` 1, ``slope = g'(z)``, for tanh (``kind`` 1) or sigmoid
    (2), 1D: written straight into the rows, no block buffer (what is not asked for is never formed)."""
    wide_vectors()
    if kind == 1 and order == 0:
        for i in range(len(z)):
            value[i] = tanh_sech2(z[i])[0]
    elif kind == 1:
        for i in range(len(z)):
            value[i], slope[i] = tanh_sech2(z[i])
    elif order == 0:
        for i in range(len(z)):
            value[i] = sigmoid_parts(z[i])[0]
    else:
        for i in range(len(z)):
            value[i], slope[i] = sigmoid_parts(z[i])[:2]


@numba.njit(fastmath=FILL_FASTMATH, cache=True, nogil=True, error_model="numpy", inline="always")
def _riccati(a, first, b0, order, n):
    """Orders 2..order of a solution of ``y' = c - y^2``, its coefficient ``j`` in row ``first + j``,
    from orders 0 and 1 there and ``b0 = y`` (see above)."""
    # (m + 1) a_{m+1} = -(2 b_0 a_m + sum_{0 < j < m} a_j a_{m-j}), the pairs j < m - j counted twice;
    # rows as 1D arrays (a loop over one contiguous row vectorizes), 1/(m + 1) as one multiplication
    for m in range(1, order):
        row, previous = a[first + m + 1], a[first + m]
        for i in range(n):
            row[i] = 2.0 * b0[i] * previous[i]
        for j in range(1, (m + 1) // 2):
            low, high = a[first + j], a[first + m - j]
            for i in range(n):
                row[i] += 2.0 * (low[i] * high[i])
        if m % 2 == 0:
            middle = a[first + m // 2]
            for i in range(n):
                row[i] += middle[i] * middle[i]
        scale = -1.0 / (m + 1)
        for i in range(n):
            row[i] = row[i] * scale
