"""Particle images unlike the others: refused where absurd, down-weighted where unusual.

Real stacks hold outliers: hot pixels, carbon edges, ice, gold, and a few per cent of junk
particles that survive classification. Their power is out of proportion with the particles', and
a single image with an enormous value decides a fit on its own (a Cs at the search bound with a
standard error of zero). Per optics group, the typical image's standard deviation ``s`` is the
median over a sample of its images; then, for every image read (the half-map check's and the
refinement's):

* an image that deviates from its mean by more than :data:`ABSURD_FACTOR` times ``s`` anywhere
  holds values that are not image data: the run stops with one line naming stack and image;
* an image whose variance exceeds :data:`UNUSUAL_VARIANCE` times ``s^2`` enters the statistics
  with the weight ``UNUSUAL_VARIANCE * s^2 / variance``, i.e. scaled to the typical power. The
  weight multiplies every sum the image enters (the image and its prediction are both scaled by
  the weight's square root), so the fit's model is unchanged; images of typical power (weight 1)
  are used exactly as they are.

Normalised RELION images vary in standard deviation by a few per cent, unnormalised ones by up
to about twice with ice thickness, so clean data are untouched.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .backends.cpu_backend import image_moments
from .errors import InputError
from .halfsets import sample_positions
from .model import Particles

#: Deviation from an image's mean, in typical image standard deviations, beyond which a value
#: cannot be image data.
ABSURD_FACTOR = 1.0e4
#: Variance, in typical image variances, beyond which an image is down-weighted to the typical.
UNUSUAL_VARIANCE = 4.0
#: Images per group whose median standard deviation is the typical one.
SAMPLE_IMAGES = 512


@dataclass(frozen=True)
class ImageScreen:
    """The screen of one optics group: ``typical_std`` is its typical image's standard deviation
    (image units)."""

    typical_std: float

    def weigh(self, images: np.ndarray, particles: Particles, positions: np.ndarray,
              source, threads: int = 1, moments=None) -> tuple[Particles, int]:
        """Down-weight the unusual ``images`` (k, box, box) in place and return ``particles``
        (k) with their CTF scale factors scaled likewise, and the number down-weighted.
        ``positions`` (k) locate the images in ``source`` for the message of an absurd image
        (InputError naming stack and image); ``moments``: the images' :func:`image_moments` if
        already measured, else ``threads`` measure them."""
        deviation, variance = moments if moments is not None else image_moments(images, threads)
        absurd = np.flatnonzero(~(deviation <= ABSURD_FACTOR * self.typical_std))
        if absurd.size:
            b = int(absurd[0])
            raise InputError(f"{source.describe(int(positions[b]))} holds a value "
                             f"{deviation[b]:.3g} from its mean, {deviation[b] / self.typical_std:.2g} "
                             f"times the typical image's standard deviation: not image data "
                             f"(a detector artefact or a damaged file); remove this particle")
        ratio = variance / self.typical_std**2
        unusual = np.flatnonzero(ratio > UNUSUAL_VARIANCE)
        if unusual.size == 0:
            return particles, 0
        root_w = np.sqrt(UNUSUAL_VARIANCE / ratio[unusual])
        images[unusual] *= root_w[:, None, None].astype(images.dtype)
        scale = np.array(particles.ctf_scale, dtype=np.float64)
        scale[unusual] *= root_w
        return replace(particles, ctf_scale=scale), int(unusual.size)


def screen_for(source, positions: np.ndarray, threads: int = 1) -> ImageScreen:
    """The :class:`ImageScreen` of the particles at ``positions`` of ``source``: the median
    standard deviation of up to :data:`SAMPLE_IMAGES` of their images, evenly spread
    (measured by ``threads`` threads)."""
    positions = sample_positions(np.asarray(positions, dtype=np.int64), SAMPLE_IMAGES)
    _, variance = image_moments(source.read(positions), threads)  # float64: no overflow
    typical = float(np.median(np.sqrt(variance)))
    if not typical > 0:
        raise InputError(f"{source.describe(int(positions[0]))} and most images of its optics "
                         f"group are constant (zero standard deviation): no image data")
    return ImageScreen(typical)
