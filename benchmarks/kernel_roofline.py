"""The CPU kernel's cost per particle-pixel against what this machine allows (figures, not a test).

For one batch of real particles of a benchmark data set (its half map as the reference, its band),
single-threaded and with --j threads, prints ns per particle-pixel of:

* ``kernel``: csrefine's CPU kernel (numba; slice + shift + CTF + statistics, with its prefetch);
* ``gather only``: the same trilinear interpolation of the padded reference at the same
  coordinates and nothing else -- the memory-latency floor of the slice;
* ``compute only``: the kernel's arithmetic (shift, CTF, statistics) on a constant prediction,
  no reference reads -- its arithmetic floor;
* ``transforms``: the batch's image FFTs at the band pixels (per particle-pixel, to compare),
  and pocketfft's bare rfft2 of the same images;
* the machine's copy bandwidth (numpy, GB/s) and the reference's size against the caches.

  python benchmarks/kernel_roofline.py                       # the 10k box-128 benchmark set
  python benchmarks/kernel_roofline.py --data DIR --j 2 --n 2048
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numba
import numpy as np
from numba import njit, prange

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO  # noqa: E402


@njit(parallel=True, cache=False, nogil=True)
def gather_only(rot, kx, ky, ref, radius, scale):
    """Trilinear samples of ``ref`` at scale * A^T (kx, ky, 0), summed (the kernel's slice)."""
    n, m = rot.shape[0], kx.size
    out = np.zeros(n)
    for i in prange(n):
        a00, a01, a02 = rot[i, 0], rot[i, 1], rot[i, 2]
        a10, a11, a12 = rot[i, 3], rot[i, 4], rot[i, 5]
        total = 0.0
        for p in range(m):
            x = (a00 * kx[p] + a10 * ky[p]) * scale
            y = (a01 * kx[p] + a11 * ky[p]) * scale
            z = (a02 * kx[p] + a12 * ky[p]) * scale
            if x < 0:
                x, y, z = -x, -y, -z
            y += radius
            z += radius
            x0, y0, z0 = int(x), int(y), int(z)
            fx, fy, fz = x - x0, y - y0, z - z0
            s = 0.0
            for dz in range(2):
                wz = fz if dz else 1.0 - fz
                for dy in range(2):
                    wy = fy if dy else 1.0 - fy
                    v0 = ref[z0 + dz, y0 + dy, x0]
                    v1 = ref[z0 + dz, y0 + dy, x0 + 1]
                    s += wz * wy * ((1.0 - fx) * v0.real + fx * v1.real + (1.0 - fx) * v0.imag
                                    + fx * v1.imag)
            total += s
        out[i] = total
    return out


@njit(parallel=True, cache=False, nogil=True)
def compute_only(obs, shift_x, shift_y, col, row, cosodd, sinodd, cstat, sstat, q, cells, stats):
    """The kernel's per-pixel arithmetic after the slice (constant prediction 1 + 0i): shift and
    odd phase, the CTF phase recurrence, the six statistics; prange over pixel blocks."""
    n, m = obs.shape
    block = 64
    n_blocks = (m + block - 1) // block
    for b in prange(n_blocks):
        p0, p1 = b * block, min(m, b * block + block)
        for i in range(n):
            c = cells[i]
            rr, ri, tr, ti = 1.0, 0.0, 1.0, 0.0
            for p in range(p0, p1):
                ex, ey = shift_x[i, col[p]], shift_y[i, row[p]]
                er = ex.real * ey.real - ex.imag * ey.imag
                ei = ex.real * ey.imag + ex.imag * ey.real
                pr = er * cosodd[p] - ei * sinodd[p]
                pim = er * sinodd[p] + ei * cosodd[p]
                nr = rr * tr - ri * ti
                ri = rr * ti + ri * tr
                rr = nr
                nr = tr * q[i, 3] - ti * q[i, 4]
                ti = tr * q[i, 4] + ti * q[i, 3]
                tr = nr
                cg = rr * cstat[p] - ri * sstat[p]
                sg = rr * sstat[p] + ri * cstat[p]
                xr, xi = obs[i, p].real, obs[i, p].imag
                pp = pr * pr + pim * pim
                xp = xr * pr + xi * pim
                stats[c, 0, p] += pp * sg * sg
                stats[c, 1, p] += pp * sg * cg
                stats[c, 2, p] += pp * cg * cg
                stats[c, 3, p] -= xp * sg
                stats[c, 4, p] -= xp * cg
                stats[c, 5, p] += xr * xr + xi * xi


def _best(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(REPO / "benchmarks/data/n10000_box128_px1.1_cs3_seed0_300kV"))
    p.add_argument("--n", type=int, default=2048, help="particles in the batch (default 2048)")
    p.add_argument("--j", type=int, default=2)
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args(argv)

    from csrefine.backends import _tables
    from csrefine.backends import numba_backend as nb
    from csrefine.forward import pixel_terms
    from csrefine.fourier import make_band
    from csrefine.geometry import euler_zyz_to_matrix
    from csrefine.options import RefineOptions
    from csrefine.references import prepare_references
    from csrefine.relion.run import load_inputs

    d = Path(args.data)
    inp = load_inputs(d / "parts.star", d / "run_half1_class001_unfil.mrc",
                      d / "run_half2_class001_unfil.mrc", d / "mask.mrc", base_dir=d)
    setup = prepare_references(inp.groups, inp.half_maps, inp.mask, inp.map_pixel_size_A,
                               RefineOptions(threads=args.j))
    ref = setup.references[1]
    group = inp.groups[1]
    band = make_band(group.box_size, group.pixel_size_A, 1 / setup.band_A[0], 1 / setup.band_A[1])
    terms = pixel_terms(group, band)
    idx = np.arange(min(args.n, len(inp.particles)))
    images = inp.images.read(idx)
    parts = inp.particles.subset(idx)
    n, m = idx.size, band.size
    samples = n * m
    cells = (np.arange(n) % 40).astype(np.int64)
    print(f"{d.name}: box {group.box_size}, {group.pixel_size_A} A, band {setup.band_A[0]:.1f}-"
          f"{setup.band_A[1]:.2f} A ({m} pixels), {n} particles; reference {ref.data.shape} "
          f"complex64 = {ref.data.nbytes / 2**20:.1f} MiB; {os.cpu_count()} CPUs, load "
          f"{os.getloadavg()[0]:.1f}")
    rot = euler_zyz_to_matrix(parts.rot_deg, parts.tilt_deg, parts.psi_deg)[:, :2, :]
    rot = np.ascontiguousarray(rot.reshape(n, 6))
    kx, ky = np.ascontiguousarray(terms.kx_px), np.ascontiguousarray(terms.ky_px)
    observed = nb.band_transforms(images, band, 1)
    inputs = _tables.kernel_inputs(cells, observed, parts, ref, terms, band, group.pixel_size_A)
    pix, col, row = inputs.pixels.pix, inputs.pixels.col, inputs.pixels.row
    shift_x, shift_y, q = inputs.shift_x, inputs.shift_y, inputs.qtab
    R = _tables.PixelRow
    trig = [np.ascontiguousarray(pix[r]) for r in (R.COS_ODD_PHASE, R.SIN_ODD_PHASE,
                                                  R.COS_GAMMA_STATIC, R.SIN_GAMMA_STATIC)]
    buf = np.ones(256 * 2**20 // 8)
    gbs = 2 * buf.nbytes / _best(lambda: buf.copy(), 3) / 1e9
    print(f"copy bandwidth (numpy, 1 thread): {gbs:.1f} GB/s")
    head = f"{'threads':>7} {'what':<28} {'ns / particle-pixel':>20} {'x kernel':>9}"
    print(head)
    print("-" * len(head))
    for threads in sorted({1, args.j}):
        numba.set_num_threads(threads)  # the floors' prange
        times = {}
        stats = np.zeros((40, 6, m))
        nb.kernel(stats, inputs, threads)  # compiled or loaded from numba's cache
        times["kernel"] = _best(lambda s=stats, t=threads: nb.kernel(s, inputs, t), args.repeat)
        gather_only(rot[:2], kx, ky, ref.data, float(ref.radius), float(ref.scale))
        times["gather only"] = _best(lambda: gather_only(rot, kx, ky, ref.data,
                                                         float(ref.radius), float(ref.scale)),
                                     args.repeat)
        stats = np.zeros((40, 6, m))
        compute_only(observed[:2], shift_x, shift_y, col, row, *trig, q, cells, stats)
        times["compute only"] = _best(lambda s=stats: compute_only(
            observed, shift_x, shift_y, col, row, *trig, q, cells, s), args.repeat)
        times["transforms (band)"] = _best(lambda t=threads: nb.band_transforms(images, band, t),
                                           args.repeat)
        import scipy.fft
        times["rfft2 alone (pocketfft)"] = _best(
            lambda t=threads: scipy.fft.rfft2(images, workers=t), args.repeat)
        kernel = times["kernel"]
        for what, seconds in times.items():
            print(f"{threads:>7} {what:<28} {seconds / samples * 1e9:>20.1f} "
                  f"{seconds / kernel:>9.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
