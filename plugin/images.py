"""Particle images from MRC stacks, memory-mapped, read in batches.

Adapters give each particle a stack path and a 0-based index (RELION "N@path" -> (path, N-1);
cryoSPARC blob/path, blob/idx). Stacks are opened once, memory-mapped, and never modified.
"""

from __future__ import annotations

import struct
import warnings
from pathlib import Path

import mrcfile
import numpy as np

from .errors import InputError
from .model import PIXEL_TOLERANCE
from .paths import check_input_file

MRC_HEADER_BYTES = 1024
#: Bytes per voxel of the real-valued MRC modes csrefine reads (int8, int16, float32, uint16,
#: float16); modes 3 and 4 are complex (refused).
MRC_MODE_BYTES = {0: 1, 1: 2, 2: 4, 6: 2, 12: 2}
MRC_COMPLEX_MODES = (3, 4)
#: A mask must have a positive voxel and no value below this (soft edges may dip slightly).
MASK_MIN_VALUE = -0.01
#: Half maps whose difference is below this fraction of their norm are the same map (FSC = 1
#: to Nyquist): refused.
HALF_MAP_MIN_RELATIVE_DIFFERENCE = 1e-6


def check_mrc_header(path, what: str) -> tuple[int, int, int, int]:
    """(nx, ny, nz, mode) of an MRC file, checked against its size before any data is read (a
    garbage header must not make the reader allocate gigabytes). InputError naming the file for
    a short or unreadable header, an unknown or complex mode, or a file smaller than its header
    states."""
    path = check_input_file(path, what)
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(MRC_HEADER_BYTES)
    if len(head) < MRC_HEADER_BYTES:
        raise InputError(f"{path}: {what} is not an MRC file ({len(head)} bytes, shorter than "
                         f"the {MRC_HEADER_BYTES}-byte header)")
    order = ">" if head[212:214] == b"\x11\x11" else "<"
    nx, ny, nz, mode = struct.unpack(order + "4i", head[:16])
    nsymbt = struct.unpack(order + "i", head[92:96])[0]
    if mode in MRC_COMPLEX_MODES:
        raise InputError(f"{path}: {what} holds complex values (MRC mode {mode}); csrefine needs "
                         f"real-valued images and maps")
    if mode not in MRC_MODE_BYTES:
        raise InputError(f"{path}: {what} has an unsupported or invalid MRC mode {mode} (a "
                         f"garbage header?); supported modes: {sorted(MRC_MODE_BYTES)}")
    if min(nx, ny, nz) < 1 or nsymbt < 0:
        raise InputError(f"{path}: {what} has an invalid MRC header (dimensions {nx} x {ny} x "
                         f"{nz}, extended header {nsymbt} bytes)")
    needed = MRC_HEADER_BYTES + nsymbt + nx * ny * nz * MRC_MODE_BYTES[mode]
    if size < needed:
        raise InputError(f"{path}: {what} is truncated or its header is wrong: the header states "
                         f"{nx} x {ny} x {nz} voxels of mode {mode} ({needed} bytes), the file has "
                         f"{size} bytes")
    return nx, ny, nz, mode


def open_mrc(path, what: str):
    """A read-only, memory-mapped mrcfile object (header checked first by
    :func:`check_mrc_header`; mrcfile's own warnings are silenced: the checks here name the
    problem instead)."""
    check_mrc_header(path, what)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mrc = mrcfile.mmap(path, mode="r", permissive=True)
    except Exception as exc:
        raise InputError(f"{path}: {what} is not a readable MRC file ({exc})") from None
    if mrc.data is None:
        mrc.close()
        raise InputError(f"{path}: {what}: MRC header unreadable or file truncated")
    return mrc


