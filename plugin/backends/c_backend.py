"""CPU backend: the fused kernel of ``numba_backend`` in C (``c_kernel.c``), called through ctypes.

Why a second CPU kernel: importing numba and loading its cached kernel costs about 0.5 s of CPU
in every run (most of a small run's fixed cost), and in a thread of the run it holds the GIL that
the set-up's FFTs need. The C kernel loads in a millisecond. It is the same algorithm, in the same
operation order and precision; tests/test_backends.py checks it against the numpy reference like
the numba kernel.

The library is compiled once per machine with the system C compiler (``$CC``, else ``cc``;
``-O2 -ffp-contract=off``, no CPU-specific instructions, so a cache shared by a cluster's nodes
works on all of them) into the kernel cache (:func:`csrefine.backends.kernel_cache_dir`), under a
name keyed on the source, the table layout, the compiler and the flags. Where no compiler works,
:func:`available` is False and ``--device cpu`` uses numba (:func:`csrefine.backends.resolve_backend`).

Threads: thread t of T runs the pixel blocks t, t + T, ... (disjoint columns of ``stats``); ctypes
releases the GIL during the call.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path

import numpy as np

from . import _fused_cpu as _fused
from . import empty_host_buffer as host_buffer  # noqa: F401  (Backend.host_buffer)
from . import kernel_cache_dir
from ._fused_cpu import PIXEL_BLOCK, TOUCH, KernelInputs, default_batch_size, reader_threads  # noqa: F401  (Backend methods; the touch choice)
from ._tables import LAYOUT_ID, cuda_defines

name = "c"

#: Compiler flags: optimised, no contraction into fused multiply-adds (the numba kernel and numpy
#: have none), portable code (no -march=native).
CFLAGS = ("-O2", "-std=c99", "-fPIC", "-shared", "-ffp-contract=off")
#: Environment variable naming the C compiler (default ``cc``).
CC_ENV = "CC"
COMPILE_TIMEOUT_S = 120

_LOCK = threading.Lock()
_STATE: dict = {}


def source() -> str:
    """The kernel's C source with the table layout's ``#define`` lines prepended."""
    body = resources.files(__package__).joinpath("c_kernel.c").read_text(encoding="utf-8")
    return cuda_defines() + f"#define CSREFINE_LAYOUT_ID {LAYOUT_ID}LL\n" + body


def compiler() -> str | None:
    """The C compiler to use (``$CC`` or ``cc``), or None when there is none."""
    cc = os.environ.get(CC_ENV, "").strip() or "cc"
    return cc if shutil.which(cc.split()[0]) else None


def library_path(src: str, cc: str) -> Path:
    """Where the library compiled from ``src`` with ``cc`` is cached."""
    key = hashlib.sha256("\0".join([src, cc, *CFLAGS, platform.machine(),
                                    platform.system()]).encode()).hexdigest()[:20]
    return kernel_cache_dir("c") / f"csrefine_kernel_{key}.so"


