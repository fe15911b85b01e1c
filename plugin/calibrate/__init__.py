"""Calibrate the map's pixel size against a docked atomic model: tell a pixel-size error from a Cs error.

A CTF fit cannot tell Cs from the pixel size: if the true pixel size is ``p_true`` but the data
say ``p_nom``, a fit returns Cs * (p_nom/p_true)^4 and defocus * (p_nom/p_true)^2. An atomic model
(true bond geometry, Angstrom) docked in the map is an absolute ruler: the map is the true object
sampled at ``p_true`` and a model map computed at a trial pixel size ``p`` matches it best when
``p = p_true``.

The phases, one module each, in the order :mod:`.pipeline` runs them: :mod:`.region` (the atoms,
the mask, the cube and Fourier crop the match works on), :mod:`.target` (the band and the whitened
half maps; the match score is defined there), :mod:`.model_maps`, :mod:`.search` (the scale and
the translation), :mod:`.uncertainty`; then :mod:`.verdict` (Cs and defocus at the calibrated
pixel size, and per optics group what the refined Cs departure is). :mod:`.records`: settings,
results and their csrefine.json entries.
"""

from ..atomic_map import atom_positions_A, centroid_A
from .pipeline import calibrate_pixel_size
from .records import CalibrationSettings, PixelCalibration
from .region import model_mask
from .verdict import apply_calibration, group_verdict, reexpress_cs_defocus

__all__ = ["CalibrationSettings", "PixelCalibration", "calibrate_pixel_size", "model_mask",
           "reexpress_cs_defocus", "group_verdict", "apply_calibration", "atom_positions_A",
           "centroid_A"]