class StackReader:
    """Read particle images by position in the particle list.

    Parameters
    ----------
    paths : sequence of str, one per particle (stack file).
    indices : int array (n,), 0-based image index within each stack.
    box : expected box size, one for all particles or one per particle (optics groups may
        differ); pixel_size_A : the pixel size the particles have (the optics table's), likewise.
    All particles of one stack must share box and pixel size; one ``read`` call must ask for
    images of one box size. As in RELION, the optics table's pixel size rules: a stack header
    stating another one (beyond 0.5%; 0 means unset) is no error, but is summarised in
    ``warnings`` with both figures.
    """

    def __init__(self, paths, indices, box, pixel_size_A=None):
        names, codes = np.unique(np.asarray(paths, dtype=object).astype(str), return_inverse=True)
        self._setup(list(names), codes, indices, box, pixel_size_A)

    @classmethod
    def from_codes(cls, stack_paths, stack_code, indices, box,
                   pixel_size_A=None) -> "StackReader":
        """From distinct stack paths and, per particle, a code into them (no per-particle strings)."""
        reader = cls.__new__(cls)
        reader._setup(list(stack_paths), stack_code, indices, box, pixel_size_A)
        return reader

    def _setup(self, names, codes, indices, box, pixel_size_A):
        self.indices = np.asarray(indices, dtype=np.int64)
        self.stack_names = np.asarray(names, dtype=object)
        self.stack_of = np.asarray(codes, dtype=np.int64)
        n = self.indices.size
        boxes = np.broadcast_to(np.asarray(box, dtype=np.int64), (n,))
        pixels = np.broadcast_to(np.asarray(np.nan if pixel_size_A is None else pixel_size_A,
                                            dtype=np.float64), (n,))
        self._maps = {}
        self._header_mismatch = {}  # stack name -> (header pixel size, optics table's)
        self._box_of_stack = np.zeros(len(names), dtype=np.int64)
        lo = np.full(len(names), np.iinfo(np.int64).max)
        hi = np.full(len(names), -1)
        np.minimum.at(lo, self.stack_of, self.indices)
        np.maximum.at(hi, self.stack_of, self.indices)
        first = np.full(len(names), -1)
        first[self.stack_of[::-1]] = np.arange(n)[::-1]  # first particle of each stack
        box_lo = np.full(len(names), np.iinfo(np.int64).max)
        box_hi = np.full(len(names), -1)
        np.minimum.at(box_lo, self.stack_of, boxes)
        np.maximum.at(box_hi, self.stack_of, boxes)
        for i, name in enumerate(self.stack_names):
            if hi[i] < 0:
                continue
            if box_lo[i] != box_hi[i]:
                raise InputError(f"{name}: particles of different optics groups in this stack "
                                 f"have different box sizes ({box_lo[i]} and {box_hi[i]})")
            box_i, px_i = int(box_lo[i]), float(pixels[first[i]])
            self._box_of_stack[i] = box_i
            self._maps[i] = self._open(name, box_i, None if np.isnan(px_i) else px_i)
            count = self._maps[i].shape[0]
            if lo[i] < 0 or hi[i] >= count:
                bad = int(hi[i] if hi[i] >= count else lo[i])
                raise InputError(f"{name}: image {bad + 1} requested but the stack holds {count}")

    def _open(self, name: str, box: int, pixel_size_A):
        mrc = open_mrc(Path(name), "particle stack")
        data = mrc.data
        if data.ndim == 2:
            data = data[None]
        if data.shape[1:] != (box, box):
            raise InputError(f"{name}: images are {data.shape[2]}x{data.shape[1]} pixels, "
                             f"the optics table says {box}")
        header_px = float(mrc.voxel_size.x)
        if pixel_size_A and header_px > 0 and abs(header_px / pixel_size_A - 1) > PIXEL_TOLERANCE:
            self._header_mismatch[name] = (header_px, float(pixel_size_A))
        return data

    @property
    def warnings(self) -> list[str]:
        """One line summarising stacks whose header pixel size differs from the optics table."""
        if not self._header_mismatch:
            return []
        name, (header, table) = next(iter(self._header_mismatch.items()))
        count = len(self._header_mismatch)
        return [f"{count} of {len(self._maps)} particle stack(s) state another pixel size in their "
                f"header than the optics table (e.g. {name}: header {header:.4f} Å, optics table "
                f"{table:.4f} Å); as RELION does, csrefine uses the optics table's"]

    def box_of(self, positions) -> int:
        """The box size of the images at ``positions`` (ValueError if they differ)."""
        boxes = np.unique(self._box_of_stack[self.stack_of[np.asarray(positions, dtype=np.int64)]])
        if boxes.size > 1:
            raise ValueError(f"one read must ask for one box size, got {boxes.tolist()}")
        return int(boxes[0]) if boxes.size else 0

    def __len__(self) -> int:
        return len(self.indices)

    def describe(self, position: int) -> str:
        """The particle at ``position`` as a user finds it: 'image 12 of STACK'."""
        return f"image {self.indices[position] + 1} of {self.stack_names[self.stack_of[position]]}"

    def read(self, positions, out: np.ndarray | None = None) -> np.ndarray:
        """Images of the particles at ``positions`` (list order), float32 (k, box, box).

        ``out``: optional C-contiguous float32 array (k, box, box) to read into (a pinned
        host buffer of the GPU backend, say); returned. Runs of consecutive images of one stack
        are copied as slices. Raises InputError naming the stack and image if an image holds
        NaN or infinity.
        """
        positions = np.asarray(positions, dtype=np.int64)
        box = self.box_of(positions)
        if out is None:
            out = np.empty((positions.size, box, box), dtype=np.float32)
        elif out.shape != (positions.size, box, box) or out.dtype != np.float32:
            raise ValueError(f"out must be float32 {(positions.size, box, box)}, "
                             f"got {out.dtype} {out.shape}")
        stacks = self.stack_of[positions]
        for start, stop in _runs(stacks, self.indices[positions]):
            first = self.indices[positions[start]]
            out[start:stop] = self._maps[stacks[start]][first:first + stop - start]
        self._check_finite(out, positions, stacks)
        return out

    def _check_finite(self, out, positions, stacks):
        # Fast pass: a float32 sum per image is finite unless the image holds NaN/inf (or its sum
        # overflows); images it flags are checked pixel by pixel.
        flagged = np.flatnonzero(~np.isfinite(np.einsum("ij->i", out.reshape(len(out), -1))))
        for b in flagged.tolist():
            if not np.isfinite(out[b]).all():
                raise InputError(f"{self.stack_names[stacks[b]]}: image "
                                 f"{self.indices[positions[b]] + 1} contains NaN or infinite values")


