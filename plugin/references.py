"""The half maps as every group's fit uses them: their pixel size, their masked FSC and the band
it sets, and the padded, band-limited 3D references the predictions are sliced from."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import numpy as np

from .errors import InputError
from .fourier import band_limited_box, band_limited_map
from .fsc import FSC_THRESHOLD, default_mask, fsc_curve, resolution_at_threshold
from .model import PIXEL_TOLERANCE, OpticsGroup, nyquist_A
from .options import RefineOptions
from .projection import PaddedReference, for_particles, make_padded_reference

#: Extra radius of the cropped 3D references beyond the highest sampled frequency (1%), so
#: that trilinear interpolation at the band's edge stays inside the stored shell.
REFERENCE_MARGIN = 1.01
#: Padding factor of the 3D references (2, as RELION).
REFERENCE_PAD = 2


def map_pixel_size(groups: dict[int, OpticsGroup], half_maps,
                   map_pixel_size_A: float | None) -> float:
    """The half maps' pixel size (A), which the optics groups are rescaled to.

    Groups of one pixel size (within 0.5%): that pixel size; the header, if set, must agree.
    Groups of several pixel sizes (data merged across detectors or magnifications, as RELION
    3.1+ allows): the header's, which must be set and match one of the groups within 0.5%
    (guarding against a default or foreign header, which would scale the apparent Cs by the
    fourth power of the error). Box sizes may differ freely.
    """
    if half_maps[1].shape != half_maps[0].shape:
        raise InputError(f"half maps differ in shape: {half_maps[0].shape} vs {half_maps[1].shape}")
    sizes = sorted({g.pixel_size_A for g in groups.values()})
    one_size = sizes[-1] / sizes[0] - 1 <= PIXEL_TOLERANCE
    if one_size:
        px = next(iter(groups.values())).pixel_size_A
        if map_pixel_size_A and abs(px / map_pixel_size_A - 1) > PIXEL_TOLERANCE:
            raise InputError(f"optics groups' pixel size {px:.4f} Å differs from the half maps' "
                             f"{map_pixel_size_A:.4f} Å (header)")
        return float(px)
    listing = ", ".join(f"{g.optics_group}: {g.pixel_size_A:.4f} Å" for g in groups.values())
    if not map_pixel_size_A:
        raise InputError(f"optics groups have different pixel sizes ({listing}) and the half maps' "
                         f"header states none: cannot tell which pixel size the maps have")
    if not any(abs(g.pixel_size_A / map_pixel_size_A - 1) <= PIXEL_TOLERANCE
               for g in groups.values()):
        raise InputError(f"the half maps' pixel size {map_pixel_size_A:.4f} Å (header) matches "
                         f"none of the optics groups ({listing})")
    return float(map_pixel_size_A)


def group_references(references: dict, group: OpticsGroup, map_px_A: float) -> dict:
    """The half-map references as sampled for ``group`` (rescaled if its pixel size differs)."""
    if abs(group.pixel_size_A / map_px_A - 1) <= PIXEL_TOLERANCE:
        return references
    return {h: for_particles(ref, map_px_A, group.pixel_size_A) for h, ref in references.items()}


@dataclass(frozen=True)
class ReferenceSetup:
    """What every group's fit shares: the half-map FSC, the resolution it reaches, the maps'
    pixel size (Å), the band (low, high resolution in Å) and the padded half-map references."""

    fsc: np.ndarray
    resolution_A: float
    map_pixel_size_A: float
    band_A: tuple[float, float]
    references: dict


def band_limited_reference(half_map: np.ndarray, k_max_px: float, options: RefineOptions,
                           margin: float) -> PaddedReference:
    """The padded reference of a half map for frequencies up to ``k_max_px`` (cycles per map
    pixel), built from the map Fourier cropped to that band (plus a margin of shells): on the
    same padded-grid coordinates as the whole map's, equal on the even points and within ~0.2% rms
    in between for the signal (tests/test_band_limited.py), at a cost and memory set by the band,
    not the box (a box-400 map at 0.85 A fitted to 3.5 A is built at box 216)."""
    box = half_map.shape[0]
    n_crop = band_limited_box(box, k_max_px * margin)
    small = band_limited_map(half_map, n_crop, options.threads)
    ref = make_padded_reference(small, k_max_px * box / n_crop, REFERENCE_PAD, options.threads,
                                margin=margin)
    # coordinate u on the cropped padded grid is frequency u / (pad * n_crop * pixel * box /
    # n_crop): the whole map's padded-grid coordinate; particles scale by pad * box
    return replace(ref, box=box)


def reference_margin(groups: dict[int, OpticsGroup], mag_matrices=()) -> float:
    """The factor on the band's k_max that the references hold: the largest stretch of the
    groups' (and ``mag_matrices``') magnification matrices, at least 1, times REFERENCE_MARGIN."""
    matrices = [g.mag_matrix for g in groups.values()] + list(mag_matrices)
    return max(1.0, max(float(np.linalg.norm(m, 2)) for m in matrices)) * REFERENCE_MARGIN


#: Padded transforms (complex64 bytes, (pad * cropped box)^3) above which the two half maps'
#: references are built one after the other: each build briefly holds about twice its padded
#: transform, and two at once doubled the set-up's peak (box 360 fitted to Nyquist: 8.5 GB).
PARALLEL_BUILD_BYTES = 512 * 2**20


def _per_half(build, half_maps, options: RefineOptions, parallel: bool = True) -> list:
    """``build(half_map, options)`` for both half maps: with ``parallel`` and two threads or
    more, in two threads each with half the FFT workers (the builds are numpy and FFT work that
    releases the GIL: about a third faster on two cores for small maps; the results are the same
    bits); otherwise one after the other with all the workers."""
    if options.threads < 2 or not parallel:
        return [build(h, options) for h in half_maps]
    each = replace(options, threads=max(1, options.threads // 2))
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="csrefine-reference") as pool:
        return list(pool.map(lambda h: build(h, each), half_maps))


def prepare_references(groups: dict[int, OpticsGroup], half_maps, mask=None,
                       map_pixel_size_A: float | None = None,
                       options: RefineOptions | None = None,
                       mag_matrices=()) -> ReferenceSetup:
    """The masked half-map FSC, the band and the padded references, as every fit uses them.

    The band's high-resolution end is the user's, else where the FSC drops below the
    threshold, never beyond the maps' Nyquist. mag_matrices : more (2, 2) magnification
    matrices than the groups' that predictions will use (the references then hold every
    frequency any of them samples).
    """
    options = options or RefineOptions()
    px = map_pixel_size(groups, half_maps, map_pixel_size_A)  # the maps'; groups may differ
    box = half_maps[0].shape[0]
    if mask is None:
        mask = default_mask(box)
    elif mask.shape != half_maps[0].shape:
        raise InputError(f"mask shape {mask.shape} differs from the half maps' {half_maps[0].shape}")
    fsc = fsc_curve(half_maps[0], half_maps[1], mask, workers=options.threads)
    resolution = resolution_at_threshold(fsc, box, px)
    high_A = max(options.resolution_high_A or resolution, nyquist_A(px))
    margin = reference_margin(groups, mag_matrices)
    padded = (REFERENCE_PAD * band_limited_box(box, px / high_A * margin)) ** 3 * 8
    references = dict(zip((1, 2), _per_half(
        lambda half_map, opts: band_limited_reference(half_map, px / high_A, opts, margin),
        half_maps, options, parallel=padded <= PARALLEL_BUILD_BYTES)))
    return ReferenceSetup(fsc, float(resolution), float(px),
                          (float(options.resolution_low_A), float(high_A)), references)


def group_band_A(group: OpticsGroup, band_A) -> list[float]:
    """The run's band ``band_A`` (low, high resolution in Å) for one optics group: its high end
    capped at the group's Nyquist."""
    low_A, high_A = band_A
    return [float(low_A), float(max(high_A, nyquist_A(group.pixel_size_A)))]


def check_band(low_A: float, high_A: float, resolution_A: float) -> None:
    """InputError when the band to fit is empty: the half maps' FSC stays below the threshold
    down to the band's low-resolution end (maps of other particles, pure noise, a wrong mask)."""
    if high_A < low_A:
        return
    raise InputError(f"the half maps' FSC reaches {FSC_THRESHOLD} only at "
                     f"{resolution_A:.1f} Å, coarser than the band's low end (resolution_low_A "
                     f"{low_A:g} Å): there is no band to fit. Are the half maps reconstructions "
                     f"of these particles, and is the mask right?")
