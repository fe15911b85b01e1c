"""Every file csrefine hands to RELION, read by RELION's own programs (Debian's RELION 3.1.3):
updated particle STARs of RELION-written inputs (relion_star_handler, relion_reconstruct),
``csrefine convert``'s STAR, RELION_OUTPUT_NODES.star and the MRC files csrefine writes."""

from __future__ import annotations

import re
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import starfile
from relion_tools import (
    RelionError,
    compare_rewrites,
    meant_values,
    reconstruct_half,
    relion_rewrite,
    run_relion,
    simulate_dataset,
    star_values,
)

from csrefine.images import write_map, write_stack
from csrefine.relion.star_io import read_particle_star, write_updated_star

DATA = Path(__file__).parent / "data"
pytestmark = pytest.mark.relion


def _ctf_refine_changes(star):
    """What csrefine writes for relion_ctf_refine's output when groups 1 and 3 are refined:
    Z4^0 folded into the Cs, beam tilt rescaled (csrefine.relion.updated_star.refined_values)."""
    from csrefine.group_fit import not_refined_result, zernike_cs_mm
    from csrefine.relion.updated_star import refined_values
    from csrefine.results import Refinement

    results = []
    for gid, (change_mm, offset_A) in {1: (0.021, -35.0), 3: (-0.013, 12.5)}.items():
        g = star.groups[gid]
        result = not_refined_result(g, 100, "", [20.0, 3.5])
        result.refined, result.defocus_offset_A = True, offset_A
        result.cs_refined_mm = g.cs_mm + zernike_cs_mm(g) + change_mm
        results.append(result)
    return refined_values(star, Refinement(results, None, 3.5, [20, 3.5], "", {}))


CASES = {
    "relion31_run_data.star": lambda star: ({1: 2.912345678, 3: 2.5}, {1: 123.0, 2: -7.5}, {},
                                            {2: np.array([0.0, 0.01, -0.02, 0.0, 0.0, 0.0, 0.0])}),
    "relion31_ctf_refine.star": _ctf_refine_changes,
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_relion_reads_the_update_of_its_own_file_with_only_the_refined_values_changed(
        tmp_path, relion, name):
    """relion_star_handler's rewrites of the RELION-written input and of csrefine's output hold
    the same values, apart from rlnSphericalAberration, rlnDefocusU/V, rlnBeamTiltX/Y and
    rlnEvenZernike, which hold what csrefine meant (run_data: an rlnEvenZernike column is
    added, [] for the groups without terms; ctf_refine: Z4^0 folded into the Cs, the tilt
    rescaled)."""
    star = read_particle_star(DATA / name)
    changes = CASES[name](star)
    assert changes[0] and changes[1] and changes[3]
    write_updated_star(star, tmp_path / "out.star", *changes)
    relion_in = relion_rewrite(DATA / name, tmp_path / "relion_in.star")
    relion_out = relion_rewrite(tmp_path / "out.star", tmp_path / "relion_out.star")
    meant = meant_values(relion_in, *changes)
    assert compare_rewrites(relion_in, relion_out, meant) == []
    assert len(relion_out["particles"]["rlnImageName"]) == 36


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, structure, relion):
    """300 particles (box 48) imaged by relion_project, in two optics groups, as
    relion_star_handler writes the STAR (RELION's layout)."""
    d = tmp_path_factory.mktemp("tiny")
    info = simulate_dataset(d, structure, n=300, cs_true_mm=2.7, cs_nominal_mm=2.7, box=48,
                            pixel_nominal_A=2.0, white_noise=1.0, reconstruct=False)
    blocks = starfile.read(info["star"], always_dict=True)
    optics = blocks["optics"]
    optics.loc[1] = optics.loc[0]
    optics.loc[1, ["rlnOpticsGroup", "rlnOpticsGroupName"]] = [2, "opticsGroup2"]
    blocks["particles"]["rlnOpticsGroup"] = np.arange(300) % 2 + 1
    starfile.write(blocks, d / "two_groups.star", overwrite=True)
    relion_rewrite("two_groups.star", "run_data.star", cwd=d)
    return d


def _reconstruct(d: Path, star: str) -> np.ndarray:
    out = f"{Path(star).stem}_map.mrc"
    reconstruct_half(star, out, 1, cwd=d)
    return mrcfile.read(d / out)


def test_relion_reconstruct_reads_the_output(tiny):
    """relion_reconstruct --ctf on csrefine's output: unchanged values give RELION's map of the
    input bit for bit (also with an added rlnEvenZernike column of zeros and []); a new Cs
    gives another map."""
    star = read_particle_star(tiny / "run_data.star")
    write_updated_star(star, tiny / "same.star", {}, {}, {}, {2: np.zeros(7)})
    assert "_rlnEvenZernike" in (tiny / "same.star").read_text()
    write_updated_star(star, tiny / "new_cs.star", {1: 3.5}, {1: 100.0}, {})
    given = _reconstruct(tiny, "run_data.star")
    np.testing.assert_array_equal(_reconstruct(tiny, "same.star"), given)
    changed = _reconstruct(tiny, "new_cs.star")
    assert np.isfinite(changed).all() and np.abs(changed - given).max() > 1e-3 * np.abs(given).max()


