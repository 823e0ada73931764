/* Activation template: included by act.c with REAL, SUF, and the libm names (EXP, EXPM1,
 * LOG1P, TANH, ERF, SQRT, FABS) defined, plus SIGMOID(x) / TANHV(x) (fast, vectorizable
 * versions for float; libm-based for double). Definitions and kink conventions mirror
 * fastgru/activations.py exactly (strict inequalities as written there). */

#define FGN_CAT2(a, b) a##_##b
#define FGN_CAT(a, b) FGN_CAT2(a, b)
#define FGN(name) FGN_CAT(name, SUF)

static inline REAL FGN(softplus1)(REAL a)
{   /* logaddexp(a, 0); NaN stays NaN */
    if (a != a) return a;
    return (a > 0 ? a : (REAL)0) + LOG1P(EXP(-FABS(a)));
}

static inline REAL FGN(act1)(int code, REAL a)
{
    REAL t;
    switch (code) {
    case 0: return a;
    case 1: return TANHV(a);
    case 2: return SIGMOID(a);
    case 3: t = a / 6 + (REAL)0.5; return t < 0 ? 0 : (t > 1 ? 1 : t);
    case 4: return a < 0 ? 0 : a;
    case 5: return a > 0 ? a : EXPM1(a);
    case 6: return (REAL)SELU_SCALE * (a > 0 ? a : (REAL)SELU_ALPHA * EXPM1(a));
    case 7: return FGN(softplus1)(a);
    case 8: return a / (1 + FABS(a));
    case 9: return a * SIGMOID(a);
    case 10: return (REAL)0.5 * a * (1 + ERF(a / (REAL)SQRT2));
    case 11: return EXP(a);
    case 12: t = a + 3; t = t < 0 ? 0 : (t > 6 ? 6 : t); return a * t / 6;
    case 13: return a < -1 ? -1 : (a > 1 ? 1 : a);
    case 14: return a > 0 ? a : (REAL)LEAKY_SLOPE * a;
    case 15: return a < 0 ? 0 : (a > 6 ? 6 : a);
    case 16: return a * TANH(FGN(softplus1)(a));
    case 17: return -FGN(softplus1)(-a);
    case 18: return a - TANH(a);
    case 19: return a > 0 ? a : EXPM1(a);
    case 20: return (REAL)0.5 * (a + SQRT(a * a + (REAL)SQUAREPLUS_B));
    case 21: return a <= -1 ? 0 : (a < 1 ? (REAL)0.25 * (a + 1) * (a + 1) : a); /* NaN: NaN */
    case 22: return a > (REAL)SHRINK ? a - (REAL)SHRINK : (a < -(REAL)SHRINK ? a + (REAL)SHRINK : 0);
    case 23: return FABS(a) > (REAL)SHRINK ? a : 0;
    case 24: return a <= -1 ? 0 : (a >= 1 ? 1 : (REAL)0.5 * (a + 1));
    }
    return a;
}

static inline REAL FGN(dact1)(int code, REAL a)
{
    REAL s, t;
    switch (code) {
    case 0: return 1;
    case 1: t = TANHV(a); return 1 - t * t;
    case 2: s = SIGMOID(a); return s * (1 - s);
    case 3: return (a > -3 && a < 3) ? (REAL)1 / 6 : 0;
    case 4: return a > 0 ? 1 : 0;
    case 5: return a > 0 ? 1 : EXP(a);
    case 6: return a > 0 ? (REAL)SELU_SCALE : (REAL)SELU_SCALE * (REAL)SELU_ALPHA * EXP(a);
    case 7: return SIGMOID(a);
    case 8: t = 1 + FABS(a); return 1 / (t * t);
    case 9: s = SIGMOID(a); return s * (1 + a * (1 - s));
    case 10:
        return (REAL)0.5 * (1 + ERF(a / (REAL)SQRT2)) + a * EXP((REAL)-0.5 * a * a) * (REAL)INV_SQRT_2PI;
    case 11: return EXP(a);
    case 12: return a > 3 ? 1 : (a > -3 ? (2 * a + 3) / 6 : 0);
    case 13: return (a > -1 && a < 1) ? 1 : 0;
    case 14: return a > 0 ? 1 : (REAL)LEAKY_SLOPE;
    case 15: return (a > 0 && a < 6) ? 1 : 0;
    case 16: t = TANH(FGN(softplus1)(a)); return t + a * (1 - t * t) * SIGMOID(a);
    case 17: return SIGMOID(-a);
    case 18: t = TANH(a); return t * t;
    case 19: return a > 0 ? 1 : EXP(a);
    case 20: return (REAL)0.5 * (1 + a / SQRT(a * a + (REAL)SQUAREPLUS_B));
    case 21: return a >= 1 ? 1 : (a > -1 ? (REAL)0.5 * (a + 1) : 0);
    case 22: return FABS(a) > (REAL)SHRINK ? 1 : 0;
    case 23: return FABS(a) > (REAL)SHRINK ? 1 : 0;
    case 24: return (a > -1 && a < 1) ? (REAL)0.5 : 0;
    }
    return 1;
}

/* The loops are specialised for the common codes so they vectorise; the rest go through the
 * switch element by element. target_clones picks AVX-512/AVX2 builds at run time; with
 * -ffp-contract=off every clone computes the same bits. */
FG_CLONES int FGN(fg_act)(int code, int n, const REAL *in, REAL *out)
{
    if (code < 0 || code > FG_MAX_CODE) return -1;
    switch (code) {
    case 0: if (out != in) memmove(out, in, (size_t)n * sizeof(REAL)); return 0;
    case 1:
#pragma omp simd
        for (int i = 0; i < n; i++) out[i] = TANHV(in[i]);
        return 0;
    case 2:
#pragma omp simd
        for (int i = 0; i < n; i++) out[i] = SIGMOID(in[i]);
        return 0;
    case 3:
#pragma omp simd
        for (int i = 0; i < n; i++) { REAL t = in[i] / 6 + (REAL)0.5; out[i] = t < 0 ? 0 : (t > 1 ? 1 : t); }
        return 0;
    case 4:
#pragma omp simd
        for (int i = 0; i < n; i++) out[i] = in[i] < 0 ? 0 : in[i];
        return 0;
    }
    for (int i = 0; i < n; i++) out[i] = FGN(act1)(code, in[i]);
    return 0;
}

FG_CLONES int FGN(fg_dact)(int code, int n, const REAL *in, REAL *out)
{
    if (code < 0 || code > FG_MAX_CODE) return -1;
    switch (code) {
    case 1:
#pragma omp simd
        for (int i = 0; i < n; i++) { REAL t = TANHV(in[i]); out[i] = 1 - t * t; }
        return 0;
    case 2:
#pragma omp simd
        for (int i = 0; i < n; i++) { REAL s = SIGMOID(in[i]); out[i] = s * (1 - s); }
        return 0;
    }
    for (int i = 0; i < n; i++) out[i] = FGN(dact1)(code, in[i]);
    return 0;
}

#undef FGN
#undef FGN_CAT
#undef FGN_CAT2
