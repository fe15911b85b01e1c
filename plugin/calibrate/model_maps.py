"""The model side of the match: maps of the docked model at a trial pixel size, on the cropped grid.

A wrong pixel size changes the *scale* about the docked model's centre: every trial map is built
with the model's centroid ``c`` at its docked voxel ``(c - origin_A)/p_nom`` and the other atoms at
``(x - c)/p`` from it (the scale is fitted about the docked model centroid, equivalent to scaling
about the box centre followed by a translation).

Model maps are computed on a grid :data:`MODEL_OVERSAMPLING` times finer than the cropped one (at
most the map's own sampling) with an extra blur that keeps aliased power below
:data:`MODEL_ALIAS_FRACTION`, transformed, cropped and un-blurred; the coarse scan, which only
brackets the refinement, uses model maps on the cropped grid itself (:attr:`ModelMaps.coarse`).
"""

from __future__ import annotations

import numpy as np
import scipy.fft

from ..atomic_map import centroid_A, density_map
from ..fourier import crop_rfftn, even_fast
from .region import CropPlan
from .target import FourierGrid

#: Model maps are computed on a grid this many times finer than the cropped one, then Fourier
#: cropped: frequencies above its Nyquist fold back only beyond twice the cropped Nyquist.
MODEL_OVERSAMPLING = 1.5
#: Aliased model-map power at the cropped Nyquist is kept below this fraction (an extra blur
#: that is divided out after the transform, see :func:`antialias_blur_A2`).
MODEL_ALIAS_FRACTION = 1e-3


def antialias_blur_A2(k_nyquist_per_A: float, b_model_A2: float, oversampling: float) -> float:
    """Extra B-factor (Å^2) for model maps on a grid ``oversampling`` times finer than the
    cropped one (Nyquist ``k_nyquist_per_A``, 1/Å), divided out after the transform.

    Power folds into the cropped grid only from 2*os - 1 times its Nyquist; the total blur keeps
    it below :data:`MODEL_ALIAS_FRACTION` of the amplitude at the cropped Nyquist, but never
    exceeds the blur at :data:`MODEL_OVERSAMPLING`: dividing it out multiplies the map by at most
    MODEL_ALIAS_FRACTION^(-1/3) (10) at the cropped Nyquist. Where the cube leaves the model grid
    less finer than that (a cropped grid nearly as fine as the cube), more aliased power is
    accepted instead: dividing out the blur a 1.07x grid would need (x1e9 at the band's edge)
    leaves only gemmi's truncation and float32 rounding there.
    """
    folds = [(2 * os - 1) ** 2 - 1 for os in (oversampling, MODEL_OVERSAMPLING)]
    b_total = min(float(-4.0 * np.log(MODEL_ALIAS_FRACTION) / (fold * k_nyquist_per_A**2))
                  for fold in folds)
    return float(max(b_total - b_model_A2, 0.0))


class ModelMaps:
    """Transforms of the model map at trial pixel sizes, on the cropped grid.

    Pixel sizes here are those of the cropped grid's voxel (the nominal pixel times
    :attr:`CropPlan.coarse_voxel`), Angstrom; their ratios are the map's.

    Parameters
    ----------
    structure : gemmi.Structure
        The docked model.
    grid : FourierGrid
        The cropped grid (side ``plan.fourier_box``).
    plan : CropPlan
        The crop (its cube bounds the model grid's sampling).
    p_nom : float
        The cropped grid's nominal voxel, Angstrom.
    centre_vox_zyx : (3,) floats
        The model centroid's docked position in the cropped grid's voxels.
    b_model_A2 : float
        B-factor of every atom, Angstrom^2.
    oversampling : float
        The model grid's sampling relative to the cropped grid (1: the cropped grid itself).
    """

    #: True during the coarse scan: model maps on the cropped grid itself (no oversampling; the
    #: scan only brackets the optimum for the refinement, which uses the anti-aliased maps)
    coarse = False

    def __init__(self, structure, grid: FourierGrid, plan: CropPlan, p_nom: float,
                 centre_vox_zyx, b_model_A2: float, oversampling: float = MODEL_OVERSAMPLING):
        self.structure = structure
        self.box = plan.fourier_box
        self.p_nom = p_nom
        self.grid = grid
        self.centre_A = centroid_A(structure)
        self.d_phase = grid.phase(np.asarray(centre_vox_zyx, float) - self.box // 2)
        # never finer than the map's own sampling (the cube): there the map has all it holds
        self.model_box = max(self.box, even_fast(self.box * oversampling, plan.cube_box))
        self.k_nyquist_per_A = 0.5 / p_nom
        self.blur_A2 = 0.0
        self.set_b_model(b_model_A2)

    def set_b_model(self, b_model_A2: float) -> None:
        """Use ``b_model_A2`` (Angstrom^2) for every atom from now on."""
        self.b_model = b_model_A2
        if self.model_box > self.box:
            self.blur_A2 = antialias_blur_A2(self.k_nyquist_per_A, b_model_A2,
                                             self.model_box / self.box)

    def model_ft(self, p: float) -> np.ndarray:
        """rfftn of the model map at trial pixel ``p`` (Å, of the cropped grid), centroid at its
        docked voxel: computed on a grid ``model_box/box`` times finer with the anti-alias blur,
        Fourier cropped, the blur divided out (during the coarse scan: on the cropped grid)."""
        model_box, blur_A2 = (self.box, 0.0) if self.coarse else (self.model_box, self.blur_A2)
        m = density_map(self.structure, model_box, p * self.box / model_box,
                        b_factor_A2=self.b_model, centre_A=self.centre_A, blur_A2=blur_A2)
        if model_box > self.box:
            ft = crop_rfftn(scipy.fft.rfftn(m), self.box).astype(np.complex128)
            ft *= np.exp(self.blur_A2 * self.grid.k2 / p**2 / 4.0)
        else:
            ft = scipy.fft.rfftn(m.astype(np.float64))
        del m
        return ft * self.d_phase