def test_convert_writes_a_star_relion_reads(example_project, relion):
    """``csrefine convert`` STAR -> .cs -> STAR: RELION reads the STAR, with the particles'
    optics groups, Cs, defocus, image and micrograph names of the original."""
    from csrefine.cli import main
    from csrefine.cryosparc.convert import PARTICLE_FIELDS_CS
    from csrefine.cryosparc.offline import load_dataset

    star = "Refine3D/job002/run_data.star"
    assert main(["convert", star, "particles.cs"]) == 0
    assert main(["convert", "particles.cs", "back.star"]) == 0
    dset = load_dataset("particles.cs")
    assert len(dset) == 1200 and set(dset.fields()) == ({"uid", "location/micrograph_path"}
                                                        | {f[0] for f in PARTICLE_FIELDS_CS})
    original, back = relion_rewrite(star, "original.star"), relion_rewrite("back.star", "b.star")
    for block, column in (("optics", "rlnSphericalAberration"), ("optics", "rlnVoltage"),
                          ("optics", "rlnImageSize"), ("particles", "rlnOpticsGroup"),
                          ("particles", "rlnImageName"), ("particles", "rlnRandomSubset"),
                          ("particles", "rlnMicrographName")):
        assert back[block][column] == original[block][column], column
    np.testing.assert_allclose(np.array(back["particles"]["rlnDefocusU"], float),
                               np.array(original["particles"]["rlnDefocusU"], float), atol=5e-3)


@pytest.mark.parametrize("out_dir", ["External/job004/", "External/my job/"])
def test_output_nodes_are_read_by_relion(tmp_path, relion, out_dir):
    """RELION_OUTPUT_NODES.star, also with a space in a node name (quoted as RELION quotes)."""
    from csrefine.relion.nodes import output_nodes_text

    path = tmp_path / "RELION_OUTPUT_NODES.star"
    path.write_text(output_nodes_text(out_dir, [("particles.star", "particles"),
                                                ("logfile.pdf", "logfile")]))
    run_relion(["relion_star_handler", "--i", path, "--o", tmp_path / "out.star"])
    assert star_values(path)["output_nodes"]["rlnPipeLineNodeName"] == [
        out_dir + "particles.star", out_dir + "logfile.pdf"]


STATS = re.compile(r"^(\S+) : \(x,y,z,n\)= (\d+) x (\d+) x (\d+) x (\d+) ; avg= (\S+) stddev= (\S+) "
                   r"minval= (\S+) maxval= (\S+); angpix = (\S+)$")


def image_stats(path) -> list[tuple]:
    """relion_image_handler --stats: per image (name, x, y, z, avg, stddev, min, max, angpix)."""
    out = run_relion(["relion_image_handler", "--i", path, "--stats"])
    rows = [STATS.match(line.strip()) for line in out.splitlines() if " : (x,y,z,n)" in line]
    if not rows or not all(rows):
        raise RelionError(f"relion_image_handler --stats: unexpected output {out[-500:]}")
    return [(m[1], int(m[2]), int(m[3]), int(m[4]), *map(float, m.groups()[5:])) for m in rows]


def test_relion_reads_the_mrc_files_csrefine_writes(tmp_path, relion):
    rng = np.random.default_rng(1)
    images = rng.normal(1.0, 2.0, (3, 40, 40)).astype(np.float32)
    volume = rng.normal(0.0, 1.0, (24, 24, 24)).astype(np.float32)
    write_stack(tmp_path / "stack.mrcs", images, 1.3)
    write_map(tmp_path / "map.mrc", volume, 0.9)
    stats = image_stats(tmp_path / "stack.mrcs")
    assert [s[1:4] for s in stats] == [(40, 40, 1)] * 3 and {s[8] for s in stats} == {1.3}
    for s, image in zip(stats, images):
        np.testing.assert_allclose(s[4:8], [image.mean(), image.std(), image.min(), image.max()],
                                   rtol=1e-4, atol=1e-4)
    (name, x, y, z, avg, std, low, high, angpix), = image_stats(tmp_path / "map.mrc")
    assert (x, y, z, angpix) == (24, 24, 24, 0.9)
    np.testing.assert_allclose([avg, std, low, high],
                               [volume.mean(), volume.std(), volume.min(), volume.max()],
                               rtol=1e-4, atol=1e-4)


def test_relion_reads_the_example_projects_maps_and_stacks(example_project, relion):
    paths = sorted(Path(".").rglob("*.mrc*"))
    assert {p.suffix for p in paths} == {".mrc", ".mrcs"}
    for path in paths:
        with mrcfile.open(path, header_only=True) as m:
            nx, ny, nz = int(m.header.nx), int(m.header.ny), int(m.header.nz)
            angpix = round(float(m.voxel_size.x), 4)
        stats = image_stats(path)
        expected = [(nx, ny, 1)] * nz if path.suffix == ".mrcs" else [(nx, ny, nz)]
        assert [s[1:4] for s in stats] == expected, path
        assert {round(s[8], 4) for s in stats} == {angpix}, path
