"""csrefine core: refine the spherical-aberration coefficient Cs per optics group.

The core follows RELION's conventions throughout (see ``docs`` in README.md):

* CTF = -sin(gamma) * exp(-B k^2 / 4) * scale, positive defocus = underfocus;
* ZYZ Euler angles (rot, tilt, psi) that rotate the reference into the observation;
* particle origins in Angstrom, the particle centre at (box centre - origin);
* spatial frequencies k in 1/Angstrom, images in numpy's rfft2 (FFTW half-complex) layout.

Adapters (``relion_external``, ``cryosparc_job``) convert their inputs to these conventions at the
boundary; nothing in this package reads files by path except :mod:`csrefine.images`.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("csrefine")  # the one place it is written: setup.cfg
except PackageNotFoundError:  # imported from a source tree that is not installed
    __version__ = "unknown"