def _runs(stacks: np.ndarray, indices: np.ndarray):
    """(start, stop) of the maximal runs of positions that are consecutive images of one stack."""
    if stacks.size == 0:
        return []
    brk = np.flatnonzero((np.diff(stacks) != 0) | (np.diff(indices) != 1)) + 1
    edges = np.concatenate([[0], brk, [stacks.size]])
    return zip(edges[:-1].tolist(), edges[1:].tolist())


def write_stack(path, images: np.ndarray, pixel_size_A: float) -> None:
    """Write an MRC stack (float32) with the given voxel size (used by simulations and tests)."""
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(np.asarray(images, dtype=np.float32))
        mrc.set_image_stack()
        mrc.voxel_size = pixel_size_A


def read_map(path, what: str = "map") -> tuple[np.ndarray, float]:
    """A cubic 3D map as float32 [z, y, x] and its voxel size (A, 0 if unset)."""
    path = Path(path)
    with open_mrc(path, what) as mrc:
        data = np.array(mrc.data, dtype=np.float32)
        px = float(mrc.voxel_size.x)
    if data.ndim != 3 or len(set(data.shape)) != 1:
        raise InputError(f"{path}: {what} must be a cubic 3D map, got shape {data.shape}")
    if not np.isfinite(data).all():
        raise InputError(f"{path}: {what} contains NaN or infinite values")
    return data, px


def read_half_maps(half1, half2, mask=None):
    """Two half maps (same shape) and an optional mask (same shape).

    Returns ((half1, half2), mask or None, voxel size of half 1 in A or None if unset).
    """
    h1, px1 = read_map(half1, "half map 1")
    h2, px2 = read_map(half2, "half map 2")
    if h1.shape != h2.shape:
        raise InputError(f"{half2}: shape {h2.shape} differs from {half1}'s {h1.shape}")
    if px1 > 0 and px2 > 0 and abs(px2 / px1 - 1) > PIXEL_TOLERANCE:
        raise InputError(f"{half2}: pixel size {px2:.4f} Å in the header differs from {half1}'s "
                         f"{px1:.4f} Å: the half maps are not a pair")
    px1 = px1 or px2
    _check_distinct_halves(half1, half2, h1, h2)
    m = None
    if mask:
        m, _ = read_map(mask, "mask")
        if m.shape != h1.shape:
            raise InputError(f"{mask}: shape {m.shape} differs from the half maps' {h1.shape}")
        check_mask_values(mask, m)
    return (h1, h2), m, (px1 or None)


def _check_distinct_halves(half1, half2, h1: np.ndarray, h2: np.ndarray) -> None:
    """InputError if the half maps are the same map (their FSC would be 1 to Nyquist)."""
    norm = float(np.linalg.norm(h1.astype(np.float64)))
    diff = float(np.linalg.norm(h1.astype(np.float64) - h2))
    if diff <= HALF_MAP_MIN_RELATIVE_DIFFERENCE * norm:
        raise InputError(f"{half2}: this half map is identical to {half1} (the FSC would be 1 "
                         f"everywhere); give the two independent half maps of the refinement")


def check_mask_values(path, mask: np.ndarray) -> None:
    """InputError if the mask has no positive voxel or values below :data:`MASK_MIN_VALUE`."""
    top, low = float(mask.max()), float(mask.min())
    if not top > 0:
        raise InputError(f"{path}: the mask has no positive value (maximum {top:g}): it "
                         f"selects nothing")
    if low < MASK_MIN_VALUE:
        raise InputError(f"{path}: the mask has negative values (minimum {low:g}); a mask holds "
                         f"values from 0 to 1")


def write_map(path, volume: np.ndarray, pixel_size_A: float) -> None:
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(np.asarray(volume, dtype=np.float32))
        mrc.voxel_size = pixel_size_A
