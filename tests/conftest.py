"""Shared fixtures: the atomic model, RELION availability (loud skips), GPU availability, small
example projects (built once per test run, copied per test).

Markers (pyproject.toml): ``relion`` (needs Debian's RELION binaries), ``gpu`` (needs CuPy and a
CUDA GPU; skipped with the reason elsewhere), ``slow`` (end-to-end runs). The quick development
subset is ``python3 -m pytest -m "not slow and not relion"``.
"""

from __future__ import annotations

import shutil
import types
import warnings
from pathlib import Path

import numpy as np
import pytest

from csrefine.atomic_map import PACKAGED_MODEL
from csrefine.cryosparc.convert import cryosparc_dataset_from_relion

RELION_TOOLS = ("relion_project", "relion_reconstruct", "relion_ctf_refine", "relion_pipeliner",
                "relion_postprocess")


def _cuda_available() -> bool:
    """CuPy importable and a CUDA GPU present (the GPU tests run only then)."""
    try:
        import cupy
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # no CuPy, or no driver
        return False


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` are skipped, with the reason, where there is no CUDA GPU."""
    if any(item.get_closest_marker("gpu") for item in items) and not _cuda_available():
        skip = pytest.mark.skip(reason="no CuPy with a CUDA GPU here: the GPU tests run only on "
                                       "a machine with one")
        for item in items:
            if item.get_closest_marker("gpu"):
                item.add_marker(skip)


@pytest.fixture(scope="session")
def relion():
    """Skip loudly when Debian's RELION is not installed (.ci/run installs it)."""
    missing = [t for t in RELION_TOOLS if shutil.which(t) is None]
    if missing:
        msg = (f"RELION NOT INSTALLED ({', '.join(missing)} missing): this test needs Debian's "
               f"relion package (apt-get install -y relion); it was SKIPPED, not passed")
        warnings.warn(msg, stacklevel=1)
        pytest.skip(msg)


@pytest.fixture(scope="session")
def model_path():
    """The atomic model shipped with the package (PDB 1BD2)."""
    if not PACKAGED_MODEL.is_file():
        pytest.fail(f"atomic model {PACKAGED_MODEL} missing from the package")
    return PACKAGED_MODEL


@pytest.fixture(scope="session")
def structure(model_path):
    import gemmi
    return gemmi.read_structure(str(model_path))


@pytest.fixture(scope="session")
def small_map(structure):
    """1BD2 map, box 64, 1.6 A pixels."""
    from csrefine.atomic_map import density_map
    return density_map(structure, 64, 1.6, b_factor_A2=10.0)


@pytest.fixture(scope="session")
def _example_template(tmp_path_factory, model_path):
    from csrefine.relion.example import make_example
    root = tmp_path_factory.mktemp("example_template")
    info = make_example(root, n_per_group=(600, 600), model_path=model_path, seed=3, box=64)
    return root, info


@pytest.fixture()
def example_project(_example_template, tmp_path, monkeypatch):
    """A small RELION project (2 optics groups, 600 particles each; true Cs 3.0 / 2.7, nominal
    2.7), a fresh copy per test, with the working directory set to it, as RELION runs External
    jobs."""
    template, info = _example_template
    root = tmp_path / "project"
    shutil.copytree(template, root)
    monkeypatch.chdir(root)
    return {k: (root / v.relative_to(template) if hasattr(v, "relative_to") and
                str(v).startswith(str(template)) else v) for k, v in info.items()}


# ------------------------------------------------------------ the RELION and cryoSPARC paths side by side
def _refine_both_paths(star_path, half1, half2, mask, root, options, *, negate_copy=False):
    """Refine via the RELION path (csrefine.relion.run.run) and via the cryoSPARC path
    (STAR -> .cs with the reverse converter -> csrefine.cryosparc.offline.run)."""
    import mrcfile

    from csrefine.cryosparc import offline
    from csrefine.relion.run import run
    from csrefine.relion.star_io import read_particle_star

    out_r = root / "outR"
    out_r.mkdir()
    relion = run(star_path, half1, half2, out_r, mask=mask, options=options, base_dir=root)
    star = read_particle_star(star_path)
    dset = cryosparc_dataset_from_relion(star, root, base_dir=root)
    if negate_copy:  # cryoSPARC-extracted stacks hold dark protein with blob/sign = -1
        for stack in sorted(set(str(p) for p in dset["blob/path"])):
            with mrcfile.open(root / stack) as m:
                data, vox = -np.asarray(m.data), float(m.voxel_size.x)
            neg = Path(stack).with_name("negated_" + Path(stack).name)
            from csrefine.images import write_stack
            write_stack(root / neg, data, vox)
        dset["blob/path"] = np.array([str(Path(p).with_name("negated_" + Path(p).name))
                                      for p in dset["blob/path"]], dtype=object)
        dset["blob/sign"] = -1.0
    cs_file = root / "J7_particles.cs"
    dset.save(cs_file)
    before = cs_file.read_bytes()
    cryo = offline.run(cs_file, half1, half2, root / "outC", mask=mask, project_dir=root,
                       options=options, progress=lambda s: None)
    assert cs_file.read_bytes() == before  # input untouched
    return relion, cryo, dset


def _assert_same_cs(relion, cryo, root, dset, tol_mm=1e-3):
    from csrefine.cryosparc.offline import load_dataset

    lines = []
    for gr, gc in zip(relion.groups, cryo.groups):
        assert gr.optics_group == gc.optics_group and gr.refined and gc.refined
        assert abs(gr.cs_refined_mm - gc.cs_refined_mm) < tol_mm, (gr.cs_refined_mm, gc.cs_refined_mm)
        lines.append(f"group {gr.optics_group}: RELION path {gr.cs_refined_mm:.5f} mm, "
                     f"cryoSPARC path {gc.cs_refined_mm:.5f} mm")
    print("\n".join(lines))
    out = load_dataset(root / "outC" / "particles.cs")
    assert out.fields() == dset.fields() and len(out) == len(dset)
    np.testing.assert_array_equal(out["uid"], dset["uid"])
    for g in cryo.groups:
        sel = np.asarray(out["ctf/exp_group_id"]) == g.optics_group - 1
        np.testing.assert_allclose(out["ctf/cs_mm"][sel], g.cs_refined_mm, rtol=1e-6)
        np.testing.assert_allclose(out["ctf/df1_A"][sel],
                                   np.asarray(dset["ctf/df1_A"][sel], float) + g.defocus_offset_A,
                                   atol=5e-3)
    for f in ("alignments3D/pose", "blob/path", "ctf/df_angle_rad"):
        np.testing.assert_array_equal(out[f], dset[f])
    assert (root / "outC" / "csrefine.json").is_file() and (root / "outC" / "logfile.pdf").is_file()


@pytest.fixture()
def cross_paths():
    """Refine one data set through the RELION path and the cryoSPARC (.cs) path."""
    return types.SimpleNamespace(refine_both=_refine_both_paths, assert_same_cs=_assert_same_cs)


def rng(seed=0):
    return np.random.default_rng(seed)
