"""Compiled CPU kernels (Cython binding ``_gru`` over src_c/). Import ``_gru`` lazily: the rest
of fastgru works from a source tree where the extension has not been built."""
