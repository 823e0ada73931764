"""Build of the compiled CPU engine: one Cython extension over the C kernels in src_c/.

BLAS comes from scipy.linalg.cython_blas at run time (never linked). No -march flags: the C
code selects AVX2/AVX-512 variants at run time, so wheels run on any x86-64.
Set FASTGRU_NO_OPENMP=1 to build without OpenMP (single-threaded kernels).
"""

import os

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

openmp = os.environ.get("FASTGRU_NO_OPENMP", "") not in ("1", "true", "yes")
omp_flags = ["-fopenmp"] if openmp else []
# without the runtime: keep the simd pragmas, ignore the thread ones
simd_flags = [] if openmp else ["-fopenmp-simd", "-Wno-unknown-pragmas"]

ext = Extension(
    "fastgru._cpu._gru",
    sources=["fastgru/_cpu/_gru.pyx", "src_c/gemm.c", "src_c/act.c", "src_c/gru.c",
             "src_c/ws.c", "src_c/optim.c"],
    depends=["src_c/fastgru.h", "src_c/act_impl.h", "src_c/act_inline.h", "src_c/gru_impl.h",
             "src_c/colsum_inline.h",
             "fastgru/_cpu/_kernels.pxd"],
    include_dirs=["src_c", numpy.get_include()],
    define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    # fp-contract=off: every ISA clone of the gate loops computes the same bits; no-trapping-math
    # lets the branch-free activation loops vectorise (values unchanged).
    extra_compile_args=["-O3", "-std=gnu11", "-ffp-contract=off", "-fno-trapping-math",
                        "-fno-math-errno", *omp_flags, *simd_flags],
    extra_link_args=omp_flags,
)

setup(ext_modules=cythonize([ext], language_level=3))
