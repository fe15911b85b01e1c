"""Build configuration beyond setup.cfg: the CPU kernel, a C library compiled at install time."""

from setuptools import Extension, setup

# A plain C library (no Python header), loaded with ctypes by csrefine.backends.cpu_backend.
# -ffp-contract=off: no fused multiply-add (numpy, the reference, has none); no CPU-specific
# instructions, so one build serves every node of a cluster.
KERNEL = Extension(
    "csrefine.backends._kernel",
    sources=["plugin/backends/_kernel.c"],
    extra_compile_args=["-O2", "-std=c99", "-ffp-contract=off", "-fopenmp-simd"],
)

setup(ext_modules=[KERNEL])
