"""Builds the optional CPU kernel; all other metadata is in pyproject.toml.

The extension is a plain shared library of XLA FFI handlers, loaded with
ctypes by ``optax_tfrmsprop/_src/cpu_kernel.py``. Its loops run on XLA's own
intra-op thread pool (``csrc/parallel.h``), so it needs no threading library.
It is ``optional``: where it cannot be compiled (no C++17 compiler), the
install still succeeds and the package uses its XLA path, with a warning on
CPU.
"""

import jax.ffi
import setuptools

# -ffp-contract=off: no fused multiply-add, each operation rounds as in TF.
# -fno-math-errno: lets sqrt vectorise (no errno to set on negative input).
# No -march: the loops are compiled for AVX-512, AVX2 and the baseline ISA and
# chosen at run time, so one wheel is correct and fast on any x86-64 or ARM.
_COMPILE_ARGS = [
  "-std=c++17",
  "-O3",
  "-ffp-contract=off",
  "-fno-math-errno",
]

setuptools.setup(
  ext_modules=[
    setuptools.Extension(
      "optax_tfrmsprop._src._cpu_kernel",
      sources=[
        "optax_tfrmsprop/_src/csrc/dense_kernel.cc",
        "optax_tfrmsprop/_src/csrc/sparse_kernel.cc",
      ],
      depends=[
        "optax_tfrmsprop/_src/csrc/bfloat16.h",
        "optax_tfrmsprop/_src/csrc/dense_loops.h",
        "optax_tfrmsprop/_src/csrc/parallel.h",
        "optax_tfrmsprop/_src/csrc/tfrmsprop.h",
      ],
      include_dirs=[jax.ffi.include_dir()],
      language="c++",
      extra_compile_args=_COMPILE_ARGS,
      optional=True,
    )
  ],
)
