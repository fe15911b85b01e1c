"""Calibrate the map's pixel size against a docked atomic model: tell a pixel-size error from a Cs error.

A CTF fit cannot tell Cs from the pixel size: if the true pixel size is ``p_true`` but the data
say ``p_nom``, a fit returns Cs * (p_nom/p_true)^4 and defocus * (p_nom/p_true)^2. An atomic model
(true bond geometry, Angstrom) docked in the map is an absolute ruler: the map is the true object
sampled at ``p_true`` and a model map computed at a trial pixel size ``p`` matches it best when
``p = p_true``.

The phases, one module each:

* :mod:`.region` — the docked model's atoms, the mask around them, the cube and Fourier crop the
  match works on (cost and memory follow the mask's size and the resolution, not the box);
* :mod:`.target` — the band, the masked half maps whitened per shell with their FSC weights, the
  model's coverage of the density (the match score is defined there);
* :mod:`.model_maps` — model maps at a trial pixel size, anti-aliased, on the cropped grid;
* :mod:`.search` — the coarse scan, Brent's refinement of the scale, the translation, the blur;
* :mod:`.uncertainty` — the sigma from the score's curvature, the two half maps and a floor;
* :mod:`.pipeline` — the phases in order, and the refusals (never a wrong number);
* :mod:`.verdict` — Cs and defocus re-expressed at the calibrated pixel size, and per optics
  group whether the refined Cs departure is Cs, the pixel size or both, or whether nothing
  changed or the calibration cannot tell (a pixel size is called different only on a significant
  shift on which the two half maps agree);
* :mod:`.json_keys` — the csrefine.json entries; :mod:`.records` — settings and results.

Entry points: :func:`calibrate_pixel_size` (arrays + gemmi Structure, with a
:class:`CalibrationSettings`) and :func:`apply_calibration` (group results -> the csrefine.json
keys).
"""

from .json_keys import calibration_json
from .pipeline import calibrate_pixel_size
from .records import CalibrationSettings, GroupCalibration, PixelCalibration
from .region import atom_positions_A, centroid_A, model_mask
from .verdict import apply_calibration, group_verdict, reexpress_cs_defocus

__all__ = ["CalibrationSettings", "PixelCalibration", "GroupCalibration", "calibrate_pixel_size",
           "model_mask", "reexpress_cs_defocus", "group_verdict", "apply_calibration",
           "calibration_json", "atom_positions_A", "centroid_A"]
