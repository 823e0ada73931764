/* The steps of the two-level column sums (fg_colsum in gru_impl.h, and the sums fg_gemm_kb
 * takes while it packs B in gemm.c), in one place so that both give the same bits: a block's
 * FG_CS_ROWS rows summed in the element type in row order, the block sums and the rows after
 * the last whole block added in double, out = (REAL)(blocks + tail). Elementwise, so every
 * vector width computes the same values. */
#ifndef FG_COLSUM_INLINE_H
#define FG_COLSUM_INLINE_H

#define FG_DEFINE_CS_STEPS(SUF, REAL)                                                         \
    /* a block's running sums: acc += row */                                                  \
    static inline void fg_cs_add_##SUF(int n, const REAL *restrict row, REAL *restrict acc)  \
    {                                                                                         \
        _Pragma("omp simd") for (int c = 0; c < n; c++) acc[c] += row[c];                     \
    }                                                                                         \
    /* a block's sums, or a row after the last whole block, into the double sums */           \
    static inline void fg_cs_addd_##SUF(int n, const REAL *restrict v, double *restrict acc) \
    {                                                                                         \
        _Pragma("omp simd") for (int c = 0; c < n; c++) acc[c] += (double)v[c];               \
    }                                                                                         \
    static inline void fg_cs_out_##SUF(int n, const double *restrict blocks,                  \
                                       const double *restrict tail, REAL *restrict out)       \
    {                                                                                         \
        for (int c = 0; c < n; c++) out[c] = (REAL)(blocks[c] + tail[c]);                     \
    }
FG_DEFINE_CS_STEPS(f, float)
FG_DEFINE_CS_STEPS(d, double)

#endif