def _compile(src: str, cc: str, path: Path) -> None:
    """Compile ``src`` into ``path`` (written under a temporary name, then renamed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        c_file = Path(tmp) / "c_kernel.c"
        c_file.write_text(src, encoding="utf-8")
        out = Path(tmp) / path.name
        proc = subprocess.run([*cc.split(), *CFLAGS, "-o", str(out), str(c_file), "-lm"],
                              capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S)
        if proc.returncode != 0 or not out.is_file():
            raise OSError(f"{cc} failed: {(proc.stderr or proc.stdout).strip()[-500:]}")
        os.replace(out, path)


def _declare(lib) -> None:
    i64, f64, ci = ctypes.c_int64, ctypes.c_double, ctypes.c_int
    ptr = ctypes.c_void_p
    for fn in (lib.csrefine_accumulate_c64, lib.csrefine_accumulate_c128):
        fn.restype = i64
        fn.argtypes = [ptr, i64, ptr, ptr, i64, i64, ptr, ptr, ptr, i64, i64, i64, f64, f64,
                       i64, i64, i64, ci, ptr, i64, ptr, i64, ptr, ptr, ptr, ptr, i64, ci, ptr]
    lib.csrefine_layout_id.restype = i64
    lib.csrefine_layout_id.argtypes = []


def load():
    """The compiled library (compiling it on first use), or raise OSError why not."""
    with _LOCK:
        if "lib" in _STATE:
            return _STATE["lib"]
        if "error" in _STATE:
            raise OSError(_STATE["error"])
        try:
            cc = compiler()
            if cc is None:
                raise OSError(f"no C compiler ({CC_ENV} or cc)")
            src = source()
            path = library_path(src, cc)
            if not path.is_file():
                _compile(src, cc, path)
            lib = ctypes.CDLL(str(path))
            _declare(lib)
            if lib.csrefine_layout_id() != LAYOUT_ID:
                raise OSError(f"{path} was compiled for another table layout")
        except (OSError, subprocess.SubprocessError, AttributeError) as exc:
            _STATE["error"] = f"the C kernel is not available: {exc}"
            raise OSError(_STATE["error"]) from exc
        _STATE["lib"] = lib
        return lib


def unavailable_reason() -> str:
    """Why :func:`load` failed (after it did)."""
    return _STATE.get("error", "the C kernel is not available")


def available() -> bool:
    """Whether the C kernel can be used here (compiles it on first use)."""
    try:
        load()
        return True
    except OSError:
        return False


_POOL: dict = {}


def _pool(threads: int) -> ThreadPoolExecutor:
    pool = _POOL.get(threads)
    if pool is None:
        pool = _POOL[threads] = ThreadPoolExecutor(max_workers=threads,
                                                   thread_name_prefix="csrefine-ckernel")
    return pool


def _address(a: np.ndarray) -> int:
    return a.ctypes.data


def kernel(stats, k: KernelInputs, touch: bool, threads: int) -> int:
    """The fused kernel on ``k`` (a :data:`csrefine.backends._fused_cpu.Kernel`)."""
    lib = load()
    if stats.dtype != np.float64 or not stats.flags.c_contiguous:
        raise ValueError("stats must be a C-contiguous float64 array")
    if k.ref.dtype != np.complex64 or k.observed.dtype not in (np.complex64, np.complex128):
        raise ValueError("the C kernel takes a complex64 reference and complex band transforms")
    arrays = [np.ascontiguousarray(a) for a in (k.ptab, k.pix, k.ref, k.shift_x, k.shift_y,
                                                k.col, k.row, k.qtab)]
    ptab, pix, ref, shift_x, shift_y, col, row, qtab = arrays
    col, row = col.astype(np.int64, copy=False), row.astype(np.int64, copy=False)
    cont = np.ascontiguousarray(k.cont, dtype=np.int8)
    fn = lib.csrefine_accumulate_c64 if k.observed.dtype == np.complex64 \
        else lib.csrefine_accumulate_c128
    n, m = k.observed.shape
    n_blocks = -(-m // PIXEL_BLOCK)
    workers = max(1, min(int(threads or 1), n_blocks))
    sinks = np.zeros(workers)

    def run(t: int) -> int:
        return fn(_address(stats), stats.shape[0], _address(k.cells), _address(k.observed), n, m,
                  _address(ptab), _address(pix), _address(ref), ref.shape[1], ref.shape[2],
                  k.radius, k.ref_scale, k.defocus_factor, PIXEL_BLOCK, t, workers,
                  int(k.separable), _address(shift_x), shift_x.shape[1], _address(shift_y),
                  shift_y.shape[1], _address(col), _address(row), _address(qtab),
                  _address(cont), k.half_box, int(touch), sinks.ctypes.data + 8 * t)

    if workers == 1:
        results = [run(0)]
    else:
        results = list(_pool(workers).map(run, range(workers)))
    if min(results) < 0:
        raise MemoryError("the C kernel could not allocate its scratch arrays")
    return int(sum(results))


#: The Backend functions (csrefine.backends.Backend) of this kernel: accumulate_batch (one batch,
#: one reference), accumulate_halves (both half sets, images transformed once) and warm_up
#: (compiles or loads the kernel and runs it on a tiny batch).
accumulate_batch, accumulate_halves, warm_up = _fused.backend_functions(kernel)
