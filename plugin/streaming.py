"""Batches of particle images read ahead, in background threads, into reusable host buffers.

While the backend computes batch b, batch b + 1 is read into the other of two host buffers
(pinned memory when the backend supplies it, so the GPU copy needs no staging copy). A batch may
be read by several threads, each filling its own slice of the buffer; numpy's copies from the
memory-mapped stacks release the GIL. Memory: two buffers of ``batch_size`` images, whatever
the number of particles.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator

import numpy as np


def batch_slices(n: int, batch_size: int) -> list[np.ndarray]:
    """Positions 0..n-1 cut into consecutive batches of at most ``batch_size``."""
    return [np.arange(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]


class BatchStream:
    """Iterate ``(idx, images)`` over the batches of ``positions``.

    Parameters
    ----------
    images : source with ``read(positions, out=None) -> (k, box, box) float32``.
    positions : int array (n,), rows of ``images`` to read, in order.
    batch_size : particles per batch; box : image size in pixels.
    buffer : ``buffer(shape) -> float32 ndarray`` (default ``numpy.empty``); called twice.
    readers : threads reading one batch (each reads a contiguous share of it).
    measure : optional ``measure(images) -> tuple of (k,) arrays``, applied by each reader
        thread to the images it has just read (while the consumer computes the previous batch);
        then the iteration yields ``(idx, images, measured)``, ``measured`` the batch's arrays.

    ``idx`` are indices into ``positions``; ``images`` is a view of a host buffer that is
    overwritten two batches later, so the consumer must be done with it by then.
    """

    def __init__(self, images, positions: np.ndarray, batch_size: int, box: int,
                 buffer: Callable | None = None, readers: int = 1,
                 measure: Callable | None = None):
        self.images = images
        self.measure = measure
        self.positions = np.asarray(positions, dtype=np.int64)
        self.batches = batch_slices(self.positions.size, int(batch_size))
        self.readers = max(1, int(readers))
        make = buffer or (lambda shape: np.empty(shape, dtype=np.float32))
        size = min(int(batch_size), max(self.positions.size, 1))
        self.buffers = [make((size, box, box)) for _ in range(2)] if self.batches else []

    def _submit(self, pool, b: int):
        idx = self.batches[b]
        out = self.buffers[b % 2][:idx.size]
        cuts = np.linspace(0, idx.size, min(self.readers, idx.size) + 1).astype(int)
        return out, [pool.submit(self._read, self.positions[idx[a:z]], out[a:z])
                     for a, z in zip(cuts[:-1], cuts[1:]) if z > a]

    def _read(self, positions: np.ndarray, out: np.ndarray):
        self.images.read(positions, out=out)
        return self.measure(out) if self.measure is not None else None

    def __iter__(self) -> Iterator[tuple]:
        if not self.batches:
            return
        pool = ThreadPoolExecutor(max_workers=self.readers, thread_name_prefix="csrefine-read")
        try:
            pending = self._submit(pool, 0)
            for b, idx in enumerate(self.batches):
                out, futures = pending
                parts = [f.result() for f in futures]  # re-raises a reader's InputError
                if b + 1 < len(self.batches):
                    pending = self._submit(pool, b + 1)
                if self.measure is None:
                    yield idx, out
                else:
                    yield idx, out, tuple(np.concatenate(a) for a in zip(*parts))
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
