"""Builds quantport's one compiled module; everything else is in pyproject.toml.

``quantport/quant/_kq_search.c`` holds llama.cpp's k-quant scale searches, vectorized across
blocks (see its header). It is a plain shared library loaded with ctypes (no Python API), so one
build serves every Python 3 on the platform. It is optional: without a C compiler the install
still succeeds and the bit-identical numpy code runs instead (slower).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "quantport.quant._kq_search",
            sources=["src/quantport/quant/_kq_search.c"],
            # -ffp-contract=off: a*b + c must round twice, as in llama.cpp's reference build
            extra_compile_args=["-O3", "-ffp-contract=off", "-fno-fast-math"],
            optional=True,
        )
    ]
)
