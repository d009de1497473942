"""Builds the optional native bitmask decoder; everything else is in pyproject.toml.

The extension is optional: where no C compiler is available the package installs without it and
decodes with numpy/torch instead (same results, slower loading).
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("hf_sparse._bitmask", ["hf_sparse/_bitmask.c"], optional=True, extra_compile_args=["-O3"])])
