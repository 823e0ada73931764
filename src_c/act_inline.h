/* Vectorisable float sigmoid / tanh (and the double sigmoid), shared by the activation loops
 * (act.c) and the fused gate pass (gru_impl.h) so that both compute the same bits. */
#ifndef FG_ACT_INLINE_H
#define FG_ACT_INLINE_H

#include <math.h>
#include <stdint.h>

/* Polynomials use explicit fmaf (one rounding, and half the operations of mul + add under
 * -ffp-contract=off) and correctly rounded divisions: both are the same operations on every ISA
 * clone (the baseline clone calls libm's fmaf), so the bits agree. Divisions rather than a
 * Newton reciprocal (integer first guess + three FMA pairs, which these functions used until
 * 2026-12-05): once the gate pass ran in two loops, the 21 FMAs per three reciprocals cost more
 * than three vdivps on the divider beside the FMA pipes. One-process A/B on the 2 MB-L2 Xeon:
 * inference +0.6-2.8% (64x200x128x256 +2.2-2.5%), training level to +1.3%; Zen 4 +1-3%; and
 * 2.25 / 4.5 ulp at most on the tests' grid instead of 2.5 / 5. Over all 2^32 floats (checked
 * by a harness, 2026-12-05): sigmoid at most 2.4 ulp for x >= -87 (below, exp(-87) stands for
 * exp(x)), tanh 4.9 ulp. */

/* exp(x) for x <= 0 (Cephes polynomial, ~1 ulp), branch-free so loops vectorise.
 * Arguments below -87 give exp(-87) ~ 1.6e-38 (negligible where it is used); NaN stays NaN.
 * n = round(x log2 e) comes from adding 1.5 * 2^23 in the FMA (the sum's low mantissa bits are
 * n; the subtraction is exact): two vector ops fewer than floorf(x log2 e + 0.5) and a
 * conversion (the same n except at ties, where |r| <= ln2 / 2 either way: 8 of 2^32 inputs
 * moved by an ulp). */
static inline float fg_expf_neg(float x)
{
    float xc = x < -87.0f ? -87.0f : x;
    float t = fmaf(xc, 1.44269504088896341f, 12582912.0f);
    float fx = t - 12582912.0f;
    float r = fmaf(fx, -0.693359375f, xc);
    r = fmaf(fx, 2.12194440e-4f, r);
    float p = 1.9875691500E-4f;
    p = fmaf(p, r, 1.3981999507E-3f);
    p = fmaf(p, r, 8.3334519073E-3f);
    p = fmaf(p, r, 4.1665795894E-2f);
    p = fmaf(p, r, 1.6666665459E-1f);
    p = fmaf(p, r, 5.0000001201E-1f);
    float y = fmaf(p, r * r, r) + 1.0f;
    /* y * 2^n as an integer add to y's exponent field: t's bits shifted left by 23 are n << 23
     * (1.5 * 2^23's own low bits are zero); y is in [0.7, 1.42) and n in [-126, 0], with y > 1
     * where n = -126 (xc >= -87), so the result is normal and the add is the exact product */
    union { uint32_t i; float f; } s, k;
    s.f = y, k.f = t;
    s.i += k.i << 23;
    return x == x ? s.f : x; /* a NaN's payload bits would land in the exponent */
}

static inline float fg_sigmoidf(float a)
{   /* same branches as activations._sigmoid: exp of a non-positive argument only */
    union { uint32_t i; float f; } n; /* -|a| as one OR of the sign bit */
    n.f = a, n.i |= 0x80000000u;
    float e = fg_expf_neg(n.f);
    float num = a >= 0 ? 1.0f : e;
    return num / (1.0f + e);
}

static inline float fg_tanhf(float a)
{   /* rational approximation (Eigen's), max rel. error ~4e-7, not clamped: above 8.125 the
     * select below gives +-1 (the approximant passes 1.0f by up to 2^-22 on (8.1274, 9), which
     * made 1 - t*t negative; further out it turns back and overflows to NaN for huge |a|).
     * Checked over all 2^32 floats: |t| <= 1 and at most 4.9 ulp from tanh (5.46 with the
     * clamp at 9 that this replaces, in two vector ops instead of seven) */
    float x2 = a * a;
    float p = -2.76076847742355e-16f;
    p = fmaf(p, x2, 2.00018790482477e-13f);
    p = fmaf(p, x2, -8.60467152213735e-11f);
    p = fmaf(p, x2, 5.12229709037114e-08f);
    p = fmaf(p, x2, 1.48572235717979e-05f);
    p = fmaf(p, x2, 6.37261928875436e-04f);
    p = fmaf(p, x2, 4.89352455891786e-03f);
    p = p * a;
    float q = 1.19825839466702e-06f;
    q = fmaf(q, x2, 1.18534705686654e-04f);
    q = fmaf(q, x2, 2.26843463243900e-03f);
    q = fmaf(q, x2, 4.89352518554385e-03f);
    float t = p / q; /* q >= 4.89e-3 */
    t = fabsf(a) > 8.125f ? copysignf(1.0f, a) : t; /* tanh(8.125) = 1 - 1.8e-7: 3 ulp */
    return fabsf(a) < 0.0004f ? a : t;
}

static inline double fg_sigmoid(double a)
{
    double e = exp(-fabs(a));
    double num = a >= 0 ? 1.0 : e;
    return num / (1.0 + e);
}

#endif
