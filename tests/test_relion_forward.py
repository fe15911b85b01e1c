"""csrefine's forward model against RELION's own: relion_project and relion_ctf_refine."""


import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile
from relion_tools import project

from csrefine.forward import band_to_images, predict_band
from csrefine.fourier import make_band
from csrefine.images import write_map
from csrefine.projection import make_padded_reference
from csrefine.relion.star_io import read_particle_star

BOX, PX = 64, 2.0


def _optics(**extra):
    optics = {"rlnOpticsGroupName": ["g1"], "rlnOpticsGroup": [1], "rlnVoltage": [300.0],
              "rlnSphericalAberration": [2.7], "rlnAmplitudeContrast": [0.1],
              "rlnImagePixelSize": [PX], "rlnImageSize": [BOX], "rlnImageDimensionality": [2]}
    optics.update({k: [v] for k, v in extra.items()})
    return optics


def _rows(n, rng):
    u = rng.uniform(8000, 20000, n)
    return pd.DataFrame({
        "rlnImageName": [f"{i + 1}@none.mrcs" for i in range(n)],
        "rlnDefocusU": u, "rlnDefocusV": u - rng.uniform(0, 1500, n),
        "rlnDefocusAngle": rng.uniform(-180, 180, n), "rlnPhaseShift": rng.uniform(0, 120, n),
        "rlnCtfBfactor": rng.uniform(0, 150, n), "rlnCtfScalefactor": rng.uniform(0.5, 1, n),
        "rlnAngleRot": rng.uniform(-180, 180, n), "rlnAngleTilt": rng.uniform(0, 180, n),
        "rlnAnglePsi": rng.uniform(-180, 180, n), "rlnOriginXAngst": rng.uniform(-10, 10, n),
        "rlnOriginYAngst": rng.uniform(-10, 10, n), "rlnOpticsGroup": 1, "rlnRandomSubset": 1})


def _correlations(a, b):
    a = a - a.mean(axis=(1, 2), keepdims=True)
    b = b - b.mean(axis=(1, 2), keepdims=True)
    return (a * b).sum(axis=(1, 2)) / np.sqrt((a * a).sum(axis=(1, 2)) * (b * b).sum(axis=(1, 2)))


@pytest.mark.relion
@pytest.mark.parametrize("with_mag", [False, True])
def test_prediction_matches_relion_project(tmp_path, small_map, with_mag, relion):
    """Astigmatism, phase shift, B-factor, scale, origins, even Zernike (incl. Z4^0) and, in the
    second case, a magnification matrix: per-image correlation >= 0.999."""
    rng = np.random.default_rng(5)
    vol = small_map
    extra = {"rlnEvenZernike": "[0.0,0.1,-0.2,0.3,0.2,-0.1,50.0,30,-20]"}
    if with_mag:
        extra.update(rlnMagMat00=1.02, rlnMagMat01=0.03, rlnMagMat10=-0.01, rlnMagMat11=0.97)
    write_map(tmp_path / "map.mrc", vol, 1.6)
    starfile.write({"optics": pd.DataFrame(_optics(**extra)), "particles": _rows(12, rng)},
                   tmp_path / "in.star")
    out_star = project("map.mrc", "in.star", "proj", PX, cwd=tmp_path)
    names = starfile.read(out_star, always_dict=True)["particles"]["rlnImageName"]
    relion = mrcfile.read(tmp_path / names.iloc[0].split("@")[1])
    star = read_particle_star(tmp_path / "in.star")
    band = make_band(BOX, PX, 0.0, 0.5 / PX)
    ref = make_padded_reference(vol, 0.5, margin=1.1)
    # relion_project 3.1 applies the mag matrix to the CTF only; RELION's refinement model
    # (ObservationModel) and csrefine's default apply it to the projection too.
    pred = band_to_images(predict_band(star.groups[1], star.particles, {1: ref}, band,
                                       projection_uses_mag=not with_mag), band)
    corr = _correlations(relion, pred)
    assert corr.min() >= 0.999, corr
    if with_mag:  # and the difference is real: the refinement model differs from relion_project
        full = band_to_images(predict_band(star.groups[1], star.particles, {1: ref}, band), band)
        assert _correlations(relion, full).min() < 0.99


@pytest.mark.relion
def test_relion_ctf_refine_recovers_beam_tilt_simulated_by_csrefine(tmp_path, small_map, relion):
    """Odd aberrations (which relion_project ignores): images made by csrefine's forward model
    with a known beam tilt are fitted by relion_ctf_refine --fit_beamtilt to that tilt."""
    from relion_tools import optics_table, particle_table, postprocess, run_relion

    from csrefine.fsc import soft_spherical_mask
    from csrefine.images import write_stack
    from csrefine.model import OpticsGroup
    from csrefine.simulate import random_particles, simulate_images

    rng = np.random.default_rng(11)
    px, box, tilt = 1.6, 64, (0.8, -0.5)
    truth = OpticsGroup(1, "g1", 300.0, 2.7, 0.1, px, box, beam_tilt_x_mrad=tilt[0],
                        beam_tilt_y_mrad=tilt[1], has_beam_tilt=True)
    parts = random_particles(1500, rng)
    write_stack(tmp_path / "parts.mrcs", simulate_images(small_map, truth, parts, 0.5, rng), px)
    nominal = OpticsGroup(1, "g1", 300.0, 2.7, 0.1, px, box)
    starfile.write({"optics": optics_table([nominal]),
                    "particles": particle_table(parts, "parts.mrcs")}, tmp_path / "parts.star")
    for h in (1, 2):  # independent noise, so that the half-map FSC falls at high resolution
        noisy = small_map + rng.normal(0, 0.01 * small_map.max(), small_map.shape)
        write_map(tmp_path / f"run_half{h}_class001_unfil.mrc", noisy, px)
    write_map(tmp_path / "mask.mrc", soft_spherical_mask(box, 0.4 * box - 4), px)
    pp = postprocess("run_half1_class001_unfil.mrc", "mask.mrc", "PostProcess/postprocess", px,
                     cwd=tmp_path, randomize_at_A=10.0)
    run_relion(["relion_ctf_refine", "--i", "parts.star", "--f", pp.relative_to(tmp_path),
                "--o", "CtfRefine/", "--fit_beamtilt", "--kmin_tilt", "10", "--j", "2"],
               cwd=tmp_path)
    optics = starfile.read(tmp_path / "CtfRefine/particles_ctf_refine.star", always_dict=True)["optics"]
    fitted = (float(optics["rlnBeamTiltX"].iloc[0]), float(optics["rlnBeamTiltY"].iloc[0]))
    print(f"beam tilt: true {tilt}, relion_ctf_refine {fitted}")
    assert fitted == pytest.approx(tilt, abs=0.05), fitted
